"""Affine layers with constant weights: linear, matmul, convolutions, batch norm (eval).

IBP uses centre and radius (y_c = W c + b, y_r = |W| r); backward multiplies coefficients by
the transposed map (A W, conv_transpose); forward mode splits W into W+ and W- so that lower
functions meet positive weights and upper functions negative ones.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lirpac.ir.opdef import Interval, Linear, OpDef, register
from lirpac.ir.scalar import centre_radius
from lirpac.ir.ops.common import (all_finite, bias_of, both_sides, constant_abs, fold, fold_opt,
                                  lp_norm, map_unbounded, split_pos_neg, times, unbounded_map_ibp,
                                  vjp_transpose)


def _affine_ibp(apply, x: Interval, weight, bias) -> Interval:
    center, radius = centre_radius(x.lower, x.upper)
    if not all_finite(radius):      # an infinite end: the centre would be inf - inf
        w_pos, w_neg = split_pos_neg(weight)
        return unbounded_map_ibp(lambda v: apply(v, w_pos, None), lambda v: apply(v, w_neg, None),
                                 x, 0 if bias is None else apply(torch.zeros_like(center), weight, bias))
    mid = apply(center, weight, bias)
    dev = apply(radius, constant_abs(weight), None)
    return Interval(mid - dev, mid + dev)


def _affine_forward_mode(apply, x: Linear, weight, bias) -> Linear:
    w_pos, w_neg = split_pos_neg(weight)
    finite = all_finite(x.lb, x.ub)

    def both(f_pos, f_neg, b):
        if not finite:      # an infinite bias meets zero weights: 0 * inf = 0
            offset = 0 if b is None else apply(torch.zeros_like(f_pos), w_pos, b)
            return (map_unbounded(lambda v: apply(v, w_pos, None), f_pos, 1)
                    + map_unbounded(lambda v: apply(v, w_neg, None), f_neg, -1) + offset)
        return apply(f_pos, w_pos, b) + apply(f_neg, w_neg, None)

    lw = fold(x.lw, lambda t: apply(t, w_pos, None)) + fold(x.uw, lambda t: apply(t, w_neg, None))
    uw = fold(x.uw, lambda t: apply(t, w_pos, None)) + fold(x.lw, lambda t: apply(t, w_neg, None))
    return Linear(lw, both(x.lb, x.ub, bias), uw, both(x.ub, x.lb, bias))


# -- linear: y = x W^T + b -------------------------------------------------------------------

def _linear(x, weight, bias=None):
    return F.linear(x, weight, bias)


def _linear_backward(lA, uA, x, weight, bias=None):
    out = [(None if lA is None else lA.matmul(weight), None if uA is None else uA.matmul(weight))]
    if bias is None:
        return out + [None], 0, 0
    return out + [None, None], _bias(lA, bias), _bias(uA, bias)


def _bias(coeff, bias):
    if coeff is None:
        return 0
    if coeff.dim() == 3:
        return coeff.matmul(bias)
    return bias_of(coeff, bias)


def _linear_jacobian(batch, x, weight, bias=None):
    """Backward from a linear node with an identity spec is its weight: no identity matmul."""
    coeff = weight.expand(batch, *weight.shape)
    if bias is None:
        return [coeff, None], 0
    return [coeff, None, None], bias.expand(batch, *bias.shape)


def _ball_range(mid: torch.Tensor, eps: torch.Tensor, row_norm: torch.Tensor) -> Interval:
    """f(c) +- eps * ||row||: the range of an affine map over an Lp ball (eps: (B, 1))."""
    radius = eps.reshape(-1, *([1] * (mid.dim() - 1))) * row_norm
    return Interval(mid - radius, mid + radius)


def _linear_ball(center, eps, dual, weight, bias=None) -> Interval:
    norm = lp_norm(weight, dual, dim=1)
    return _ball_range(_linear(center, weight, bias), eps, norm)


def _conv_ball(center, eps, dual, weight, bias=None, **attrs) -> Interval:
    """Row norms of a convolution counting only the inputs inside the image (padding is
    constant): for a finite dual norm q, (the conv of a ones image with |W|^q)^(1/q), with W
    scaled by its largest entry per output channel first (no overflow of |W|^q); for the
    inf-norm the largest |w| among the kernel taps that fall inside the image, read from a
    ones image convolved with one-hot kernels (one per tap; the same mask serves every channel
    and group)."""
    if dual == 2.0:
        norm = _conv(torch.ones_like(center[:1]), weight * weight, None, **attrs).clamp(min=0).sqrt()
    elif dual != math.inf:
        top = weight.abs().flatten(1).amax(1).reshape(-1, *([1] * (weight.dim() - 1)))
        scaled = (weight.abs() / torch.where(top > 0, top, torch.ones_like(top))).pow(dual)
        norm = _conv(torch.ones_like(center[:1]), scaled, None, **attrs).clamp(min=0).pow(1.0 / dual)
        norm = norm * top.reshape(1, -1, *([1] * (norm.dim() - 2)))
    else:
        kernel = weight.shape[2:]
        taps = math.prod(kernel)
        one_hot = torch.eye(taps, dtype=weight.dtype, device=weight.device).reshape(taps, 1, *kernel)
        inside = _conv(torch.ones_like(center[:1, :1]), one_hot, None,
                       **{**attrs, "groups": 1})                         # (1, taps, *out)
        largest = weight.abs().flatten(2).amax(1)                        # (O, taps)
        norm = (largest[:, :, None] * inside.flatten(2)).amax(1)         # (O, positions)
        norm = norm.reshape(1, weight.shape[0], *inside.shape[2:])
    return _ball_range(_conv(center, weight, bias, **attrs), eps, norm)


register(OpDef(
    name="linear", forward=_linear, ibp_ball=_linear_ball,
    ibp=lambda x, weight, bias=None: _affine_ibp(_linear, x, weight, bias),
    backward=_linear_backward,
    forward_mode=lambda x, weight, bias=None: _affine_forward_mode(_linear, x, weight, bias),
    jacobian=_linear_jacobian, backward_memory="fresh",
    doc="y = x @ weight.T + bias; weight and bias constant"))


# -- matmul with a constant operand ----------------------------------------------------------

def _matmul_const_right(x, weight):
    return torch.matmul(x, weight)


register(OpDef(
    name="matmul_const_right", forward=_matmul_const_right,
    ibp=lambda x, weight: _affine_ibp(lambda a, w, b: a.matmul(w), x, weight, None),
    backward=lambda lA, uA, x, weight: (
        [(fold_opt(lA, lambda a: a.matmul(weight.transpose(-1, -2))),
          fold_opt(uA, lambda a: a.matmul(weight.transpose(-1, -2)))), None], 0, 0),
    forward_mode=lambda x, weight: _affine_forward_mode(lambda a, w, b: a.matmul(w), x, weight, None),
    doc="y = x @ weight, weight a constant (2-D)"))


def _matmul_const_left(weight, x):
    return torch.matmul(weight, x)


register(OpDef(
    name="matmul_const_left", forward=_matmul_const_left,
    ibp=lambda weight, x: _affine_ibp(lambda a, w, b: w.matmul(a), x, weight, None),
    backward=lambda lA, uA, weight, x: (
        [None, (fold_opt(lA, lambda a: weight.transpose(-1, -2).matmul(a)),
                fold_opt(uA, lambda a: weight.transpose(-1, -2).matmul(a)))], 0, 0),
    forward_mode=lambda weight, x: _affine_forward_mode(lambda a, w, b: w.matmul(a), x, weight, None),
    doc="y = weight @ x, weight a constant (2-D), x (B, ..., k, n)"))


def _einsum_const(x, weight, *, equation):
    return torch.einsum(equation, x, weight)


def _einsum_const_backward(lA, uA, x, weight, *, in_shapes, equation):
    """The map is linear in x: its transpose by autograd (any equation: diagonals, sums)."""
    def back(a):
        return vjp_transpose(lambda z: torch.einsum(equation, z, weight), a, in_shapes[0])
    return [(fold_opt(lA, back), fold_opt(uA, back)), None], 0, 0


register(OpDef(
    name="einsum_const", forward=_einsum_const,
    ibp=lambda x, weight, *, equation: _affine_ibp(
        lambda a, w, b: torch.einsum(equation, a, w), x, weight, None),
    backward=_einsum_const_backward, backward_needs_shapes=True,
    forward_mode=lambda x, weight, *, equation: _affine_forward_mode(
        lambda a, w, b: torch.einsum(equation, a, w), x, weight, None),
    doc="torch.einsum(equation, x, weight), weight a constant; the equation is batch-first "
        "(x's first subscript and the output's are the batch)"))


# -- convolutions ----------------------------------------------------------------------------

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _conv(x, weight, bias=None, *, stride, padding, dilation, groups):
    return _CONV[weight.dim() - 2](x, weight, bias, stride, padding, dilation, groups)


def _conv_transpose_of(a, weight, in_shape, stride, padding, dilation, groups):
    """Adjoint of the convolution: coefficients on the output to coefficients on the input."""
    nd = weight.dim() - 2
    if nd == 2:
        return conv_transpose_2d(a, weight, stride, padding, dilation, groups, tuple(in_shape[1:]))
    return _CONV_T[nd](a, weight, None, stride, padding, _output_padding(a, weight, stride, padding, dilation,
                                                                         in_shape[1:]), groups, dilation)


def _output_padding(a, weight, stride, padding, dilation, size) -> tuple:
    """The rows and columns of the convolution's input (of spatial ``size``) that its strided
    windows never read: the transposed convolution's output padding."""
    return tuple(size[i] - ((a.shape[2 + i] - 1) * stride[i] - 2 * padding[i]
                            + dilation[i] * (weight.shape[2 + i] - 1) + 1)
                 for i in range(weight.dim() - 2))


