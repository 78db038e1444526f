"""softmax_from_diffs and log_softmax_from_diffs (ir/ops/softmax.py): their lines hold on every
box, corners included, wide ones too; softmax's backward rule (lines and the shift by sum p =
1) bounds A . softmax(x) on boxes of x; every method is sound at wide eps (softmax,
log_softmax, logsumexp); and CROWN is at least as tight as the decomposed 1 / (1 + sum exp(d))
it replaced."""
import contextlib
import itertools
import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

import lirpac
from bound_checks import METHODS, check_sound
from lirpac.ir.opdef import ATEN_LOWERINGS, Interval, get_op
from lirpac.ir.ops.bivariate import add_node
from lirpac.ir.ops.softmax import _relax

OP = get_op("softmax_from_diffs")


def _corners_and_points(lower, upper, n, g):
    """Every corner of the boxes (batch, M) (up to 2^6) and n random points: (P, batch, M)."""
    m = lower.shape[-1]
    picks = [torch.tensor(c, dtype=lower.dtype) for c in itertools.product((0.0, 1.0), repeat=m)]
    picks += [torch.rand(lower.shape, generator=g, dtype=lower.dtype) for _ in range(n)]
    points = torch.stack([lower + t * (upper - lower) for t in picks])
    return torch.minimum(torch.maximum(points, lower), upper)       # (rounding)


def _log_p(d):
    """-log(1 + sum exp(d)) in float64, d (.., M)."""
    d = d.double()
    return -torch.logsumexp(torch.cat([d.new_zeros(*d.shape[:-1], 1), d], -1), -1)


@settings(max_examples=60, deadline=None)
@given(m=st.integers(0, 6), dtype=st.sampled_from([torch.float32, torch.float64]),
       scale=st.sampled_from([0.01, 0.3, 1.0, 3.0, 10.0, 40.0]), alpha=st.booleans(),
       log=st.booleans(), seed=st.integers(0, 10_000))
def test_lines_hold_on_the_box(m, dtype, scale, alpha, log, seed):
    g = torch.Generator().manual_seed(seed)
    lower = (torch.randn(16, 1, m, generator=g, dtype=torch.float64) * 2 * scale).to(dtype)
    upper = lower + (torch.rand(16, 1, m, generator=g, dtype=torch.float64) * 2 * scale).to(dtype)
    place = torch.rand(lower.shape, generator=g, dtype=dtype) if alpha else None
    (ls, lb, us, ub), _ = _relax(lower, upper, dim=1, alpha=place, log=log)
    points = _corners_and_points(lower, upper, 32, g).double()
    p = _log_p(points) if log else torch.exp(_log_p(points))
    below = (ls.double() * points).sum(-1) + lb.double()
    above = (us.double() * points).sum(-1) + ub.double()
    size = 1 + p.abs() + (ls.double().abs() * points.abs()).sum(-1)
    slack = 4 * torch.finfo(torch.float64).eps * size
    assert (below <= p + slack).all() and (above >= p - slack).all()


def _pairwise(x):
    """The differences d (B, K, K - 1) of x (B, K)."""
    return get_op("pairwise_diff").forward(x, dim=1)


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 5), dtype=st.sampled_from([torch.float32, torch.float64]),
       scale=st.sampled_from([0.01, 0.3, 1.0, 3.0]), rows=st.integers(1, 3),
       seed=st.integers(0, 10_000))
def test_backward_bounds_hold_on_boxes_of_x(k, dtype, scale, rows, seed):
    """A . softmax(x) >= lA' . d + lbias and <= uA' . d + ubias at corners and points of a
    box of x, d its differences (the shift needs sum p = 1, which holds there only)."""
    g = torch.Generator().manual_seed(seed)
    lo = (torch.randn(3, k, generator=g, dtype=torch.float64) * 3).to(dtype)
    hi = lo + (torch.rand(3, k, generator=g, dtype=torch.float64) * 2 * scale).to(dtype)
    box = get_op("pairwise_diff").ibp(Interval(lo, hi), dim=1)
    coeff = torch.randn(3, rows, k, generator=g, dtype=torch.float64).to(dtype)
    [(new_l, new_u)], lbias, ubias = OP.backward(coeff, coeff, box, dim=1)
    xs = _corners_and_points(lo, hi, 32, g)
    d = _pairwise(xs.reshape(-1, k).double()).reshape(xs.shape[0], 3, 1, -1)
    value = (coeff.double() * torch.softmax(xs.double(), -1).unsqueeze(2)).sum(-1)
    low = (new_l.double().flatten(2) * d).sum(-1) + lbias.double()
    high = (new_u.double().flatten(2) * d).sum(-1) + ubias.double()
    slack = 1e-12 * (1 + coeff.double().abs().sum(-1))
    assert (low <= value + slack).all() and (high >= value - slack).all()


