"""The range of a product of deviations over a set where at most k positions move.

For z = a @ b with both factors affine maps of the input, z = a0 @ b + a @ b0 - a0 @ b0 + E,
E = (a - a0) @ (b - b0), at a centre where a = a0, b = b0. The first three terms are linear in
the input, exact in any backward pass; only E needs relaxing. McCormick's planes bound it from
the factors' boxes, as if every element of a and b could move at once. Over a word-substitution
set that is far from the truth: an element of q depends on one position of the sentence, and
with at most k substitutions E is a sum over the moved positions t, t' of the terms
Ga(t) @ Gb(t') (the factors' changes when t alone, then t' alone moves). In attention's
q_i . k_j (i != j) both positions must move, so with k = 1 E is exactly 0: the planes through
the centre are exact there, where McCormick's leave most of the scores' width.

Here E's range: the k most negative (positive) of the per-position extremes of Ga(t) @ Gb(t)
over t's candidates, plus the k (k - 1) most negative (positive) of the cross terms
Ga(t) @ Gb(t') (t != t') over both candidates, each at most 0 (at least 0) since keeping a
word moves nothing. The cross terms take every candidate pair while that stays small, else
|Ga(t)| @ |Gb(t')| with each element's largest move over the candidates (sound, looser).
(A softmax's weights times an affine v, with w - w0 known only to lie in w's box, gave no
tighter bound on the attention benchmark than McCormick's: only products of two affine maps
are anchored.)
"""
from __future__ import annotations

import math

import torch

from lirpac.ir.opdef import Interval
from lirpac.ir.ops.relaxation import slack
from lirpac.perturbations.l0 import top_k_sum

# multiply-adds per sample up to which every candidate pair's cross term is computed
EXACT_CROSS_WORK = 1 << 24


def single_moves(centre: torch.Tensor, moves: torch.Tensor) -> torch.Tensor:
    """(B * T * C, T, d): the sentence with position t alone moved to candidate c, for every
    (t, c), from the centre (B, T, d) and the moves (B, T, C, d)."""
    batch, length, choices, dim = moves.shape
    alone = torch.eye(length, dtype=moves.dtype, device=moves.device)[:, None, :, None]
    points = centre[:, None, None] + alone * moves.unsqueeze(3)          # (B, T, C, T, d)
    return points.reshape(batch * length * choices, length, dim)


def _pair_sum(values: torch.Tensor, k: int, upper: bool) -> torch.Tensor:
    """The sum of the k largest (upper) or k most negative entries along the last dim."""
    return top_k_sum(values, k) if upper else -top_k_sum(-values, k)


def _cross_terms(ga: torch.Tensor, gb: torch.Tensor, exact: bool):
    """(B, T, T', *out) lower and upper bounds of Ga(t) @ Gb(t') over the candidates, 0 where
    t = t' (those are the per-position terms)."""
    if exact:
        every = ga[:, :, :, None, None].matmul(gb[:, None, None])         # (B, T, C, T, C, *out)
        low, high = every.amin(4).amin(2), every.amax(4).amax(2)
    else:
        high = ga.abs().amax(2)[:, :, None].matmul(gb.abs().amax(2)[:, None])
        low = -high
    length = ga.shape[1]
    off = (1 - torch.eye(length, dtype=ga.dtype, device=ga.device)).reshape(
        1, length, length, *[1] * (low.dim() - 3))
    return (low * off).clamp(max=0), (high * off).clamp(min=0)


class ProductAnchor:
    """The factors of a @ b at the set's centre (a0, b0: (B, ..)) and their changes under each
    single move (``a_moved - a0``: (B, T, C, ..)), with at most ``k`` positions moved."""

    def __init__(self, a0, b0, a_moved, b_moved, k: int):
        # (a non-finite value at the centre, e.g. an overflowing exp, anchors at 0: any anchor
        # is sound, as E is measured from it)
        self.a0, self.b0 = (torch.where(torch.isfinite(v), v, 0.0) for v in (a0, b0))
        self.ga, self.gb = a_moved - self.a0[:, None, None], b_moved - self.b0[:, None, None]
        self.k = k

    def deviation_range(self, a: Interval, b: Interval) -> Interval:
        """Range of E = (a - a0) @ (b - b0) over the set, given the factors' bounds."""
        low, high = self._moved_pairs()
        scale = self._magnitude(a, b)
        pad = slack(scale)
        return Interval(low - pad, high + pad)

    def _moved_pairs(self):
        ga, gb, k = self.ga, self.gb, self.k
        alone = ga.matmul(gb)                                         # (B, T, C, *out)
        low = _pair_sum(alone.amin(2).clamp(max=0).movedim(1, -1), k, upper=False)
        high = _pair_sum(alone.amax(2).clamp(min=0).movedim(1, -1), k, upper=True)
        length, choices = ga.shape[1], ga.shape[2]
        if k >= 2 and length >= 2:
            work = length ** 2 * choices ** 2 * math.prod(alone.shape[3:]) * ga.shape[-1]
            cross_low, cross_high = _cross_terms(ga, gb, exact=work <= EXACT_CROSS_WORK)
            pairs = k * (k - 1)
            low = low + _pair_sum(cross_low.movedim(1, -1).movedim(1, -1).flatten(-2), pairs, upper=False)
            high = high + _pair_sum(cross_high.movedim(1, -1).movedim(1, -1).flatten(-2), pairs, upper=True)
        return low, high

    def _magnitude(self, a: Interval, b: Interval) -> torch.Tensor:
        """A bound of |a| @ |b| over the set: the rounding of the moved factors, of a0 @ b0 and
        of the products above is a few ulps of it."""
        size_a = torch.maximum(a.lower.abs(), a.upper.abs()).maximum(self.a0.abs() + self.ga.abs().amax((1, 2)))
        size_b = torch.maximum(b.lower.abs(), b.upper.abs()).maximum(self.b0.abs() + self.gb.abs().amax((1, 2)))
        return 2 * size_a.matmul(size_b)
