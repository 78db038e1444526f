"""Parameter arithmetic of folding passes: forward-only ops on constants.

A pass that folds, say, a BatchNorm into the convolution before it needs the new weight
``W * gamma / sqrt(var + eps)``. Computing it once at compile time would freeze the parameters
(no gradients, no weight updates), so the pass emits these ops as non-perturbed nodes instead:
the generated code evaluates them from the live parameters on every call. None of them is ever
applied to a perturbed tensor, so they need no bound rules.
"""
from __future__ import annotations

import torch

from lirpac.ir.opdef import OpDef, register


def _bn_scale(weight, var, *, eps):
    return weight * torch.rsqrt(var + eps)


def _bn_shift(bias, mean, scale):
    return bias - mean * scale


def _scale_dim(weight, scale, *, dim):
    view = [1] * weight.dim()
    view[dim] = -1
    return weight * scale.reshape(view)


def _as_vector(value, *, size):
    return value.reshape(-1).expand(size)


def _weight_times_shift(weight, shift):
    """W t for a linear weight (out, in); for a conv weight (out, in, *kernel) the response to
    a per-channel constant image with no padding: sum_k W[:, c, k] t[c]."""
    if weight.dim() > 2:
        weight = weight.flatten(2).sum(-1)
    return weight.matmul(shift)


def _channel_image(shift, *, shape):
    return shift.reshape(1, -1, *([1] * (len(shape) - 1))).expand(1, *shape)


register(OpDef(name="bn_scale", forward=_bn_scale,
               doc="batch norm's per-channel scale gamma / sqrt(var + eps)"))
register(OpDef(name="bn_shift", forward=_bn_shift,
               doc="batch norm's per-channel shift beta - mean * scale"))
register(OpDef(name="scale_dim", forward=_scale_dim,
               doc="weight * scale along one dim (rows: folded after, columns: folded before)"))
register(OpDef(name="as_vector", forward=_as_vector,
               doc="a constant broadcast along one axis, as a vector of that axis' size"))
register(OpDef(name="weight_times_shift", forward=_weight_times_shift,
               doc="a layer's response W t to a constant (per-channel) shift t"))
register(OpDef(name="channel_image", forward=_channel_image,
               doc="a per-channel vector as a (1, C, *spatial) image"))
