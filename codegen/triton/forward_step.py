"""Fused forward-mode step through an elementwise relaxation (ir/ops/common.py
``relaxed_forward``).

Forward mode carries linear bounds ``lw x + lb <= node <= uw x + ub`` with weights of shape
(B, N, *node) (N: input size); through y = f(node) relaxed by lines (ls, lb') and (us, ub'):
  y's lw = max(ls, 0) lw + min(ls, 0) uw,   y's uw = max(us, 0) uw + min(us, 0) lw.
The torch path splits the slopes and takes four weight-sized products and two sums; here one
kernel reads lw and uw once (once in all when they are the same tensor, at the input) and
writes both. The offsets (node-sized) stay torch ops.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from lirpac.codegen.triton import tile
from lirpac.ir.opdef import Linear
from lirpac.ir.ops.common import relaxed_forward, split_pos_neg, times


@triton.jit
def forward_step_kernel(lw, uw, new_lw, new_uw, l_slope, u_slope,
                        total_rows, rows_per_batch, n,
                        SHARED: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """A tile of ROWS weight rows (one per input element) by BLOCK node columns:
    new_lw = max(ls, 0) lw + min(ls, 0) uw, new_uw = max(us, 0) uw + min(us, 0) lw.

    Memory traffic: reads lw and uw once (one of them when SHARED) and the slopes
    (node-sized, shared by a batch's rows: cache hits); writes new_lw and new_uw.
    """
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = (rows < total_rows)[:, None] & (cols < n)[None, :]
    at = rows[:, None] * n + cols[None, :]
    slope_at = ((rows // rows_per_batch) * n)[:, None] + cols[None, :]
    ls = tl.load(l_slope + slope_at, mask=mask, other=0.0)
    us = tl.load(u_slope + slope_at, mask=mask, other=0.0)
    low = tl.load(lw + at, mask=mask, other=0.0)
    if SHARED:
        up = low
    else:
        up = tl.load(uw + at, mask=mask, other=0.0)
    lsp = tl.maximum(ls, 0.0)
    usp = tl.maximum(us, 0.0)
    tl.store(new_lw + at, lsp * low + (ls - lsp) * up, mask=mask)
    tl.store(new_uw + at, usp * up + (us - usp) * low, mask=mask)


def launch_forward_step(lw, uw, l_slope, u_slope):
    """``forward_step_kernel`` on (B, N, n) weights (``uw is lw`` when shared) and (B, n)
    slopes, all contiguous: (new_lw, new_uw)."""
    batch, rows, n = lw.shape
    tile_rows, block = tile(batch * rows, n)
    new_lw, new_uw = torch.empty_like(lw), torch.empty_like(lw)
    forward_step_kernel[(triton.cdiv(batch * rows, tile_rows), triton.cdiv(n, block))](
        lw, uw, new_lw, new_uw, l_slope, u_slope, batch * rows, rows, n,
        SHARED=lw is uw, ROWS=tile_rows, BLOCK=block, num_warps=4)
    return new_lw, new_uw


class ForwardStep(torch.autograd.Function):
    """The fused weights' step with its gradient (torch ops; a slope's split passes its
    gradient to the positive part where the slope is > 0, to the negative part elsewhere, as
    relu's does)."""

    @staticmethod
    def forward(ctx, lw, uw, l_slope, u_slope):
        shared = lw is uw
        lw = lw.contiguous()
        uw = lw if shared else uw.contiguous()
        flat = [s.reshape(s.shape[0], -1).contiguous() for s in (l_slope, u_slope)]
        ctx.shared = shared
        ctx.save_for_backward(lw, None if shared else uw, l_slope, u_slope)
        return launch_forward_step(lw, uw, *flat)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_lw, g_uw):
        lw, uw, l_slope, u_slope = ctx.saved_tensors
        uw = lw if ctx.shared else uw
        zero = torch.zeros((), dtype=lw.dtype, device=lw.device)
        g_lw = zero if g_lw is None else g_lw
        g_uw = zero if g_uw is None else g_uw
        lsp, lsn = split_pos_neg(l_slope)
        usp, usn = split_pos_neg(u_slope)
        d_lw = lsp * g_lw + usn * g_uw
        d_uw = lsn * g_lw + usp * g_uw
        d_ls = torch.where(l_slope > 0, (lw * g_lw).sum(1, keepdim=True), (uw * g_lw).sum(1, keepdim=True))
        d_us = torch.where(u_slope > 0, (uw * g_uw).sum(1, keepdim=True), (lw * g_uw).sum(1, keepdim=True))
        if ctx.shared:
            return d_lw + d_uw, None, d_ls.sum_to_size(l_slope.shape), d_us.sum_to_size(u_slope.shape)
        return d_lw, d_uw, d_ls.sum_to_size(l_slope.shape), d_us.sum_to_size(u_slope.shape)


def fused_relaxed_forward(x: Linear, relax) -> Linear:
    """``relaxed_forward`` with the weights through the fused kernel (slopes node-shaped and
    weights on a device Triton runs on), else the torch path."""
    from lirpac.codegen.triton import runs_on
    l_slope, l_bias, u_slope, u_bias = relax
    node = x.lw.shape[2:]
    fusable = all(isinstance(s, torch.Tensor) and s.shape == x.lb.shape and s.shape[1:] == node
                  and s.dtype == x.lw.dtype for s in (l_slope, u_slope)) and \
        x.lw.shape == x.uw.shape and x.lw.dtype in (torch.float32, torch.float64) and runs_on(x.lw) \
        and x.lw.numel() > 0
    if not fusable:
        return relaxed_forward(x, relax)
    shape = x.lw.shape
    flat_l = x.lw.reshape(shape[0], shape[1], -1)
    flat_u = flat_l if x.uw is x.lw else x.uw.reshape(shape[0], shape[1], -1)
    lw, uw = ForwardStep.apply(flat_l, flat_u, l_slope.reshape(shape[0], 1, -1), u_slope.reshape(shape[0], 1, -1))
    lsp, lsn = split_pos_neg(l_slope)
    usp, usn = split_pos_neg(u_slope)
    lb = times(lsp, x.lb) + times(lsn, x.ub) + l_bias
    ub = times(usp, x.ub) + times(usn, x.lb) + u_bias
    return Linear(lw.reshape(shape), lb, uw.reshape(shape), ub)


def forward_rule(relax):
    """The forward-mode rule of an elementwise op with relaxation ``relax`` (the generated
    code's ``fwd_<op>``) through the fused kernel."""
    def forward_mode(x: Linear, **attrs) -> Linear:
        return fused_relaxed_forward(x, relax(x.bounds.lower, x.bounds.upper, **attrs))
    return forward_mode
