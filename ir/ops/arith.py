"""Elementwise arithmetic that stays affine: add/sub of any operands, mul/div by constants, neg.

Constant operands broadcast like torch does; coefficients flowing back to a perturbed operand
that was broadcast are summed over the broadcast dims (``unbroadcast``).
"""
from __future__ import annotations

import torch

from lirpac.ir.opdef import Interval, Linear, OpDef, register
from lirpac.ir.ops.common import bias_of, split_pos_neg, times, unbroadcast


def _is_const(x) -> bool:
    return isinstance(x, torch.Tensor)


# -- add / sub: y = a + s * b with s = +1 or -1 ----------------------------------------------

def _sum_ibp(a, b, sign: int) -> Interval:
    if _is_const(a):
        a = Interval(a, a)
    if _is_const(b):
        b = Interval(b, b)
    if sign > 0:
        return Interval(a.lower + b.lower, a.upper + b.upper)
    return Interval(a.lower - b.upper, a.upper - b.lower)


def _sum_backward(lA, uA, a, b, sign: int, in_shapes):
    coeffs = []
    lbias = ubias = 0
    for i, (operand, s) in enumerate(((a, 1), (b, sign))):
        if _is_const(operand):
            coeffs.append(None)
            lb, ub = bias_of(lA, operand), bias_of(uA, operand)
            lbias = lbias + (lb if s > 0 else -lb) if lA is not None else 0
            ubias = ubias + (ub if s > 0 else -ub) if uA is not None else 0
        else:
            la = unbroadcast(lA, in_shapes[i])
            ua = unbroadcast(uA, in_shapes[i])
            coeffs.append((la, ua) if s > 0 else (None if la is None else -la, None if ua is None else -ua))
    return coeffs, lbias, ubias


def _sum_backward_patches(lA, uA, a, b, sign: int, in_shapes):
    """Patches flow unchanged to both operands (the code generator only uses this rule when
    perturbed operands have the node's shape); a constant operand adds its window sums."""
    coeffs = []
    lbias = ubias = 0
    for operand, s in ((a, 1), (b, sign)):
        if _is_const(operand):
            coeffs.append(None)
            if lA is not None:
                lbias = lbias + s * lA.bias(operand)
            if uA is not None:
                ubias = ubias + s * uA.bias(operand)
        else:
            coeffs.append((lA, uA) if s > 0 else (None if lA is None else -lA, None if uA is None else -uA))
    return coeffs, lbias, ubias


def _sum_forward_mode(a, b, sign: int) -> Linear:
    def lin(x):
        if _is_const(x):
            zero = torch.zeros((), dtype=x.dtype, device=x.device)
            return Linear(zero, x, zero, x)
        return x
    a, b = lin(a), lin(b)
    if sign < 0:
        b = Linear(-b.uw, -b.ub, -b.lw, -b.lb)
    lw, lb, uw, ub = _wsum(a.lw, b.lw), a.lb + b.lb, _wsum(a.uw, b.uw), a.ub + b.ub
    if lw.shape[2:] != lb.shape[1:]:    # a constant operand wider than the perturbed one
        lw, uw = (w.expand(*w.shape[:2], *lb.shape[1:]).contiguous() for w in (lw, uw))
    return Linear(lw, lb, uw, ub)


def _wsum(x, y):
    # weights of a constant are a 0-dim zero; broadcasting handles shapes otherwise
    if x.dim() == 0:
        return y
    if y.dim() == 0:
        return x
    return x + y


register(OpDef(
    name="add", forward=lambda a, b: a + b,
    ibp=lambda a, b: _sum_ibp(a, b, 1),
    backward=lambda lA, uA, a, b, in_shapes: _sum_backward(lA, uA, a, b, 1, in_shapes),
    backward_patches=lambda lA, uA, a, b, in_shapes: _sum_backward_patches(lA, uA, a, b, 1, in_shapes),
    forward_mode=lambda a, b: _sum_forward_mode(a, b, 1),
    backward_needs_shapes=True, doc="a + b (either may be perturbed)"))

