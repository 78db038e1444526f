"""Structural ops: reshape, permute, slicing, padding, concatenation, pooling, sums.

All are linear with nonnegative matrices, so IBP maps both ends and forward mode maps every
function (``linear_map``); backward applies the exact transpose. Dimensions in attrs are those
of the full batch-first tensor (dim 0 is the batch and never moves).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lirpac.ir.opdef import Interval, Linear, OpDef, register
from lirpac.ir.ops.common import bias_of, both_sides, fold_opt, linear_map


def _reshape(x, *, shape):
    return x.reshape(x.shape[0], *shape)


linear_map("reshape", _reshape,
           rows_transpose=lambda a, in_shape, shape: a.reshape(a.shape[0], a.shape[1], *in_shape),
           doc="reshape to a per-sample shape (view, flatten, squeeze, unsqueeze)",
           backward_memory="view")


def _permute(x, *, dims):
    return x.permute(*dims)


def _inverse_permute(a, in_shape, dims):
    inverse = [0] * len(dims)
    for i, d in enumerate(dims):
        inverse[d] = i
    return a.permute(*inverse)


linear_map("permute", _permute, transpose=_inverse_permute,
           doc="permute non-batch dims (transpose too); dims[0] == 0")


def _slice(x, *, dim, start, end, step):
    return x.narrow(dim, start, end - start)[(slice(None),) * dim + (slice(None, None, step),)] \
        if step != 1 else x.narrow(dim, start, end - start)


def _slice_transpose(a, in_shape, dim, start, end, step):
    full = a.new_zeros(a.shape[0], *in_shape)
    index = (slice(None),) * dim + (slice(start, end, step),)
    full[index] = a
    return full


linear_map("slice", _slice, transpose=_slice_transpose,
           doc="x[..., start:end:step, ...] along one non-batch dim")


def _pad(x, *, pad, value=0.0):
    return F.pad(x, pad, value=value)


def _pad_backward(lA, uA, x, *, in_shapes, pad, value=0.0):
    def crop(a):
        index = [slice(None)] * a.dim()
        for i in range(len(pad) // 2):
            dim = a.dim() - 1 - i
            lo, hi = pad[2 * i], pad[2 * i + 1]
            index[dim] = slice(lo, a.shape[dim] - hi)
        return a[tuple(index)]
    lbias = ubias = 0
    if value != 0.0:
        # the padded cells are the constant `value`: their coefficients add to the bias
        lbias = 0 if lA is None else value * (lA.flatten(2).sum(-1) - crop(lA).flatten(2).sum(-1))
        ubias = 0 if uA is None else value * (uA.flatten(2).sum(-1) - crop(uA).flatten(2).sum(-1))
    return [(None if lA is None else crop(lA), None if uA is None else crop(uA))], lbias, ubias


def _pad_forward_mode(x: Linear, *, pad, value=0.0):
    def padw(w):
        return F.pad(w, pad, value=0.0)
    return Linear(padw(x.lw), _pad(x.lb, pad=pad, value=value), padw(x.uw), _pad(x.ub, pad=pad, value=value))


register(OpDef(name="pad", forward=_pad,
               ibp=lambda x, *, pad, value=0.0: Interval(_pad(x.lower, pad=pad, value=value),
                                                         _pad(x.upper, pad=pad, value=value)),
               backward=_pad_backward, forward_mode=_pad_forward_mode, backward_needs_shapes=True,
               doc="constant padding of trailing dims (F.pad order)"))


# -- cat: operands may mix constants and perturbed tensors ------------------------------------

def _cat(*xs, dim):
    batch = max(x.shape[0] for x in xs if x.dim() > 0)
    return torch.cat([x.expand(batch, *x.shape[1:]) if x.shape[0] != batch else x for x in xs], dim)


def _cat_ibp(*xs, dim):
    lowers = [x if isinstance(x, torch.Tensor) else x.lower for x in xs]
    uppers = [x if isinstance(x, torch.Tensor) else x.upper for x in xs]
    return Interval(_cat(*lowers, dim=dim), _cat(*uppers, dim=dim))


def _cat_backward(lA, uA, *xs, dim, in_shapes, sizes):
    coeffs = []
    lbias = ubias = 0
    offset = 0
    for x, size in zip(xs, sizes):
        la = None if lA is None else lA.narrow(dim + 1, offset, size)
        ua = None if uA is None else uA.narrow(dim + 1, offset, size)
        offset += size
        if isinstance(x, torch.Tensor):
            coeffs.append(None)
            lbias = lbias + bias_of(la, x[0] if x.shape[0] == 1 else x)
            ubias = ubias + bias_of(ua, x[0] if x.shape[0] == 1 else x)
        else:
            coeffs.append((la, ua))
    return coeffs, lbias, ubias


def _cat_forward_mode(*xs, dim):
    n_in = next(x.lw.shape[1] for x in xs if isinstance(x, Linear))
    batch = next(x.lw.shape[0] for x in xs if isinstance(x, Linear))
    parts = []
    for x in xs:
        if isinstance(x, torch.Tensor):
            value = x.expand(batch, *x.shape[1:])
            zero = value.new_zeros(batch, n_in, *x.shape[1:])
            x = Linear(zero, value, zero, value)
        parts.append(x)
    return Linear(torch.cat([p.lw for p in parts], dim + 1), torch.cat([p.lb for p in parts], dim),
                  torch.cat([p.uw for p in parts], dim + 1), torch.cat([p.ub for p in parts], dim))


def _cat_backward_patches(lA, uA, *xs, dim, in_shapes, sizes):
    """Channel concatenation of (C, H, W) maps: each operand takes its channels of every
    window (the positions are the same); a constant operand's part joins the bias."""
    coeffs, lbias, ubias, offset = [], 0, 0, 0
    for x, size in zip(xs, sizes):
        la, ua = (None if a is None else a.channels(offset, size) for a in (lA, uA))
        offset += size
        if isinstance(x, torch.Tensor):
            coeffs.append(None)
            lbias = lbias + (0 if la is None else la.bias(x))
            ubias = ubias + (0 if ua is None else ua.bias(x))
        else:
            coeffs.append((la, ua))
    return coeffs, lbias, ubias


