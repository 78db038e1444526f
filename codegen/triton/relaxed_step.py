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


def tile(total_rows: int, n: int) -> tuple[int, int]:
    """(rows, columns) of a program's tile: a row's columns in blocks of up to 1024 (a power
    of two), and short rows packed up to 4096 elements a program (one program per short row
    would leave most of a GPU's lanes, and the interpreter's time, on launch overhead)."""
    block = min(1024, triton.next_power_of_2(max(n, 16)))
    rows = max(2, min(4096 // block, triton.next_power_of_2(max(total_rows, 1))))
    return rows, block


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
    tile_rows, block = tile(batch * rows, n)
    n_blocks = triton.cdiv(n, block)
    has_bias = lines[1] is not None or lines[3] is not None
    outs = [None if c is None else torch.empty_like(c) for c in (lA, uA)]
    partials = [None if c is None or not has_bias else
                torch.empty(batch * rows, n_blocks, dtype=c.dtype, device=c.device) for c in (lA, uA)]
    some_alpha = alpha_l if alpha_l is not None else alpha_u
    alpha_strides = (0, 0) if some_alpha is None else (
        0 if some_alpha.shape[0] == 1 else some_alpha.stride(0), 0 if some_alpha.shape[1] == 1 else some_alpha.stride(1))

    def ptr(t):
        return some if t is None else t    # (an absent operand: never read, by the flags)

    relaxed_step_kernel[(triton.cdiv(batch * rows, tile_rows), n_blocks)](
        ptr(lA), ptr(uA), ptr(outs[0]), ptr(outs[1]), ptr(partials[0]), ptr(partials[1]),
        *(ptr(t) for t in lines), ptr(unstable), ptr(alpha_l), ptr(alpha_u),
        batch * rows, rows, n, n_blocks, line_stride, *alpha_strides,
        HAS_LOWER=lA is not None, HAS_UPPER=uA is not None,
        LOAD_UPPER=uA is not None and (lA is None or uA is not lA),
        HAS_L_SLOPE=lines[0] is not None, HAS_L_BIAS=lines[1] is not None,
        HAS_U_SLOPE=lines[2] is not None, HAS_U_BIAS=lines[3] is not None, HAS_BIAS=has_bias,
        HAS_ALPHA=alphas is not None, ROWS=tile_rows, BLOCK=block, num_warps=4)
    biases = [None if p is None else p.sum(-1).reshape(batch, rows) for p in partials]
    return outs[0], outs[1], biases[0], biases[1]


def _finite_or_zero(t):
    return None if t is None else torch.where(torch.isinf(t), torch.zeros((), dtype=t.dtype, device=t.device), t)


class RelaxedStep(torch.autograd.Function):
    """The fused step with its gradient (torch ops: each a product of the incoming gradient
    with a mask or a line, as autograd builds from the torch path; an infinite bias end
    passes no gradient, as ``map_unbounded``'s).

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
        lb, ub = _finite_or_zero(l_bias), _finite_or_zero(u_bias)
        grads: dict = {}

        def add(name, value):
            grads[name] = value if name not in grads else grads[name] + value

        def lower_slope(alpha):
            if alpha is None:
                return l_slope
            return unstable * alpha if l_slope is None else l_slope + unstable * alpha

        # (side, coefficients, gradients, alpha, [(line names and values) met by the positive
        # part, then by the negative part])
        for side, coeff, g_new, g_bias, alpha in (("l", lA, g_new_l, g_lbias, alpha_l),
                                                  ("u", uA, g_new_u, g_ubias, alpha_u)):
            if coeff is None or (g_new is None and g_bias is None):
                continue
            slope_low = lower_slope(alpha)
            met = (("slope_low", slope_low, "l_bias", lb), ("u_slope", u_slope, "u_bias", ub))
            pos_line, neg_line = met if side == "l" else met[::-1]
            gb = None if g_bias is None else g_bias.unsqueeze(-1)
            positive = coeff > 0
            on = [_terms(g_new, slope, gb, bias) for _, slope, _, bias in (pos_line, neg_line)]
            add("coeff_" + side, torch.where(positive, on[0], on[1]))
            pos = torch.relu(coeff)
            for part, (slope_name, _, bias_name, bias) in ((pos, pos_line), (coeff - pos, neg_line)):
                if g_new is not None:
                    value = part * g_new
                    if slope_name == "slope_low":
                        add("l_slope", value)
                        if alpha is not None:
                            add("alpha_" + side, unstable * value)
                            add("unstable", alpha * value)
                    else:
                        add(slope_name, value)
                if gb is not None and bias is not None:
                    finite = torch.isfinite(l_bias if bias_name == "l_bias" else u_bias)
                    add(bias_name, torch.where(finite, part * gb, 0.0))

        def out(name, like):
            g = grads.get(name)
            if like is None or g is None or not ctx.needs_input_grad[_INPUTS.index(name)]:
                return None
            return g.sum_to_size(like.shape)

        g_l, g_u = grads.get("coeff_l"), grads.get("coeff_u")
        if ctx.shared:
            g_l, g_u = (g_u if g_l is None else g_l if g_u is None else g_l + g_u), None
        return (g_l, g_u, out("l_slope", l_slope), out("l_bias", l_bias), out("u_slope", u_slope),
                out("u_bias", u_bias), out("unstable", unstable), out("alpha_l", alpha_l),
                out("alpha_u", alpha_u))


_INPUTS = ("coeff_l", "coeff_u", "l_slope", "l_bias", "u_slope", "u_bias", "unstable", "alpha_l", "alpha_u")


def _terms(g_new, slope, gb, bias):
    """g_new * slope + gb * bias, skipping absent factors (0)."""
    some = g_new if g_new is not None else gb
    total = torch.zeros((), dtype=some.dtype, device=some.device)
    if g_new is not None and slope is not None:
        total = g_new * slope
    if gb is not None and bias is not None:
        total = total + gb * bias
    return total


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
    apply: Patches (the torch path reads the lines at windows), an unsupported device or dtype,
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
    where it applies (dense coefficients on a device Triton runs on), else the torch path."""
    result = _step(lA, uA, tuple(lines))
    if result is None:
        return relaxed_backward_lines(lA, uA, lines)
    new_l, new_u, lbias, ubias = result
    return [(new_l, new_u)], lbias, ubias


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
            result = _step(lA, uA, tuple(lines[:4]), (lines[4], *slopes))
        if result is None:
            return torch_rule(lA, uA, lines, alpha_l, alpha_u, **attrs)
        new_l, new_u, lbias, ubias = result
        return [(new_l, new_u)], lbias, ubias
    return backward_alpha
