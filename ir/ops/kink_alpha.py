"""alpha-CROWN's parametrised relaxation of convex kinks at 0 (ReLU, leaky ReLU).

For f(x) = max(x, a x) with a <= 1, every line through the origin of slope s in [a, 1] lies
below f on the whole real line (x >= 0: s x <= x; x < 0: s x <= a x), so for an unstable neuron
(l < 0 < u) the lower line may be any such s = a + alpha (1 - a), alpha in [0, 1], and every
alpha gives a sound bound (Xu et al. 2021, "Fast and complete"). The upper line stays the op's
own (the chord). Stable neurons keep the op's exact lines and ignore alpha.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from lirpac.ir.ops.common import RowLayout, _relaxed_step, _row_dot, prepare_lines, relaxed_backward_lines


class KinkLines(NamedTuple):
    """A kink op's relaxation on one set of bounds, prepared once for every pass and step
    that crosses it (``alpha_lines``): the op's four lines (node-shaped; a line zero
    everywhere as 0, ``prepare_lines``), the lower bias 0 where the neuron is unstable (alpha's
    lines pass through the origin), and the unstable mask."""
    l_slope: torch.Tensor | int
    l_bias: torch.Tensor | int
    u_slope: torch.Tensor | int
    u_bias: torch.Tensor | int
    unstable: torch.Tensor


def kink_alpha_rules(relax, bottom_slope) -> dict:
    """``backward_alpha``, ``alpha_lines`` and ``alpha_init`` (ir/opdef.py) for an op
    f(x) = max(x, a x) whose relaxation is ``relax(lower, upper, **attrs)`` and a =
    ``bottom_slope(**attrs)``; for a >= 1 (concave) the rules keep the op's relaxation and
    ignore alpha."""

    def alpha_init(lower, upper, **attrs):
        a = bottom_slope(**attrs)
        if a >= 1:
            return torch.zeros_like(lower)
        return ((relax(lower, upper, **attrs)[0] - a) / (1 - a)).clamp(0, 1)

    def alpha_lines(lower, upper, **attrs) -> KinkLines:
        l_slope, l_bias, u_slope, u_bias = relax(lower, upper, **attrs)
        unstable = (lower < 0) & (upper > 0)
        if bottom_slope(**attrs) < 1:
            l_bias = torch.where(unstable, 0.0, l_bias)
        return KinkLines(*prepare_lines((l_slope, l_bias, u_slope, u_bias)), unstable)

    def backward_alpha(lA, uA, lines: KinkLines, alpha_l, alpha_u, **attrs):
        a = bottom_slope(**attrs)
        if a >= 1:
            return relaxed_backward_lines(lA, uA, lines[:4])
        rows = RowLayout(lA, uA)
        l_slope, l_bias, u_slope, u_bias, unstable = (r if isinstance(r, int) else rows.at(r) for r in lines)
        alpha_l, alpha_u = rows.slopes(alpha_l), rows.slopes(alpha_u)
        if a != 0:
            alpha_l = None if alpha_l is None else a + (1 - a) * alpha_l
            alpha_u = None if alpha_u is None else a + (1 - a) * alpha_u
        # an unstable neuron's lower line is alpha's (the slopes stay tensors even where
        # zero: they carry alpha's gradient)
        slope_l = None if lA is None else torch.where(unstable, alpha_l, l_slope)
        slope_u = None if uA is None else torch.where(unstable, alpha_u, l_slope)
        new_l, new_u, lbias, ubias = _relaxed_step(
            *rows.coeffs, slope_l if slope_l is not None else slope_u, l_bias, u_slope, u_bias,
            _row_dot, l_slope_of_upper=slope_u)
        return [(rows.wrap(new_l), rows.wrap(new_u))], lbias, ubias

    return {"backward_alpha": backward_alpha, "alpha_lines": alpha_lines, "alpha_init": alpha_init}
