"""Word substitution (each position may take one of its substitutes, at most k per sentence):
exact on models linear in the embeddings, sound by enumerating every substitution of short
sentences, through an embedding-bag MLP, an LSTM and a self-attention layer."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import lirpac
from word_models import T, V, Attention, Bag, Recurrent, exact_range, random_substitutes

_NETS = {}


def compiled(cls):
    if cls not in _NETS:
        torch.manual_seed(0)
        model = cls().eval()
        wrapped = lirpac.SubstitutedTokens(model, "embed")
        _NETS[cls] = (model, wrapped, lirpac.compile(wrapped, wrapped.embed(torch.zeros(1, T, dtype=torch.long))))
    return _NETS[cls]


@pytest.mark.parametrize("k", [0, 1, 3])
@pytest.mark.parametrize("method", ["crown", "ibp"])
def test_linear_in_the_embeddings_is_exact(k, method):
    torch.manual_seed(k)
    model = Bag(relu=False).eval()
    wrapped = lirpac.SubstitutedTokens(model, "embed")
    ids = torch.randint(0, V, (2, T))
    net = lirpac.compile(wrapped, wrapped.embed(ids[:1]))
    subs = random_substitutes(torch.Generator().manual_seed(k))
    lower, upper = net.bounds(wrapped.embed(ids), wrapped.substitution(ids, subs, k), method=method)
    lo, hi = exact_range(model, ids, subs, k)
    if method == "ibp" and k > 0:      # IBP: the mean of per-position ranges lets every position move
        assert (lower <= lo + 1e-5).all() and (upper >= hi - 1e-5).all()
        return
    torch.testing.assert_close(lower, lo, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(upper, hi, rtol=1e-5, atol=1e-5)


@settings(max_examples=6, deadline=None)
@given(arch=st.sampled_from([Bag, Attention]), method=st.sampled_from(["ibp", "crown", "crown-ibp"]),
       k=st.integers(0, 3), seed=st.integers(0, 10**6))
def test_sound_by_enumeration(arch, method, k, seed):
    model, wrapped, net = compiled(arch)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (2, T), generator=g)
    subs = random_substitutes(g)
    lower, upper = net.bounds(wrapped.embed(ids), wrapped.substitution(ids, subs, k), method=method)
    lo, hi = exact_range(model, ids, subs, k)
    assert (lower <= lo + 1e-5).all() and (upper >= hi - 1e-5).all()


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 3])
def test_attention_alpha_crown_is_sound_and_tighter(k):
    """alpha-CROWN optimises McCormick's planes of q k^T and softmax @ v and exp's tangents:
    sound by enumeration, and tighter than CROWN."""
    model, wrapped, net = compiled(Attention)
    g = torch.Generator().manual_seed(5 + k)
    ids = torch.randint(0, V, (2, T), generator=g)
    subs = random_substitutes(g, most=3)
    ws = wrapped.substitution(ids, subs, k)
    with torch.enable_grad():
        lower, upper = net.bounds(wrapped.embed(ids), ws, method="alpha-crown", options={"iterations": 5})
    lo, hi = exact_range(model, ids, subs, k)
    assert (lower <= lo + 1e-5).all() and (upper >= hi - 1e-5).all()
    crown = net.bounds(wrapped.embed(ids), ws, method="crown")
    assert (upper - lower).sum() < (crown[1] - crown[0]).sum()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown"])
@pytest.mark.parametrize("seed", [7, 8])
def test_lstm_is_sound(method, seed):
    model, wrapped, net = compiled(Recurrent)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (2, T), generator=g)
    subs = random_substitutes(g)
    lower, upper = net.bounds(wrapped.embed(ids), wrapped.substitution(ids, subs, 2), method=method)
    lo, hi = exact_range(model, ids, subs, 2)
    assert (lower <= lo + 1e-5).all() and (upper >= hi - 1e-5).all()


def test_candidates_not_a_box_around_them():
    """Backward bounds use each position's candidates: tighter than IBP over their boxes."""
    model, wrapped, net = compiled(Bag)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, V, (2, T), generator=g)
    subs = [[[1, 2, 3]] * T] * 2
    ws = wrapped.substitution(ids, subs, 1)
    ibp = net.bounds(wrapped.embed(ids), ws, method="ibp")
    crown = net.bounds(wrapped.embed(ids), ws, method="crown")
    assert (crown[1] - crown[0]).sum() < (ibp[1] - ibp[0]).sum()


def test_bad_arguments_are_refused():
    model = Bag().eval()
    with pytest.raises(lirpac.InputError, match="not an nn.Embedding"):
        lirpac.SubstitutedTokens(model, "fc")
    wrapped = lirpac.SubstitutedTokens(model, "embed")
    ids = torch.randint(0, V, (1, T))
    with pytest.raises(lirpac.InputError, match="one list of token ids per position"):
        wrapped.substitution(ids, [[[1]]], 1)
    with pytest.raises(lirpac.InputError, match="outside the vocabulary"):
        wrapped.substitution(ids, [[[V + 3]] * T], 1)
    with pytest.raises(lirpac.InputError, match="k must be"):
        wrapped.substitution(ids, [[[]] * T], -1)