register(OpDef(
    name="sub", forward=lambda a, b: a - b,
    ibp=lambda a, b: _sum_ibp(a, b, -1),
    backward=lambda lA, uA, a, b, in_shapes: _sum_backward(lA, uA, a, b, -1, in_shapes),
    backward_patches=lambda lA, uA, a, b, in_shapes: _sum_backward_patches(lA, uA, a, b, -1, in_shapes),
    forward_mode=lambda a, b: _sum_forward_mode(a, b, -1),
    backward_needs_shapes=True, doc="a - b (either may be perturbed)"))


# -- scale by a constant: mul, div, neg --------------------------------------------------------

def _scale_ibp(x: Interval, scale) -> Interval:
    a, b = times(x.lower, scale), times(x.upper, scale)     # a zero scale of an infinite end: 0
    return Interval(torch.minimum(a, b), torch.maximum(a, b))


def _scale_backward(lA, uA, scale, shape):
    return (unbroadcast(None if lA is None else lA * scale, shape),
            unbroadcast(None if uA is None else uA * scale, shape))


def _scale_forward_mode(x: Linear, scale) -> Linear:
    pos, neg = split_pos_neg(scale)
    pw, nw = pos.unsqueeze(1) if pos.dim() == x.lb.dim() else pos, neg.unsqueeze(1) if neg.dim() == x.lb.dim() else neg
    return Linear(pw * x.lw + nw * x.uw, times(pos, x.lb) + times(neg, x.ub), pw * x.uw + nw * x.lw,
                  times(pos, x.ub) + times(neg, x.lb))


def _mul_ibp(a, b):
    return _scale_ibp(b, a) if _is_const(a) else _scale_ibp(a, b)


def _mul_backward(lA, uA, a, b, in_shapes):
    if _is_const(a):
        return [None, _scale_backward(lA, uA, a, in_shapes[1])], 0, 0
    return [_scale_backward(lA, uA, b, in_shapes[0]), None], 0, 0


def _scale_patches(lA, uA, scale):
    return (None if lA is None else lA.with_coeff(lA.coeff * lA.windows(scale)),
            None if uA is None else uA.with_coeff(uA.coeff * uA.windows(scale)))


def _mul_backward_patches(lA, uA, a, b, in_shapes):
    if _is_const(a):
        return [None, _scale_patches(lA, uA, a)], 0, 0
    return [_scale_patches(lA, uA, b), None], 0, 0


def _mul_forward_mode(a, b):
    return _scale_forward_mode(b, a) if _is_const(a) else _scale_forward_mode(a, b)


register(OpDef(name="mul", forward=lambda a, b: a * b, ibp=_mul_ibp, backward=_mul_backward,
               backward_patches=_mul_backward_patches,
               forward_mode=_mul_forward_mode, backward_needs_shapes=True,
               doc="a * b with one operand constant"))

register(OpDef(
    name="div", forward=lambda a, b: a / b,
    ibp=lambda a, b: _scale_ibp(a, 1.0 / b),
    backward=lambda lA, uA, a, b, in_shapes: ([_scale_backward(lA, uA, 1.0 / b, in_shapes[0]), None], 0, 0),
    backward_patches=lambda lA, uA, a, b, in_shapes: ([_scale_patches(lA, uA, 1.0 / b), None], 0, 0),
    forward_mode=lambda a, b: _scale_forward_mode(a, 1.0 / b),
    backward_needs_shapes=True, doc="a / b with b constant"))

register(OpDef(
    name="neg", forward=lambda x: -x,
    ibp=lambda x: Interval(-x.upper, -x.lower),
    backward=lambda lA, uA, x: ([(None if lA is None else -lA, None if uA is None else -uA)], 0, 0),
    backward_patches=lambda lA, uA, x: ([(None if lA is None else -lA, None if uA is None else -uA)], 0, 0),
    forward_mode=lambda x: Linear(-x.uw, -x.ub, -x.lw, -x.lb),
    doc="-x"))
