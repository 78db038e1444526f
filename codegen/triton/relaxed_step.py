"""Fused backward step through an elementwise relaxation (ReLU, leaky ReLU, the S-shaped and
convex/concave families; alpha-CROWN's kink slopes).

The torch path (ir/ops/common.py ``_relaxed_step``) splits each side's coefficients into
positive and negative parts, scales them by the two lines' slopes and reduces them against the
lines' biases: about ten kernels, each reading or writing a coefficient-sized tensor. Here one
kernel reads A once (once for both sides when they share it) and writes the new coefficients
and each row's bias terms. Semantics are the torch path's: a lower bound's positive
coefficients meet the lower line, its negative ones the upper line (the upper bound the other
way round); a bias product takes 0 * inf = 0 (a zero coefficient ignores an unbounded line
end, ir/ops/common.py ``map_unbounded``).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from lirpac.codegen.triton import patches_step, tuning
from lirpac.codegen.triton.relaxed_step_grad import launch_relaxed_step_grad
from lirpac.ir.ops.common import relaxed_backward_lines


@triton.jit
def relaxed_step_kernel(
        l_coeff, u_coeff, new_l, new_u, l_partial, u_partial,
        l_slope, l_bias, u_slope, u_bias, unstable, alpha_l, alpha_u,
        total_rows, rows_per_batch, n, n_blocks, line_batch_stride, alpha_batch_stride, alpha_row_stride,
        HAS_LOWER: tl.constexpr, HAS_UPPER: tl.constexpr, LOAD_UPPER: tl.constexpr,
        HAS_L_SLOPE: tl.constexpr, HAS_L_BIAS: tl.constexpr,
        HAS_U_SLOPE: tl.constexpr, HAS_U_BIAS: tl.constexpr, HAS_BIAS: tl.constexpr,
        HAS_ALPHA: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """A tile of ROWS coefficient rows by BLOCK columns (program (row tile, column block))
    through the relaxation.

    With a = a row's coefficients, p = max(a, 0), m = a - p, lower line (ls, lb), upper
    line (us, ub) (ls = ls + unstable * alpha with alpha-CROWN's slopes, one per side):
      lower side: a' = p ls + m us, bias += sum(p lb + m ub)
      upper side: a' = p us + m ls, bias += sum(p ub + m lb)
    a bias product with p or m zero is 0 (0 * inf = 0).

    Memory traffic: reads A once (both sides' once when they share it: not LOAD_UPPER) and the lines (node-sized,
    shared by a batch's rows: cache hits), writes the new coefficients and one partial bias
    per row, side and column block; nothing coefficient-sized in between (the torch chain
    writes and rereads about eight coefficient-sized temporaries).
    """
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    block = tl.program_id(1)
    cols = block * BLOCK + tl.arange(0, BLOCK)
    row_in = rows < total_rows
    mask = row_in[:, None] & (cols < n)[None, :]
    at = rows[:, None] * n + cols[None, :]
    batch = rows // rows_per_batch
    line_at = (batch * line_batch_stride)[:, None] + cols[None, :]
    # (a line given as 0 is the constant 0: no load; flags are constexpr, resolved at compile
    # time, so no boolean logic on them runs in the kernel)
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
    partial_at = rows * n_blocks + block
    if HAS_ALPHA:
        gate = tl.load(unstable + line_at, mask=mask, other=0.0)
        alpha_at = (batch * alpha_batch_stride + (rows % rows_per_batch) * alpha_row_stride)[:, None] \
            + cols[None, :]
    if HAS_LOWER:
        a = tl.load(l_coeff + at, mask=mask, other=0.0)
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
            a = tl.load(u_coeff + at, mask=mask, other=0.0)
            p = tl.maximum(a, 0.0)
            m = a - p
        slope = ls
        if HAS_ALPHA:
            slope = ls + gate * tl.load(alpha_u + alpha_at, mask=mask, other=0.0)
        tl.store(new_u + at, p * us + m * slope, mask=mask)
        if HAS_BIAS:
            bias = tl.where(p == 0, 0.0, p * ub) + tl.where(m == 0, 0.0, m * lb)
            tl.store(u_partial + partial_at, tl.sum(bias, axis=1), mask=row_in)


def launch_relaxed_step(lA, uA, lines, alphas=None):
    """Run ``relaxed_step_kernel`` on dense (B, S, n) coefficients (``uA is lA`` when the sides
    share them; either may be None) and flat lines: (l_slope, l_bias, u_slope, u_bias), each a
    (B or 1, n) tensor or None for a line that is 0; ``alphas``: (unstable (B or 1, n),
    alpha_l, alpha_u (B or 1, S or 1, n) or None). Returns (new_l, new_u, lbias, ubias), a
    bias None when that side has no bias line."""
    some = lA if lA is not None else uA
    batch, rows, n = some.shape
    unstable, alpha_l, alpha_u = alphas if alphas is not None else (None, None, None)
    some_line = next((t for t in (*lines, unstable) if t is not None), None)
    line_stride = 0 if some_line is None or some_line.shape[0] == 1 else n     # (one batch size for all)
    total = batch * rows
    # (the tile is autotuned, tuning.py: partial biases laid out for its narrowest candidate)
    n_blocks = tuning.max_blocks(total, n)
    has_bias = lines[1] is not None or lines[3] is not None
    outs = [None if c is None else torch.empty_like(c) for c in (lA, uA)]
    partials = [None if c is None or not has_bias else
                torch.zeros(total, n_blocks, dtype=c.dtype, device=c.device) for c in (lA, uA)]
    # (the autotuner zeroes the partials between timed runs: an absent one gets a scratch
    # tensor, never an operand)
    scratch = some.new_zeros(1)
    some_alpha = alpha_l if alpha_l is not None else alpha_u
    alpha_strides = (0, 0) if some_alpha is None else (
        0 if some_alpha.shape[0] == 1 else some_alpha.stride(0), 0 if some_alpha.shape[1] == 1 else some_alpha.stride(1))

    def ptr(t):
        return some if t is None else t    # (an absent operand: never read, by the flags)

    kernel = tuning.tuned(relaxed_step_kernel, total, _TUNING_KEY, ["l_partial", "u_partial"])
    kernel[tuning.tuned_grid(total, n)](
        ptr(lA), ptr(uA), ptr(outs[0]), ptr(outs[1]),
        *(scratch if p is None else p for p in partials),
        *(ptr(t) for t in lines), ptr(unstable), ptr(alpha_l), ptr(alpha_u),
        total, rows, n, n_blocks, line_stride, *alpha_strides,
        HAS_LOWER=lA is not None, HAS_UPPER=uA is not None,
        LOAD_UPPER=uA is not None and (lA is None or uA is not lA),
        HAS_L_SLOPE=lines[0] is not None, HAS_L_BIAS=lines[1] is not None,
        HAS_U_SLOPE=lines[2] is not None, HAS_U_BIAS=lines[3] is not None, HAS_BIAS=has_bias,
        HAS_ALPHA=alphas is not None)
    biases = [None if p is None else p.sum(-1).reshape(batch, rows) for p in partials]
    return outs[0], outs[1], biases[0], biases[1]


# what the best tile depends on besides the row count (tuning.py buckets that): the row
# length and which operands a program reads
_TUNING_KEY = ["n", "HAS_LOWER", "HAS_UPPER", "LOAD_UPPER", "HAS_BIAS", "HAS_ALPHA"]


def _finite_or_zero(t):
    return None if t is None else torch.where(torch.isinf(t), torch.zeros((), dtype=t.dtype, device=t.device), t)


class RelaxedStep(torch.autograd.Function):
    """The fused step with its gradient (relaxed_step_grad.py: one kernel; an infinite bias
    end passes no gradient, as ``map_unbounded``'s; ``unstable``, a 0/1 mask, gets none).

    Inputs: lA, uA ((B, S, n) or None; the same tensor when shared), the lines l_slope, l_bias,
    u_slope, u_bias ((B or 1, 1, n) or None for 0) and, for alpha-CROWN's kinks, unstable
    ((B or 1, 1, n)), alpha_l, alpha_u ((B or 1, S or 1, n)) or None."""

    @staticmethod
    def forward(ctx, lA, uA, l_slope, l_bias, u_slope, u_bias, unstable, alpha_l, alpha_u):
        lines = [None if t is None else t.reshape(t.shape[0], -1).contiguous()
                 for t in (l_slope, l_bias, u_slope, u_bias)]
        alphas = None
        if unstable is not None:
            alphas = (unstable.reshape(unstable.shape[0], -1).contiguous(),
                      *(None if t is None else t.contiguous() for t in (alpha_l, alpha_u)))
        shared = lA is uA
        lA = None if lA is None else lA.contiguous()
        uA = lA if shared else None if uA is None else uA.contiguous()
        new_l, new_u, lbias, ubias = launch_relaxed_step(lA, uA, lines, alphas)
        ctx.shared = shared
        ctx.save_for_backward(lA, None if shared else uA, l_slope, l_bias, u_slope, u_bias,
                              unstable, alpha_l, alpha_u)
        return new_l, new_u, lbias, ubias

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_new_l, g_new_u, g_lbias, g_ubias):
        lA, uA, l_slope, l_bias, u_slope, u_bias, unstable, alpha_l, alpha_u = ctx.saved_tensors
        if ctx.shared:
            uA = lA
        needs = ctx.needs_input_grad
        flat = [None if t is None else t.reshape(t.shape[0], -1).contiguous() for t in (l_slope, u_slope)]
        finite = [None if t is None else _finite_or_zero(t).reshape(t.shape[0], -1).contiguous()
                  for t in (l_bias, u_bias)]
        lines = (flat[0], finite[0], flat[1], finite[1])
        alphas = None
        if unstable is not None:
            alphas = (unstable.reshape(unstable.shape[0], -1).contiguous(),
                      *(None if t is None else t.contiguous() for t in (alpha_l, alpha_u)))
        grads = [None if g is None else g.contiguous() for g in (g_new_l, g_new_u, g_lbias, g_ubias)]
        d_l, d_u, d_alpha_l, d_alpha_u, line_grads = launch_relaxed_step_grad(
            lA, uA, grads, lines, alphas, any(needs[2:6]))

        def line(k, like, name):
            if like is None or not needs[_INPUTS.index(name)]:
                return None
            g = line_grads[:, k].unsqueeze(1)
            if name.endswith("bias"):
                g = torch.where(torch.isfinite(like), g, 0.0)   # (an infinite end: no gradient)
            return g.sum_to_size(like.shape)

        def slope(d, alpha, name):
            return None if d is None or alpha is None or not needs[_INPUTS.index(name)] else d.sum_to_size(alpha.shape)

        return (d_l if needs[0] else None, d_u if needs[1] else None,
                line(0, l_slope, "l_slope"), line(1, l_bias, "l_bias"), line(2, u_slope, "u_slope"),
                line(3, u_bias, "u_bias"), None, slope(d_alpha_l, alpha_l, "alpha_l"),
                slope(d_alpha_u, alpha_u, "alpha_u"))


_INPUTS = ("coeff_l", "coeff_u", "l_slope", "l_bias", "u_slope", "u_bias", "unstable", "alpha_l", "alpha_u")


# -- drop-in replacements for the generated program's functions ------------------------------

def _line(t, coeff, batch):
    """A node-shaped line as a kernel operand (B or 1, 1, *shape), None for a line given as 0;
    False when the kernel cannot take it (a shape that broadcasts inside the node)."""
    if isinstance(t, int):
        return None if t == 0 else False
    if t.shape[1:] != coeff.shape[2:] or t.shape[0] not in (1, batch) or t.dtype != coeff.dtype \
            or t.device != coeff.device:
        return False
    return t.unsqueeze(1)


def _dense_coeffs(lA, uA):
    """(the coefficients as kernel operands, the batch), or None when the kernel does not
    apply: Patches (patches_step.py has their kernel), an unsupported device or dtype,
    or sides of different shapes."""
    coeffs = [c for c in (lA, uA) if c is not None]
    if not coeffs or any(not isinstance(c, torch.Tensor) or c.dim() < 3 for c in coeffs):
        return None
    from lirpac.codegen.triton import runs_on
    first = coeffs[0]
    if any(c.shape != first.shape or c.dtype != first.dtype or not runs_on(c) for c in coeffs) or \
            first.dtype not in (torch.float32, torch.float64) or first.numel() == 0:
        return None
    return first.shape[0]


def _flat(c):
    return None if c is None else c.reshape(c.shape[0], c.shape[1], -1)


def _step(lA, uA, lines, alphas=None):
    """The fused step on node-shaped lines, or None when it does not apply."""
    batch = _dense_coeffs(lA, uA)
    if batch is None:
        return None
    coeff = lA if lA is not None else uA
    operands = [_line(t, coeff, batch) for t in lines]
    if alphas is not None:
        unstable = _line(alphas[0], coeff, batch)
        slopes = [None if a is None else a.reshape(a.shape[0], a.shape[1], -1) for a in alphas[1:]]
        if unstable is None or unstable is False or any(
                a is not None and (a.shape[0] not in (1, batch) or a.shape[1] not in (1, coeff.shape[1])
                                   or a.shape[2] != math.prod(coeff.shape[2:])) for a in slopes):
            return None
        operands += [unstable.reshape(unstable.shape[0], 1, -1)] + slopes
    else:
        operands += [None, None, None]
    if any(o is False for o in operands):
        return None
    flat = [None if o is None else o.reshape(o.shape[0], o.shape[1], -1) for o in operands]
    if len({t.shape[0] for t in flat[:5] if t is not None}) > 1:
        return None     # (lines of different batch sizes: the torch path broadcasts them)
    shared = lA is uA
    fl = _flat(lA)
    fu = fl if shared else _flat(uA)
    new_l, new_u, lbias, ubias = RelaxedStep.apply(fl, fu, *flat)
    shape = coeff.shape
    return (None if new_l is None else new_l.reshape(shape), None if new_u is None else new_u.reshape(shape),
            0 if lbias is None else lbias, 0 if ubias is None else ubias)


def relaxed(lA, uA, lines):
    """``relaxed_backward_lines`` (the generated code's ``relaxed``) through the fused kernel
    where it applies (dense coefficients or Patches on a device Triton runs on), else the
    torch path."""
    if _windowed(lA, uA):
        return patches_step.step(lA, uA, tuple(lines)) or relaxed_backward_lines(lA, uA, lines)
    result = _step(lA, uA, tuple(lines))
    if result is None:
        return relaxed_backward_lines(lA, uA, lines)
    new_l, new_u, lbias, ubias = result
    return [(new_l, new_u)], lbias, ubias


def _windowed(lA, uA):
    """The coefficients are Patches (codegen/patches.py): patches_step.py's kernel."""
    return hasattr(lA if lA is not None else uA, "windows")


def kink_backward_alpha(torch_rule, bottom_slope):
    """An alpha-CROWN kink op's ``backward_alpha`` (ir/ops/kink_alpha.py) through the fused
    kernel: the lower slope of an unstable neuron is a + (1 - a) alpha (ReLU: alpha), elsewhere
    the op's own; ``torch_rule`` where the kernel does not apply."""
    def backward_alpha(lA, uA, lines, alpha_l, alpha_u, **attrs):
        a = bottom_slope(**attrs)
        result = None
        if a < 1 and len(lines) == 5:
            slopes = [None if t is None or c is None else (t if a == 0 else a + (1 - a) * t)
                      for t, c in ((alpha_l, lA), (alpha_u, uA))]
            if _windowed(lA, uA):
                fused = patches_step.step(lA, uA, tuple(lines[:4]), (lines[4], *slopes))
                return fused or torch_rule(lA, uA, lines, alpha_l, alpha_u, **attrs)
            result = _step(lA, uA, tuple(lines[:4]), (lines[4], *slopes))
        if result is None:
            return torch_rule(lA, uA, lines, alpha_l, alpha_u, **attrs)
        new_l, new_u, lbias, ubias = result
        return [(new_l, new_u)], lbias, ubias
    return backward_alpha
