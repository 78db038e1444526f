"""Elementary functions (exp, log, powers, roots, sin, cos) and steps (sign, heaviside,
floor, round): each its function, IBP rule and a sound linear relaxation.

Convex pieces get the chord above and the midpoint tangent below (concave: mirrored), with
biases derived rigorously in ir/ops/relaxation.py. Functions with a pole or a domain edge
(log, reciprocal, rsqrt, sqrt, negative powers) have IBP everywhere but no linear bound on an
interval that reaches the pole or leaves the domain: their relaxation raises there.
"""
from __future__ import annotations

import math

import torch

from lirpac.errors import UnsupportedOperationError
from lirpac.ir.opdef import Interval, aten_lowering
from lirpac.ir.scalar import scalar
from lirpac.ir.ops.activations import elementwise_with_constants, padded, smooth
from lirpac.ir.ops.relaxation import (Curve, Lines, alternating_lines, concave_lines,
                                      convex_lines, flip, inflection_lines, pad_down, pad_up,
                                      select, step_lines)
from lirpac.ir.ops.periodic_lines import less_area, wide_periodic_lines


def _require(ok: torch.Tensor, op: str, what: str):
    if not bool(ok.all()):
        raise UnsupportedOperationError(
            f"{op}: an input interval {what}, where no linear bound exists. Use method='ibp' "
            "(IBP handles it), or a smaller perturbation / tighter intermediate bounds")


def _convex(curve):
    return lambda lower, upper, **_: convex_lines(curve, lower, upper)


def _concave(curve):
    return lambda lower, upper, **_: concave_lines(curve, lower, upper)


def _tangent_at(curve, convex=True):
    """The relaxation with its tangent at p (alpha-CROWN's parameter)."""
    lines = convex_lines if convex else concave_lines
    return lambda lower, upper, p: lines(curve, lower, upper, p)


def _exp(x):
    """e^x with the same values as torch.exp (inf past the dtype's range), whose gradient is 0
    rather than NaN where it overflows: a bound there (the upper end of a wide score interval
    in a softmax) times a zero gradient from later ops (1 / inf) would be inf * 0 = NaN, and
    certified training would take it for a step."""
    if not x.requires_grad:
        return torch.exp(x)
    over = torch.exp(x.detach()) == math.inf
    if not over.any():
        return torch.exp(x)
    return torch.where(over, scalar(math.inf, x), torch.exp(x.masked_fill(over, 0.0)))


EXP = Curve(_exp, _exp)


def _exp_tangent_share(lower, upper):
    """Where exp's lower tangent touches [l, u], as a share of its width: the midpoint, or
    l + 1 if that is nearer l. A tangent at p is >= 0 on [p - 1, inf), so it then stays >= 0
    on all of [l, u]: the midpoint's tangent of a wide interval dips far below 0 at l, and a
    sum of exponentials (softmax's denominator) would get a lower bound far under the sum of
    exp(l), which IBP already gives (the same choice as auto_LiRPA's exp)."""
    width = upper - lower
    return torch.where(width > 2, 1 / width.clamp(min=2), torch.full_like(width, 0.5))


def _exp_relax(lower, upper, **_):
    return convex_lines(EXP, lower, upper, lower + _exp_tangent_share(lower, upper) * (upper - lower))


smooth("exp", _exp, _exp_relax, aten=("exp.default", "exp_.default"),
       doc="e^x; convex: chord above, tangent below at the midpoint or l + 1 (nonnegative)",
       tangent_at=_tangent_at(EXP), tangent_start=_exp_tangent_share, monotone=True)

EXPM1 = Curve(torch.expm1, torch.exp)
smooth("expm1", torch.expm1, _convex(EXPM1), aten=("expm1.default",), doc="e^x - 1; convex",
       tangent_at=_tangent_at(EXPM1), monotone=True)


def _log_ibp(fn):
    def ibp(x: Interval, **_) -> Interval:
        return Interval(fn(x.lower.clamp(min=0)), fn(x.upper))
    return ibp


def _positive_concave(curve, op, edge=0.0):
    def relax(lower, upper, p=None, **_):
        _require(lower > edge, op, f"reaches {edge} or below")
        return concave_lines(curve, lower, upper, p)
    return relax


