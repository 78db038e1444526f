"""alpha-CROWN for bounded elementwise functions (sigmoid, tanh, atan): blended lines.

Lines that lie below f on [l, u] form a convex set, and so do the lines above it: a blend
alpha * L + (1 - alpha) * K of two sound lower lines is a sound lower line. Here L is CROWN's
line (chord or tangent, ir/ops/relaxation.py) and K the constant line at the interval bound
(IBP), so alpha in [0, 1] slides each line from CROWN's (alpha = 1, the start: step 0 is
CROWN) towards a flatter one. As for ReLU, each side of a pass has its own alpha per row and
neuron; a coefficient's sign picks which of the two lines it meets, so one alpha serves both.
The blend is rounded outward by a few ulps of its terms (exact at alpha = 1).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from lirpac.ir.opdef import Interval
from lirpac.ir.ops.common import RowLayout
from lirpac.ir.ops.relaxation import pad_down, pad_up, slack


class BlendLines(NamedTuple):
    """The bounds-only part of a blended step, node-shaped (``alpha_lines``): CROWN's lines,
    the interval bounds they blend towards, and max(|l|, |u|) for the rounding pad. Computed
    once per bounds for every pass and step that crosses the node (CROWN's lines of an
    S-shaped curve take a bisection: per pass, they were most of an LSTM's step time)."""
    l_slope: torch.Tensor
    l_bias: torch.Tensor
    u_slope: torch.Tensor
    u_bias: torch.Tensor
    floor: torch.Tensor
    ceiling: torch.Tensor
    reach: torch.Tensor


def blend_alpha_rules(relax, ibp) -> dict:
    """``backward_alpha``, ``alpha_lines`` and ``alpha_init`` (ir/opdef.py) for an op with the
    sound relaxation ``relax(lower, upper) -> lines`` and finite interval rule ``ibp``."""

    def alpha_init(lower, upper, **attrs):
        return torch.ones_like(lower)

    def alpha_lines(lower, upper, **attrs) -> BlendLines:
        box = ibp(Interval(lower, upper), **attrs)
        return BlendLines(*relax(lower, upper, **attrs), box.lower, box.upper,
                          torch.maximum(lower.abs(), upper.abs()))

    def backward_alpha(lA, uA, lines: BlendLines | Interval, alpha_l, alpha_u, **attrs):
        if not isinstance(lines, BlendLines):      # the input's bounds themselves
            lines = alpha_lines(lines.lower, lines.upper, **attrs)
        rows = RowLayout(lA, uA)
        bounded = bool(torch.isfinite(lines.reach).all())     # (then so is every line)
        ls, lb, us, ub, floor, ceiling, reach = (rows.at(r) for r in lines)
        return rows.sides_apart(alpha_l, alpha_u, lambda a: (
            *_blend(a, ls, lb, floor, reach, False, bounded), *_blend(a, us, ub, ceiling, reach, True, bounded)))

    return {"backward_alpha": backward_alpha, "alpha_lines": alpha_lines, "alpha_init": alpha_init}


def _blend(a, slope, bias, level, reach, up: bool, bounded: bool = False):
    """alpha * (slope, bias) + (1 - alpha) * (0, level), moved outward by the rounding of its
    terms over |x| <= reach; CROWN's own line where alpha is 1. ``bounded``: every term is
    finite (a finite input interval), so the pad needs no care for infinities (the same
    result, three fewer per-row operations: this runs at every pass's every crossing)."""
    s = a * slope
    b = bias + (1 - a) * (level - bias)          # exactly ``bias`` at alpha = 1
    scale = s.abs() * reach + bias.abs() + level.abs()
    if bounded:
        return s, torch.where(a == 1, b, b + slack(scale) if up else b - slack(scale))
    padded = pad_up(b, scale) if up else pad_down(b, scale)
    # an unbounded input (reach = inf) leaves the line vacuous but finite, as ``finish`` does
    big = torch.finfo(b.dtype).max
    padded = padded.nan_to_num(nan=big if up else -big, posinf=big, neginf=-big)
    return s, torch.where(a == 1, b, padded)