def conv_transpose_2d(a, weight, stride, padding, dilation, groups, size):
    """F.conv_transpose2d of a (N, C_out, H, W) to a (N, C_in, *size) map (size fixes the
    output padding). On channels-last memory (oneDNN: several times faster, no large column
    buffer), except for a convolution that reads one channel (an MNIST net's first layer),
    whose transposed convolution oneDNN runs far below its rate: there a product with the
    kernel and a fold (summing the overlapping windows) is 2-4x faster (606 windows of 16x4x4
    through a 4x4 kernel at stride 2: 0.8 ms against 3.3 ms)."""
    if weight.shape[1] == 1 and groups == 1 and tuple(dilation) == (1, 1):
        n, channels, height, width = a.shape
        kernel = weight.shape[2:]
        cols = a.permute(0, 2, 3, 1).reshape(n * height * width, channels) @ weight.reshape(channels, -1)
        cols = cols.view(n, height * width, -1).transpose(1, 2)
        return F.fold(cols, size, kernel, 1, tuple(padding), tuple(stride))
    a = a.contiguous(memory_format=torch.channels_last)
    out_pad = _output_padding(a, weight, stride, padding, dilation, size)
    return F.conv_transpose2d(a, weight, None, tuple(stride), tuple(padding), out_pad, groups, tuple(dilation))


