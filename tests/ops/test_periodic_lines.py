"""sin and cos over two or more of their pieces: envelope lines with exact biases
(ir/ops/periodic_lines.py), sound on dense grids and at f's extremes, and tighter than the
lines they replace on recorded cases."""
import math

import torch
from hypothesis import given, settings, strategies as st

from lirpac.ir.opdef import Interval, get_op


def lines(name, lower, upper):
    n = lower.shape[0]
    one = torch.ones(n, 1, 1, dtype=lower.dtype)
    coeffs, lb, ub = get_op(name).backward(one, one, Interval(lower.reshape(n, 1),
                                                              upper.reshape(n, 1)))
    zero = torch.zeros(n, 1, dtype=lower.dtype)
    parts = (coeffs[0][0].reshape(n, 1), lb, coeffs[0][1].reshape(n, 1), ub)
    return tuple((zero + t).reshape(n).double() for t in parts)


def _grid(lower, upper, peak):
    """A dense grid of [l, u] plus every extreme of f = cos(x - peak) inside and the ends."""
    lo, hi = lower.double(), upper.double()
    t = torch.linspace(0, 1, 2001, dtype=torch.float64).unsqueeze(1)
    xs = [lo + (hi - lo) * t, lo.unsqueeze(0), hi.unsqueeze(0)]
    k0 = torch.floor((lo - peak) / math.pi)
    for k in range(12):
        xs.append(torch.minimum(torch.maximum(peak + (k0 + k) * math.pi, lo), hi).unsqueeze(0))
    return torch.cat(xs)


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(["sin", "cos"]), centre=st.floats(-50, 50),
       radius=st.floats(1.0, 12.0), dtype=st.sampled_from([torch.float32, torch.float64]),
       seed=st.integers(0, 1000))
def test_lines_over_several_pieces_are_sound(name, centre, radius, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    c = centre + torch.randn(64, generator=g, dtype=torch.float64)
    r = radius * torch.rand(64, generator=g, dtype=torch.float64)
    lower, upper = (c - r).to(dtype), (c + r).to(dtype)
    ls, lb, us, ub = lines(name, lower, upper)
    peak = math.pi / 2 if name == "sin" else 0.0
    f = torch.sin if name == "sin" else torch.cos
    for sigma, slope, bias in ((1.0, ls, lb), (-1.0, us, ub)):
        x = _grid(lower, upper, peak)
        # and a fine grid around the coarse one's closest approach, where the line touches f
        near = x.gather(0, (sigma * (f(x) - slope * x - bias)).argmin(0, keepdim=True))
        fine = near + torch.linspace(-0.02, 0.02, 4001, dtype=torch.float64).unsqueeze(1)
        x = torch.cat([x, torch.minimum(torch.maximum(fine, lower.double()), upper.double())])
        gap = sigma * (f(x) - (slope * x + bias))
        tol = 4 * torch.finfo(torch.float64).eps * (1 + (slope * x).abs())
        assert (gap >= -tol).all(), "lower line above f" if sigma > 0 else "upper line below f"


def _at_mid(slope, bias, l, u):
    return slope * (l + u) / 2 + bias


def test_recorded_cases_are_tighter_than_the_valley_lines():
    # sin on [0.5, 9] (two peaks inside): the valley lines' upper line was slope -0.0079, bias
    # 2.9372; the envelope's is flat at 1. sin on [-6, 1]: the lower line was slope -0.8011,
    # bias -4.5274 (-2.5246 at the midpoint)
    lower = torch.tensor([0.5, -6.0], dtype=torch.float64)
    upper = torch.tensor([9.0, 1.0], dtype=torch.float64)
    ls, lb, us, ub = lines("sin", lower, upper)
    assert abs(us[0].item()) < 1e-9 and 1.0 <= ub[0].item() < 1.0 + 1e-12
    assert _at_mid(ls[1], lb[1], -6.0, 1.0).item() > _at_mid(-0.8011, -4.5274, -6.0, 1.0) + 1.5


def test_wide_intervals_beat_the_interval_constants():
    # over three inflections the lines were the constants -1, 1; cos on [-1, 8.5] has one
    # trough inside (pi) and the midpoint 3.75 right of it: the lower line rises to (8.5,
    # cos 8.5); sin on [-4, 4.5] the same for its peak
    lower = torch.tensor([-1.0], dtype=torch.float64)
    upper = torch.tensor([8.5], dtype=torch.float64)
    ls, lb, us, ub = lines("cos", lower, upper)
    assert ls.item() > 0.05 and _at_mid(ls, lb, -1.0, 8.5).item() > -0.98
    assert ub.item() + us.item() * 8.5 <= 1.0 + 1e-12          # below 1 at the right end
    ls, lb, us, ub = lines("sin", torch.tensor([-4.0], dtype=torch.float64),
                           torch.tensor([4.5], dtype=torch.float64))
    assert _at_mid(us, ub, -4.0, 4.5).item() < 0.95
    # the exact bias: the line touches f (within rounding) somewhere on the interval
    x = torch.linspace(-4.0, 4.5, 200001, dtype=torch.float64)
    assert (torch.sin(x) - (ls * x + lb)).min().item() < 1e-8
    assert ((us * x + ub) - torch.sin(x)).min().item() < 1e-8
