"""Sound linear relaxations of scalar functions on intervals, computed in floating point.

A relaxation of f on [l, u] is a pair of lines ``l_slope*x + l_bias <= f(x) <= u_slope*x + u_bias``
for every x in [l, u] (elementwise over tensors). Here the *slopes* are chosen for tightness
(chords, midpoint tangents, CROWN's tangent through the far endpoint for S-shaped functions,
Zhang et al. 2018), and each *bias* is then derived rigorously from its slope: the bias of an
upper line of slope s bounds g(x) = f(x) - s*x from above on [l, u], piece by piece from f's
convexity (where f is convex, so is g, and its maximum is at the piece's ends; where f is
concave, g lies below its tangent at any point p). A slope that bisection found only roughly
therefore costs tightness, never soundness. The bound is finally moved outward by
``SLACK_ULPS`` units in the last place of the magnitudes it was computed from, which absorbs the
rounding of f, f' and the arithmetic (f and f' must be accurate to a few ulps, see ``Curve``).

Where a line cannot be computed (infinite inputs, overflow, poles) ``finish`` falls back to the
constant lines given by the op's interval (IBP) bounds, so no relaxation is ever NaN; an
unbounded side is a slope-0 line whose bias is the largest float.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from lirpac.ir.scalar import scalar

SLACK_ULPS = 8.0
BISECT_STEPS = 24
HALF_TYPES = (torch.float16, torch.bfloat16)


class Lines(NamedTuple):
    l_slope: torch.Tensor
    l_bias: torch.Tensor
    u_slope: torch.Tensor
    u_bias: torch.Tensor


def slack(scale: torch.Tensor) -> torch.Tensor:
    """SLACK_ULPS ulps of ``scale`` (plus the smallest normal, for underflow)."""
    info = torch.finfo(scale.dtype)
    return torch.add(scalar(info.tiny, scale), scale, alpha=SLACK_ULPS * info.eps)


def pad_down(value: torch.Tensor, scale=None) -> torch.Tensor:
    """value moved down by slack (an infinite value stays as it is)."""
    moved = value - slack(value.abs() if scale is None else scale)
    return torch.where(torch.isinf(value), value, moved)


def pad_up(value: torch.Tensor, scale=None) -> torch.Tensor:
    moved = value + slack(value.abs() if scale is None else scale)
    return torch.where(torch.isinf(value), value, moved)


class Curve:
    """A scalar function for relaxation: ``f`` and ``df`` accurate to a few ulps (``df`` a
    subgradient at kinks, see ``kink_slope``). ``dmag(x)`` bounds the magnitude of the terms
    ``df`` sums (its rounding scale) where that exceeds |df| (cancellation, e.g. GELU' = Phi +
    x*phi); ``fmag(x)`` likewise for ``f`` where it rounds an argument inside (erfc(x/sqrt 2):
    the error then scales with |x f'(x)|, not |f|)."""

    def __init__(self, f, df, dmag=None, fmag=None):
        self.f, self.df, self.dmag, self.fmag = f, df, dmag, fmag

    def scaled(self, sigma) -> "Curve":
        """sigma * f for a sign sigma (a float or a tensor of +-1)."""
        f, df = self.f, self.df
        return Curve(lambda x: sigma * f(x), lambda x: sigma * df(x), self.dmag, self.fmag)


def flip(lines: Lines, sigma) -> Lines:
    """Lines of f from lines of sigma*f (sigma = -1 swaps and negates the two sides)."""
    ls, lb, us, ub = lines
    if isinstance(sigma, (int, float)):
        return lines if sigma > 0 else Lines(-us, -ub, -ls, -lb)
    pos = sigma > 0
    return Lines(torch.where(pos, ls, -us), torch.where(pos, lb, -ub),
                 torch.where(pos, us, -ls), torch.where(pos, ub, -lb))


def select(mask: torch.Tensor, a: Lines, b: Lines) -> Lines:
    return Lines(*(torch.where(mask, x, y) for x, y in zip(a, b)))


class Bound:
    """Running bound of g(x) = f(x) - slope*x over [l, u]: the max (upper line) or the min
    (lower line) over candidates, each with the magnitude scale its rounding error is ulps of."""

    def __init__(self, curve: Curve, slope: torch.Tensor, upper: bool):
        self.curve, self.slope, self.upper = curve, slope, upper
        self.value = self.scale = None

    def _cond(self, x):
        return 0 if self.curve.fmag is None else self.curve.fmag(x)

    def _add(self, value, scale):
        if self.value is None:
            self.value, self.scale = value, scale
            return
        pick = torch.maximum if self.upper else torch.minimum
        self.value = pick(self.value, value)
        self.scale = torch.maximum(self.scale, scale)

    def point(self, x, fx):
        """g(x) at an end of a piece on which f is convex (upper) / concave (lower), or a kink."""
        sx = self.slope * x
        self._add(fx - sx, fx.abs() + sx.abs() + self._cond(x))

    def tangent(self, p, fp, dfp, a, b):
        """Bound on a piece [a, b] containing p where f is concave (upper) / convex (lower):
        g(x) <= g(p) + g'(p)(x - p) (resp. >=), extreme at x = a or x = b."""
        t = dfp - self.slope
        ta, tb = t * (a - p), t * (b - p)
        corr = torch.maximum(ta, tb) if self.upper else torch.minimum(ta, tb)
        sp = self.slope * p
        dist = torch.maximum((a - p).abs(), (b - p).abs())
        dmag = self.curve.dmag(p) if self.curve.dmag is not None else dfp.abs()
        scale = fp.abs() + sp.abs() + (dmag + self.slope.abs()) * dist + self._cond(p)
        self._add(fp - sp + corr, scale)

    def bias(self) -> torch.Tensor:
        pad = slack(self.scale + self.value.abs())
        return self.value + pad if self.upper else self.value - pad


def _midpoint(l, u):
    return 0.5 * l + 0.5 * u          # no overflow near the largest floats


def _chord(fl, fu, l, u, fallback):
    """Slope of the chord, or ``fallback`` where l and u are too close for it to be more than
    rounding noise (the bias stays sound for any slope)."""
    width = u - l
    far = width > 4 * torch.finfo(l.dtype).eps * torch.maximum(l.abs(), u.abs())
    return torch.where(far, (fu - fl) / torch.where(far, width, torch.ones_like(width)), fallback)


def _bisect(pred, lo, hi, steps=BISECT_STEPS):
    """Vectorised bisection keeping pred(hi) true and pred(lo) false; returns (lo, hi)."""
    with torch.no_grad():
        lo, hi = lo.detach().clone(), hi.detach().clone()
        for _ in range(steps):
            mid = _midpoint(lo, hi)
            go = pred(mid)
            hi = torch.where(go, mid, hi)
            lo = torch.where(go, lo, mid)
    return lo, hi


# -- shapes of f on [l, u] -------------------------------------------------------------------

def convex_lines(curve: Curve, l, u, p=None) -> Lines:
    """f convex on [l, u]: the upper line is the chord, the lower the tangent at the midpoint
    (or at ``p``), which minimises the area between line and f among tangents."""
    p = _midpoint(l, u) if p is None else p
    fl, fu, fp, dfp = curve.f(l), curve.f(u), curve.f(p), curve.df(p)
    su = _chord(fl, fu, l, u, dfp)
    up = Bound(curve, su, True)
    up.point(l, fl)
    up.point(u, fu)
    lo = Bound(curve, dfp, False)
    lo.tangent(p, fp, dfp, l, u)
    return Lines(dfp, lo.bias(), su, up.bias())


def concave_lines(curve: Curve, l, u, p=None) -> Lines:
    return flip(convex_lines(curve.scaled(-1.0), l, u, p), -1.0)


def s_lower(curve: Curve, l, u, c, fl, fu, fc, dfl, k) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower line of an f convex on [l, c] whose lower bound on [c, u] is at c or u (concave or
    linear there): the chord if it stays below f (f'(l) >= chord slope), else the tangent at
    p = min(d, midpoint), d in [l, c] the point whose tangent passes through (u, f(u)) (by
    bisection, kept on the sound side). Every tangent at a point of [l, d] stays below f(u),
    and among them the one at min(d, midpoint) leaves the least area under f: the line's
    mean over [l, u] is its value at the midpoint m, whose derivative in p is f''(p) (m - p),
    positive while p < m (auto_LiRPA's "smoothness enhancement" picks the same point)."""
    f, df = curve.f, curve.df
    direct = dfl >= k
    d = l
    if not bool(direct.all()):
        d, _ = _bisect(lambda x: f(x) + df(x) * (u - x) > fu, l, c)
        d = torch.minimum(d, torch.maximum(_midpoint(l, u), l))
    p = torch.where(direct, l, d)
    fp, dfp = f(p), df(p)
    slope = torch.where(direct, k, dfp)
    lo = Bound(curve, slope, False)
    lo.tangent(p, fp, dfp, l, c)
    lo.point(c, fc)
    lo.point(u, fu)
    return slope, lo.bias()


def s_lines(curve: Curve, l, u, c) -> Lines:
    """f convex on [l, c] and concave on [c, u] (sigmoid-like around its inflection c): each
    line is the chord when that stays on its side of f, else CROWN's tangent through the far
    endpoint (Zhang et al. 2018, sec. 3.3), moved to the midpoint where that is sound and
    leaves less area (see ``s_lower``; the upper line mirrors it)."""
    f, df = curve.f, curve.df
    c = torch.minimum(torch.maximum(c, l), u)
    fl, fu, fc, dfl, dfu = f(l), f(u), f(c), df(l), df(u)
    k = _chord(fl, fu, l, u, df(c))
    # upper: chord if f'(u) >= k, else tangent at d in [c, u] passing over (l, f(l))
    direct = k <= dfu
    d = u
    if not bool(direct.all()):
        _, d = _bisect(lambda x: f(x) + df(x) * (l - x) >= fl, c, u)
        d = torch.maximum(d, torch.minimum(_midpoint(l, u), u))
    p = torch.where(direct, u, d)
    fp, dfp = f(p), df(p)
    su = torch.where(direct, k, dfp)
    up = Bound(curve, su, True)
    up.point(l, fl)
    up.point(c, fc)
    up.tangent(p, fp, dfp, c, u)
    sl, bl = s_lower(curve, l, u, c, fl, fu, fc, dfl, k)
    return Lines(sl, bl, su, up.bias())


def valley_lines(curve: Curve, l, u, c1, c2) -> Lines:
    """f concave on [l, c1], convex on [c1, c2], concave on [c2, u] (GELU, SiLU over their
    dip; cuts are floats or per-element tensors): the upper line has the chord's slope, the
    lower one is tangent at the midpoint clamped into the convex piece; both biases account for
    every piece."""
    f, df = curve.f, curve.df
    c1 = torch.minimum(torch.maximum(torch.as_tensor(c1, dtype=l.dtype, device=l.device), l), u)
    c2 = torch.minimum(torch.maximum(torch.as_tensor(c2, dtype=l.dtype, device=l.device), c1), u)
    fl, fu, f1, f2, dfl, dfu = f(l), f(u), f(c1), f(c2), df(l), df(u)
    k = _chord(fl, fu, l, u, df(_midpoint(l, u)))
    up = Bound(curve, k, True)
    up.tangent(l, fl, dfl, l, c1)
    up.point(c1, f1)
    up.point(c2, f2)
    up.tangent(u, fu, dfu, c2, u)
    p = torch.minimum(torch.maximum(_midpoint(l, u), c1), c2)
    fp, dfp = f(p), df(p)
    lo = Bound(curve, dfp, False)
    for x, fx in ((l, fl), (c1, f1), (c2, f2), (u, fu)):
        lo.point(x, fx)
    lo.tangent(p, fp, dfp, c1, c2)
    return Lines(dfp, lo.bias(), k, up.bias())


def alternating_lines(curve: Curve, l, u, convex: torch.Tensor, c1, c2) -> Lines:
    """Relax an f whose convexity flips at c1 < c2 (per-element tensors, +inf where there is
    none), the first two such points right of l, and at no other point of [l, u]; ``convex``
    tells f's shape left of c1. Per element the interval lies in one piece (convex_lines,
    mirrored for concave), straddles one flip (s_lines, mirrored) or two (valley_lines)."""
    sigma = torch.where(convex, 1.0, -1.0).to(l.dtype)
    lines = flip(convex_lines(curve.scaled(sigma), l, u), sigma)
    span = (u > c1).long() + (u > c2).long()
    if bool((span == 1).any()):
        lines = select(span == 1, flip(s_lines(curve.scaled(sigma), l, u, c1), sigma), lines)
    if bool((span == 2).any()):
        lines = select(span == 2, flip(valley_lines(curve.scaled(-sigma), l, u, c1, c2), -sigma),
                       lines)
    return lines


def inflection_lines(curve: Curve, l, u, cuts: tuple[float, ...] = (),
                     convex_first: bool = True) -> Lines:
    """Relax an f whose convexity alternates at the fixed points ``cuts`` (at most two),
    starting convex (or concave) left of the first."""
    if len(cuts) > 2:
        raise ValueError("inflection_lines handles at most two cuts")
    table = torch.tensor(tuple(cuts) + (math.inf, math.inf), dtype=l.dtype, device=l.device)
    piece = sum((l >= c).long() for c in cuts) if cuts else torch.zeros_like(l, dtype=torch.long)
    convex = (piece % 2 == 0) == convex_first
    return alternating_lines(curve, l, u, convex, torch.take(table, piece),
                             torch.take(table, piece + 1))


def kinked_lines(f, l, u, kinks, l_slope, u_slope) -> Lines:
    """Lines of the given slopes for a continuous piecewise-linear f with the given kinks
    (floats or tensors): f(x) - s*x is then extreme at l, u or a kink inside [l, u], so its
    extremes over those points, moved out by slack, are sound biases for any slopes."""
    points = [l, u] + [torch.minimum(torch.maximum(torch.as_tensor(k, dtype=l.dtype,
                                                                   device=l.device), l), u)
                       for k in kinks]
    curve = Curve(f, None)
    out = []
    for slope, upper in ((l_slope, False), (u_slope, True)):
        bound = Bound(curve, slope, upper)
        for x in points:
            bound.point(x, f(x))
        out += [slope, bound.bias()]
    return Lines(*out)


def step_lines(l, u, left, at_zero, right, l_slope, u_slope) -> Lines:
    """Lines of the given slopes for the step f = left (x < 0), at_zero (x = 0), right (x > 0):
    f(x) - s*x over [l, u] is extreme at l, u, or next to 0 (limits from either side) where
    those lie in [l, u]; the others are replaced by the always-valid (l, f(l))."""
    zero = torch.zeros_like(l)
    f_l = torch.where(l < 0, left, torch.where(l > 0, right, at_zero))
    f_u = torch.where(u < 0, left, torch.where(u > 0, right, at_zero))
    inside = (l <= 0) & (u >= 0)
    candidates = [(l, f_l), (u, f_u)]
    for level, valid in ((left, inside & (l < 0)), (at_zero, inside), (right, inside & (u > 0))):
        candidates.append((torch.where(valid, zero, l), torch.where(valid, level + zero, f_l)))
    curve = Curve(None, None)
    out = []
    for slope, upper in ((l_slope, False), (u_slope, True)):
        bound = Bound(curve, slope, upper)
        for x, fx in candidates:
            bound.point(x, fx)
        out += [slope, bound.bias()]
    return Lines(*out)


# -- finishing: fallbacks, dtypes ------------------------------------------------------------

def finish(lines: Lines, l, u, lo, hi) -> Lines:
    """Replace every line that came out non-finite (or whose input bound is infinite) by the
    constant line at the interval bound ``lo`` / ``hi`` (moved out by a few ulps, since those
    are f's values as torch rounds them)."""
    ok = torch.isfinite(l) & torch.isfinite(u)
    ls, lb, us, ub = lines
    okl = ok & torch.isfinite(ls) & torch.isfinite(lb)
    oku = ok & torch.isfinite(us) & torch.isfinite(ub)
    zero = torch.zeros_like(l)
    # an unbounded side stays infinite (the largest float would claim f <= 3.4e38 where f's
    # real value may be e^117: the model computes softmax without that exp); the backward
    # step's bias products take 0 * inf = 0 (common._relaxed_step). An end that overflowed
    # inwards (exp(l) = inf for a finite f) is a valid bound at the largest float.
    big = torch.finfo(lb.dtype).max
    lo = pad_down(lo).to(lb.dtype).nan_to_num(nan=-math.inf, posinf=big, neginf=-math.inf)
    hi = pad_up(hi).to(ub.dtype).nan_to_num(nan=math.inf, posinf=math.inf, neginf=-big)
    return Lines(torch.where(okl, ls, zero), torch.where(okl, lb, lo),
                 torch.where(oku, us, zero), torch.where(oku, ub, hi))


def round_out(x: torch.Tensor, dtype, up: bool) -> torch.Tensor:
    """Cast to ``dtype`` rounding toward +inf (``up``) or -inf."""
    if x.dtype == dtype:
        return x
    y = x.to(dtype)
    back = y.to(x.dtype)
    wrong = back < x if up else back > x
    toward = torch.full_like(y, math.inf if up else -math.inf)
    return torch.where(wrong, torch.nextafter(y, toward), y)


def narrow(lines: Lines, l, u, dtype) -> Lines:
    """Lines computed in a wider dtype, cast to ``dtype`` and still sound on [l, u]: the bias
    absorbs the rounding of the slope (|s - s'| max(|l|, |u|)) and is rounded outward."""
    ls, lb, us, ub = lines
    reach = torch.maximum(l.abs(), u.abs())
    out = []
    for slope, bias, up in ((ls, lb, False), (us, ub, True)):
        s = slope.to(dtype)
        shift = (slope - s.to(slope.dtype)).abs() * reach
        b = bias + shift if up else bias - shift
        b = pad_up(b, bias.abs() + shift) if up else pad_down(b, bias.abs() + shift)
        out += [s, round_out(b, dtype, up)]
    return Lines(*out)


def sound_relax(relax: Callable[..., Lines], ibp: Callable, wide=None,
                in_dtype: bool = False) -> Callable:
    """Wrap ``relax(l, u, *consts, **attrs) -> Lines`` for an op: compute in ``wide`` (by
    default float64 for float32 and half types, so the slack is negligible and the lines lose
    only their own rounding to the narrow type, as tight as unpadded float32 lines to a few
    ulps), fall back to the interval bounds where a line is not finite, cast back. ``consts``
    are the op's constant tensor inputs (clamp's min, say). ``in_dtype``: compute in the
    input's own dtype (piecewise-linear ops, whose exact lines a cast would blur).

    Where every input and line is finite (the common case, one reduction tells) the lines are
    returned as computed. Elsewhere a line that fell back was computed through infinities
    (exp's chord to exp(u) = inf has an infinite slope), whose gradient is inf * 0 = NaN even
    though ``finish`` drops the line: each side's line is then recomputed with its inputs cut
    from the autograd graph where that side falls back (``_cut``), so NaN never reaches them
    and certified training keeps finite gradients (the fallback's own IBP bounds still carry
    theirs)."""
    from lirpac.ir.opdef import Interval
    from lirpac.ir.ops.common import all_finite

    def run(lower, upper, *consts, **attrs):
        dtype = lower.dtype
        work = wide or (torch.float64 if dtype in HALF_TYPES + (torch.float32,) else dtype)
        work = dtype if in_dtype and dtype not in HALF_TYPES else work
        l, u = lower.to(work), upper.to(work)
        wconsts = tuple(c.to(work) for c in consts)
        lines = relax(l, u, *wconsts, **attrs)
        narrowed = lines if work == dtype else narrow(lines, l, u, dtype)
        if all_finite(l, u, *lines, *narrowed):
            return tuple(narrowed)       # finish would keep every line
        reach = l, u
        if torch.is_grad_enabled() and any(t.requires_grad for t in (lower, upper, *consts)):
            lines, reach = _cut(relax, lines, narrowed, lower, upper, consts, work, attrs)
        lines = finish(lines, l, u, *ibp(Interval(l, u), *wconsts, **attrs))
        if work != dtype:          # (an infinite end's line falls back: its reach is moot)
            reach = [t.nan_to_num(posinf=0.0, neginf=0.0) for t in reach]
            lines = finish(narrow(lines, *reach, dtype), lower, upper,
                           *ibp(Interval(lower, upper), *consts, **attrs))
        return tuple(lines)
    return run


def _cut(relax, lines: Lines, narrowed: Lines, lower, upper, consts, work, attrs):
    """The lines recomputed per side, from inputs detached where that side's line (or its
    narrowed cast, or an input bound) is not finite: the same values, no NaN gradients; and
    the input bounds for ``narrow``'s reach, detached where either side is."""
    ok = torch.isfinite(lower) & torch.isfinite(upper)
    out, both = [], ok
    for side in (slice(0, 2), slice(2, 4)):
        keep = ok
        for t in lines[side] + narrowed[side]:
            keep = keep & torch.isfinite(t)
        both = both & keep

        def cut(t):
            return torch.where(keep, t, t.detach()) if t.requires_grad else t
        l, u = cut(lower).to(work), cut(upper).to(work)
        out += list(relax(l, u, *(cut(c).to(work) for c in consts), **attrs))[side]
    reach = [torch.where(both, t, t.detach()).to(work) for t in (lower, upper)]
    return Lines(*out), reach
