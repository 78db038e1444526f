"""alpha-CROWN's parametrised relaxation of convex kinks at 0 (ReLU, leaky ReLU).

For f(x) = max(x, a x) with a <= 1, every line through the origin of slope s in [a, 1] lies
below f on the whole real line (x >= 0: s x <= x; x < 0: s x <= a x), so for an unstable neuron
(l < 0 < u) the lower line may be any such s = a + alpha (1 - a), alpha in [0, 1], and every
alpha gives a sound bound (Xu et al. 2021, "Fast and complete"). The upper line stays the op's
own (the chord). Stable neurons keep the op's exact lines and ignore alpha.
"""
from __future__ import annotations

import torch

from lirpac.ir.opdef import Interval
from lirpac.ir.ops.common import RowLayout, _relaxed_step, _row_dot, prepare_lines, relaxed_backward


def kink_alpha_rules(relax, bottom_slope) -> dict:
    """``backward_alpha`` and ``alpha_init`` (ir/opdef.py) for an op f(x) = max(x, a x) whose
    relaxation is ``relax(lower, upper, **attrs)`` and a = ``bottom_slope(**attrs)``; for a > 1
    (concave) the rules keep the op's relaxation and ignore alpha."""

    def alpha_init(lower, upper, **attrs):
        a = bottom_slope(**attrs)
        if a >= 1:
            return torch.zeros_like(lower)
        return ((relax(lower, upper, **attrs)[0] - a) / (1 - a)).clamp(0, 1)

    def backward_alpha(lA, uA, x: Interval, alpha_l, alpha_u, **attrs):
        relaxation = relax(x.lower, x.upper, **attrs)
        a = bottom_slope(**attrs)
        rows = RowLayout(lA, uA)
        if a >= 1:
            return relaxed_backward(lA, uA, relaxation)
        l_slope, l_bias, u_slope, u_bias = (rows.at(r) for r in relaxation)
        unstable = rows.at((x.lower < 0) & (x.upper > 0))
        alpha_l, alpha_u = rows.slopes(alpha_l), rows.slopes(alpha_u)
        if a != 0:
            alpha_l = None if alpha_l is None else a + (1 - a) * alpha_l
            alpha_u = None if alpha_u is None else a + (1 - a) * alpha_u
        # an unstable neuron's lower line is alpha's, through the origin
        l_bias = torch.where(unstable, 0.0, l_bias)
        slope_l = None if lA is None else torch.where(unstable, alpha_l, l_slope)
        slope_u = None if uA is None else torch.where(unstable, alpha_u, l_slope)
        # the slopes stay tensors even where zero: they carry alpha's gradient
        l_bias, u_slope, u_bias = prepare_lines((l_bias, u_slope, u_bias))
        new_l, new_u, lbias, ubias = _relaxed_step(
            *rows.coeffs, slope_l if slope_l is not None else slope_u, l_bias, u_slope, u_bias,
            _row_dot, l_slope_of_upper=slope_u)
        return [(rows.wrap(new_l), rows.wrap(new_u))], lbias, ubias

    return {"backward_alpha": backward_alpha, "alpha_init": alpha_init}
