"""The range of a product of deviations over a set where at most k positions move.

For z = a @ b with both factors affine maps of the input, z = a0 @ b + a @ b0 - a0 @ b0 + E,
E = (a - a0) @ (b - b0), at a centre where a = a0, b = b0. The first three terms are linear in
the input, exact in any backward pass; only E needs relaxing. McCormick's planes bound it from
the factors' boxes, as if every element of a and b could move at once. Over a word-substitution
set that is far from the truth: an element of q depends on one position of the sentence, and
with at most k substitutions E is a sum over the moved positions t, t' of the terms
Ga(t) @ Gb(t') (the factors' changes when t alone, then t' alone moves). In attention's
q_i . k_j (i != j) both positions must move, so with k = 1 E is exactly 0: the planes through
the centre are exact there, where McCormick's leave most of the scores' width. In q_i . k_i
one position moves both factors; E's term there is a function of that position's candidate,
which slopes on the row of q and the column of k interpolate (``fitted_slopes``: a linear
function of 2K coordinates through at most C points), so those scores are exact too, for any k.

Here the range of E' (E less the slopes' part): the k most negative (positive) of the
per-position extremes of E's term at t over t's candidates, plus the k (k - 1) most negative
(positive) of the cross terms Ga(t) @ Gb(t') (t != t') over both candidates, each at most 0
(at least 0) since keeping a word moves nothing. The cross terms take every candidate pair
while that stays small, else |Ga(t)| @ |Gb(t')| with each element's largest move over the
candidates (sound, looser). (A softmax's weights times an affine v, with w - w0 known only to
lie in w's box, gave no tighter bound on the attention benchmark than McCormick's: only
products of two affine maps are anchored.)
"""
from __future__ import annotations

import math

import torch

from lirpac.ir.opdef import Interval
from lirpac.ir.ops.relaxation import slack
from lirpac.perturbations.l0 import top_k_sum

# multiply-adds per sample up to which every candidate pair's cross term is computed
EXACT_CROSS_WORK = 1 << 24
# elements of the largest tensor over every single move (B T C times the moved sentence, a
# factor or the product) beyond which a set gives no anchor (256 MB in float32: attention's
# (B, T, C, heads, T, T) grows with T^3)
MAX_ELEMENTS = 1 << 26


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