class OneLayer(nn.Module):
    def __init__(self, layers=1):
        super().__init__()
        self.hidden = nn.ModuleList([nn.Linear(4, 6)] +
                                    [nn.Linear(6, 6) for _ in range(layers - 1)])
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        for layer in self.hidden:
            x = torch.softmax(layer(x), -1)
        return self.head(x)


class TwoLayers(OneLayer):
    def __init__(self):
        super().__init__(2)


class LogForms(OneLayer):
    """log_softmax over the last dim and logsumexp over a middle one."""
    def forward(self, x):
        h = self.hidden[0](x)
        lse = torch.logsumexp(h.reshape(-1, 2, 3), 1)
        return self.head(torch.cat([torch.log_softmax(h[:, :3], -1), lse], 1))


@settings(max_examples=24, deadline=None)
@given(cls=st.sampled_from([OneLayer, TwoLayers, LogForms]),
       method=st.sampled_from(METHODS + ["alpha-crown"]), norm=st.sampled_from([math.inf, 2.0]),
       eps=st.sampled_from([0.05, 1.0, 3.0]), seed=st.integers(0, 10_000))
def test_sound_at_wide_eps(cls, method, norm, eps, seed):
    check_sound(cls, (4,), method, norm, seed, eps)


@contextlib.contextmanager
def _decomposed_softmax():
    """softmax over the last dim lowered as before this op: reciprocal_floored(1 + sum_{j != i}
    exp(x_j - x_i))."""
    def lower(lw, x, dim, *rest):
        node = lw.value(x)
        k = node.shape[-1]
        last = len(node.shape)
        diff = add_node(lw, "pairwise_diff", [node], node.shape + (k - 1,), "diff", dim=last)
        ratio = add_node(lw, "exp", [diff], diff.shape, "ratio")
        others = add_node(lw, "sum", [ratio], node.shape, "others", dims=(last + 1,),
                          keepdim=False)
        total = add_node(lw, "add", [others, lw.constant(1.0, node)], node.shape, "total")
        return lw.add("reciprocal_floored", [total], floor=1.0)
    names = ("softmax.int", "_softmax.default")
    saved = [ATEN_LOWERINGS[n] for n in names]
    for n in names:
        ATEN_LOWERINGS[n] = lower
    try:
        yield
    finally:
        for n, fn in zip(names, saved):
            ATEN_LOWERINGS[n] = fn


@pytest.mark.parametrize("eps", [0.05, 1.0])
def test_at_least_as_tight_as_the_decomposed_form(eps):
    """benchmarks/tightness.py's one-layer case (Linear(8, 16) -> softmax -> Linear(16, 4)):
    CROWN's bounds are inside those of the decomposed form, side by side, at small eps (where
    the decomposed form was already tighter than auto_LiRPA's) and at eps 1 (2.8x looser)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Softmax(-1), nn.Linear(16, 4)).eval()
    x = torch.rand(8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ball = lirpac.LpBall(eps=eps)
    lower, upper = lirpac.compile(model, x[:2]).bounds(x, ball, method="crown")
    with _decomposed_softmax():
        old_lower, old_upper = lirpac.compile(model, x[:2]).bounds(x, ball, method="crown")
    assert (lower >= old_lower).all() and (upper <= old_upper).all()
    assert (upper - lower).mean() < (0.99 if eps < 0.1 else 0.7) * (old_upper - old_lower).mean()


@pytest.mark.parametrize("log", [False, True])
def test_softmax_over_one_entry_is_constant(log):
    """A softmax over a dim of size 1 has no differences (K - 1 = 0): p = 1, log p = 0, under
    every method, alpha-CROWN's empty slots included (fuzzer seed 5028)."""
    act = torch.nn.LogSoftmax(-1) if log else torch.nn.Softmax(-1)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Unflatten(1, (4, 1)), act,
                                torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    x = torch.rand(2, 3, generator=torch.Generator().manual_seed(0))
    net = lirpac.compile(model, x)
    for method in ["ibp", "crown", "forward", "alpha-crown"]:
        lower, upper = net.bounds(x, lirpac.LpBall(eps=0.5), method=method)
        y = model(x)
        assert (lower <= y + 1e-5).all() and (y <= upper + 1e-5).all()
        assert (upper - lower).max() < 1e-5


@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=2, max_size=4), data=st.data())
def test_pairwise_diff_backward_is_the_transpose(shape, data):
    """pairwise_diff's backward (one strided copy) is the transpose of its forward: <A, D x> =
    <D^T A, x> for random A and x, any K (1 included) and dim."""
    from lirpac.ir.ops.normalization import _pairwise_diff, _pairwise_transpose
    dim = data.draw(st.integers(1, len(shape) - 1))
    x = torch.randn(*shape, dtype=torch.float64)
    a = torch.randn(*_pairwise_diff(x, dim=dim).shape, dtype=torch.float64)
    assert torch.allclose((a * _pairwise_diff(x, dim=dim)).sum(), (_pairwise_transpose(a, dim) * x).sum())