for _name, _fn, _df, _doc in (
        ("log", torch.log, lambda x: 1 / x, "natural log; concave, x > 0"),
        ("log2", torch.log2, lambda x: 1 / (x * math.log(2)), "log base 2; concave, x > 0"),
        ("log10", torch.log10, lambda x: 1 / (x * math.log(10)), "log base 10; concave, x > 0")):
    _relax = _positive_concave(Curve(_fn, _df), _name)
    smooth(_name, _fn, _relax, ibp=_log_ibp(_fn), aten=(f"{_name}.default",), doc=_doc,
           tangent_at=_relax, needs_domain=True)

_LOG1P = Curve(torch.log1p, lambda x: 1 / (1 + x))
_relax = _positive_concave(_LOG1P, "log1p", -1.0)
smooth("log1p", torch.log1p, _relax,
       ibp=lambda x: Interval(torch.log1p(x.lower.clamp(min=-1)), torch.log1p(x.upper)),
       aten=("log1p.default",), doc="log(1 + x); concave, x > -1", tangent_at=_relax,
       needs_domain=True)


def _nonnegative(ibp, where=lambda **_: True):
    """IBP padded by a few ulps (``padded``), but never below 0 for an f that is >= 0 in
    floating point too (sqrt, even powers): a lower bound of -1e-38 would keep a later
    sqrt or log from relaxing at all."""
    ibp = padded(ibp)

    def run(x, **attrs) -> Interval:
        box = ibp(x, **attrs)
        return Interval(box.lower.clamp(min=0), box.upper) if where(**attrs) else box
    return run


def _zero_if_padded(lower: torch.Tensor) -> torch.Tensor:
    """``lower`` with the ends a few float32 smallest normals below 0 at 0: IBP rules pad an
    exact 0 (softplus or exp underflowing) by that much (in float32, also when relaxations
    then run in float64), which would keep sqrt from relaxing on an input that is >= 0 (a
    negative input is NaN in the model, which no bound holds either)."""
    tiny = 4 * torch.finfo(torch.float32).tiny
    return torch.where((lower < 0) & (lower >= -tiny), torch.zeros_like(lower), lower)


def _sqrt_relax(lower, upper, p=None):
    lower = _zero_if_padded(lower)
    _require(lower >= 0, "sqrt", "reaches below 0")
    return concave_lines(Curve(torch.sqrt, lambda x: 0.5 / torch.sqrt(x)), lower, upper, p)


smooth("sqrt", torch.sqrt, _sqrt_relax, ibp=_nonnegative(_log_ibp(torch.sqrt)), exact_ibp=True,
       aten=("sqrt.default",),
       doc="square root; concave, x >= 0", tangent_at=_sqrt_relax, needs_domain=True)


# -- powers: x^p for an integer p, or any real p on x >= 0 -------------------------------------

def _power(x, exponent):
    return torch.pow(x, exponent)


def _is_int(p) -> bool:
    return float(p) == int(p)


def pow_ibp(x: Interval, exponent) -> Interval:
    """Monotone pieces: even integer powers dip to 0 at 0; negative ones have a pole there
    (reached: unbounded); real powers are defined on x >= 0."""
    p = exponent
    l, u = x.lower, x.upper
    if not _is_int(p):
        l, u = l.clamp(min=0), u.clamp(min=0)
    fl, fu = _power(l, p), _power(u, p)
    low, high = torch.minimum(fl, fu), torch.maximum(fl, fu)
    straddle = (l <= 0) & (u >= 0)
    if _is_int(p) and int(p) % 2 == 0 and p > 0:
        low = torch.where(straddle, torch.zeros_like(low), low)
    if p < 0:
        high = torch.where(straddle, torch.full_like(high, math.inf), high)
        if not (_is_int(p) and int(p) % 2 == 0):
            low = torch.where(straddle & (l < 0), torch.full_like(low, -math.inf), low)
    return Interval(low, high)