def channel_bias_backward(coeffs, lA, uA, bias, n_spatial: int):
    """Finish a backward rule of a convolution-like op whose bias adds one value per channel:
    the bias terms are the coefficients summed over space, dotted with the bias."""
    if bias is None:
        return coeffs, 0, 0
    spatial = tuple(range(3, 3 + n_spatial))
    lbias = 0 if lA is None else lA.sum(spatial).matmul(bias)
    ubias = 0 if uA is None else uA.sum(spatial).matmul(bias)
    return coeffs + [None], lbias, ubias


def _conv_backward(lA, uA, x, weight, bias=None, *, in_shapes, stride, padding, dilation, groups):
    def back(a):
        return _conv_transpose_of(a, weight, in_shapes[0], stride, padding, dilation, groups)
    coeffs = [both_sides(lA, uA, lambda a: fold(a, back)), None]
    return channel_bias_backward(coeffs, lA, uA, bias, weight.dim() - 2)


def _conv_backward_patches(lA, uA, x, weight, bias=None, *, in_shapes, stride, padding, dilation, groups):
    """Each row's window on the output becomes the window of the input it reads (2-D only)."""
    def back(a):
        return a.conv_transpose(weight, stride, padding, dilation, groups, in_shapes[0])
    coeffs = [both_sides(lA, uA, back), None]
    if bias is None:
        return coeffs, 0, 0
    return coeffs + [None], 0 if lA is None else lA.bias(bias[:, None, None]), \
        0 if uA is None else uA.bias(bias[:, None, None])


