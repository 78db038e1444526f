"""CROWN's choice of forward mode for intermediate bounds (passes/bound_needs.py): picked only
where it is exact and cheaper, reported in the dump, and the bounds equal those of backward
passes everywhere."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from hypothesis import given, settings, strategies as st

import lirpac
from lirpac.passes import bound_needs
from models import shared_compiled
from sampling import assert_contains, sample_lp_ball


def low_dim_mlp(seed, width=40, depth=4, inputs=3, outputs=4):
    torch.manual_seed(seed)
    layers = [nn.Linear(inputs, width)]
    for _ in range(depth - 1):
        layers += [nn.ReLU(), nn.Linear(width, width)]
    layers += [nn.ReLU(), nn.Linear(width, outputs)]
    return nn.Sequential(*layers).eval()


class ReshapedHidden(nn.Module):
    """relu -> view -> linear: a selection between the relaxation and the linear layer."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(2, 24), nn.Linear(24, 30), nn.Linear(30, 3)

    def forward(self, x):
        h = F.relu(self.fc1(x)).view(-1, 4, 6).flatten(1)
        return self.fc3(torch.tanh(self.fc2(h)))


class LinearSegment(nn.Module):
    """Two linear layers with no nonlinearity between them, then a second one after a ReLU
    (fed by the first's output too, so neither can be merged away)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(2, 20), nn.Linear(20, 20), nn.Linear(20, 20)
        self.d = nn.Linear(20, 3)

    def forward(self, x):
        h = self.b(self.a(x))
        g = self.c(F.relu(h))
        return self.d(F.relu(g) + F.relu(h))


@pytest.fixture(autouse=True)
def any_saving(monkeypatch):
    """The models here are tiny: let forward mode win whenever it does less work."""
    monkeypatch.setattr(bound_needs, "FORWARD_MIN_SAVING", 1)


def modes(net):
    return {n.name: n.notes["crown"].split()[0] for n in net.graph.nodes if "crown" in n.notes}


def backward_only(model, x):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bound_needs, "FORWARD_SHARE", 0.0)
        return lirpac.compile(model, x[:1])


def test_dump_reports_the_choice():
    model = low_dim_mlp(0)
    net = lirpac.compile(model, torch.zeros(1, 3))
    assert list(modes(net).values()) == ["ibp", "forward", "backward", "backward"]
    assert "[crown=forward (exact here; 3 input columns vs ~10 unstable rows" in str(net.graph)
    assert "forward_rows(inp, linear_1_lin, _rows)" in net.dump("crown")


def test_forward_needs_a_real_saving(monkeypatch):
    monkeypatch.undo()
    net = lirpac.compile(low_dim_mlp(0), torch.zeros(1, 3))
    assert list(modes(net).values()) == ["ibp", "backward", "backward", "backward"]
    assert "forward mode would be exact but saves too little" in str(net.graph)


def test_forward_needs_a_cheap_input():
    # 30 input columns against 40 neurons: a backward pass over the unstable ones is cheaper
    net = lirpac.compile(low_dim_mlp(0, inputs=30), torch.zeros(1, 30))
    assert list(modes(net).values()) == ["ibp", "backward", "backward", "backward"]


def test_exactness_criterion():
    for model, shape, expected in [
        (ReshapedHidden(), (2,), {"linear": "ibp", "linear_1": "forward"}),
        # the segment a -> b is affine; c meets one relaxation of it
        (LinearSegment(), (2,), {"linear_1": "forward", "linear_2": "forward"}),
    ]:
        net = lirpac.compile(model.eval(), torch.zeros(1, *shape))
        assert modes(net) == expected, str(net.graph)


@pytest.mark.parametrize("norm", [math.inf, 2, 1])
@pytest.mark.parametrize("arch", ["mlp", "reshaped", "segment"])
def test_bounds_equal_backward_passes(arch, norm):
    model = {"mlp": lambda: low_dim_mlp(1), "reshaped": ReshapedHidden,
             "segment": LinearSegment}[arch]().eval()
    torch.manual_seed(2)
    dim = 3 if arch == "mlp" else 2
    x = torch.rand(5, dim)
    ball = lirpac.LpBall(eps=0.3, norm=norm)
    chosen = lirpac.compile(model, x[:1])
    assert "forward" in modes(chosen).values()
    reference = backward_only(model, x)
    assert "forward" not in modes(reference).values()
    for options in (None, {"intersect": True}):
        lo, up = chosen.bounds(x, ball, method="crown", options=options)
        ref_lo, ref_up = reference.bounds(x, ball, method="crown", options=options)
        torch.testing.assert_close(lo, ref_lo, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(up, ref_up, rtol=1e-5, atol=1e-5)
    assert "forward_rows" in chosen.dump("crown") and "forward_rows" not in reference.dump("crown")
    points = sample_lp_ball(x, 0.3, norm, 256, generator=torch.Generator().manual_seed(0))
    assert_contains(model, points, lo, up)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), width=st.sampled_from([8, 20, 48]), depth=st.integers(2, 4),
       eps=st.floats(0.01, 1.0), box=st.booleans())
def test_random_low_dim_nets(seed, width, depth, eps, box):
    model = low_dim_mlp(seed, width=width, depth=depth, inputs=2)
    x = torch.rand(3, 2, generator=torch.Generator().manual_seed(seed))
    # (each architecture compiled once, both ways; the weights are copied in)
    chosen = shared_compiled(("low_dim_chosen", width, depth), model, x[:1])[1]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bound_needs, "FORWARD_SHARE", 0.0)
        reference = shared_compiled(("low_dim_backward", width, depth), low_dim_mlp(
            seed, width=width, depth=depth, inputs=2), x[:1])[1]
    spec = lirpac.Box(x - eps, x + eps) if box else lirpac.LpBall(eps=eps)
    lo, up = chosen.bounds(x, spec, method="crown")
    ref_lo, ref_up = reference.bounds(x, spec, method="crown")
    torch.testing.assert_close(lo, ref_lo, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(up, ref_up, rtol=1e-5, atol=1e-4)
    points = sample_lp_ball(x, eps, math.inf, 128, generator=torch.Generator().manual_seed(seed))
    assert_contains(model, points, lo, up)


def test_alpha_crown_keeps_its_backward_passes():
    model = low_dim_mlp(0)
    net = lirpac.compile(model, torch.zeros(1, 3))
    net.bounds(torch.rand(1, 3), lirpac.LpBall(eps=0.1), method="alpha-crown")
    assert "forward_rows" not in net.dump("alpha-crown")


def test_stale_note_never_puts_forward_where_it_is_not_exact():
    net = lirpac.compile(low_dim_mlp(0), torch.zeros(1, 3))
    deep = [n for n in net.graph.nodes if "crown" in n.notes][-1]
    deep.notes["crown"] = "forward (written by hand)"
    assert not bound_needs.forward_exact(net.graph, deep)
    assert bound_needs.chosen_mode(net.graph, deep) == "backward"


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000), eps=st.floats(0.05, 1.0))
def test_whole_passes_keep_the_bounds_in_both_modes(seed, eps):
    """A pass over every neuron of its node (runtime.WHOLE_PASS_FRACTION), backward or
    forward, gives its rows the bounds of a pass over those rows alone."""
    from bound_checks import whole_passes
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(seed))
    model, net = shared_compiled("whole_passes_low_dim", low_dim_mlp(seed), x[:1])
    assert "forward_rows(inp, linear_1_lin, _rows)" in net.source("crown")
    ball = lirpac.LpBall(eps=eps)
    results = []
    for always in (False, True):
        with whole_passes(always), torch.no_grad():
            results.append(net.bounds(x, ball, method="crown") +
                           net.bounds(x, ball, method="crown", options={"intersect": True}))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert_contains(model, sample_lp_ball(x, eps, math.inf, 64), *results[1][:2])


def test_convolutions_that_keep_the_map_stay_backward(monkeypatch):
    """On a 32x32 image a backward row touches its receptive field only (patches), while a
    forward column crosses every map densely: the second conv of a CIFAR net stays backward,
    even though 3,072 input columns are fewer than its ~8,192 unstable rows."""
    monkeypatch.undo()
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(32 * 32 * 32, 10)).eval()
    net = lirpac.compile(model, torch.zeros(1, 3, 32, 32))
    assert modes(net)["conv2d_1"] == "backward", str(net.graph)
    conv = next(n for n in net.graph.nodes if n.name == "conv2d_1")
    assert "multiply-adds forward vs" in conv.notes["crown"]


def test_row_work_counts_the_receptive_field():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2, padding=1)).eval()
    net = lirpac.compile(model, torch.zeros(1, 3, 16, 16))
    target = next(n for n in net.graph.nodes if n.name == "conv2d_1")
    # one row: a 1x1 window of conv2d_1 (4 channels, fan-in 8*9), a 3x3 window of relu and
    # conv2d (8 channels; conv2d's fan-in 3*9)
    assert bound_needs._row_work(net.graph, target) == 4 * 72 + 8 * 9 + 8 * 9 * 27
    # one column: every map whole (the input counts its own size)
    assert bound_needs._line_work(net.graph, target) == 4 * 64 * 72 + 8 * 256 + 8 * 256 * 27 + 3 * 256
