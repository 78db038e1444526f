"""S-shaped lines across the inflection: the tangent moves to the interval's midpoint where
that is sound (the midpoint lies between the far-endpoint tangent point and the near end) and
leaves less area; closed-form checks of the chosen line, and soundness on dense grids."""
import math

import torch
from hypothesis import given, settings, strategies as st

from lirpac.ir.opdef import Interval, get_op

SIGMOID_D = lambda x: torch.sigmoid(x) * torch.sigmoid(-x)      # noqa: E731
TANH_D = lambda x: torch.cosh(x).pow(-2)                        # noqa: E731


def lines(name, lower, upper, **attrs):
    n = lower.shape[0]
    one = torch.ones(n, 1, 1, dtype=lower.dtype)
    coeffs, lb, ub = get_op(name).backward(one, one, Interval(lower.reshape(n, 1),
                                                              upper.reshape(n, 1)), **attrs)
    zero = torch.zeros(n, 1, dtype=lower.dtype)      # a bias may come back as the int 0
    parts = (coeffs[0][0].reshape(n, 1), lb, coeffs[0][1].reshape(n, 1), ub)
    return tuple((zero + t).reshape(n) for t in parts)


def far_tangent_point(f, df, l, u, lower_side: bool):
    """CROWN's tangent point through the far end (float64 bisection, 200 steps)."""
    lo, hi = (l, 0.0) if lower_side else (0.0, u)
    end = u if lower_side else l
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        t = f(mid) + df(mid) * (end - mid) - f(end)
        # lower side: t <= 0 (sound) moves right; upper side: t >= 0 (sound) moves left
        if (t <= 0) if lower_side else (t < 0):
            lo = mid
        else:
            hi = mid
    return lo if lower_side else hi


def _f64(fn):
    return lambda x: fn(torch.tensor(x, dtype=torch.float64)).item()


def test_lower_line_is_the_midpoint_tangent_and_leaves_less_area_than_the_far_one():
    # sigmoid on [-3, 1]: the midpoint -1 lies left of the tangent point through (1, f(1))
    f, df = _f64(torch.sigmoid), _f64(SIGMOID_D)
    l, u = -3.0, 1.0
    d = far_tangent_point(f, df, l, u, lower_side=True)
    m = 0.5 * (l + u)
    assert m < d < 0
    ls, lb, _, _ = lines("sigmoid", torch.tensor([l], dtype=torch.float64),
                         torch.tensor([u], dtype=torch.float64))
    assert math.isclose(ls.item(), df(m), rel_tol=1e-12)
    assert math.isclose(lb.item(), f(m) - df(m) * m, rel_tol=1e-9, abs_tol=1e-12)
    # mean over [l, u] of a line is its value at m: the new one is higher (less area)
    old_at_m = f(d) + df(d) * (m - d)
    assert ls.item() * m + lb.item() > old_at_m + 1e-3


def test_upper_line_mirrors_it():
    f, df = _f64(torch.tanh), _f64(TANH_D)
    l, u = -0.5, 2.5
    d = far_tangent_point(f, df, l, u, lower_side=False)
    m = 0.5 * (l + u)
    assert 0 < d < m
    _, _, us, ub = lines("tanh", torch.tensor([l], dtype=torch.float64),
                         torch.tensor([u], dtype=torch.float64))
    assert math.isclose(us.item(), df(m), rel_tol=1e-12)
    old_at_m = f(d) + df(d) * (m - d)
    assert us.item() * m + ub.item() < old_at_m - 1e-3


def test_far_tangent_kept_where_the_midpoint_is_unsound():
    # sigmoid on [-2, 4]: the midpoint 1 is right of the inflection; the lower line stays
    # CROWN's tangent through (4, f(4)), which passes it within rounding
    f, df = _f64(torch.sigmoid), _f64(SIGMOID_D)
    l, u = -2.0, 4.0
    d = far_tangent_point(f, df, l, u, lower_side=True)
    ls, lb, _, _ = lines("sigmoid", torch.tensor([l], dtype=torch.float64),
                         torch.tensor([u], dtype=torch.float64))
    assert l < d < 0
    assert math.isclose(ls.item(), df(d), rel_tol=1e-5)
    assert 0 <= f(u) - (ls.item() * u + lb.item()) < 1e-6


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(["sigmoid", "tanh", "atan", "erf", "sin", "cos", "pow", "sinh"]),
       centre=st.floats(-3, 3), radius=st.floats(0.01, 6),
       skew=st.floats(-1, 1), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_lines_across_the_inflection_are_sound(name, centre, radius, skew, dtype):
    """Intervals around an inflection (0, or pi/2 for cos), lopsided either way so both the
    midpoint and the far tangent get picked; f in float64 on a dense grid, corners included."""
    attrs = {"exponent": 3} if name == "pow" else {}
    c = math.pi / 2 if name == "cos" else 0.0
    g = torch.Generator().manual_seed(int(1e6 * (centre + radius)) % 1000)
    shift = centre * torch.rand(64, generator=g, dtype=torch.float64)
    lower = c + shift - radius * (1 + skew * torch.rand(64, generator=g, dtype=torch.float64))
    upper = c + shift + radius * (1 - skew * torch.rand(64, generator=g, dtype=torch.float64))
    lower, upper = torch.minimum(lower, upper).to(dtype), torch.maximum(lower, upper).to(dtype)
    ls, lb, us, ub = (t.double() for t in lines(name, lower, upper, **attrs))
    t = torch.linspace(0, 1, 401, dtype=torch.float64).unsqueeze(1)
    x = (lower.double() + (upper.double() - lower.double()) * t)
    x = torch.cat([x, lower.double().unsqueeze(0), upper.double().unsqueeze(0)])
    fx = get_op(name).forward(x, **attrs)
    tol = 16 * torch.finfo(torch.float64).eps * (1 + fx.abs() + (ls * x).abs() + (us * x).abs())
    assert (ls * x + lb <= fx + tol).all(), "lower line above f"
    assert (us * x + ub >= fx - tol).all(), "upper line below f"
