"""Activations of mobile and detection networks: hardsigmoid, hardswish, mish, PReLU.

Each reuses the sound machinery of ir/ops/relaxation.py: slopes are chosen for tightness and
the biases derived rigorously from the function's shape (piecewise linear: its values at the
ends and kinks; piecewise convex/concave: tangents and chords per piece), so the lines hold for
f as torch computes it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lirpac.errors import UnsupportedOperationError
from lirpac.ir.opdef import Interval, Linear, OpDef, register
from lirpac.ir.ops.activations import clamp_relax, dip_ibp, smooth
from lirpac.ir.ops.common import elementwise, monotone_ibp, relaxed_backward, relaxed_forward
from lirpac.ir.ops.relaxation import Curve, Lines, inflection_lines, kinked_lines, sound_relax


# -- hardsigmoid: 0, x/6 + 1/2, 1 with kinks at -3 and 3 --------------------------------------

def hardsigmoid_relax(lower, upper):
    """clamp(x, -3, 3)'s adaptive lines (CROWN's choice at each kink) scaled by 1/6; the
    biases are recomputed for hardsigmoid itself from its values at the ends and kinks."""
    ls, _, us, _ = clamp_relax(lower, upper, min=-3.0, max=3.0)
    return kinked_lines(F.hardsigmoid, lower, upper, (-3.0, 3.0), ls / 6, us / 6)


_hardsigmoid_ibp = monotone_ibp(F.hardsigmoid)
elementwise("hardsigmoid", F.hardsigmoid,
            sound_relax(hardsigmoid_relax, _hardsigmoid_ibp, in_dtype=True),
            ibp=_hardsigmoid_ibp, aten=("hardsigmoid.default", "hardsigmoid_.default"),
            doc="relu6(x + 3) / 6; piecewise linear, kinks at -3 and 3")


# -- hardswish: 0, x (x + 3) / 6, x: concave kinks at -3 and 3 around a convex parabola --------

def _in_parabola(x):
    return (x >= -3) & (x <= 3)


HARDSWISH = Curve(
    F.hardswish,
    # a supergradient at the kinks, from the convex middle piece's side
    lambda x: torch.where(_in_parabola(x), (2 * x + 3) / 6, (x > 3).to(x.dtype)),
    dmag=lambda x: torch.where(_in_parabola(x), (2 * x.abs() + 3) / 6, (x > 3).to(x.dtype)),
    fmag=lambda x: torch.where(_in_parabola(x), x.abs() * (x.abs() + 3) / 6, torch.zeros_like(x)))

smooth("hardswish", F.hardswish,
       lambda lower, upper: inflection_lines(HARDSWISH, lower, upper, (-3.0, 3.0),
                                             convex_first=False),
       ibp=dip_ibp(F.hardswish, -1.5, -0.375), aten=("hardswish.default", "hardswish_.default"),
       doc="x relu6(x + 3) / 6; concave, convex on [-3, 3], concave; tangent/chord lines per piece")


# -- mish: x tanh(softplus(x)), a dip like SiLU ------------------------------------------------

def _softplus(x):
    return torch.relu(x) + torch.log1p(torch.exp(-x.abs()))


def _mish_df_terms(x):
    sp = _softplus(x)
    return torch.tanh(sp), x * torch.cosh(sp).pow(-2) * torch.sigmoid(x)


MISH = Curve(lambda x: x * torch.tanh(_softplus(x)), lambda x: sum(_mish_df_terms(x)),
             dmag=lambda x: sum(t.abs() for t in _mish_df_terms(x)))
MISH_CUTS = (-2.2563763963607931, 1.4905711794854285)     # zeros of mish'' (mpmath)
smooth("mish", F.mish,
       lambda lower, upper: inflection_lines(MISH, lower, upper, MISH_CUTS, convex_first=False),
       ibp=dip_ibp(F.mish, -1.1924312145154952, -0.30884341301725041),
       aten=("mish.default", "mish_.default"),
       doc="x tanh(softplus(x)); concave, convex, concave; tangent/chord lines per piece")


# -- PReLU: leaky ReLU with a learned slope per channel ----------------------------------------

def _channel_slopes(x, weight):
    """The weight (C,) or (1,) laid along dim 1 of x (batch first), as F.prelu does."""
    if weight.numel() == 1 or x.dim() < 2:
        return weight.reshape(()) if weight.numel() == 1 else weight
    return weight.reshape(1, -1, *([1] * (x.dim() - 2)))


def prelu_relax(lower, upper, weight):
    """Leaky ReLU's lines with the slope per element: for a <= 1 chord above and the line
    through 0 of slope 1 or a below (whichever leaves less area); mirrored for a > 1.
    Exact where the sign is known."""
    a = torch.broadcast_to(_channel_slopes(lower, weight).to(lower.dtype), lower.shape)
    ones = torch.ones_like(lower)
    width = (upper - lower).clamp(min=torch.finfo(lower.dtype).tiny)
    f = lambda x: torch.where(x >= 0, x, a * x)  # noqa: E731
    chord = (f(upper) - f(lower)) / width
    steep = torch.where(upper > -lower, ones, a)          # the adaptive slope
    convex = a <= 1
    kinked = kinked_lines(f, lower, upper, (0.0,), torch.where(convex, steep, chord),
                          torch.where(convex, chord, torch.where(upper > -lower, a, ones)))
    side = torch.where(lower >= 0, ones, a)
    zero = torch.zeros_like(lower)
    return Lines(*(torch.where((lower >= 0) | (upper <= 0), s, k)
                   for s, k in zip((side, zero, side, zero), kinked)))


def _prelu(x, weight):
    return F.prelu(x, weight)


def _prelu_box(x: Interval, weight) -> Interval:
    """Extremes at l, u or the kink 0 (the slope may be negative: f is then not monotone)."""
    values = [_prelu(x.lower, weight), _prelu(x.upper, weight),
              _prelu(torch.clamp(torch.zeros_like(x.lower), x.lower, x.upper), weight)]
    stacked = torch.stack(values)
    return Interval(stacked.amin(0), stacked.amax(0))


_prelu_lines = sound_relax(prelu_relax, lambda x, weight: _prelu_box(x, weight), in_dtype=True)


def _constant_weight(weight):
    if not isinstance(weight, torch.Tensor):
        raise UnsupportedOperationError("prelu: its weight must be a constant (a parameter), "
                                        "not perturbed")
    return weight


def _prelu_ibp(x, weight) -> Interval:
    if isinstance(x, torch.Tensor):
        raise UnsupportedOperationError("prelu: its first input must be perturbed")
    return _prelu_box(x, _constant_weight(weight))


def _prelu_backward(lA, uA, x: Interval, weight):
    lines = _prelu_lines(x.lower, x.upper, _constant_weight(weight))
    coeffs, lbias, ubias = relaxed_backward(lA, uA, lines)
    return coeffs + [None], lbias, ubias


def _prelu_forward_mode(x: Linear, weight) -> Linear:
    return relaxed_forward(x, _prelu_lines(x.bounds.lower, x.bounds.upper,
                                           _constant_weight(weight)))


register(OpDef(name="prelu", forward=_prelu, ibp=_prelu_ibp, backward=_prelu_backward,
               forward_mode=_prelu_forward_mode, nonlinear=True, exact_when_sign_known=True,
               aten=("prelu.default", "_prelu_kernel.default"),
               doc="x if x >= 0 else a x, a learned per channel (nn.PReLU); leaky ReLU's lines"))
