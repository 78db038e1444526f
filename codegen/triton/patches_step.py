"""Fused backward step through an elementwise relaxation on Patches (codegen/patches.py).

On Patches each row r of sample b holds coefficients on one KH x KW window of the (C, H, W)
node, at (top[r], left[r]). The torch path gathers every line at every row's window
(``Patches.windows``: a coefficient-sized copy per line) and then runs the dense chain. Here
the kernel reads each line at the window positions itself: a coefficient (b, r, c, i, j) meets
the lines at (b, c, top[r] + i, left[r] + j), clamped into the map as ``windows`` clamps (the
coefficients there are zero: the Patches invariant, so padding adds nothing). Same semantics
as relaxed_step.py otherwise (0 * inf = 0 in the bias products).

Coefficients come in either of the two layouts Patches use: (B, k, C, KH, KW) contiguous, or
channels-last windows (B, k, KH, KW, C) contiguous, as ``conv_transpose`` leaves them; the
batch may be an expanded view (stride 0: the same rows for every sample). The new
coefficients keep the input's layout (the next transposed convolution wants channels last).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from lirpac.codegen.triton import tile


@triton.jit
def _window_offsets(rows, cols, row_in, top, left, k, corner_stride, C, H, W, KH, KW, CL: tl.constexpr):
    """(each row's sample and row within it, each column's channel and window position, the
    flat (C, H, W) offset of each coefficient's position, clamped into the map; whether the
    position lies inside the map). A row's window corner is top[b * corner_stride + r]:
    corner_stride 0 for corners shared by the batch ((k,)), k for per-sample ones ((B, k))."""
    b = rows // k
    r = rows % k
    corner = b * corner_stride + r
    if CL:
        c = cols % C
        i = (cols // C) // KW
        j = (cols // C) % KW
    else:
        c = cols // (KH * KW)
        i = (cols // KW) % KH
        j = cols % KW
    y = tl.load(top + corner, mask=row_in, other=0)[:, None] + i[None, :]
    x = tl.load(left + corner, mask=row_in, other=0)[:, None] + j[None, :]
    inside = (y >= 0) & (y < H) & (x >= 0) & (x < W)
    y = tl.minimum(tl.maximum(y, 0), H - 1)
    x = tl.minimum(tl.maximum(x, 0), W - 1)
    pos = (c * (H * W))[None, :] + y * W + x
    return b, r, c, i, j, pos, inside


@triton.jit
def _alpha_offsets(b, r, c, i, j, pos, alpha_batch_stride, n, C, KH, KW,
                   ALPHA_WINDOWED: tl.constexpr, ALPHA_CL: tl.constexpr):
    """Offsets of alpha-CROWN's slopes: per row and window position ((B or 1, k, C, KH, KW),
    contiguous in its own layout), or node-shaped ((B or 1, C, H, W): read at the windows)."""
    if ALPHA_WINDOWED:
        if ALPHA_CL:
            col = (i * KW + j) * C + c
        else:
            col = c * (KH * KW) + i * KW + j
        return (b * alpha_batch_stride + r * n)[:, None] + col[None, :]
    else:
        return (b * alpha_batch_stride)[:, None] + pos


@triton.jit
def patches_step_kernel(
        l_coeff, u_coeff, new_l, new_u, l_partial, u_partial, top, left,
        l_slope, l_bias, u_slope, u_bias, unstable, alpha_l, alpha_u,
        total_rows, k, corner_stride, n, n_blocks, C, H, W, KH, KW,
        l_batch_stride, u_batch_stride, line_batch_stride, alpha_batch_stride,
        CL: tl.constexpr, HAS_LOWER: tl.constexpr, HAS_UPPER: tl.constexpr, LOAD_UPPER: tl.constexpr,
        HAS_L_SLOPE: tl.constexpr, HAS_L_BIAS: tl.constexpr,
        HAS_U_SLOPE: tl.constexpr, HAS_U_BIAS: tl.constexpr, HAS_BIAS: tl.constexpr,
        HAS_ALPHA: tl.constexpr, ALPHA_WINDOWED: tl.constexpr, ALPHA_CL: tl.constexpr,
        ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """A tile of ROWS window rows (over samples and rows: B k of them) by BLOCK of a window's
    n = C KH KW coefficients, through the relaxation (relaxed_step_kernel's math, the lines read
    at each row's window).

    Memory traffic: reads A once (both sides' once when they share it), top/left per row, the
    lines at the windows (node-sized and shared by overlapping windows: cache hits); writes the
    new coefficients and one partial bias per row, side and column block. The torch path
    writes and rereads a window-gathered copy of each line (coefficient-sized) besides the
    dense chain's temporaries.
    """
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    block = tl.program_id(1)
    cols = block * BLOCK + tl.arange(0, BLOCK)
    row_in = rows < total_rows
    mask = row_in[:, None] & (cols < n)[None, :]
    b, r, c, i, j, pos, inside = _window_offsets(rows, cols, row_in, top, left, k, corner_stride, C, H, W, KH, KW, CL)
    line_at = (b * line_batch_stride)[:, None] + pos
    at = rows[:, None] * n + cols[None, :]
    ls = 0.0
    lb = 0.0
    us = 0.0
    ub = 0.0
    if HAS_L_SLOPE:
        ls = tl.load(l_slope + line_at, mask=mask, other=0.0)
    if HAS_L_BIAS:
        lb = tl.load(l_bias + line_at, mask=mask, other=0.0)
    if HAS_U_SLOPE:
        us = tl.load(u_slope + line_at, mask=mask, other=0.0)
    if HAS_U_BIAS:
        ub = tl.load(u_bias + line_at, mask=mask, other=0.0)
    if HAS_ALPHA:
        gate = tl.load(unstable + line_at, mask=mask, other=0.0)
        alpha_at = _alpha_offsets(b, r, c, i, j, pos, alpha_batch_stride, n, C, KH, KW,
                                  ALPHA_WINDOWED, ALPHA_CL)
    partial_at = rows * n_blocks + block
    within = (r * n)[:, None] + cols[None, :]
    if HAS_LOWER:
        a = tl.load(l_coeff + (b * l_batch_stride)[:, None] + within, mask=mask, other=0.0)
        p = tl.maximum(a, 0.0)
        m = a - p
        slope = ls
        if HAS_ALPHA:
            slope = ls + gate * tl.load(alpha_l + alpha_at, mask=mask, other=0.0)
        tl.store(new_l + at, p * slope + m * us, mask=mask)
        if HAS_BIAS:
            bias = tl.where(p == 0, 0.0, p * lb) + tl.where(m == 0, 0.0, m * ub)
            tl.store(l_partial + partial_at, tl.sum(bias, axis=1), mask=row_in)
    if HAS_UPPER:
        if LOAD_UPPER:
            a = tl.load(u_coeff + (b * u_batch_stride)[:, None] + within, mask=mask, other=0.0)
            p = tl.maximum(a, 0.0)
            m = a - p
        slope = ls
        if HAS_ALPHA:
            slope = ls + gate * tl.load(alpha_u + alpha_at, mask=mask, other=0.0)
        tl.store(new_u + at, p * us + m * slope, mask=mask)
        if HAS_BIAS:
            bias = tl.where(p == 0, 0.0, p * ub) + tl.where(m == 0, 0.0, m * lb)
            tl.store(u_partial + partial_at, tl.sum(bias, axis=1), mask=row_in)


@triton.jit
def patches_step_grad_kernel(
        l_coeff, u_coeff, g_l, g_u, gb_l, gb_u, top, left,
        l_slope, l_bias, u_slope, u_bias, unstable, alpha_l, alpha_u,
        d_l, d_u, d_alpha_l, d_alpha_u, d_lines,
        total_rows, k, corner_stride, n, C, H, W, KH, KW,
        l_batch_stride, u_batch_stride, line_batch_stride, alpha_batch_stride, grad_batch_stride, node_size,
        CL: tl.constexpr, HAS_LOWER: tl.constexpr, HAS_UPPER: tl.constexpr, SHARED: tl.constexpr,
        SEPARATE: tl.constexpr, HAS_G_L: tl.constexpr, HAS_G_U: tl.constexpr,
        HAS_GB_L: tl.constexpr, HAS_GB_U: tl.constexpr,
        HAS_L_SLOPE: tl.constexpr, HAS_L_BIAS: tl.constexpr, HAS_U_SLOPE: tl.constexpr,
        HAS_U_BIAS: tl.constexpr, HAS_ALPHA: tl.constexpr, ALPHA_WINDOWED: tl.constexpr,
        ALPHA_CL: tl.constexpr, LINE_GRADS: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """The gradient of ``patches_step_kernel`` (relaxed_step_grad.py's math): dA per side
    (their sum when SHARED), alpha's gradient per window position (ALPHA_WINDOWED) and, with
    LINE_GRADS, the lines' gradients, added atomically at each coefficient's position into
    ``d_lines`` ((B or 1, 6, C, H, W): d ls, d lb, d us, d ub, d alpha_l, d alpha_u, the last
    two for node-shaped slopes). Positions outside the map get nothing (their coefficients are
    zero, so are their terms). The biases come finite (the launcher's).

    Memory traffic: reads A (once when SHARED), the new coefficients' gradients and one bias
    gradient per row, the lines at the windows; writes dA, alpha's gradient per window and
    node-sized sums (atomic adds, one per coefficient and line that has a gradient).
    """
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    row_in = rows < total_rows
    mask = row_in[:, None] & (cols < n)[None, :]
    b, r, c, i, j, pos, inside = _window_offsets(rows, cols, row_in, top, left, k, corner_stride, C, H, W, KH, KW, CL)
    line_at = (b * line_batch_stride)[:, None] + pos
    at = rows[:, None] * n + cols[None, :]
    within = (r * n)[:, None] + cols[None, :]
    ls = 0.0
    lb = 0.0
    us = 0.0
    ub = 0.0
    if HAS_L_SLOPE:
        ls = tl.load(l_slope + line_at, mask=mask, other=0.0)
    if HAS_L_BIAS:
        lb = tl.load(l_bias + line_at, mask=mask, other=0.0)
    if HAS_U_SLOPE:
        us = tl.load(u_slope + line_at, mask=mask, other=0.0)
    if HAS_U_BIAS:
        ub = tl.load(u_bias + line_at, mask=mask, other=0.0)
    if HAS_ALPHA:
        gate = tl.load(unstable + line_at, mask=mask, other=0.0)
        alpha_at = _alpha_offsets(b, r, c, i, j, pos, alpha_batch_stride, n, C, KH, KW,
                                  ALPHA_WINDOWED, ALPHA_CL)
    # the lines' gradients go to (sample, kind, position): 6 node-sized planes a sample
    plane = (b * grad_batch_stride)[:, None] + pos
    keep = mask & inside
    if HAS_LOWER:
        a = tl.load(l_coeff + (b * l_batch_stride)[:, None] + within, mask=mask, other=0.0)
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
            if ALPHA_WINDOWED:
                tl.store(d_alpha_l + alpha_at, gate * p * g, mask=mask)
            else:
                tl.atomic_add(d_lines + plane + 4 * node_size, gate * p * g, mask=keep)
        if LINE_GRADS:
            tl.atomic_add(d_lines + plane, p * g, mask=keep)
            tl.atomic_add(d_lines + plane + node_size, p * gb, mask=keep)
            tl.atomic_add(d_lines + plane + 2 * node_size, m * g, mask=keep)
            tl.atomic_add(d_lines + plane + 3 * node_size, m * gb, mask=keep)
    if HAS_UPPER:
        if SEPARATE:
            a = tl.load(u_coeff + (b * u_batch_stride)[:, None] + within, mask=mask, other=0.0)
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
            if ALPHA_WINDOWED:
                tl.store(d_alpha_u + alpha_at, gate * m * g, mask=mask)
            else:
                tl.atomic_add(d_lines + plane + 5 * node_size, gate * m * g, mask=keep)
        if LINE_GRADS:
            tl.atomic_add(d_lines + plane + 2 * node_size, p * g, mask=keep)
            tl.atomic_add(d_lines + plane + 3 * node_size, p * gb, mask=keep)
            tl.atomic_add(d_lines + plane, m * g, mask=keep)
            tl.atomic_add(d_lines + plane + node_size, m * gb, mask=keep)


# -- layouts -------------------------------------------------------------------------------

_CHANNELS_LAST = (0, 1, 3, 4, 2)     # (B, k, C, KH, KW) -> (B, k, KH, KW, C)
_BACK = (0, 1, 4, 2, 3)


def _rows(t, cl: bool):
    """``t`` ((B, k, C, KH, KW)) in the layout ``cl`` as (the view the kernel addresses,
    its batch stride: 0 for an expanded batch), or None when it is not laid out so."""
    v = t.permute(*_CHANNELS_LAST) if cl else t
    inner = v[0]
    if not inner.is_contiguous():
        return None
    per_sample = inner.numel()
    if v.shape[0] == 1 or v.stride(0) == 0:
        return v, 0
    return (v, per_sample) if v.stride(0) == per_sample else None


def _in_layout(t, cl: bool):
    """``_rows`` of ``t``, copied into the layout when it is not in it."""
    found = _rows(t, cl)
    if found is None:
        v = (t.permute(*_CHANNELS_LAST) if cl else t).contiguous()
        found = (v, 0 if v.shape[0] == 1 else v[0].numel())
    return found


def _new(shape, like, cl: bool):
    """A fresh (B, k, C, KH, KW) tensor laid out as ``cl`` says: (the (B, k, C, KH, KW) view,
    the view the kernel addresses)."""
    batch, k, c, kh, kw = shape
    if cl:
        raw = torch.empty(batch, k, kh, kw, c, dtype=like.dtype, device=like.device)
        return raw.permute(*_BACK), raw
    raw = torch.empty(shape, dtype=like.dtype, device=like.device)
    return raw, raw


def _alpha_layout(alpha):
    """(the slopes as a kernel operand, per window, channels last, batch stride): per-window
    slopes ((B, k, C, KH, KW), in either layout) or node-shaped ones ((B or 1, C, H, W))."""
    if alpha.dim() == 5:
        for cl in (False, True):
            found = _rows(alpha, cl)
            if found is not None:
                return found[0], True, cl, found[1]
    v = alpha.contiguous()
    return v, alpha.dim() == 5, False, 0 if v.shape[0] == 1 else v[0].numel()


class _Operands:
    """The kernels' operands for one step: the coefficients in the layout ``cl`` (views the
    kernel addresses, batch strides), the lines' and the slopes' batch strides and flags."""

    def __init__(self, lA, uA, lines, alphas, cl: bool):
        self.some = lA if lA is not None else uA
        self.batch, self.k, self.channels, self.kh, self.kw = self.some.shape
        self.n = self.channels * self.kh * self.kw
        self.cl, self.shared = cl, lA is uA
        coeffs = [None if c is None else _in_layout(c, cl) for c in (lA, uA)]
        if self.shared:
            coeffs[1] = coeffs[0]
        self.coeffs = [None if c is None else c[0] for c in coeffs]
        self.coeff_strides = [0 if c is None else c[1] for c in coeffs]
        self.unstable, alpha_l, alpha_u = alphas if alphas is not None else (None, None, None)
        some_line = next((t for t in (*lines, self.unstable) if t is not None), None)
        self.line_stride = 0 if some_line is None or some_line.shape[0] == 1 else some_line[0].numel()
        slopes = [None if a is None else _alpha_layout(a) for a in (alpha_l, alpha_u)]
        present = [a for a in slopes if a is not None]
        if len(present) == 2 and present[0][1:] != present[1][1:]:
            slopes = [_alpha_layout(a.contiguous()) for a in (alpha_l, alpha_u)]
        self.alphas = [None if a is None else a[0] for a in slopes]
        _, self.windowed, self.alpha_cl, self.alpha_stride = next(
            (a for a in slopes if a is not None), (None, False, False, 0))
        self.has_alpha = alphas is not None
        self.rows_tile, self.block = tile(self.batch * self.k, self.n)
        self.n_blocks = triton.cdiv(self.n, self.block)
        self.raw = next(c for c in self.coeffs if c is not None)

    def ptr(self, t):
        return self.raw if t is None else t    # (an absent operand: never read, by the flags)

    def grid(self):
        return (triton.cdiv(self.batch * self.k, self.rows_tile), self.n_blocks)


def _corner_stride(top: torch.Tensor) -> int:
    """Rows between one sample's window corners and the next's: 0 when the batch shares them."""
    return top.shape[1] if top.dim() == 2 else 0


def launch_patches_step(lA, uA, top, left, node, lines, alphas=None, cl=False):
    """Run ``patches_step_kernel``. lA, uA: (B, k, C, KH, KW) window coefficients (``uA is lA``
    when shared; either None); top, left: (k,) window corners, or (B, k) per sample; node: (C, H, W); lines:
    (l_slope, l_bias, u_slope, u_bias), each (B or 1, C, H, W) contiguous or None for 0, one
    batch size for all; alphas: (unstable (like the lines), alpha_l, alpha_u: per window
    (B, k, C, KH, KW) or node-shaped (B or 1, C, H, W), of one layout; either None) or None;
    ``cl``: address the coefficients as channels-last windows. Returns (new_l, new_u, lbias,
    ubias), a bias None when that side has no bias line."""
    o = _Operands(lA, uA, lines, alphas, cl)
    has_bias = lines[1] is not None or lines[3] is not None
    outs = [None if c is None else _new(o.some.shape, o.some, cl) for c in (lA, uA)]
    partials = [None if c is None or not has_bias else
                torch.empty(o.batch * o.k, o.n_blocks, dtype=o.some.dtype, device=o.some.device)
                for c in (lA, uA)]
    patches_step_kernel[o.grid()](
        o.ptr(o.coeffs[0]), o.ptr(o.coeffs[1]), *(o.ptr(None if t is None else t[1]) for t in outs),
        o.ptr(partials[0]), o.ptr(partials[1]), top, left,
        *(o.ptr(t) for t in lines), o.ptr(o.unstable), o.ptr(o.alphas[0]), o.ptr(o.alphas[1]),
        o.batch * o.k, o.k, _corner_stride(top), o.n, o.n_blocks, o.channels, node[1], node[2], o.kh, o.kw,
        *o.coeff_strides, o.line_stride, o.alpha_stride,
        CL=cl, HAS_LOWER=lA is not None, HAS_UPPER=uA is not None, LOAD_UPPER=uA is not None and not o.shared,
        HAS_L_SLOPE=lines[0] is not None, HAS_L_BIAS=lines[1] is not None,
        HAS_U_SLOPE=lines[2] is not None, HAS_U_BIAS=lines[3] is not None, HAS_BIAS=has_bias,
        HAS_ALPHA=o.has_alpha, ALPHA_WINDOWED=o.windowed, ALPHA_CL=o.alpha_cl,
        ROWS=o.rows_tile, BLOCK=o.block, num_warps=4)
    biases = [None if p is None else p.sum(-1).reshape(o.batch, o.k) for p in partials]
    return (None if outs[0] is None else outs[0][0], None if outs[1] is None else outs[1][0],
            biases[0], biases[1])


def launch_patches_step_grad(lA, uA, top, left, node, grads, lines, alphas, line_grads: bool, cl=False):
    """Run ``patches_step_grad_kernel``: operands as ``launch_patches_step``'s (biases finite),
    grads: (g_new_l, g_new_u, g_lbias, g_ubias), each or None. Returns (dA_l, dA_u (None when
    shared: dA_l is the sum), d alpha_l, d alpha_u (per window: like the slopes; node-shaped:
    (B, C, H, W)), the lines' gradients ((B, 4, C, H, W): ls, lb, us, ub) or None)."""
    o = _Operands(lA, uA, lines, alphas, cl)
    channels, height, width = node
    node_size = channels * height * width
    d = [None if c is None or (side == 1 and o.shared) else _new(o.some.shape, o.some, cl)
         for side, c in enumerate((lA, uA))]
    d_alpha = [None] * 2
    if o.windowed:
        d_alpha = [None if a is None else torch.empty_like(a) for a in o.alphas]
    needs_planes = line_grads or (o.has_alpha and not o.windowed)
    d_lines = torch.zeros(o.batch if needs_planes else 1, 6, node_size, dtype=o.some.dtype, device=o.some.device)
    g_l, g_u, gb_l, gb_u = grads
    g_l, g_u = (None if g is None else _in_layout(g, cl)[0].contiguous() for g in (g_l, g_u))
    gb_l, gb_u = (None if g is None else g.contiguous() for g in (gb_l, gb_u))
    patches_step_grad_kernel[o.grid()](
        o.ptr(o.coeffs[0]), o.ptr(o.coeffs[1]), o.ptr(g_l), o.ptr(g_u), o.ptr(gb_l), o.ptr(gb_u), top, left,
        *(o.ptr(t) for t in lines), o.ptr(o.unstable), o.ptr(o.alphas[0]), o.ptr(o.alphas[1]),
        *(o.ptr(None if t is None else t[1]) for t in d), o.ptr(d_alpha[0]), o.ptr(d_alpha[1]), d_lines,
        o.batch * o.k, o.k, _corner_stride(top), o.n, channels, height, width, o.kh, o.kw,
        *o.coeff_strides, o.line_stride, o.alpha_stride, 6 * node_size if needs_planes else 0, node_size,
        CL=cl, HAS_LOWER=lA is not None, HAS_UPPER=uA is not None, SHARED=o.shared, SEPARATE=not o.shared,
        HAS_G_L=g_l is not None, HAS_G_U=g_u is not None, HAS_GB_L=gb_l is not None, HAS_GB_U=gb_u is not None,
        HAS_L_SLOPE=lines[0] is not None, HAS_L_BIAS=lines[1] is not None,
        HAS_U_SLOPE=lines[2] is not None, HAS_U_BIAS=lines[3] is not None,
        HAS_ALPHA=o.has_alpha, ALPHA_WINDOWED=o.windowed, ALPHA_CL=o.alpha_cl, LINE_GRADS=line_grads,
        ROWS=o.rows_tile, BLOCK=o.block, num_warps=4)
    planes = d_lines.reshape(d_lines.shape[0], 6, *node)
    if o.windowed:
        d_alpha = [None if t is None else (t.permute(*_BACK) if o.alpha_cl else t) for t in d_alpha]
    elif o.has_alpha:
        d_alpha = [planes[:, 4], planes[:, 5]]
    return (None if d[0] is None else d[0][0], None if d[1] is None else d[1][0], d_alpha[0], d_alpha[1],
            planes[:, :4] if line_grads else None)


def _finite_or_zero(t):
    return None if t is None else torch.where(torch.isinf(t), torch.zeros((), dtype=t.dtype, device=t.device), t)


_INPUTS = ("coeff_l", "coeff_u", "l_slope", "l_bias", "u_slope", "u_bias", "unstable", "alpha_l", "alpha_u")


class PatchesStep(torch.autograd.Function):
    """The fused step on window coefficients, with its gradient (one kernel each way; an
    infinite bias end passes no gradient, ``unstable``, a 0/1 mask, gets none).

    Inputs: lA, uA ((B, k, C, KH, KW) or None; the same tensor when shared), the lines
    ((B or 1, C, H, W) or None for 0), unstable ((B or 1, C, H, W)), alpha_l, alpha_u (per
    window (B, k, C, KH, KW), node-shaped (B or 1, C, H, W), or None), top, left ((k,)), the
    node's (C, H, W) and the layout flag."""

    @staticmethod
    def forward(ctx, lA, uA, l_slope, l_bias, u_slope, u_bias, unstable, alpha_l, alpha_u, top, left, node, cl):
        shared = lA is uA
        lines = [None if t is None else t.contiguous() for t in (l_slope, l_bias, u_slope, u_bias)]
        alphas = None if unstable is None else (unstable.contiguous(), alpha_l, alpha_u)
        new_l, new_u, lbias, ubias = launch_patches_step(lA, uA, top, left, node, lines, alphas, cl)
        ctx.shared, ctx.node, ctx.cl = shared, node, cl
        ctx.save_for_backward(lA, None if shared else uA, l_slope, l_bias, u_slope, u_bias,
                              unstable, alpha_l, alpha_u, top, left)
        return new_l, new_u, lbias, ubias

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_new_l, g_new_u, g_lbias, g_ubias):
        lA, uA, l_slope, l_bias, u_slope, u_bias, unstable, alpha_l, alpha_u, top, left = ctx.saved_tensors
        if ctx.shared:
            uA = lA
        needs = ctx.needs_input_grad
        lines = tuple(None if t is None else t.contiguous()
                      for t in (l_slope, _finite_or_zero(l_bias), u_slope, _finite_or_zero(u_bias)))
        alphas = None if unstable is None else (unstable.contiguous(), alpha_l, alpha_u)
        d_l, d_u, d_alpha_l, d_alpha_u, line_grads = launch_patches_step_grad(
            lA, uA, top, left, ctx.node, (g_new_l, g_new_u, g_lbias, g_ubias), lines, alphas,
            any(needs[2:6]), ctx.cl)

        def line(k, like, name):
            if like is None or not needs[_INPUTS.index(name)]:
                return None
            g = line_grads[:, k]
            if name.endswith("bias"):
                g = torch.where(torch.isfinite(like), g, 0.0)   # (an infinite end: no gradient)
            return g.sum_to_size(like.shape)

        def slope(d, alpha, name):
            return None if d is None or alpha is None or not needs[_INPUTS.index(name)] else d.sum_to_size(alpha.shape)

        return (d_l if needs[0] else None, d_u if needs[1] else None,
                line(0, l_slope, "l_slope"), line(1, l_bias, "l_bias"), line(2, u_slope, "u_slope"),
                line(3, u_bias, "u_bias"), None, slope(d_alpha_l, alpha_l, "alpha_l"),
                slope(d_alpha_u, alpha_u, "alpha_u"), None, None, None, None)


# -- the drop-in step --------------------------------------------------------------------

def _line(t, coeff, node):
    """A node-shaped line as a kernel operand ((B or 1, C, H, W)), None for a line given as 0,
    False when the kernel cannot take it (a shape that broadcasts inside the node)."""
    if isinstance(t, int):
        return None if t == 0 else False
    if tuple(t.shape[1:]) != tuple(node) or t.shape[0] not in (1, coeff.shape[0]) or t.dtype != coeff.dtype \
            or t.device != coeff.device:
        return False
    return t


def _slopes(alpha, coeff, node):
    """alpha-CROWN's slopes as ``RowLayout.slopes`` reads them: per window when shaped as the
    coefficients, else a shared (B or 1, 1, C, H, W) read at the windows; False otherwise."""
    if alpha is None:
        return None
    if alpha.dtype != coeff.dtype or alpha.device != coeff.device:
        return False
    if alpha.shape == coeff.shape:
        return alpha.contiguous() if alpha.shape[0] > 1 and alpha.stride(0) == 0 else alpha
    if alpha.dim() == 5 and alpha.shape[1] == 1 and tuple(alpha.shape[2:]) == tuple(node) \
            and alpha.shape[0] in (1, coeff.shape[0]):
        return alpha[:, 0]
    return False


def step(lA, uA, lines, alphas=None):
    """``relaxed_backward_lines`` (or a kink's alpha rule, with ``alphas`` = (unstable,
    alpha_l, alpha_u) in the torch rule's shapes) on Patches through the fused kernel:
    ([(new_l, new_u)], lbias, ubias), or None when it does not apply (coefficients that are
    not Patches of one shape, a device Triton does not run on, lines that broadcast)."""
    from lirpac.codegen.patches import Patches
    from lirpac.codegen.triton import runs_on
    sides = [c for c in (lA, uA) if c is not None]
    if not sides or not all(isinstance(c, Patches) for c in sides):
        return None
    first = sides[0]
    coeff, node = first.coeff, first.shape
    if coeff.dim() != 5 or coeff.dtype not in (torch.float32, torch.float64) or coeff.numel() == 0 \
            or not runs_on(coeff) or len(node) != 3:
        return None
    # (both sides' windows are the first's, as the torch rule reads them: RowLayout.at; they
    # come through the same ops, and comparing the corners would wait on the GPU every step)
    for other in sides[1:]:
        if other is not first and (other.coeff.shape != coeff.shape or other.coeff.dtype != coeff.dtype
                                   or other.shape != first.shape or other.top.shape != first.top.shape):
            return None
    operands = [_line(t, coeff, node) for t in lines]
    if alphas is not None:
        unstable = _line(alphas[0], coeff, node)
        slopes = [_slopes(a, coeff, node) for a in alphas[1:]]
        present = [s for s in slopes if s is not None]
        if unstable is None or unstable is False or any(s is False for s in present) or \
                len({s.dim() for s in present}) > 1:
            return None
        operands += [unstable, *slopes]
    else:
        operands += [None, None, None]
    if any(o is False for o in operands):
        return None
    if len({t.shape[0] for t in operands[:5] if t is not None}) > 1:
        return None     # (lines of different batch sizes: the torch path broadcasts them)
    cl = _rows(coeff, False) is None and _rows(coeff, True) is not None
    shared = lA is uA
    cl_coeff = lA.coeff if lA is not None else None
    cu_coeff = cl_coeff if shared else (uA.coeff if uA is not None else None)
    top, left = first.top.contiguous(), first.left.contiguous()
    new_l, new_u, lbias, ubias = PatchesStep.apply(cl_coeff, cu_coeff, *operands, top, left, tuple(node), cl)
    wrap = (lambda c: None if c is None else first.with_coeff(c))
    return [(wrap(new_l), wrap(new_u))], 0 if lbias is None else lbias, 0 if ubias is None else ubias