def _cat_reads_window(attrs, in_shapes):
    """A concatenation of (C, H, W) maps along C keeps every position: a 1x1 window."""
    return ((1, 1), (0, 0), (1, 1), (1, 1)) if attrs["dim"] in (1, -3) else None


register(OpDef(name="cat", forward=lambda *xs, dim, sizes=None: _cat(*xs, dim=dim),
               ibp=lambda *xs, dim, sizes=None: _cat_ibp(*xs, dim=dim),
               backward=_cat_backward,
               backward_patches=_cat_backward_patches, reads_window=_cat_reads_window,
               forward_mode=lambda *xs, dim, sizes=None: _cat_forward_mode(*xs, dim=dim),
               backward_needs_shapes=True,
               doc="concatenate along a non-batch dim; sizes = each operand's extent there"))


# -- pooling and reductions ---------------------------------------------------------------------

def _avg_pool(x, *, kernel_size, stride, padding, ceil_mode=False, count_include_pad=True,
              divisor_override=None):
    pool = {3: F.avg_pool1d, 4: F.avg_pool2d, 5: F.avg_pool3d}[x.dim()]
    if x.dim() == 3:
        return pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad)
    return pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


def _avg_pool_exact_as_conv(attrs) -> bool:
    """2-D average pooling that is a depthwise convolution with weights 1 / (kh * kw)."""
    return (len(attrs["kernel_size"]) == 2 and not attrs.get("ceil_mode", False)
            and attrs.get("divisor_override") is None
            and (attrs.get("count_include_pad", True) or not any(attrs["padding"])))


def _avg_pool_backward_patches(lA, uA, x, *, in_shapes, kernel_size, stride, padding, **attrs):
    """Each row's window goes back through the pooling as through its depthwise convolution."""
    channels = in_shapes[0][0]
    like = lA.coeff if lA is not None else uA.coeff
    weight = like.new_full((channels, 1, *kernel_size), 1.0 / math.prod(kernel_size))

    def back(a):
        return a.conv_transpose(weight, stride, padding, (1, 1), channels, in_shapes[0])
    return [both_sides(lA, uA, back)], 0, 0


linear_map("avg_pool", _avg_pool, doc="average pooling (1-3 spatial dims)",
           backward_patches=_avg_pool_backward_patches,
           reads_window=lambda attrs, in_shapes: ((attrs["stride"], attrs["padding"], (1, 1), attrs["kernel_size"])
                                                  if _avg_pool_exact_as_conv(attrs) else None))


def _adaptive_avg_pool(x, *, output_size):
    pool = {3: F.adaptive_avg_pool1d, 4: F.adaptive_avg_pool2d, 5: F.adaptive_avg_pool3d}[x.dim()]
    return pool(x, output_size)


linear_map("adaptive_avg_pool", _adaptive_avg_pool, doc="adaptive average pooling")


def _sum(x, *, dims, keepdim=False):
    return x.sum(dim=dims, keepdim=keepdim)


def _sum_transpose(a, in_shape, dims, keepdim=False):
    if not keepdim:
        for d in sorted(dims):
            a = a.unsqueeze(d)
    return a.expand(a.shape[0], *in_shape)


linear_map("sum", _sum, transpose=_sum_transpose, doc="sum over non-batch dims")


def _mean(x, *, dims, keepdim=False):
    return x.mean(dim=dims, keepdim=keepdim)


def _mean_transpose(a, in_shape, dims, keepdim=False):
    count = 1
    for d in dims:
        count *= in_shape[d - 1]
    return _sum_transpose(a, in_shape, dims, keepdim) / count


linear_map("mean", _mean, transpose=_mean_transpose, doc="mean over non-batch dims")