def _one_position(g: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row (``dim`` -1) or column (``dim`` -2) of a factor's single moves g (B, T, C, ..)
    at the position that moves it most (its only one, for a per-position map such as
    attention's q = e W^T): (B, 1, C, ..), and that position (B, 1, 1, .., M, 1 or 1, N)."""
    weight = g.abs().sum(2, keepdim=True).sum(dim, keepdim=True)      # (B, T, 1, .., 1 or K)
    position = weight.argmax(1, keepdim=True)
    return g.gather(1, position.expand(-1, -1, *g.shape[2:])), position


def fitted_slopes(ga: torch.Tensor, gb: torch.Tensor):
    """Per element (m, n) of a @ b whose row of a and column of b move with one same position
    t: slopes (sa, sb) (B, .., M, N, K) on that row and column that, added to the planes,
    take up E's term at t, Ga(t, c)[m] . Gb(t, c)[:, n], at every candidate c (a linear
    function of the 2K coordinates through at most C points; the least-norm one, ridged).
    Elsewhere 0. Any slopes are sound: E's range is measured after subtracting them."""
    ga_t, pos_a = _one_position(ga, -1)          # (B, 1, C, .., M, K), (B, 1, 1, .., M, 1)
    gb_t, pos_b = _one_position(gb, -2)          # (B, 1, C, .., K, N), (B, 1, 1, .., 1, N)
    ga_t, gb_t = ga_t.squeeze(1), gb_t.squeeze(1)
    same = (pos_a == pos_b).squeeze(2).squeeze(1)                     # (B, .., M, N)
    target = ga_t.matmul(gb_t).movedim(1, -1) * same.unsqueeze(-1)    # (B, .., M, N, C)
    rows = ga_t.movedim(1, -2)                                        # (B, .., M, C, K)
    cols = gb_t.movedim(1, -1)                                        # (B, .., K, N, C)
    gram = (rows.matmul(rows.transpose(-1, -2)).unsqueeze(-3)         # (B, .., M, 1, C, C)
            + cols.movedim(-3, -1).matmul(cols.movedim(-3, -1).transpose(-1, -2)).unsqueeze(-4))
    choices = gram.shape[-1]
    ridge = 1e-6 * gram.diagonal(dim1=-2, dim2=-1).mean(-1, keepdim=True) + torch.finfo(gram.dtype).tiny
    eye = torch.eye(choices, dtype=gram.dtype, device=gram.device)
    weights = torch.linalg.solve(gram + ridge.unsqueeze(-1) * eye, target.unsqueeze(-1)).squeeze(-1)
    slope_a = weights.matmul(rows)                                    # (B, .., M, N, K)
    slope_b = torch.einsum("...nc,...knc->...nk", weights, cols.unsqueeze(-4))
    return slope_a, slope_b


class ProductAnchor:
    """The factors of a @ b at the set's centre (a0, b0: (B, ..)) and their changes under each
    single move (``a_moved - a0``: (B, T, C, ..)), with at most ``k`` positions moved. The
    planes are a0 @ b + a @ b0 - a0 @ b0 + sa . (a - a0) + sb . (b - b0) + E' per element, with
    the slopes of ``fitted_slopes`` and E' = E - sa . (a - a0) - sb . (b - b0)."""

    def __init__(self, a0, b0, a_moved, b_moved, k: int):
        # (a non-finite value at the centre, e.g. an overflowing exp, anchors at 0: any anchor
        # is sound, as E is measured from it)
        self.a0, self.b0 = (torch.where(torch.isfinite(v), v, 0.0) for v in (a0, b0))
        ga, gb = a_moved - self.a0[:, None, None], b_moved - self.b0[:, None, None]
        # a row of a or column of b with a non-finite move has no range: its elements keep
        # McCormick's planes (the moves are zeroed so that no slope or product turns NaN)
        bad_a, bad_b = ~torch.isfinite(ga), ~torch.isfinite(gb)
        self.ga, self.gb = ga.masked_fill(bad_a, 0.0), gb.masked_fill(bad_b, 0.0)
        self.unknown = bad_a.any(-1).any(2).any(1).unsqueeze(-1) | bad_b.any(-2).any(2).any(1).unsqueeze(-2)
        self.k, self._range = k, None
        self.slope_a, self.slope_b = fitted_slopes(self.ga, self.gb)
        # the slopes' part of the planes' offset: sa . a0 + sb . b0 per element
        self.shift = (torch.einsum("...mnk,...mk->...mn", self.slope_a, self.a0)
                      + torch.einsum("...mnk,...kn->...mn", self.slope_b, self.b0))

    def deviation_range(self, a: Interval, b: Interval) -> Interval:
        """Range of E' over the set, given the factors' bounds (which only size the padding)."""
        if self._range is None:       # (the same in every pass: only the padding reads a, b)
            self._range = self._moved_pairs()
        low, high = self._range
        pad = slack(self._magnitude(a, b))
        return Interval((low - pad).masked_fill(self.unknown, -math.inf),
                        (high + pad).masked_fill(self.unknown, math.inf))

    def _moved_pairs(self):
        ga, gb, k = self.ga, self.gb, self.k
        alone = (ga.matmul(gb)                                        # (B, T, C, *out)
                 - torch.einsum("btc...mk,b...mnk->btc...mn", ga, self.slope_a)
                 - torch.einsum("btc...kn,b...mnk->btc...mn", gb, self.slope_b))
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
        """A bound of the terms' sizes: the rounding of the moved factors, of a0 @ b0, of the
        slopes' products and of the sums above is a few ulps of it."""
        size_a = torch.maximum(a.lower.abs(), a.upper.abs()).maximum(self.a0.abs() + self.ga.abs().amax((1, 2)))
        size_b = torch.maximum(b.lower.abs(), b.upper.abs()).maximum(self.b0.abs() + self.gb.abs().amax((1, 2)))
        slopes = (torch.einsum("...mnk,...mk->...mn", self.slope_a.abs(), size_a)
                  + torch.einsum("...mnk,...kn->...mn", self.slope_b.abs(), size_b))
        return 2 * size_a.matmul(size_b) + 2 * slopes
