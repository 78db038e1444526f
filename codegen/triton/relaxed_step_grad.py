"""The gradient of the fused relaxed step (relaxed_step.py), as one kernel.

Autograd through the torch chain runs about twenty coefficient-sized ops per side (masks,
products, selections, reductions); alpha-CROWN differentiates every step of every iteration.
Here one pass over A and the incoming gradients writes dA (both sides' sum when they share A),
alpha's gradient where it is per row, and each row tile's partial sums of the lines' gradients
(reduced over the rows by torch: node-sized).

With p = max(a, 0), m = a - p, a positive coefficient (a > 0) takes the positive part's
gradient (relu's: at a = 0 the negative part's), g the new coefficients' gradient and gb the
row's bias gradient:
  lower side: da = a > 0 ? ls g + lb gb : us g + ub gb;  d ls += p g, d us += m g,
              d lb += p gb, d ub += m gb, d alpha_l = unstable p g
  upper side: da = a > 0 ? us g + ub gb : ls g + lb gb;  d us += p g, d ls += m g,
              d ub += p gb, d lb += m gb, d alpha_u = unstable m g
where ls is the side's lower slope (ls + unstable alpha with alpha-CROWN's slopes) and an
infinite bias end counts as 0 in da and gets no gradient (``map_unbounded``'s 0 * inf = 0).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from lirpac.codegen.triton import tile


@triton.jit
def relaxed_step_grad_kernel(
        l_coeff, u_coeff, g_l, g_u, gb_l, gb_u,
        l_slope, l_bias, u_slope, u_bias, unstable, alpha_l, alpha_u,
        d_l, d_u, d_alpha_l, d_alpha_u, partial,
        rows_per_batch, tiles_per_batch, n, line_batch_stride, alpha_batch_stride, alpha_row_stride,
        HAS_LOWER: tl.constexpr, HAS_UPPER: tl.constexpr, SHARED: tl.constexpr, SEPARATE: tl.constexpr,
        HAS_G_L: tl.constexpr, HAS_G_U: tl.constexpr, HAS_GB_L: tl.constexpr, HAS_GB_U: tl.constexpr,
        HAS_L_SLOPE: tl.constexpr, HAS_L_BIAS: tl.constexpr, HAS_U_SLOPE: tl.constexpr,
        HAS_U_BIAS: tl.constexpr, HAS_ALPHA: tl.constexpr, LINE_GRADS: tl.constexpr,
        ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """A tile of ROWS rows of one batch sample by BLOCK columns (program (sample and row tile,
    column block)); the module docstring gives the math. ``partial[tile, 0:4, cols]``: the
    tile's sums for d ls, d lb, d us, d ub (LINE_GRADS). Biases come finite (infinite ends as
    0: the launcher's); SHARED: one coefficient tensor for both sides (dA summed into d_l),
    SEPARATE: the opposite.

    Memory traffic: reads A (once when SHARED), the new coefficients' gradients and, per row,
    the bias gradients; the lines once per tile; writes dA, alpha's gradient (with alpha) and
    4 node-sized partial sums per row tile.
    """
    tile_id = tl.program_id(0)
    sample = tile_id // tiles_per_batch
    local = (tile_id % tiles_per_batch) * ROWS + tl.arange(0, ROWS)
    row_in = local < rows_per_batch
    rows = sample.to(tl.int64) * rows_per_batch + local
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    col_in = cols < n
    mask = row_in[:, None] & col_in[None, :]
    at = rows[:, None] * n + cols[None, :]
    line_at = sample * line_batch_stride + cols
    ls = 0.0
    lb = 0.0
    us = 0.0
    ub = 0.0
    if HAS_L_SLOPE:
        ls = tl.load(l_slope + line_at, mask=col_in, other=0.0)[None, :]
    if HAS_L_BIAS:
        lb = tl.load(l_bias + line_at, mask=col_in, other=0.0)[None, :]
    if HAS_U_SLOPE:
        us = tl.load(u_slope + line_at, mask=col_in, other=0.0)[None, :]
    if HAS_U_BIAS:
        ub = tl.load(u_bias + line_at, mask=col_in, other=0.0)[None, :]
    if HAS_ALPHA:
        gate = tl.load(unstable + line_at, mask=col_in, other=0.0)[None, :]
        alpha_at = sample * alpha_batch_stride + local[:, None] * alpha_row_stride + cols[None, :]
    acc_ls = 0.0
    acc_lb = 0.0
    acc_us = 0.0
    acc_ub = 0.0
    if HAS_LOWER:
        a = tl.load(l_coeff + at, mask=mask, other=0.0)
        p = tl.maximum(a, 0.0)
        m = a - p
        g = 0.0
        gb = 0.0
        if HAS_G_L:
            g = tl.load(g_l + at, mask=mask, other=0.0)
        if HAS_GB_L:
            gb = tl.load(gb_l + rows, mask=row_in, other=0.0)[:, None]
        slope = ls
        if HAS_ALPHA:
            slope = ls + gate * tl.load(alpha_l + alpha_at, mask=mask, other=0.0)
        da_l = tl.where(a > 0, slope * g + gb * lb, us * g + gb * ub)
        if SEPARATE:
            tl.store(d_l + at, da_l, mask=mask)
        if HAS_ALPHA:
            tl.store(d_alpha_l + at, gate * p * g, mask=mask)
        if LINE_GRADS:
            acc_ls = acc_ls + tl.sum(p * g, axis=0)
            acc_us = acc_us + tl.sum(m * g, axis=0)
            acc_lb = acc_lb + tl.sum(p * gb, axis=0)
            acc_ub = acc_ub + tl.sum(m * gb, axis=0)
    if HAS_UPPER:
        if SEPARATE:
            a = tl.load(u_coeff + at, mask=mask, other=0.0)
            p = tl.maximum(a, 0.0)
            m = a - p
        g = 0.0
        gb = 0.0
        if HAS_G_U:
            g = tl.load(g_u + at, mask=mask, other=0.0)
        if HAS_GB_U:
            gb = tl.load(gb_u + rows, mask=row_in, other=0.0)[:, None]
        slope = ls
        if HAS_ALPHA:
            slope = ls + gate * tl.load(alpha_u + alpha_at, mask=mask, other=0.0)
        da_u = tl.where(a > 0, us * g + gb * ub, slope * g + gb * lb)
        if SHARED:
            tl.store(d_l + at, da_l + da_u, mask=mask)
        if SEPARATE:
            tl.store(d_u + at, da_u, mask=mask)
        if HAS_ALPHA:
            tl.store(d_alpha_u + at, gate * m * g, mask=mask)
        if LINE_GRADS:
            acc_us = acc_us + tl.sum(p * g, axis=0)
            acc_ls = acc_ls + tl.sum(m * g, axis=0)
            acc_ub = acc_ub + tl.sum(p * gb, axis=0)
            acc_lb = acc_lb + tl.sum(m * gb, axis=0)
    if LINE_GRADS:
        out = partial + tile_id.to(tl.int64) * 4 * n + cols
        tl.store(out, acc_ls, mask=col_in)
        tl.store(out + n, acc_lb, mask=col_in)
        tl.store(out + 2 * n, acc_us, mask=col_in)
        tl.store(out + 3 * n, acc_ub, mask=col_in)


def launch_relaxed_step_grad(lA, uA, grads, lines, alphas, line_grads: bool):
    """Run ``relaxed_step_grad_kernel``. lA, uA: the step's (B, S, n) contiguous coefficients
    (``uA is lA`` when shared; either None); grads: (g_new_l, g_new_u, g_lbias, g_ubias), each
    contiguous or None; lines: flat (B or 1, n) contiguous, biases finite, or None for 0;
    alphas: (unstable, alpha_l, alpha_u) as for the forward step, or None. Returns (dA_l, dA_u
    (None when shared: dA_l is the sum), d alpha_l, d alpha_u (B, S, n), the lines' gradients
    ((B, 4, n): ls, lb, us, ub) or None)."""
    some = lA if lA is not None else uA
    batch, rows, n = some.shape
    shared = lA is uA
    rows_tile, block = tile(rows, n)
    tiles = triton.cdiv(rows, rows_tile)
    n_blocks = triton.cdiv(n, block)
    unstable, alpha_l, alpha_u = alphas if alphas is not None else (None, None, None)
    some_line = next((t for t in (*lines, unstable) if t is not None), None)
    line_stride = 0 if some_line is None or some_line.shape[0] == 1 else n
    some_alpha = alpha_l if alpha_l is not None else alpha_u
    alpha_strides = (0, 0) if some_alpha is None else (
        0 if some_alpha.shape[0] == 1 else some_alpha.stride(0), 0 if some_alpha.shape[1] == 1 else some_alpha.stride(1))
    d_l = None if lA is None else torch.empty_like(lA)
    d_u = None if uA is None or shared else torch.empty_like(uA)
    d_alpha = [None if alphas is None or c is None else torch.empty_like(c) for c in (lA, uA)]
    partial = torch.empty(batch * tiles, 4, n, dtype=some.dtype, device=some.device) if line_grads else None

    def ptr(t):
        return some if t is None else t    # (an absent operand: never read, by the flags)

    g_l, g_u, gb_l, gb_u = grads
    relaxed_step_grad_kernel[(batch * tiles, n_blocks)](
        ptr(lA), ptr(uA), ptr(g_l), ptr(g_u), ptr(gb_l), ptr(gb_u),
        *(ptr(t) for t in lines), ptr(unstable), ptr(alpha_l), ptr(alpha_u),
        ptr(d_l), ptr(d_u), ptr(d_alpha[0]), ptr(d_alpha[1]), ptr(partial),
        rows, tiles, n, line_stride, *alpha_strides,
        HAS_LOWER=lA is not None, HAS_UPPER=uA is not None, SHARED=shared, SEPARATE=not shared,
        HAS_G_L=g_l is not None, HAS_G_U=g_u is not None, HAS_GB_L=gb_l is not None, HAS_GB_U=gb_u is not None,
        HAS_L_SLOPE=lines[0] is not None, HAS_L_BIAS=lines[1] is not None,
        HAS_U_SLOPE=lines[2] is not None, HAS_U_BIAS=lines[3] is not None,
        HAS_ALPHA=alphas is not None, LINE_GRADS=line_grads, ROWS=rows_tile, BLOCK=block, num_warps=4)
    line_grad = None if partial is None else partial.reshape(batch, tiles, 4, n).sum(1)
    return d_l, d_u, d_alpha[0], d_alpha[1], line_grad
