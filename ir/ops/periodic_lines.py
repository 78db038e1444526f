"""Lines of sin and cos over intervals wider than two of their convex/concave pieces.

On such an interval [l, u] (it holds at least one trough and one peak) each line is the
supporting line, at the midpoint m, of the convex envelope of f on [l, u] (the mirror for the
upper line): flat between the first and the last trough, else the tangent at m where f itself
is the envelope there, else the line from the end (l, f(l)) tangent to the first trough's
convex piece (the mirror at u). Only the slope comes from that geometry; the bias is the
exact minimum of g(x) = f(x) - s x over [l, u], taken over l, u and g's local minima, which
for f = cos(x - q) lie at x = q + pi + asin(s) + 2k pi with g linear in k, so only the first
and the last such point inside [l, u] can be the minimum. A rounded critical point misses the
true one by a few ulps of x, where g is flat: g's value moves by their square (g'' = f'' is
at most 1), far inside the slack ``Bound`` adds.
"""
from __future__ import annotations

import math

import torch

from lirpac.ir.ops.relaxation import Bound, Curve, Lines, _bisect, _midpoint


def _wide_lower(curve: Curve, l, u, q: float):
    """Slope and bias of a lower line of f(x) = cos(x - q) (``curve``) on [l, u], an interval
    holding a trough q + pi + 2k pi."""
    f, df = curve.f, curve.df
    two_pi = 2 * math.pi
    base = q + math.pi
    first = base + two_pi * torch.ceil((l - base) / two_pi)     # first trough >= l
    last = base + two_pi * torch.floor((u - base) / two_pi)     # last trough <= u
    m = _midpoint(l, u)
    # left of the first trough: from (l, f(l)) tangent to its convex piece [first - pi/2,
    # first] (l inside that piece: f is its own envelope from l on)
    left_edge = torch.maximum(first - math.pi / 2, l)
    # (the sound ends of the bisections: tangents that stay below f at the far end)
    _, d_left = _bisect(lambda x: f(x) + df(x) * (l - x) <= f(l), left_edge, first)
    d_left = torch.where(l >= first - math.pi / 2, l, d_left)
    right_edge = torch.minimum(last + math.pi / 2, u)
    d_right, _ = _bisect(lambda x: f(x) + df(x) * (u - x) > f(u), last, right_edge)
    d_right = torch.where(u <= last + math.pi / 2, u, d_right)
    at = torch.where(m < first, torch.maximum(d_left, m),
                     torch.where(m > last, torch.minimum(d_right, m), m))
    slope = torch.where((m >= first) & (m <= last), torch.zeros_like(m), df(at))
    slope = slope.clamp(-1.0, 1.0)
    # exact minimum of f(x) - slope x: ends and the extreme critical points inside
    shift = base + torch.asin(slope)
    k_lo = torch.ceil((l - shift) / two_pi)
    k_hi = torch.floor((u - shift) / two_pi)
    bound = Bound(curve, slope, False)
    bound.point(l, f(l))
    bound.point(u, f(u))
    for k in (k_lo, k_hi):
        x = torch.minimum(torch.maximum(shift + two_pi * k, l), u)
        bound.point(x, f(x))
    return slope, bound.bias()


def wide_periodic_lines(curve: Curve, l, u, peak: float) -> Lines:
    """Lines of f(x) = cos(x - peak) (sin: peak = pi/2) on intervals holding a peak and a
    trough; the upper line is the lower line of -f = cos(x - peak - pi), negated."""
    ls, lb = _wide_lower(curve, l, u, peak)
    us, ub = _wide_lower(curve.scaled(-1.0), l, u, peak + math.pi)
    return Lines(ls, lb, -us, -ub)


def less_area(a: Lines, b: Lines, l, u, where) -> Lines:
    """Per side, the line of ``b`` where ``where`` holds and it leaves less area between
    itself and f on [l, u] than ``a``'s (a line's mean over [l, u] is its value at the
    midpoint), else ``a``'s."""
    m = _midpoint(l, u)
    lower = where & (b.l_slope * m + b.l_bias > a.l_slope * m + a.l_bias)
    upper = where & (b.u_slope * m + b.u_bias < a.u_slope * m + a.u_bias)
    return Lines(torch.where(lower, b.l_slope, a.l_slope), torch.where(lower, b.l_bias, a.l_bias),
                 torch.where(upper, b.u_slope, a.u_slope), torch.where(upper, b.u_bias, a.u_bias))
