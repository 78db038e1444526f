"""Intermediate bounds of a monotone op's node (sigmoid, tanh, ReLU feeding a product) are its
image of its input's bounds, with no backward pass (passes/bound_needs.py
image_of_bounded_input): never looser than the pass, sound in every method; and the alpha-CROWN
step's memory savers (blended lines once per bounds, passes recomputed in the backward step)
change no bound and no gradient."""
import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

import lirpac
from lirpac.ir.opdef import Interval, get_op
from lirpac.passes.bound_needs import image_of_bounded_input
from sampling import assert_contains, sample_lp_ball


class Gated(nn.Module):
    """An LSTM cell's pattern: sigmoid(a) * tanh(b), twice, then a head."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 5), nn.Linear(3, 5), nn.Linear(5, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        h = torch.sigmoid(self.a(x)) * torch.tanh(self.b(x))
        return self.head(torch.sigmoid(self.c(h)) * torch.tanh(h))


class Act(nn.Module):
    def __init__(self, act, two_layers):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 4)
        self.act, self.two = act, two_layers

    def forward(self, x):
        z = self.fc1(x)
        if self.two:
            z = self.fc2(torch.tanh(z))
        return self.act(z)


@pytest.fixture(scope="module")
def gated():
    torch.manual_seed(1)
    model = Gated().eval()
    return model, lirpac.compile(model, torch.randn(2, 3))


def test_monotone_nodes_take_the_image_and_others_keep_their_pass(gated):
    _, net = gated
    needs = {n.name: n for n in net.graph.nodes if n.notes.get("needs_bounds")}
    images = {name for name, n in needs.items() if image_of_bounded_input(net.graph, n)}
    assert images and all(needs[name].op in ("sigmoid", "tanh") for name in images)
    assert all("monotone" in needs[name].notes["crown"] for name in images)
    # a product's node and the linear maps still get passes
    assert any(n.op == "mul_bilinear" and name not in images for name, n in needs.items())
    source = net.source("crown")
    assert all(f"def {name}_pass" not in source for name in images)


def test_relu_of_sparse_input_keeps_its_pass():
    """ReLU's input gets passes only where its sign is unknown (sparse rows): the image of
    the IBP bounds elsewhere could be looser than a pass, so ReLU's node keeps its own."""
    class ReluProduct(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)

        def forward(self, x):
            z = self.fc(x)
            return torch.relu(z) * torch.relu(-z + 1)

    net = lirpac.compile(ReluProduct().eval(), torch.randn(2, 3))
    relus = [n for n in net.graph.nodes if n.op == "relu"]
    assert relus and not any(image_of_bounded_input(net.graph, n) for n in relus)


_COMPILED = {}


def _pair(act, two):
    """(model, net of the model, net of its pre-activation), compiled once: the nets read the
    models' parameters, which each example draws again in place."""
    if (act, two) not in _COMPILED:
        model, pre = Act(getattr(torch, act), two).eval(), Act(lambda t: t, two).eval()
        x = torch.randn(2, 3)
        _COMPILED[act, two] = model, pre, lirpac.compile(model, x), lirpac.compile(pre, x)
    return _COMPILED[act, two]


@pytest.mark.slow
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), eps=st.floats(0.05, 2.0), two=st.booleans(),
       act=st.sampled_from(["sigmoid", "tanh", "atan", "exp", "erf"]))