def _conv_rules(**attrs):
    def apply(x, w, b):
        return _conv(x, w, b, **attrs)
    return apply


register(OpDef(
    name="conv", forward=_conv, ibp_ball=_conv_ball,
    ibp=lambda x, weight, bias=None, **kw: _affine_ibp(_conv_rules(**kw), x, weight, bias),
    backward=_conv_backward, backward_patches=_conv_backward_patches,
    reads_window=lambda attrs, in_shapes: (attrs["stride"], attrs["padding"], attrs["dilation"],
                                           tuple(in_shapes[1][2:])),
    forward_mode=lambda x, weight, bias=None, **kw: _affine_forward_mode(_conv_rules(**kw), x, weight, bias),
    backward_needs_shapes=True, backward_memory="fresh",
    doc="N-d convolution (1-3 spatial dims) with constant weight and bias"))


# -- batch norm in eval mode: a per-channel scale and shift ----------------------------------

def _bn_scale_shift(ndim, weight, bias, mean, var, eps):
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    view = (-1,) + (1,) * (ndim - 2)
    return scale.reshape(view), shift.reshape(view)


def _batch_norm(x, weight, bias, mean, var, *, eps):
    scale, shift = _bn_scale_shift(x.dim(), weight, bias, mean, var, eps)
    return x * scale + shift


def _bn_ibp(x: Interval, weight, bias, mean, var, *, eps):
    scale, shift = _bn_scale_shift(x.lower.dim(), weight, bias, mean, var, eps)
    a, b = times(x.lower, scale), times(x.upper, scale)
    return Interval(torch.minimum(a, b) + shift, torch.maximum(a, b) + shift)


def _bn_backward(lA, uA, x, weight, bias, mean, var, *, eps):
    scale, shift = _bn_scale_shift(lA.dim() - 1 if lA is not None else uA.dim() - 1,
                                   weight, bias, mean, var, eps)
    return ([both_sides(lA, uA, lambda a: a * scale)] + [None] * 4,
            bias_of(lA, shift), bias_of(uA, shift))


def _bn_backward_patches(lA, uA, x, weight, bias, mean, var, *, eps):
    scale, shift = _bn_scale_shift(4, weight, bias, mean, var, eps)     # (C, 1, 1) each
    return ([both_sides(lA, uA, lambda a: a.with_coeff(a.coeff * scale))] + [None] * 4,
            0 if lA is None else lA.bias(shift), 0 if uA is None else uA.bias(shift))


def _bn_forward_mode(x: Linear, weight, bias, mean, var, *, eps):
    scale, shift = _bn_scale_shift(x.lb.dim(), weight, bias, mean, var, eps)
    pos, neg = split_pos_neg(scale)
    return Linear(pos * x.lw + neg * x.uw, pos * x.lb + neg * x.ub + shift,
                  pos * x.uw + neg * x.lw, pos * x.ub + neg * x.lb + shift)


register(OpDef(name="batch_norm", forward=_batch_norm, ibp=_bn_ibp, backward=_bn_backward,
               backward_patches=_bn_backward_patches,
               forward_mode=_bn_forward_mode,
               doc="eval-mode batch norm: (x - mean) / sqrt(var + eps) * weight + bias"))
