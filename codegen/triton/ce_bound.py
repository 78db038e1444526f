"""Fused cross-entropy bound of certified training (lirpac/training.py ``worst_case_ce``).

With margin lower bounds lb_j <= z_y - z_j, the upper bounds of d_j = z_j - z_y are -lb_j
(d_y = 0), and the cross-entropy over the set is at most log(1 + sum_j exp(-lb_j)). Per row,
stably: m = max(0, max_j -lb_j), bound = m + log(exp(-m) + sum_j exp(-lb_j - m)). The torch
path builds the logits (a concatenation), takes log-softmax and gathers; here one kernel reads
each row once and writes one number. Its gradient, d bound / d lb_j = -exp(-lb_j - bound) (the
softmax), is one torch expression.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_CLASSES = 1024


@triton.jit
def ce_bound_kernel(margin_lower, bound, rows, n, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """ROWS rows of the (rows, n) margin lower bounds (n <= BLOCK): each row's
    log(1 + sum_j exp(-lb_j)), shifted by m = max(0, max_j -lb_j).

    Memory traffic: reads the margins once; writes one number per row.
    """
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    row_in = row < rows
    mask = row_in[:, None] & (cols < n)[None, :]
    d = -tl.load(margin_lower + row[:, None] * n + cols[None, :], mask=mask, other=float("inf"))
    m = tl.maximum(tl.max(d, axis=1), 0.0)
    total = tl.exp(-m) + tl.sum(tl.exp(d - m[:, None]), axis=1)
    tl.store(bound + row, m + tl.log(total), mask=row_in)


def launch_ce_bound(margin_lower):
    """``ce_bound_kernel`` on contiguous (rows, n) margins, n <= MAX_CLASSES: (rows,)."""
    rows, n = margin_lower.shape
    block = 1 << max(n - 1, 15).bit_length()
    tile_rows = max(2, min(4096 // block, 1 << max(rows - 1, 0).bit_length()))
    bound = torch.empty(rows, dtype=margin_lower.dtype, device=margin_lower.device)
    ce_bound_kernel[(triton.cdiv(rows, tile_rows),)](margin_lower, bound, rows, n,
                                                     ROWS=tile_rows, BLOCK=block, num_warps=4)
    return bound


class CeBound(torch.autograd.Function):
    """The per-row bound with its gradient: d/dlb_j = -g exp(-lb_j - bound)."""

    @staticmethod
    def forward(ctx, margin_lower):
        margin_lower = margin_lower.contiguous()
        bound = launch_ce_bound(margin_lower)
        ctx.save_for_backward(margin_lower, bound)
        return bound

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        margin_lower, bound = ctx.saved_tensors
        return -g.unsqueeze(1) * torch.exp(-margin_lower - bound.unsqueeze(1))


def fusable(margin_lower) -> bool:
    """The kernel takes these margins: (rows, n) floats, finite, n <= MAX_CLASSES, on a device
    Triton runs on (the torch loss otherwise: an infinite margin is its inf or NaN)."""
    from lirpac.codegen.triton import runs_on
    from lirpac.ir.ops.common import all_finite
    return (isinstance(margin_lower, torch.Tensor) and margin_lower.dim() == 2
            and 0 < margin_lower.shape[1] <= MAX_CLASSES and margin_lower.shape[0] > 0
            and margin_lower.dtype in (torch.float32, torch.float64) and runs_on(margin_lower)
            and all_finite(margin_lower))


def ce_bound(margin_lower):
    """Per row, log(1 + sum_j exp(-lb_j)) through the kernel (callers check ``fusable``)."""
    return CeBound.apply(margin_lower)
