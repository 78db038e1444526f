"""Fused IBP of affine layers (linear, conv, matmul with a constant operand): ir/ops/linear.py
``_affine_ibp``.

Through y = W x + b the interval [l, u] maps by centre and radius: mid = (u + l) / 2,
rad = (u - l) / 2, y_mid = W mid + b, y_rad = |W| rad, y in [y_mid - y_rad, y_mid + y_rad].
The products stay cuBLAS/cuDNN; the torch path's elementwise prologue (four ops: two sums,
two halvings) and epilogue (two ops) become one kernel each, with the same float operations
in the same order, so the bounds are the torch rule's bit for bit. An infinite end (the
centre would be inf - inf) runs the torch rule, as does anything the kernels do not take.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from lirpac.ir.opdef import Interval
from lirpac.ir.ops.common import all_finite, constant_abs

BLOCK = 1024


@triton.jit
def centre_radius_kernel(lower, upper, mid, rad, n, BLOCK: tl.constexpr):
    """mid = (u + l) * 0.5, rad = (u - l) * 0.5 on a block of BLOCK elements.

    Memory traffic: reads l and u once; writes mid and rad (the torch path reads each twice
    and writes two intermediates besides).
    """
    at = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = at < n
    lo = tl.load(lower + at, mask=inside, other=0.0)
    up = tl.load(upper + at, mask=inside, other=0.0)
    tl.store(mid + at, (up + lo) * 0.5, mask=inside)
    tl.store(rad + at, (up - lo) * 0.5, mask=inside)


@triton.jit
def interval_of_kernel(mid, dev, lower, upper, n, BLOCK: tl.constexpr):
    """lower = mid - dev, upper = mid + dev on a block of BLOCK elements.

    Memory traffic: reads mid and dev once; writes lower and upper (the torch path reads
    each twice).
    """
    at = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = at < n
    m = tl.load(mid + at, mask=inside, other=0.0)
    d = tl.load(dev + at, mask=inside, other=0.0)
    tl.store(lower + at, m - d, mask=inside)
    tl.store(upper + at, m + d, mask=inside)


def launch_pairwise(kernel, a, b):
    """``kernel`` on two contiguous tensors of one shape: its two outputs."""
    first, second = torch.empty_like(a), torch.empty_like(a)
    n = a.numel()
    kernel[(triton.cdiv(n, BLOCK),)](a, b, first, second, n, BLOCK=BLOCK, num_warps=4)
    return first, second


class CentreRadius(torch.autograd.Function):
    """(mid, rad) of [lower, upper] through ``centre_radius_kernel``; gradient (torch ops):
    d/dl = g_mid / 2 - g_rad / 2, d/du = g_mid / 2 + g_rad / 2."""

    @staticmethod
    def forward(ctx, lower, upper):
        return launch_pairwise(centre_radius_kernel, lower.contiguous(), upper.contiguous())

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_mid, g_rad):
        half_mid, half_rad = g_mid * 0.5, g_rad * 0.5
        return half_mid - half_rad, half_mid + half_rad


class IntervalOf(torch.autograd.Function):
    """[mid - dev, mid + dev] through ``interval_of_kernel``; gradient (torch ops):
    d/dmid = g_l + g_u, d/ddev = g_u - g_l."""

    @staticmethod
    def forward(ctx, mid, dev):
        return launch_pairwise(interval_of_kernel, mid.contiguous(), dev.contiguous())

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_lower, g_upper):
        return g_lower + g_upper, g_upper - g_lower


def _fusable(*tensors) -> bool:
    from lirpac.codegen.triton import runs_on
    first = tensors[0]
    return all(isinstance(t, torch.Tensor) and t.shape == first.shape and t.dtype == first.dtype
               and t.device == first.device for t in tensors) and \
        first.dtype in (torch.float32, torch.float64) and first.numel() > 0 and runs_on(first)


def fused_affine_ibp(apply, torch_rule, x: Interval, weight, bias) -> Interval:
    """``torch_rule`` (``_affine_ibp(apply, ...)``) with its prologue and epilogue fused."""
    if not _fusable(x.lower, x.upper):
        return torch_rule()
    mid, rad = CentreRadius.apply(x.lower, x.upper)
    if not all_finite(rad):
        return torch_rule()
    y_mid = apply(mid, weight, bias)
    y_dev = apply(rad, constant_abs(weight), None)
    if not _fusable(y_mid, y_dev):
        return Interval(y_mid - y_dev, y_mid + y_dev)
    return Interval(*IntervalOf.apply(y_mid, y_dev))


def _right(a, w, b):
    return a.matmul(w)


def _left(a, w, b):
    return w.matmul(a)


def ibp_rules() -> dict:
    """The generated code's ``ibp_linear``, ``ibp_conv`` and ``ibp_matmul_const_*`` through the
    fused steps."""
    from lirpac.ir.ops.linear import _conv_rules, _linear
    from lirpac.ir.opdef import REGISTRY

    def ibp_linear(x, weight, bias=None):
        return fused_affine_ibp(_linear, lambda: REGISTRY["linear"].ibp(x, weight, bias), x, weight, bias)

    def ibp_conv(x, weight, bias=None, **kw):
        return fused_affine_ibp(_conv_rules(**kw), lambda: REGISTRY["conv"].ibp(x, weight, bias, **kw),
                                x, weight, bias)
    def ibp_matmul_const_right(x, weight):
        return fused_affine_ibp(_right, lambda: REGISTRY["matmul_const_right"].ibp(x, weight), x, weight, None)

    def ibp_matmul_const_left(weight, x):
        return fused_affine_ibp(_left, lambda: REGISTRY["matmul_const_left"].ibp(weight, x), x, weight, None)
    return {"ibp_linear": ibp_linear, "ibp_conv": ibp_conv, "ibp_matmul_const_right": ibp_matmul_const_right,
            "ibp_matmul_const_left": ibp_matmul_const_left}