def pow_relax(lower, upper, exponent, op="pow"):
    """Integer p: even p >= 2 convex; odd p >= 3 concave then convex (inflection at 0);
    p < 0 convex right of the pole at 0, and left of it convex (even p) or concave (odd).
    Real p on x >= 0: convex for p > 1 or p < 0, concave for 0 < p < 1."""
    p = exponent
    curve = Curve(lambda x: _power(x, p), lambda x: p * _power(x, p - 1))
    if p in (0, 1):
        one = torch.ones_like(lower)
        zero = torch.zeros_like(lower)
        return Lines(zero, one, zero, one) if p == 0 else Lines(one, zero, one, zero)
    if not _is_int(p):
        lower = _zero_if_padded(lower)
        _require(lower >= 0, "pow", "with a non-integer exponent reaches below 0")
        if p < 0:
            _require(lower > 0, "pow", "with a negative exponent reaches 0")
        return (concave_lines if 0 < p < 1 else convex_lines)(curve, lower, upper)
    n = int(p)
    if n >= 2:
        if n % 2 == 0:
            return convex_lines(curve, lower, upper)
        return inflection_lines(curve, lower, upper, (0.0,), convex_first=False)
    _require((lower > 0) | (upper < 0), op, "with a negative exponent reaches the pole at 0")
    sigma = torch.where((upper < 0) & torch.tensor(n % 2 == 1), -1.0, 1.0).to(lower.dtype)
    return flip(convex_lines(curve.scaled(sigma), lower, upper), sigma)


def _even(exponent) -> bool:
    return _is_int(exponent) and int(exponent) % 2 == 0


smooth("pow", _power, pow_relax, ibp=_nonnegative(pow_ibp, _even), exact_ibp=True,
       aten=("pow.Tensor_Scalar",),
       doc="x ** exponent (a scalar): integer powers anywhere, real ones on x >= 0",
       needs_domain=lambda exponent: exponent < 0 or not _is_int(exponent))


@aten_lowering("square.default")
def _square(lw, x):
    return lw.add("pow", [lw.value(x)], exponent=2)


def _reciprocal_relax(lower, upper):
    return pow_relax(lower, upper, -1, op="reciprocal")


smooth("reciprocal", torch.reciprocal, _reciprocal_relax,
       ibp=lambda x: pow_ibp(x, -1), aten=("reciprocal.default",),
       doc="1 / x; convex for x > 0, concave for x < 0, no linear bound across 0",
       needs_domain=True)


def _rsqrt_relax(lower, upper):
    _require(lower > 0, "rsqrt", "reaches 0 or below")
    return convex_lines(Curve(torch.rsqrt, lambda x: -0.5 * torch.rsqrt(x) / x), lower, upper)


smooth("rsqrt", torch.rsqrt, _rsqrt_relax,
       ibp=lambda x: Interval(torch.rsqrt(x.upper), torch.rsqrt(x.lower.clamp(min=0))),
       aten=("rsqrt.default",), doc="1 / sqrt(x); convex, x > 0", needs_domain=True)


# -- other smooth curves -----------------------------------------------------------------------

ERF = Curve(torch.erf, lambda x: 2 / math.sqrt(math.pi) * torch.exp(-x * x))
smooth("erf", torch.erf, lambda lower, upper: inflection_lines(ERF, lower, upper, (0.0,)),
       aten=("erf.default",), doc="error function; S-shaped, CROWN tangent/chord lines", monotone=True)

SINH = Curve(torch.sinh, torch.cosh)
smooth("sinh", torch.sinh,
       lambda lower, upper: inflection_lines(SINH, lower, upper, (0.0,), convex_first=False),
       aten=("sinh.default",), doc="sinh(x); concave for x < 0, convex for x > 0", monotone=True)

COSH = Curve(torch.cosh, torch.sinh)
smooth("cosh", torch.cosh, _convex(COSH),
       ibp=lambda x: Interval(torch.where((x.lower <= 0) & (x.upper >= 0), 1.0,
                                          torch.minimum(torch.cosh(x.lower), torch.cosh(x.upper))
                                          ).to(x.lower.dtype),
                              torch.maximum(torch.cosh(x.lower), torch.cosh(x.upper))),
       aten=("cosh.default",), doc="cosh(x); convex")


# -- sin, cos: convexity flips every pi --------------------------------------------------------

# beyond this |x| a period spans few floats; bounds fall back to [-1, 1]
_PERIODIC_REACH = 1e5


