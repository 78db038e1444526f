"""alpha-CROWN's parametrised relaxation of functions convex (or concave) on their domain.

For f convex on [l, u], the tangent at any point p of [l, u] lies below f there, so the lower
line may touch f at p = l + alpha (u - l) for any alpha in [0, 1]; the upper line stays the
chord. A concave f mirrors this (the tangent is its upper line). CROWN's choice is the midpoint
(alpha = 1/2). The bias of each tangent is derived rigorously by the relaxation library
(ir/ops/relaxation.py) whatever p is, so every alpha gives a sound bound, and the lines are
differentiable in p. Each side of a pass has its own slopes (per row, as for ReLU), so the two
sides get their own lines.
"""
from __future__ import annotations

import torch

from lirpac.ir.opdef import Interval
from lirpac.ir.ops.common import RowLayout
from lirpac.ir.ops.relaxation import sound_relax


def tangent_alpha_rules(lines_at, ibp, start=None) -> dict:
    """``backward_alpha`` and ``alpha_init`` (ir/opdef.py) for an op whose relaxation with its
    tangent at p is ``lines_at(lower, upper, p) -> Lines`` (checking the op's domain), and
    whose interval rule is ``ibp`` (the fallback where a line is not finite). ``start(lower,
    upper)``: the op's CROWN choice of alpha, where that is not the midpoint."""
    relax_at = sound_relax(lines_at, lambda x, p: ibp(x))

    def alpha_init(lower, upper, **attrs):
        return torch.full_like(lower, 0.5) if start is None else start(lower, upper)

    def backward_alpha(lA, uA, x: Interval, alpha_l, alpha_u, **attrs):
        rows = RowLayout(lA, uA)
        lower, upper = rows.at(x.lower), rows.at(x.upper)

        def lines_of(alpha):
            p = lower + alpha * (upper - lower)
            p = torch.where(torch.isfinite(p), p, torch.zeros_like(p))   # the lines fall back
            return relax_at(*torch.broadcast_tensors(lower, upper, p))
        return rows.sides_apart(alpha_l, alpha_u, lines_of)

    return {"backward_alpha": backward_alpha, "alpha_init": alpha_init}
