"""Word substitution on models compiled on token ids (the embedding op, ir/ops/embedding.py):
sound by enumerating every substitution of short sentences for each method, the same bounds as
the embedded-sentence form (SubstitutedTokens), exact where the model is linear in the
embeddings, differentiable in the embedding table, and precise errors."""
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

import lirpac
from word_models import T, V, Attention, Bag, Recurrent, exact_range, random_substitutes

_NETS = {}


def compiled(cls):
    """(model, net compiled on token ids), once per class."""
    if cls not in _NETS:
        torch.manual_seed(0)
        model = cls().eval()
        _NETS[cls] = (model, lirpac.compile(model, torch.zeros(1, T, dtype=torch.long)))
    return _NETS[cls]


def sentences(seed, batch=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (batch, T), generator=g), random_substitutes(g, batch)


def assert_sound(net, model, ids, subs, k, method, options=None):
    with torch.set_grad_enabled(method == "alpha-crown"):
        lower, upper = net.bounds(ids, lirpac.WordSubstitution(subs, k), method=method, options=options)
    with torch.no_grad():
        lo, hi = exact_range(model, ids, subs, k)
    assert (lower <= lo + 1e-5).all() and (upper >= hi - 1e-5).all(), (method, k)
    return lower, upper


@settings(max_examples=5, deadline=None)
@given(arch=st.sampled_from([Bag, Attention]),
       method=st.sampled_from(["ibp", "crown", "crown-ibp", "forward", "forward+crown"]),
       k=st.integers(0, 3), seed=st.integers(0, 10**6))
def test_sound_by_enumeration(arch, method, k, seed):
    model, net = compiled(arch)
    ids, subs = sentences(seed)
    assert_sound(net, model, ids, subs, k, method)


def test_alpha_crown_is_sound_and_no_looser_than_crown():
    model, net = compiled(Bag)
    ids, subs = sentences(5)
    crown = assert_sound(net, model, ids, subs, 2, "crown")
    alpha = assert_sound(net, model, ids, subs, 2, "alpha-crown", {"iterations": 3})
    assert (alpha[0] >= crown[0] - 1e-5).all() and (alpha[1] <= crown[1] + 1e-5).all()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown", "alpha-crown"])
def test_lstm_is_sound(method):
    model, net = compiled(Recurrent)
    ids, subs = sentences(7)
    assert_sound(net, model, ids, subs, 2, method, {"iterations": 2} if method == "alpha-crown" else None)


@pytest.mark.parametrize("method", ["ibp", "crown", "forward"])
def test_same_bounds_as_the_embedded_form(method):
    model, net = compiled(Bag)
    wrapped = lirpac.SubstitutedTokens(model, "embed")
    embedded = lirpac.compile(wrapped, wrapped.embed(torch.zeros(1, T, dtype=torch.long)))
    ids, subs = sentences(11)
    got = net.bounds(ids, lirpac.WordSubstitution(subs, 2), method=method)
    want = embedded.bounds(wrapped.embed(ids), wrapped.substitution(ids, subs, 2), method=method)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_no_substitution_is_the_output(method):
    model, net = compiled(Attention)
    ids, _ = sentences(2)
    lower, upper = net.bounds(ids, lirpac.WordSubstitution(None, 0), method=method)
    torch.testing.assert_close(lower, model(ids), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(upper, model(ids), rtol=1e-5, atol=1e-5)


def test_linear_in_the_embeddings_is_exact():
    torch.manual_seed(1)
    model = Bag(relu=False).eval()
    net = lirpac.compile(model, torch.zeros(1, T, dtype=torch.long))
    ids, subs = sentences(4)
    lower, upper = net.bounds(ids, lirpac.WordSubstitution(subs, 2), method="crown")
    lo, hi = exact_range(model, ids, subs, 2)
    torch.testing.assert_close(lower, lo, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(upper, hi, rtol=1e-5, atol=1e-5)


def test_synonym_table_is_the_per_sentence_lists():
    model, net = compiled(Bag)
    ids, _ = sentences(3)
    synonyms = torch.full((V, 2), -1)
    synonyms[:, 0] = (torch.arange(V) + 1) % V
    synonyms[::2, 1] = (torch.arange(0, V, 2) + 7) % V
    subs = [[[s for s in synonyms[w].tolist() if s >= 0] for w in row] for row in ids.tolist()]
    got = net.bounds(ids, lirpac.WordSubstitution(synonyms=synonyms, k=1), method="crown")
    want = net.bounds(ids, lirpac.WordSubstitution(subs, 1), method="crown")
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
def test_the_embedding_gets_gradients(method):
    torch.manual_seed(0)
    model = Bag().train()
    net = lirpac.compile(model, torch.zeros(1, T, dtype=torch.long))
    ids, subs = sentences(6)
    lower, upper = net.bounds(ids, lirpac.WordSubstitution(subs, 1), method=method)
    (upper - lower).sum().backward()
    assert model.embed.weight.grad is not None and model.embed.weight.grad.abs().sum() > 0


def test_linear_bounds_are_on_the_embedded_sentence():
    model, net = compiled(Bag)
    ids, subs = sentences(8)
    lin = net.linear_bounds(ids, lirpac.WordSubstitution(subs, 1))
    assert lin.lower_coeff.shape == (2, 2, T, model.embed.embedding_dim)


class _TwoTables(nn.Module):
    def __init__(self):
        super().__init__()
        self.words, self.kinds, self.out = nn.Embedding(V, 3), nn.Embedding(V, 3), nn.Linear(3, 2)

    def forward(self, ids):
        return self.out((self.words(ids) + self.kinds(ids)).mean(1))


def test_bad_uses_are_refused():
    _, net = compiled(Bag)
    ids, subs = sentences(9)
    with pytest.raises(lirpac.InputError, match="WordSubstitution"):
        net.bounds(ids, lirpac.LpBall(eps=0.1))
    with pytest.raises(lirpac.InputError, match="integer tensor"):
        net.bounds(ids.float(), lirpac.WordSubstitution(subs, 1))
    with pytest.raises(lirpac.InputError, match="vocabulary"):
        net.bounds(ids, lirpac.WordSubstitution([[[V + 1]] * T] * 2, 1))
    with pytest.raises(lirpac.InputError, match="k must be"):
        lirpac.WordSubstitution(subs, -1)
    with pytest.raises(lirpac.InputError, match="one nn.Embedding"):
        lirpac.compile(_TwoTables(), torch.zeros(1, T, dtype=torch.long))


def test_onnx_gather_on_a_table_is_the_embedding():
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper
    g = torch.Generator().manual_seed(0)
    table, w = torch.randn(V, 3, generator=g), torch.randn(2, 3, generator=g)
    nodes = [helper.make_node("Gather", ["table", "x"], ["e"], axis=0),
             helper.make_node("ReduceMean", ["e"], ["m"], axes=[1], keepdims=0),
             helper.make_node("Gemm", ["m", "w"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.INT64, [None, T])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
                              [numpy_helper.from_array(table.numpy(), "table"),
                               numpy_helper.from_array(w.numpy(), "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    onnx.checker.check_model(proto)
    net = lirpac.compile(proto)
    ids, subs = sentences(12)
    lower, upper = net.bounds(ids, lirpac.WordSubstitution(subs, 2), method="crown")

    def model(x):
        return table[x].mean(1) @ w.T
    lo, hi = exact_range(model, ids, subs, 2)
    torch.testing.assert_close(lower, lo, rtol=1e-5, atol=1e-5)     # linear in the rows: exact
    torch.testing.assert_close(upper, hi, rtol=1e-5, atol=1e-5)
