"""Transposed convolution with constant weight and bias (1-3 spatial dims).

IBP by centre and radius (``convT(c, W) + b``, ``convT(r, |W|)``); forward mode splits W into
W+ and W-. Backward needs the adjoint of ``convT(., W)``, which is the plain convolution with
the same weight, stride, padding, dilation and groups: it maps coefficients on the output back
to exactly the input's shape, because output_padding < stride drops out of the floor.
"""
from __future__ import annotations

import torch.nn.functional as F

from lirpac.ir.opdef import OpDef, aten_lowering, register
from lirpac.ir.ops.common import both_sides, fold
from lirpac.ir.ops.linear import _affine_forward_mode, _affine_ibp, channel_bias_backward

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _conv_transpose(x, weight, bias=None, *, stride, padding, output_padding, groups, dilation):
    return _CONV_T[weight.dim() - 2](x, weight, bias, stride, padding, output_padding, groups,
                                     dilation)


def _rules(**attrs):
    def apply(x, w, b):
        return _conv_transpose(x, w, b, **attrs)
    return apply


def _backward(lA, uA, x, weight, bias=None, *, stride, padding, output_padding, groups, dilation):
    def adjoint(a):
        return _CONV[weight.dim() - 2](a, weight, None, stride, padding, dilation, groups)
    coeffs = [both_sides(lA, uA, lambda a: fold(a, adjoint)), None]
    return channel_bias_backward(coeffs, lA, uA, bias, weight.dim() - 2)


register(OpDef(
    name="conv_transpose", forward=_conv_transpose,
    ibp=lambda x, weight, bias=None, **kw: _affine_ibp(_rules(**kw), x, weight, bias),
    backward=_backward,
    forward_mode=lambda x, weight, bias=None, **kw: _affine_forward_mode(_rules(**kw), x, weight, bias),
    doc="N-d transposed convolution with constant weight and bias"))


@aten_lowering("conv_transpose1d.default", "conv_transpose2d.input", "conv_transpose3d.input")
def _lower(lw, x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    x, weight = lw.value(x), lw.value(weight)
    if weight.perturbed:
        raise lw.error("transposed convolution with a perturbed weight is not supported")
    nd = len(weight.shape) - 2

    def tup(v):
        v = list(v) if isinstance(v, (list, tuple)) else [v]
        return tuple(int(e) for e in (v * nd if len(v) == 1 else v))
    inputs = [x, weight] + ([lw.value(bias)] if bias is not None else [])
    return lw.add("conv_transpose", inputs, stride=tup(stride), padding=tup(padding),
                  output_padding=tup(output_padding), groups=int(groups), dilation=tup(dilation))