def _periodic(fn, peak: float):
    """(ibp, relax) for fn = sin or cos, whose maxima are at peak + 2k pi, minima at
    peak + pi + 2k pi and inflections half-way; fn is concave around each maximum."""
    def ibp(x: Interval) -> Interval:
        l64, u64 = x.lower.double(), x.upper.double()
        top = torch.ceil((l64 - peak) / (2 * math.pi)) <= torch.floor((u64 - peak) / (2 * math.pi))
        bot = (torch.ceil((l64 - peak - math.pi) / (2 * math.pi))
               <= torch.floor((u64 - peak - math.pi) / (2 * math.pi)))
        fl, fu = fn(x.lower), fn(x.upper)
        low = pad_down(torch.minimum(fl, fu)).clamp(min=-1)
        high = pad_up(torch.maximum(fl, fu)).clamp(max=1)
        far = ~(torch.isfinite(x.lower) & torch.isfinite(x.upper)) | (
            torch.maximum(x.lower.abs(), x.upper.abs()) > _PERIODIC_REACH)
        low = torch.where(bot | far, -1.0, low).to(x.lower.dtype)
        high = torch.where(top | far, 1.0, high).to(x.lower.dtype)
        return Interval(low, high)

    curve = Curve(fn, (lambda x: torch.cos(x)) if fn is torch.sin else (lambda x: -torch.sin(x)))

    def relax(lower, upper):
        """Inflections at peak - pi/2 + k pi (computed in float64, rounded); an interval over
        more than two of them gets the envelope lines of ir/ops/periodic_lines.py; one far
        out NaN lines, i.e. the IBP constants."""
        first = peak - math.pi / 2
        l64 = lower.double()
        j = torch.floor((l64 - first) / math.pi)
        c1 = first + (j + 1) * math.pi
        j = torch.where(c1 <= l64, j + 1, j)
        c1 = (first + (j + 1) * math.pi).to(lower.dtype)
        c2 = (first + (j + 2) * math.pi).to(lower.dtype)
        concave = torch.remainder(j, 2) == 0
        lines = alternating_lines(curve, lower, upper, ~concave, c1, c2)
        wide = upper > (first + (j + 3) * math.pi).to(lower.dtype)
        # over two inflections or more the envelope lines; over two, whichever of them and
        # the valley lines leaves less area (both are sound)
        two = (upper > c2) & ~wide
        if bool((wide | two).any()):
            envelope = wide_periodic_lines(curve, lower, upper, peak)
            lines = select(wide, envelope, less_area(lines, envelope, lower, upper, two))
        far = torch.maximum(lower.abs(), upper.abs()) > _PERIODIC_REACH
        nan = torch.full_like(lower, math.nan)
        return Lines(*(torch.where(far, nan, t) for t in lines))
    return ibp, relax


for _name, _fn, _peak in (("sin", torch.sin, math.pi / 2), ("cos", torch.cos, 0.0)):
    _ibp, _relax = _periodic(_fn, _peak)
    smooth(_name, _fn, _relax, ibp=_ibp, aten=(f"{_name}.default",),
           doc=f"{_name}(x); tangent/chord lines per convex or concave piece (at most 3)")


# -- steps: sign, heaviside ------------------------------------------------------------------

def step_ibp(left, at_zero, right):
    """Min and max of the levels the step takes on [l, u]."""
    def ibp(x: Interval, *consts) -> Interval:
        l, u = x.lower, x.upper
        mid = at_zero(l, *consts)
        inf = torch.full_like(l + mid, math.inf)
        zero = torch.zeros_like(inf)
        levels = [(l < 0, left + zero), ((l <= 0) & (u >= 0), mid + zero), (u > 0, right + zero)]
        low = high = None
        for present, value in levels:
            lo_v, hi_v = torch.where(present, value, inf), torch.where(present, value, -inf)
            low = lo_v if low is None else torch.minimum(low, lo_v)
            high = hi_v if high is None else torch.maximum(high, hi_v)
        return Interval(low, high)
    return ibp


def step_relax(left: float, right: float, at_zero):
    """Across 0 (l < 0 < u): above, the line from (l, left) to (0+, right) or flat; below,
    from (0-, left) to (u, right) or flat, whichever leaves less area. Biases from
    ``step_lines`` are sound for any slopes."""
    def relax(lower, upper, *consts):
        mid = at_zero(lower, *consts) + torch.zeros_like(lower)
        jump = right - left
        across = (lower < 0) & (upper > 0)
        zero = torch.zeros_like(lower)
        u_slope = torch.where(across & (upper < -lower), jump / -lower, zero)
        l_slope = torch.where(across & (upper > -lower), jump / upper, zero)
        # touching 0 from one side: the line through the value at 0 and the far level
        u_slope = torch.where((lower == 0) & (upper > 0), (right - mid).clamp(max=0) / upper, u_slope)
        l_slope = torch.where((lower == 0) & (upper > 0), (right - mid).clamp(min=0) / upper, l_slope)
        u_slope = torch.where((upper == 0) & (lower < 0), (mid - left).clamp(min=0) / -lower, u_slope)
        l_slope = torch.where((upper == 0) & (lower < 0), (mid - left).clamp(max=0) / -lower, l_slope)
        return step_lines(lower, upper, torch.full_like(lower, left), mid,
                          torch.full_like(lower, right), l_slope, u_slope)
    return relax


