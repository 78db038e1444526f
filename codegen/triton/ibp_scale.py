"""Fused IBP of per-channel affine maps y = s x + t: eval-mode batch norm (s, t from its
statistics, ir/ops/linear.py ``_bn_ibp``) and multiplication or division by a constant that is
a scalar or one number per channel (ir/ops/arith.py ``_scale_ibp``).

The torch rule runs six node-sized ops (two guarded products ``times``, a minimum, a maximum,
two shifts), each reading and writing the whole interval; here one kernel reads l and u once
and writes both ends, with the same float operations (one product, one sum per end), so the
bounds are the torch rule's bit for bit. The backward is the torch rule's own (recomputed
under autograd from the saved inputs: the same gradients, ties of min/max included). An
infinite end, or a scale that is neither a scalar nor per channel, runs the torch rule.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from lirpac.ir.opdef import Interval
from lirpac.ir.ops.common import all_finite

BLOCK = 1024


@triton.jit
def scale_shift_ibp_kernel(lower, upper, scale, shift, out_lower, out_upper, n, inner, channels,
                           HAS_SHIFT: tl.constexpr, BLOCK: tl.constexpr):
    """[l, u] through y = s_c x + t_c on a block of BLOCK elements of a (B, C, inner) layout:
    a = s l, b = s u (0 where either factor is 0: ``times``), y in [min(a, b) + t, max(a, b) + t].

    Memory traffic: reads l and u once (s and t: C numbers, cache hits); writes both ends (the
    torch path writes and rereads four node-sized temporaries).
    """
    at = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = at < n
    c = (at // inner) % channels
    s = tl.load(scale + c, mask=inside, other=1.0)
    lo = tl.load(lower + at, mask=inside, other=0.0)
    up = tl.load(upper + at, mask=inside, other=0.0)
    a = tl.where((lo == 0) | (s == 0), 0.0, lo * s)
    b = tl.where((up == 0) | (s == 0), 0.0, up * s)
    new_lo = tl.minimum(a, b)
    new_up = tl.maximum(a, b)
    if HAS_SHIFT:
        t = tl.load(shift + c, mask=inside, other=0.0)
        new_lo = new_lo + t
        new_up = new_up + t
    tl.store(out_lower + at, new_lo, mask=inside)
    tl.store(out_upper + at, new_up, mask=inside)


def launch_scale_shift_ibp(lower, upper, scale, shift, inner: int):
    """The kernel on contiguous (B, C, ...) ends, scale and shift (C,) (shift None: 0), each
    channel ``inner`` elements long."""
    out_lower, out_upper = torch.empty_like(lower), torch.empty_like(upper)
    n = lower.numel()
    scale_shift_ibp_kernel[(triton.cdiv(n, BLOCK),)](
        lower, upper, scale, scale if shift is None else shift, out_lower, out_upper, n, inner, scale.numel(),
        HAS_SHIFT=shift is not None, BLOCK=BLOCK, num_warps=4)
    return out_lower, out_upper


class ScaleShiftIBP(torch.autograd.Function):
    """The fused interval; the gradient is the torch rule's, recomputed by autograd."""

    @staticmethod
    def forward(ctx, lower, upper, scale, shift, inner, torch_rule):
        ctx.torch_rule = torch_rule
        ctx.save_for_backward(lower, upper, scale, shift)
        flat_shift = None if shift is None else shift.reshape(-1).contiguous()
        return launch_scale_shift_ibp(lower.contiguous(), upper.contiguous(), scale.reshape(-1).contiguous(),
                                      flat_shift, inner)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_lower, g_upper):
        saved = ctx.saved_tensors
        needs = ctx.needs_input_grad[:4]
        with torch.enable_grad():
            leaves = [None if t is None else t.detach().requires_grad_(need) for t, need in zip(saved, needs)]
            out = ctx.torch_rule(*leaves)
            wanted = [t for t, need in zip(leaves, needs) if t is not None and need]
            grads = iter(torch.autograd.grad((out.lower, out.upper), wanted, (g_lower, g_upper), allow_unused=True))
        result = [next(grads) if t is not None and need else None for t, need in zip(leaves, needs)]
        return (*result, None, None)


def _channels(scale, shape) -> int | None:
    """How many elements of a sample each entry of ``scale`` covers (``inner``) when it is a
    scalar or one number per channel (dim 1) of a (B, C, ...) tensor of ``shape``; None
    otherwise."""
    if scale.numel() == 1:
        return math.prod(shape[1:])
    dims = list(scale.shape)
    while dims and dims[0] == 1 and len(dims) > len(shape) - 1:
        dims.pop(0)
    if len(shape) < 2 or len(dims) != len(shape) - 1 or dims[0] != shape[1] or any(d != 1 for d in dims[1:]):
        return None
    return math.prod(shape[2:])


def fused_scale_shift_ibp(x: Interval, scale, shift, torch_rule) -> Interval:
    """``torch_rule(lower, upper, scale, shift)`` (an Interval) through the kernel where it
    applies."""
    from lirpac.codegen.triton import runs_on
    lower, upper = x.lower, x.upper
    inner = _channels(scale, lower.shape) if isinstance(scale, torch.Tensor) else None
    tensors = [t for t in (lower, upper, scale, shift) if t is not None]
    if inner is None or lower.shape != upper.shape or lower.dtype not in (torch.float32, torch.float64) \
            or any(t.dtype != lower.dtype or t.device != lower.device for t in tensors) \
            or not runs_on(lower) or lower.numel() == 0 \
            or (shift is not None and shift.numel() != scale.numel()) or not all_finite(lower, upper):
        return torch_rule(lower, upper, scale, shift)
    return Interval(*ScaleShiftIBP.apply(lower, upper, scale, shift, inner, torch_rule))


def ibp_rules() -> dict:
    """The generated code's ``ibp_batch_norm``, ``ibp_mul`` and ``ibp_div`` through the kernel."""
    from lirpac.ir.opdef import REGISTRY
    from lirpac.ir.ops.linear import _bn_scale_shift

    def shifted(lower, upper, scale, shift):
        out = REGISTRY["mul"].ibp(Interval(lower, upper), scale)
        return out if shift is None else Interval(out.lower + shift, out.upper + shift)

    def ibp_batch_norm(x, weight, bias, mean, var, *, eps):
        scale, shift = _bn_scale_shift(x.lower.dim(), weight, bias, mean, var, eps)
        return fused_scale_shift_ibp(x, scale, shift, shifted)

    def ibp_mul(a, b):
        if isinstance(a, Interval) == isinstance(b, Interval):
            return REGISTRY["mul"].ibp(a, b)
        x, scale = (a, b) if isinstance(a, Interval) else (b, a)
        return fused_scale_shift_ibp(x, scale, None, shifted)

    def ibp_div(a, b):
        if not isinstance(a, Interval) or isinstance(b, Interval):
            return REGISTRY["div"].ibp(a, b)
        return fused_scale_shift_ibp(a, 1.0 / b, None, shifted)

    return {"ibp_batch_norm": ibp_batch_norm, "ibp_mul": ibp_mul, "ibp_div": ibp_div}
