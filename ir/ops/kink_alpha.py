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

from lirpac.ir.ops.common import RowLayout, _relaxed_step, _row_dot, relaxed_backward_lines, split_pos_neg


class _KinkFields(NamedTuple):
    l_slope: torch.Tensor
    l_bias: torch.Tensor | int
    u_slope: torch.Tensor
    u_bias: torch.Tensor
    unstable: torch.Tensor


class KinkLines(_KinkFields):
    """A kink op's relaxation on one set of bounds, prepared once for every pass and step
    that crosses it (``alpha_lines``), node-shaped: the op's lower slope with 0 where the
    neuron is unstable (alpha's lines take over there, through the origin: the lower bias is 0
    there too, and a lower bias zero everywhere is given as 0), its upper line, and the
    unstable mask as 0 / 1 (for a >= 1, the op's lines unchanged). It also keeps the parts of
    the backward step that no slope reaches, for coefficients that are the same in every step
    (``_fixed_parts``)."""


def kink_alpha_rules(relax, bottom_slope, lines=None) -> dict:
    """``backward_alpha``, ``alpha_lines`` and ``alpha_init`` (ir/opdef.py) for an op
    f(x) = max(x, a x) whose relaxation is ``relax(lower, upper, **attrs)`` and a =
    ``bottom_slope(**attrs)``; for a >= 1 (concave) the rules keep the op's relaxation and
    ignore alpha. ``lines``: the op's own ``alpha_lines``, when it has a cheaper one."""

    def alpha_init(lower, upper, **attrs):
        a = bottom_slope(**attrs)
        if a >= 1:
            return torch.zeros_like(lower)
        return ((relax(lower, upper, **attrs)[0] - a) / (1 - a)).clamp(0, 1)

    def alpha_lines(lower, upper, **attrs) -> KinkLines:
        l_slope, l_bias, u_slope, u_bias = relax(lower, upper, **attrs)
        unstable = (lower < 0) & (upper > 0)
        if bottom_slope(**attrs) < 1:
            l_slope, l_bias = (torch.where(unstable, 0.0, t) for t in (l_slope, l_bias))
        # only the lower bias is zero everywhere often enough (ReLU's) to be worth a check
        return KinkLines(l_slope, 0 if not l_bias.any() else l_bias, u_slope, u_bias, unstable.to(l_slope.dtype))

    def backward_alpha(lA, uA, lines: KinkLines, alpha_l, alpha_u, **attrs):
        a = bottom_slope(**attrs)
        if a >= 1:
            return relaxed_backward_lines(lA, uA, lines[:4])
        rows = RowLayout(lA, uA)
        alpha_l, alpha_u = rows.slopes(alpha_l), rows.slopes(alpha_u)
        if a != 0:
            alpha_l = None if alpha_l is None else a + (1 - a) * alpha_l
            alpha_u = None if alpha_u is None else a + (1 - a) * alpha_u
        parts = _fixed_parts(lines, rows, lA, uA)
        if parts is not None:
            # coefficients a + g * alpha per side, a and g the same in every step
            new_l, new_u = (None if side is None else torch.addcmul(side[0], side[1], alpha)
                            for side, alpha in zip(parts[:2], (alpha_l, alpha_u)))
            return [(rows.wrap(new_l), rows.wrap(new_u))], parts[2], parts[3]
        fixed, l_bias, u_slope, u_bias, unstable = rows.lines_at(lines)
        # the lower slope is alpha's where the neuron is unstable, the op's elsewhere: exactly
        # (0 + alpha, slope + 0), cheaper than a broadcast selection, and a tensor everywhere
        # (it carries alpha's gradient)
        slope_l = None if lA is None else torch.addcmul(fixed, unstable, alpha_l)
        slope_u = None if uA is None else torch.addcmul(fixed, unstable, alpha_u)
        new_l, new_u, lbias, ubias = _relaxed_step(
            *rows.coeffs, slope_l if slope_l is not None else slope_u, l_bias, u_slope, u_bias,
            _row_dot, l_slope_of_upper=slope_u)
        return [(rows.wrap(new_l), rows.wrap(new_u))], lbias, ubias

    backward_alpha.bottom_slope = bottom_slope    # (codegen/triton's fused rule reads it)
    return {"backward_alpha": backward_alpha, "alpha_lines": lines or alpha_lines, "alpha_init": alpha_init}


def _fixed_parts(lines: KinkLines, rows: RowLayout, lA, uA):
    """For coefficients that no slope reaches (a pass's start, the same tensors in every step
    of an alpha-CROWN call) and lines without gradient, the step's coefficients are
    ``a + g * alpha`` per side: a is the step with the op's own lower slope (0 where unstable),
    g the coefficients that meet the lower line where the neuron is unstable (the positive
    ones of the lower side, the negative ones of the upper), and the biases do not depend on
    alpha. Computed once per (coefficients, lines) and kept on the lines: (a_l, g_l) or None,
    (a_u, g_u) or None, lbias, ubias; the step is bit for bit the full one (one of a
    coefficient's parts is 0, so the sums meet the same terms). None where this does not
    apply (dense coefficients only)."""
    coeffs = [c for c in rows.coeffs if c is not None]
    if rows.windowed or not isinstance(lines, KinkLines) or any(
            isinstance(t, torch.Tensor) and t.requires_grad for t in (*lines, *coeffs)):
        return None
    memo = lines.__dict__.setdefault("fixed_parts", {})
    hit = memo.get((id(lA), id(uA)))
    if hit is not None and hit[0] is lA and hit[1] is uA:
        return hit[2]
    fixed, l_bias, u_slope, u_bias, unstable = rows.lines_at(lines)
    new_l, new_u, lbias, ubias = _relaxed_step(*rows.coeffs, fixed, l_bias, u_slope, u_bias, _row_dot)
    lower = upper = None
    if new_l is not None:
        lower = (new_l, split_pos_neg(rows.coeffs[0])[0] * unstable)
    if new_u is not None:
        upper = (new_u, split_pos_neg(rows.coeffs[1])[1] * unstable)
    parts = (lower, upper, lbias, ubias)
    memo[(id(lA), id(uA))] = (lA, uA, parts)
    return parts