def test_image_is_never_looser_than_a_pass_from_the_node(seed, eps, two, act):
    """The bounds of f(z) as a final backward pass through f's relaxation contain f's image
    of z's CROWN bounds (what the node now takes; up to both sides' rounding pads), and the
    image contains f(z(x'))."""
    model, pre, net, pre_net = _pair(act, two)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p, q in zip(model.parameters(), pre.parameters()):
            p.copy_(torch.randn(p.shape, generator=g))
            q.copy_(p)
    x = torch.randn(2, 3, generator=g)
    ball = lirpac.LpBall(eps=eps)
    z_lower, z_upper = pre_net.bounds(x, ball, method="crown")
    image = get_op(act).ibp(Interval(z_lower, z_upper))
    pass_lower, pass_upper = net.bounds(x, ball, method="crown")
    tol = 1e-5 * (1 + torch.maximum(pass_lower.abs(), pass_upper.abs()))
    assert torch.all(image.lower >= pass_lower - tol) and torch.all(image.upper <= pass_upper + tol)
    assert_contains(model, sample_lp_ball(x, eps, math.inf, 64, generator=g), image.lower, image.upper)


@pytest.mark.parametrize("method", ["crown", "forward+crown", "crown-ibp", "alpha-crown"])
def test_gated_products_bound_soundly(gated, method):
    model, net = gated
    x = torch.randn(3, 3, generator=torch.Generator().manual_seed(1))
    options = {"options": {"iterations": 4}} if method == "alpha-crown" else {}
    lower, upper = net.bounds(x, lirpac.LpBall(eps=0.5), method=method, **options)
    assert_contains(model, sample_lp_ball(x, 0.5, math.inf, 256), lower, upper)


def test_blended_lines_once_per_bounds_are_the_per_pass_step():
    """sigmoid's backward_alpha from its alpha_lines is bit for bit the one from the bounds."""
    g = torch.Generator().manual_seed(0)
    lower = torch.randn(2, 6, generator=g) * 3
    upper = lower + 4 * torch.rand(2, 6, generator=g)
    op = get_op("sigmoid")
    lA, uA = torch.randn(2, 5, 6, generator=g), torch.randn(2, 5, 6, generator=g)
    alphas = [torch.rand(2, 5, 6, generator=g) for _ in range(2)]
    once = op.backward_alpha(lA, uA, op.alpha_lines(lower, upper), *alphas)
    each = op.backward_alpha(lA, uA, Interval(lower, upper), *alphas)
    for a, b in zip(once[0][0] + once[1:], each[0][0] + each[1:]):
        assert torch.equal(a, b)


def test_recomputed_passes_give_the_same_slopes(gated, monkeypatch):
    """Passes recomputed in the backward step (StepContext.recomputed; generated for graphs
    with many passes, here for every graph) end with the slopes and bounds of passes whose
    graph is kept."""
    from lirpac.codegen import alpha_crown

    model, _ = gated
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(2))
    ball = lirpac.LpBall(eps=0.5)

    def run(threshold):
        monkeypatch.setattr(alpha_crown, "RECOMPUTE_FROM_PASSES", threshold)
        net = lirpac.compile(model, x)
        result = net.alpha_crown(x, ball, iterations=3)
        assert ("ctx.recomputed(" in net.source("alpha-crown")) == (threshold == 0)
        return result.lower, result.upper, result.state.alphas

    recomputed = run(0)
    kept = run(10 ** 6)
    assert torch.allclose(recomputed[0], kept[0], atol=1e-6) and torch.allclose(recomputed[1], kept[1], atol=1e-6)
    assert recomputed[2].keys() == kept[2].keys()
    for key in kept[2]:
        for a, b in zip(recomputed[2][key], kept[2][key]):
            assert (a is None and b is None) or torch.allclose(a, b, atol=1e-5)


def test_blend_of_bounded_lines_skips_no_rounding():
    """The blend's shortcut for finite lines is bit for bit its general form."""
    from lirpac.ir.ops.blend_alpha import _blend
    g = torch.Generator().manual_seed(3)
    a = torch.rand(2, 5, 6, generator=g)
    a[0, 0] = 1.0
    slope, bias, level, reach = (torch.randn(2, 1, 6, generator=g) for _ in range(4))
    for up in (False, True):
        fast, general = _blend(a, slope, bias, level, reach.abs(), up, True), _blend(a, slope, bias, level, reach.abs(), up)
        assert all(torch.equal(p, q) for p, q in zip(fast, general))