def _sign_mid(like):
    return torch.zeros((), dtype=like.dtype, device=like.device)


smooth("sign", torch.sign, step_relax(-1.0, 1.0, _sign_mid),
       ibp=step_ibp(-1.0, _sign_mid, 1.0), aten=("sign.default", "sgn.default"), exact_ibp=True,
       doc="-1, 0 or 1; sloped lines across 0")


def _heaviside_mid(like, values):
    return values.to(like.dtype)


elementwise_with_constants(
    "heaviside", torch.heaviside, step_relax(0.0, 1.0, _heaviside_mid),
    step_ibp(0.0, _heaviside_mid, 1.0), aten=("heaviside.default",),
    doc="0 for x < 0, values at 0, 1 for x > 0 (values a constant); sloped lines across 0")


# -- rounding: constant lines from IBP, or slope-1 lines for wide intervals -------------------

def rounding(name, fn, below: float, above: float, doc: str):
    """x + below <= fn(x) <= x + above for every x: on an interval wider than that band the
    slope-1 lines win, else the constant lines at fn(l), fn(u) (fn is nondecreasing)."""
    def relax(lower, upper):
        fl, fu = fn(lower), fn(upper)
        wide = (fu - fl) > (above - below)
        one, zero = torch.ones_like(lower), torch.zeros_like(lower)
        return Lines(torch.where(wide, one, zero), torch.where(wide, below + zero, fl),
                     torch.where(wide, one, zero), torch.where(wide, above + zero, fu))
    smooth(name, fn, relax, aten=(f"{name}.default",), doc=doc, exact_ibp=True)


rounding("floor", torch.floor, -1.0, 0.0, "largest integer <= x")
rounding("ceil", torch.ceil, 0.0, 1.0, "smallest integer >= x")
rounding("round", torch.round, -0.5, 0.5, "nearest integer (half to even)")
rounding("trunc", torch.trunc, -1.0, 1.0, "integer part, toward 0")


# -- tan: increasing on each branch (k pi - pi/2, k pi + pi/2), concave then convex ------------

_POLE_MARGIN = 1e-6     # closer to a pole than this (or past _PERIODIC_REACH): no finite bound


def _tan_branch(x):
    """The branch k of each x, and whether x is well inside it (not near a pole)."""
    k = torch.floor(x / math.pi + 0.5)
    clear = ((x - k * math.pi).abs() < math.pi / 2 - _POLE_MARGIN) & (x.abs() < _PERIODIC_REACH)
    return k, clear


def _tan_usable(lower, upper):
    """Where [l, u] lies inside one branch, away from its poles."""
    (kl, cl), (ku, cu) = _tan_branch(lower), _tan_branch(upper)
    return cl & cu & (kl == ku), kl


def _tan_ibp(x: Interval) -> Interval:
    """[tan l, tan u] inside one branch; across a pole tan takes every value."""
    usable, _ = _tan_usable(x.lower.double(), x.upper.double())
    inf = torch.full_like(x.lower, math.inf)
    return Interval(torch.where(usable, torch.tan(x.lower), -inf),
                    torch.where(usable, torch.tan(x.upper), inf))


TAN = Curve(torch.tan, lambda x: 1 / torch.cos(x) ** 2)


def _tan_relax(lower, upper):
    """Concave left of the branch's centre k pi, convex right of it (as sinh around 0); NaN
    lines across a pole, which sound_relax replaces by the (infinite) interval bounds."""
    usable, k = _tan_usable(lower, upper)
    centre = k * math.pi
    inf = torch.full_like(lower, math.inf)
    lines = alternating_lines(TAN, lower, upper, lower >= centre,
                              torch.where(lower < centre, centre, inf), inf)
    nan = torch.full_like(lower, math.nan)
    return Lines(*(torch.where(usable, t, nan) for t in lines))


smooth("tan", torch.tan, _tan_relax, ibp=_tan_ibp, aten=("tan.default",),
       doc="tan(x); concave then convex on each branch; unbounded across a pole")
