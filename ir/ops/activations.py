"""Elementwise nonlinear activations: each is its function plus a sound linear relaxation.

A relaxation on [l, u] returns (l_slope, l_bias, u_slope, u_bias) with
l_slope*x + l_bias <= f(x) <= u_slope*x + u_bias for every x in [l, u]. Smooth curves get their
lines from ir/ops/relaxation.py (slopes chosen for tightness, biases derived rigorously);
piecewise-linear ones are exact where the input's sign (kink side) is known.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lirpac.errors import UnsupportedOperationError
from lirpac.ir.graph import Node
from lirpac.ir.opdef import Interval, Linear, OpDef, aten_lowering, register
from lirpac.ir.scalar import scalar
from lirpac.ir.ops.common import elementwise, monotone_ibp, relaxed_backward, relaxed_forward
from lirpac.ir.ops.kink_alpha import KinkLines, kink_alpha_rules
from lirpac.ir.ops.blend_alpha import blend_alpha_rules
from lirpac.ir.ops.tangent_alpha import tangent_alpha_rules
from lirpac.ir.ops.relaxation import (Curve, Lines, concave_lines, convex_lines, inflection_lines,
                                      kinked_lines, pad_down, pad_up, select, slack, sound_relax)


def relu_relax(lower, upper):
    """CROWN's ReLU relaxation (Zhang et al. 2018): upper line is the chord from (l, 0) to
    (u, u); for unstable neurons the lower slope is 1 when u >= -l, else 0 (the adaptive choice
    that minimises the relaxation's area); stable neurons are exact. The lower bias is 0
    everywhere (given as the int 0: no product is spent on it)."""
    lo, hi, _, u_slope, u_bias = _relu_upper(lower, upper)
    # u >= -l, with u = max(upper, 0) and l = min(lower, 0): 1 where active (l >= 0), 0 where
    # dead (u <= 0, but for l = u = 0, where either slope is exact), and the adaptive choice
    # where unstable (at the tie u = -l both lines have the same area)
    l_slope = torch.ge(hi, -lo).to(hi.dtype)
    return l_slope, 0, u_slope, u_bias


def _relu_upper(lower, upper):
    """min(l, 0), max(u, 0), the unstable mask and the upper line (the chord)."""
    zero = scalar(0.0, lower)
    lo = torch.clamp_max(lower, zero)
    hi = torch.clamp_min(upper, zero)
    u_slope = hi / torch.clamp_min(hi - lo, scalar(torch.finfo(hi.dtype).tiny, hi))
    # the rounded chord misses (u, u) by a few ulps of u: lift it by slack(u) (its value is
    # never infinite: u_slope <= 1); a stable neuron's line is exact, and its bias exactly 0
    # (slack's underflow floor there would make every product with it subnormal, several
    # times slower on CPUs)
    unstable = torch.logical_and(lo, hi)     # lo < 0 < hi: lo <= 0 <= hi, both nonzero
    u_bias = torch.where(unstable, torch.addcmul(slack(hi), u_slope, lo, value=-1), zero)
    return lo, hi, unstable, u_slope, u_bias


def relu_alpha_lines(lower, upper) -> KinkLines:
    """``KinkLines`` of ReLU in one go (every alpha-CROWN step recomputes those of bounds the
    slopes move): lower slope 1 where active, 0 elsewhere, no lower bias."""
    _, _, unstable, u_slope, u_bias = _relu_upper(lower, upper)
    active = torch.ge(lower, scalar(0.0, lower))
    return KinkLines(active.to(u_slope.dtype), 0, u_slope, u_bias, unstable.to(u_slope.dtype))


def relu_zero_where(lower, upper):
    """ReLU is 0 on [l, u] exactly when u <= 0 (a NaN bound is never taken for 0)."""
    return torch.le(upper, scalar(0.0, upper))


elementwise("relu", torch.relu, relu_relax, aten=("relu.default", "relu_.default"),
            doc="max(x, 0)", exact_when_sign_known=True, zero_where=relu_zero_where, monotone=True,
            **kink_alpha_rules(relu_relax, lambda: 0.0, relu_alpha_lines))


def padded(ibp, absolute=False):
    """IBP moved out by a few ulps: torch's own f differs by an ulp between its vectorised and
    scalar paths, so the interval must not rest on exactly one evaluation of it. ``absolute``:
    torch's f errs by ulps of |x|, not of |f(x)| (GELU's x (1 + erf) cancels for x < 0)."""
    def run(x, *consts, **attrs) -> Interval:
        box = ibp(x, *consts, **attrs)
        reach = torch.maximum(x.lower.abs(), x.upper.abs()) if absolute else 0
        return Interval(pad_down(box.lower, box.lower.abs() + reach),
                        pad_up(box.upper, box.upper.abs() + reach))
    return run


def smooth(name, fn, relax, ibp=None, aten=(), doc="", exact_ibp=False, tangent_at=None,
           blend=False, monotone=False, tangent_start=None, needs_domain=False,
           check_attrs=None):
    """An elementwise op whose relaxation comes from ``relax(l, u, **attrs) -> Lines``, made
    NaN-free by ``sound_relax`` (constant IBP lines where a line is not finite). The IBP rule
    (monotone by default) is padded unless ``exact_ibp`` (f exact in floating point).
    alpha-CROWN optimises, with ``tangent_at(l, u, p) -> Lines`` (f convex or concave on its
    domain), the relaxation's tangent point (ir/ops/tangent_alpha.py), from
    ``tangent_start(l, u)`` (its share of [l, u]; the midpoint by default); with ``blend`` (f
    bounded), blends of its lines with the interval bounds (ir/ops/blend_alpha.py)."""
    ibp = ibp or monotone_ibp(fn)
    ibp = ibp if exact_ibp else padded(ibp)
    relax = sound_relax(relax, ibp)
    alpha = (tangent_alpha_rules(tangent_at, ibp, tangent_start) if tangent_at is not None else
             blend_alpha_rules(relax, ibp) if blend else {})
    return elementwise(name, fn, relax, ibp=ibp, aten=aten, doc=doc, monotone=monotone,
                       needs_domain=needs_domain, check_attrs=check_attrs, **alpha)


def elementwise_with_constants(name, fn, relax, ibp, aten=(), doc="") -> OpDef:
    """Like ``common.elementwise`` for ``f(x, *consts)`` whose extra inputs (clamp's tensor
    min/max, heaviside's values) must be constants: they reach ``relax`` and ``ibp`` as
    tensors and get no coefficients."""
    def constants(cs):
        if not all(isinstance(c, torch.Tensor) for c in cs):
            raise UnsupportedOperationError(
                f"op '{name}': only its first input may be perturbed (its other tensor inputs "
                "must be constants); compute the op from min/max of perturbed tensors instead")
        return cs

    def ibp_rule(x, *cs, **attrs):
        if isinstance(x, torch.Tensor):
            raise UnsupportedOperationError(f"op '{name}': its first input must be perturbed")
        return ibp(x, *constants(cs), **attrs)

    relax = sound_relax(relax, ibp, in_dtype=True)

    def backward(lA, uA, x: Interval, *cs, **attrs):
        coeffs, lbias, ubias = relaxed_backward(lA, uA, relax(x.lower, x.upper, *constants(cs),
                                                              **attrs))
        return coeffs + [None] * len(cs), lbias, ubias

    def forward_mode(x: Linear, *cs, **attrs) -> Linear:
        return relaxed_forward(x, relax(x.bounds.lower, x.bounds.upper, *constants(cs), **attrs))

    return register(OpDef(name=name, forward=fn, ibp=ibp_rule, backward=backward,
                          forward_mode=forward_mode, nonlinear=True, aten=aten, doc=doc))


# -- S-shaped: CROWN's tangent/chord lines (Zhang et al. 2018, sec. 3.3) ---------------------

def s_shaped(curve: Curve):
    """Convex left of 0, concave right of it: chord where it stays on its side, else the
    tangent through the far endpoint, as in CROWN."""
    return lambda lower, upper: inflection_lines(curve, lower, upper, (0.0,), convex_first=True)


SIGMOID = Curve(torch.sigmoid, lambda x: torch.sigmoid(x) * torch.sigmoid(-x))
# sech^2 rather than 1 - tanh^2, which cancels to 0 long before the true slope underflows
TANH = Curve(torch.tanh, lambda x: torch.cosh(x).pow(-2))
ATAN = Curve(torch.atan, lambda x: 1 / (1 + x * x))

smooth("sigmoid", torch.sigmoid, s_shaped(SIGMOID), aten=("sigmoid.default", "sigmoid_.default"),
       doc="1 / (1 + exp(-x)); CROWN tangent/chord lines", blend=True, monotone=True)
smooth("tanh", torch.tanh, s_shaped(TANH), aten=("tanh.default", "tanh_.default"),
       doc="tanh(x); CROWN tangent/chord lines", blend=True, monotone=True)
smooth("atan", torch.atan, s_shaped(ATAN), aten=("atan.default",),
       doc="arctan(x); CROWN tangent/chord lines", blend=True, monotone=True)


# -- dips: GELU, SiLU (concave, convex around 0, concave) -------------------------------------

def dip_ibp(fn, x_min: float, f_min: float):
    """IBP of a function decreasing left of x_min and increasing right of it."""
    def ibp(x: Interval, **attrs) -> Interval:
        fl, fu = fn(x.lower, **attrs), fn(x.upper, **attrs)
        low = torch.minimum(fl, fu)
        floor = pad_down(torch.full_like(low, f_min))
        low = torch.where((x.lower <= x_min) & (x.upper >= x_min), floor, low)
        return Interval(low, torch.maximum(fl, fu))
    return ibp


def dip(curve: Curve, cut: float):
    return lambda lower, upper, **_: inflection_lines(curve, lower, upper, (-cut, cut),
                                                      convex_first=False)


def _phi(x):
    return torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _big_safe(x, value):
    """``value`` where |x| < 1e4, else 0: terms like x^2 phi(x) that vanish there but would
    compute inf * 0."""
    return torch.where(x.abs() < 1e4, value, torch.zeros_like(value))


# exact GELU x Phi(x), with Phi from erfc so it keeps its relative accuracy for x < 0
GELU_ERF = Curve(lambda x: x * 0.5 * torch.erfc(-x / math.sqrt(2)),
                 lambda x: 0.5 * torch.erfc(-x / math.sqrt(2)) + _big_safe(x, x * _phi(x)),
                 dmag=lambda x: 0.5 * torch.erfc(-x / math.sqrt(2)) + _big_safe(x, x.abs() * _phi(x)),
                 fmag=lambda x: _big_safe(x, x * x * _phi(x)))
_K = math.sqrt(2 / math.pi)


def _tanh_arg(x):
    return 2 * _K * (x + 0.044715 * x * x * x)


def _gelu_tanh_df_terms(x):
    z2 = _tanh_arg(x)
    s, ds = torch.sigmoid(z2), torch.sigmoid(z2) * torch.sigmoid(-z2)
    return s, _big_safe(x, x * ds * 2 * _K * (1 + 3 * 0.044715 * x * x))


# 0.5 x (1 + tanh(z)) = x sigmoid(2z), which keeps its relative accuracy for x < 0
GELU_TANH = Curve(lambda x: x * torch.sigmoid(_tanh_arg(x)),
                  lambda x: sum(_gelu_tanh_df_terms(x)),
                  dmag=lambda x: sum(t.abs() for t in _gelu_tanh_df_terms(x)),
                  fmag=lambda x: _big_safe(x, (x * _tanh_arg(x)).abs()
                                           * torch.sigmoid(_tanh_arg(x)) * torch.sigmoid(-_tanh_arg(x))))
GELU_CUT, GELU_TANH_CUT = math.sqrt(2), 1.4185040087908284   # zeros of f'' (mpmath)
_gelu_ibp = {"none": padded(dip_ibp(lambda x: F.gelu(x), -0.7517915246935645,
                                    -0.16997120747990367), absolute=True),
             "tanh": padded(dip_ibp(lambda x: F.gelu(x, approximate="tanh"), -0.7524614220710163,
                                    -0.17004075057125406), absolute=True)}
_gelu_relax = {"none": dip(GELU_ERF, GELU_CUT), "tanh": dip(GELU_TANH, GELU_TANH_CUT)}


def _gelu_form(approximate):
    if approximate not in _gelu_relax:
        raise UnsupportedOperationError(f"gelu: unknown approximate={approximate!r}")
    return approximate


_gelu_lines = {k: sound_relax(v, _gelu_ibp[k]) for k, v in _gelu_relax.items()}
_gelu_relax_any = (lambda lower, upper, approximate="none":
                   _gelu_lines[_gelu_form(approximate)](lower, upper))
elementwise("gelu", lambda x, approximate="none": F.gelu(x, approximate=approximate),
            _gelu_relax_any,
            ibp=lambda x, approximate="none": _gelu_ibp[_gelu_form(approximate)](x),
            aten=("gelu.default", "gelu_.default"),
            doc="x Phi(x) (approximate='none') or its tanh form; tangent/chord lines per piece")

SILU = Curve(lambda x: x * torch.sigmoid(x),
             lambda x: torch.sigmoid(x) * (1 + x * torch.sigmoid(-x)),
             dmag=lambda x: torch.sigmoid(x) * (1 + x.abs() * torch.sigmoid(-x)))
SILU_CUT = 2.3993572805154677      # x tanh(x/2) = 2: the zeros of SiLU''
smooth("silu", F.silu, dip(SILU, SILU_CUT),
       ibp=dip_ibp(F.silu, -1.2784645427610738, -0.2784645427610738),
       aten=("silu.default", "silu_.default"), doc="x sigmoid(x); tangent/chord lines per piece")


# -- convex ones: softplus, ELU ---------------------------------------------------------------

def _softplus_curve(beta):
    return Curve(lambda x: (torch.relu(beta * x) + torch.log1p(torch.exp(-(beta * x).abs()))) / beta,
                 lambda x: torch.sigmoid(beta * x))


def softplus_refusal(beta=1.0, threshold=20.0) -> str | None:
    """Why softplus cannot be bounded with these attributes (None: it can)."""
    if not beta > 0:
        return f"softplus with beta={beta} (only beta > 0 is supported: its rules rest on convexity)"
    return None


def _require(refusal):
    """The rules' own guard (a node built without the frontends' check_attrs)."""
    if refusal:
        raise UnsupportedOperationError(refusal)


def softplus_relax(lower, upper, beta=1.0, threshold=20.0):
    """Convex: chord above, midpoint tangent below. torch returns x itself where beta*x >
    threshold, below the true curve by at most log1p(exp(-threshold))/beta: the lower line
    drops by that much where the interval reaches there."""
    _require(softplus_refusal(beta))
    ls, lb, us, ub = convex_lines(_softplus_curve(beta), lower, upper)
    gap = math.log1p(math.exp(-threshold)) / beta
    lb = torch.where(beta * upper > threshold - _kink_slack(threshold), pad_down(lb - gap), lb)
    return Lines(ls, lb, us, ub)


def _kink_slack(threshold) -> float:
    """How far from the threshold beta*x may round to the other side of torch's own test, made
    in the input's precision, float32 at most, while the rules may work in float64 (the point
    interval [threshold/beta] in float32: torch returned x, the lines assumed the curve)."""
    return 8 * torch.finfo(torch.float32).eps * max(1.0, abs(threshold))


def softplus_ibp(x: Interval, beta=1.0, threshold=20.0) -> Interval:
    """torch's softplus is not monotone: it follows the (increasing) curve up to beta*x =
    threshold and returns x past it, up to log1p(exp(-threshold))/beta below the curve. Below:
    the smaller of the curve at l and of x past the kink; above: the curve at u, which also
    bounds the exact curve that an ONNX Softplus (no threshold) computes."""
    _require(softplus_refusal(beta))
    curve = _softplus_curve(beta).f
    inf = torch.full_like(x.lower, math.inf)
    slack = _kink_slack(threshold)
    on_curve = beta * x.lower <= threshold + slack          # some x in [l, u] lies up to the kink
    past = beta * x.upper > threshold - slack               # some x lies past it
    lower = torch.minimum(torch.where(on_curve, curve(x.lower), inf),
                          torch.where(past, torch.clamp_min(x.lower, (threshold - slack) / beta), inf))
    return Interval(lower, curve(x.upper))


smooth("softplus", lambda x, beta=1.0, threshold=20.0: F.softplus(x, beta, threshold),
       softplus_relax, ibp=softplus_ibp, aten=("softplus.default",), check_attrs=softplus_refusal,
       doc="log(1 + exp(beta x)) / beta (x past the threshold); convex")


def _log_sigmoid(x):
    return -(torch.relu(-x) + torch.log1p(torch.exp(-x.abs())))


smooth("log_sigmoid", F.logsigmoid,
       lambda lower, upper: concave_lines(Curve(_log_sigmoid, lambda x: torch.sigmoid(-x)),
                                          lower, upper),
       aten=("log_sigmoid.default",), doc="log(sigmoid(x)) = -softplus(-x); concave")


def _elu_fn(x, alpha=1.0, scale=1.0, input_scale=1.0):
    return torch.ops.aten.elu.default(x, alpha, scale, input_scale)


def elu_refusal(alpha=1.0, scale=1.0, input_scale=1.0) -> str | None:
    """Why ELU cannot be bounded with these attributes (None: it can): its rules take it
    nondecreasing, which needs all three positive (CELU with alpha < 0 has input_scale < 0)."""
    if not min(alpha, scale, input_scale) > 0:
        return (f"elu/celu/selu with alpha={alpha}, scale={scale}, input_scale={input_scale} "
                "(only positive values are supported: the function is then nondecreasing)")
    return None


def _elu_ibp(x: Interval, alpha=1.0, scale=1.0, input_scale=1.0) -> Interval:
    _require(elu_refusal(alpha, scale, input_scale))
    return monotone_ibp(_elu_fn)(x, alpha=alpha, scale=scale, input_scale=input_scale)


def elu_relax(lower, upper, alpha=1.0, scale=1.0, input_scale=1.0):
    """scale * (x if x > 0 else alpha (exp(input_scale x) - 1)): convex on each side of 0; the
    kink at 0 is convex when alpha*input_scale <= 1, else concave (SELU), then relaxed as an
    S-shape. At 0 the slope is the larger one-sided slope, a valid subgradient for each use."""
    _require(elu_refusal(alpha, scale, input_scale))
    a, s, k = alpha, scale, input_scale
    curve = Curve(lambda x: s * torch.where(x > 0, x, a * torch.expm1(k * x.clamp(max=0))),
                  lambda x: s * torch.where(x > 0, torch.ones_like(x),
                                            torch.where(x < 0, a * k * torch.exp(k * x.clamp(max=0)),
                                                        torch.full_like(x, max(1.0, a * k)))),
                  fmag=lambda x: (s * a * k * x * torch.exp(k * x.clamp(max=0))).abs())
    cuts = (0.0,) if a * k > 1 else ()
    return inflection_lines(curve, lower, upper, cuts, convex_first=True)


smooth("elu", _elu_fn, elu_relax, ibp=_elu_ibp, check_attrs=elu_refusal,
       aten=("elu.default", "elu_.default"),
       doc="scale * (x if x > 0 else alpha (exp(input_scale x) - 1)); SELU and CELU lower to it")


@aten_lowering("selu.default", "selu_.default")
def _selu(lw, x):
    return lw.add("elu", [lw.value(x)], alpha=1.6732632423543772848170429916717,
                  scale=1.0507009873554804934193349852946, input_scale=1.0)


@aten_lowering("celu.default", "celu_.default")
def _celu(lw, x, alpha=1.0):
    return lw.add("elu", [lw.value(x)], alpha=float(alpha), scale=1.0, input_scale=1.0 / alpha)


# -- piecewise linear: exact where no kink lies inside (l, u) ---------------------------------

def kink_ibp(fn, kinks):
    """IBP of a continuous piecewise-linear function: extremes at l, u or a kink inside."""
    def ibp(x: Interval, **attrs) -> Interval:
        values = [fn(x.lower, **attrs), fn(x.upper, **attrs)]
        for kink in kinks(x.lower, **attrs):
            values.append(fn(torch.minimum(torch.maximum(kink, x.lower), x.upper), **attrs))
        stacked = torch.stack(torch.broadcast_tensors(*values))
        return Interval(stacked.amin(0), stacked.amax(0))
    return ibp


def _zero_kink(like, **_):
    return [torch.zeros_like(like)]


def _leaky(x, negative_slope=0.01):
    return F.leaky_relu(x, negative_slope)


def leaky_relu_relax(lower, upper, negative_slope=0.01):
    """x for x >= 0, a x below. Convex for a <= 1: chord above, and below the line through 0
    of slope 1 or a, whichever leaves less area (CROWN's adaptive choice); concave for a > 1:
    the mirror. Exact when the sign is known."""
    a = float(negative_slope)
    ones, slope_a = torch.ones_like(lower), torch.full_like(lower, a)
    width = (upper - lower).clamp(min=torch.finfo(lower.dtype).tiny)
    chord = (_leaky(upper, a) - _leaky(lower, a)) / width
    wide_right = upper > -lower
    if a <= 1:
        slopes = torch.where(wide_right, ones, slope_a), chord
    else:
        slopes = chord, torch.where(wide_right, slope_a, ones)
    kinked = kinked_lines(lambda x: _leaky(x, a), lower, upper, (0.0,), *slopes)
    side = torch.where(lower >= 0, ones, slope_a)
    zero = torch.zeros_like(lower)
    return select((lower >= 0) | (upper <= 0), Lines(side, zero, side, zero), kinked)


_leaky_ibp = kink_ibp(_leaky, _zero_kink)
_leaky_lines = sound_relax(leaky_relu_relax, _leaky_ibp, in_dtype=True)
elementwise("leaky_relu", _leaky, _leaky_lines, ibp=_leaky_ibp,
            aten=("leaky_relu.default", "leaky_relu_.default"),
            doc="x if x >= 0 else negative_slope x", exact_when_sign_known=True,
            **kink_alpha_rules(_leaky_lines, lambda negative_slope=0.01: float(negative_slope)))


def abs_relax(lower, upper):
    """|x|: chord above; below, the line through 0 of slope sign(l + u) (the tangent at the
    midpoint, the larger-area choice). Exact when the sign is known."""
    width = (upper - lower).clamp(min=torch.finfo(lower.dtype).tiny)
    chord = (upper.abs() - lower.abs()) / width
    kinked = kinked_lines(torch.abs, lower, upper, (0.0,), torch.sign(lower + upper), chord)
    side = torch.where(lower >= 0, 1.0, -1.0).to(lower.dtype)
    zero = torch.zeros_like(lower)
    return select((lower >= 0) | (upper <= 0), Lines(side, zero, side, zero), kinked)


_abs_ibp = kink_ibp(lambda x: torch.abs(x), _zero_kink)
elementwise("abs", torch.abs, sound_relax(abs_relax, _abs_ibp, in_dtype=True), ibp=_abs_ibp,
            aten=("abs.default", "abs_.default"), doc="|x|", exact_when_sign_known=True)


# -- clamp / clip / hardtanh / relu6: constant, identity, constant ----------------------------

def _clamp_bounds(like, consts, min=None, max=None, tensor_bounds=()):
    """(lo, hi) tensors (None for an open side) from scalar attrs or constant inputs; torch
    clamps to max where min > max, i.e. lo becomes min(lo, hi)."""
    named = dict(zip(tensor_bounds, consts))
    lo = named.get("min", None if min is None else torch.as_tensor(min, dtype=like.dtype,
                                                                   device=like.device))
    hi = named.get("max", None if max is None else torch.as_tensor(max, dtype=like.dtype,
                                                                   device=like.device))
    if lo is not None and hi is not None:
        lo = torch.minimum(lo, hi)
    return lo, hi


def _clamp(x, *consts, min=None, max=None, tensor_bounds=()):
    lo, hi = _clamp_bounds(x, consts, min, max, tensor_bounds)
    return torch.clamp(x, lo, hi)


def _clamp_kinks(like, *consts, **attrs):
    return [k for k in _clamp_bounds(like, consts, **attrs) if k is not None]


def clamp_ibp(x: Interval, *consts, **attrs) -> Interval:
    return Interval(_clamp(x.lower, *consts, **attrs), _clamp(x.upper, *consts, **attrs))


def clamp_relax(lower, upper, *consts, **attrs):
    """Each kink is relaxed like a ReLU: above, the line through (hi, hi) towards (l, f(l))
    or flat, below the line through (lo, lo) towards (u, f(u)) or flat, whichever leaves less
    area (CROWN's adaptive choice). Exact where no kink lies strictly inside (l, u)."""
    lo, hi = _clamp_bounds(lower, consts, **attrs)
    inf = torch.tensor(math.inf, dtype=lower.dtype, device=lower.device)
    lo_k = -inf if lo is None else lo
    hi_k = inf if hi is None else hi
    f = lambda x: _clamp(x, *consts, **attrs)  # noqa: E731
    fl, fu = f(lower), f(upper)
    top = torch.minimum(torch.maximum(hi_k, lower), upper)
    bottom = torch.minimum(torch.maximum(lo_k, lower), upper)
    tiny = torch.finfo(lower.dtype).tiny
    u_slope = torch.where((hi_k - lower > upper - hi_k) & (top > lower),
                          (f(top) - fl) / (top - lower).clamp(min=tiny), 0.0)
    l_slope = torch.where((upper - lo_k > lo_k - lower) & (upper > bottom),
                          (fu - f(bottom)) / (upper - bottom).clamp(min=tiny), 0.0)
    kinked = kinked_lines(f, lower, upper, [k for k in (lo, hi) if k is not None],
                          l_slope, u_slope)
    # where no kink is inside, f is one piece: the constant lo or hi, or the identity
    const_lo, const_hi = upper <= lo_k, lower >= hi_k
    slope = torch.where(const_lo | const_hi, 0.0, 1.0).to(lower.dtype)
    bias = torch.where(const_lo, lo_k, torch.where(const_hi, hi_k, 0.0)).to(lower.dtype)
    inside = ((lower < lo_k) & (upper > lo_k)) | ((lower < hi_k) & (upper > hi_k))
    slope, bias = torch.broadcast_to(slope, kinked[0].shape), torch.broadcast_to(bias, kinked[0].shape)
    return select(~inside, Lines(slope, bias, slope, bias), kinked)


elementwise_with_constants(
    "clamp", _clamp, clamp_relax, clamp_ibp, aten=("clamp.default", "clip.default",
                                                   "clamp_.default", "clip_.default"),
    doc="min(max(x, min), max), either side optional, scalars or constant tensors "
        "(hardtanh, relu6, clamp_min/max lower to it)")


@aten_lowering("hardtanh.default", "hardtanh_.default")
def _hardtanh(lw, x, min_val=-1.0, max_val=1.0):
    return lw.add("clamp", [lw.value(x)], min=min_val, max=max_val)


@aten_lowering("relu6.default", "relu6_.default")
def _relu6(lw, x):
    return lw.add("clamp", [lw.value(x)], min=0.0, max=6.0)


@aten_lowering("clamp_min.default", "clamp_min_.default", "clamp_min.Tensor")
def _clamp_min(lw, x, min):
    return _clamp_tensor(lw, x, min=min)


@aten_lowering("clamp_max.default", "clamp_max_.default", "clamp_max.Tensor")
def _clamp_max(lw, x, max):
    return _clamp_tensor(lw, x, max=max)


@aten_lowering("clamp.Tensor", "clip.Tensor")
def _clamp_tensor(lw, x, min=None, max=None):
    """Tensor bounds become constant inputs, named in ``tensor_bounds``; scalars stay attrs."""
    inputs, attrs, names = [lw.value(x)], {}, []
    for name, bound in (("min", min), ("max", max)):
        value = lw.value(bound)
        if isinstance(value, Node):
            inputs.append(value)
            names.append(name)
        elif value is not None:
            attrs[name] = value
    return lw.add("clamp", inputs, tensor_bounds=tuple(names), **attrs)
