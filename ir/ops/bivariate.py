"""Products of two perturbed tensors (x * y, x / y, x @ y) and their max/min.

x * y is relaxed by McCormick's planes (McCormick 1976; the choice of CROWN's BoundMul, Shi et
al. 2020), from the bounds [lx, ux] and [ly, uy] of its operands:
  lower  ly x + lx y - lx ly   since (x - lx)(y - ly) >= 0,
  upper  uy x + lx y - lx uy   since (x - lx)(y - uy) <= 0.
Everything else lowers to a small subgraph of registered ops: x / y = x * reciprocal(y),
x @ y = sum_k x[.., m, k, 1] * y[.., 1, k, n] (McCormick on every product term), max(x, y) =
y + relu(x - y) and min(x, y) = x - relu(x - y).
"""
from __future__ import annotations

import math

import torch

from lirpac.ir.graph import Node
from lirpac.ir.opdef import Interval, Linear, OpDef, aten_lowering, get_op, register
from lirpac.ir.ops.common import split_pos_neg, times, unbroadcast


def _broadcast_bounds(x: Interval, y: Interval):
    return torch.broadcast_tensors(x.lower, x.upper, y.lower, y.upper)


def _mul_ibp(x: Interval, y: Interval) -> Interval:
    lx, ux, ly, uy = _broadcast_bounds(x, y)
    # 0 * inf (an unbounded operand, e.g. 1/y with 0 in y's range) is 0: the other corners
    # carry the infinity (a NaN bound stays NaN)
    corners = torch.stack([times(lx, ly), times(lx, uy), times(ux, ly), times(ux, uy)])
    return Interval(corners.min(0).values, corners.max(0).values)


def _planes(x: Interval, y: Interval):
    """(slope on x, slope on y, offset) of McCormick's lower and upper planes, (B, *out).
    They need finite bounds and offsets: elsewhere (an unbounded operand, or an offset beyond
    the float range) the planes are constant at the product's interval bounds, the largest
    float for an unbounded side (as ``relaxation.finish``: 0 * that is 0, never NaN)."""
    lx, ux, ly, uy = _broadcast_bounds(x, y)
    low, up = (ly, lx, -lx * ly), (uy, lx, -lx * uy)
    bounded = torch.isfinite(low[2] + up[2] + ux + uy)
    if bool(bounded.all()):
        return low, up
    big = torch.finfo(lx.dtype).max
    box = _mul_ibp(x, y)
    zero = torch.zeros_like(lx)

    def constant(plane, level):
        return tuple(torch.where(bounded, t, c) for t, c in zip(plane, (zero, zero, level)))
    return constant(low, box.lower.clamp(-big, big)), constant(up, box.upper.clamp(-big, big))


def _mul_backward(lA, uA, x: Interval, y: Interval, *, in_shapes):
    low, up = [[t.unsqueeze(1) for t in plane] for plane in _planes(x, y)]

    def side(coeff, first, second):
        # positive coefficients meet `first` plane, negative ones `second`
        if coeff is None:
            return None, None, 0
        pos, neg = split_pos_neg(coeff)
        on_x = pos * first[0] + neg * second[0]
        on_y = pos * first[1] + neg * second[1]
        bias = (pos * first[2] + neg * second[2]).reshape(*coeff.shape[:2], -1).sum(-1)
        return unbroadcast(on_x, in_shapes[0]), unbroadcast(on_y, in_shapes[1]), bias

    lx_c, ly_c, lbias = side(lA, low, up)
    ux_c, uy_c, ubias = side(uA, up, low)
    return [(lx_c, ux_c), (ly_c, uy_c)], lbias, ubias


def _expand_linear(v: Linear, shape) -> Linear:
    """The linear bounds of v broadcast to the per-sample ``shape``."""
    def grow(t, lead):
        extra = len(shape) - (t.dim() - lead)
        t = t.reshape(*t.shape[:lead], *([1] * extra), *t.shape[lead:])
        return t.expand(*t.shape[:lead], *shape)
    return Linear(grow(v.lw, 2), grow(v.lb, 1), grow(v.uw, 2), grow(v.ub, 1), v.bounds)


def _scaled(scale, v: Linear, lower: bool):
    """Lower (or upper) linear function of scale * v, scale (B, *shape)."""
    pos, neg = split_pos_neg(scale)
    a, b = (v.lw, v.uw) if lower else (v.uw, v.lw)
    c, d = (v.lb, v.ub) if lower else (v.ub, v.lb)
    return pos.unsqueeze(1) * a + neg.unsqueeze(1) * b, times(pos, c) + times(neg, d)


def _mul_forward_mode(x: Linear, y: Linear) -> Linear:
    low, up = _planes(x.bounds, y.bounds)
    shape = low[0].shape[1:]
    x, y = _expand_linear(x, shape), _expand_linear(y, shape)

    def plane(p, lower):
        wx, bx = _scaled(p[0], x, lower)
        wy, by = _scaled(p[1], y, lower)
        return wx + wy, bx + by + p[2]
    lw, lb = plane(low, True)
    uw, ub = plane(up, False)
    return Linear(lw, lb, uw, ub)


register(OpDef(name="mul_bilinear", forward=lambda x, y: x * y, ibp=_mul_ibp,
               backward=_mul_backward, forward_mode=_mul_forward_mode, nonlinear=True,
               backward_needs_shapes=True,
               doc="x * y, both perturbed (broadcasting); McCormick planes"))


# -- lowerings --------------------------------------------------------------------------------

def add_node(lw, op: str, inputs: list[Node], out_shape, suffix: str, **attrs) -> Node:
    """One node of a multi-node lowering, with its own per-sample shape (``lw.add`` reads the
    shape of the ATen node being lowered, right only for the subgraph's last node)."""
    get_op(op)
    like = next(i for i in inputs if i.perturbed)
    return lw.graph.add(op, inputs, name=f"{lw.fx_node.name}_{suffix}", attrs=attrs,
                        shape=tuple(int(s) for s in out_shape), dtype=like.dtype,
                        batched=any(i.batched for i in inputs), perturbed=True,
                        source=_source(lw))


def _source(lw):
    from lirpac.ir.torch_frontend import source_of
    return source_of(lw.fx_node)


@aten_lowering("mul.Tensor")
def lower_mul(lw, a, b):
    """x * y with both perturbed (the torch frontend's mul converter sends them here);
    x * x is the tighter square."""
    a, b = lw.value(a), lw.value(b)
    if a is b:
        return lw.add("pow", [a], exponent=2)
    return lw.add("mul_bilinear", [a, b])


def _known_floor(node: Node):
    """A positive lower bound that holds by construction (a clamp with min > 0, as in
    F.normalize, seen through expand/reshape), or None."""
    while node.op in ("expand", "reshape"):
        node = node.inputs[0]
    floor = node.attrs.get("min") if node.op == "clamp" else None
    return float(floor) if isinstance(floor, (int, float)) and floor > 0 else None


def _terms_of_norm_of(a: Node, b: Node):
    """The number of squares summed when ``b`` is clamp(||a||_2, min > 0) seen through
    expand/reshape (F.normalize's denominator of ``a``), else None."""
    while b.op in ("expand", "reshape"):
        b = b.inputs[0]
    if b.op != "clamp" or _known_floor(b) is None or b.inputs[0].op != "sqrt_floored":
        return None
    total = b.inputs[0].inputs[0]
    if total.op != "sum" or total.inputs[0].op != "pow" or total.inputs[0].attrs.get("exponent") != 2:
        return None
    if total.inputs[0].inputs[0] is not a:
        return None
    return math.prod(a.shape[d - 1] for d in total.attrs["dims"])


@aten_lowering("div.Tensor")
def lower_div(lw, a, b):
    """a / y = a * (1 / y) for a perturbed y. Linear bounds need y's range to exclude 0 (else
    the reciprocal's relaxation raises UnsupportedOperationError; IBP gives infinite bounds);
    a clamp(min > 0) feeding y (F.normalize) is a floor kept whatever y's computed bounds."""
    a, b = lw.operand(a, lw.value(b)), lw.value(b)
    floor = _known_floor(b)
    if floor is None:
        inverse = add_node(lw, "reciprocal", [b], b.shape, "reciprocal")
    else:
        inverse = add_node(lw, "reciprocal_floored", [b], b.shape, "reciprocal", floor=floor)
    terms = _terms_of_norm_of(a, b) if a.perturbed else None
    if terms is not None:
        # x / max(||x||, floor) (F.normalize) lies in [-1, 1], up to the rounding of the sum
        # of squares: a clamp there changes no value, and keeps IBP from bounding it by the
        # product with 1 / floor (1e12), whose cancellations in the next affine map's
        # centre-radius form lost its bias in float32 (an unsound IBP bound)
        product = add_node(lw, "mul_bilinear", [a, inverse], torch.broadcast_shapes(a.shape, inverse.shape),
                           "quotient")
        limit = 1.0 + (terms + 4) * torch.finfo(a.dtype).eps
        return lw.add("clamp", [product], min=-limit, max=limit)
    if a.perturbed:
        return lw.add("mul_bilinear", [a, inverse])
    return lw.add("mul", [a, inverse])


@aten_lowering("matmul.default", "bmm.default")
def lower_matmul(lw, a, b):
    """x @ y: with one constant side the affine matmul ops; with both perturbed the products
    x[.., m, k] y[.., k, n] summed over k, each relaxed by McCormick."""
    a, b = lw.value(a), lw.value(b)
    if not (a.perturbed and b.perturbed):
        return lw.add("matmul_const_left" if b.perturbed else "matmul_const_right", [a, b])
    if len(a.shape) < 2 or len(b.shape) < 2 or not (a.batched and b.batched):
        raise lw.error("matmul of two perturbed tensors needs per-sample matrices (rank >= 2) "
                       "on both sides", "reshape the vectors to (..., 1, k) and (..., k, 1)")
    left = add_node(lw, "reshape", [a], a.shape + (1,), "left", shape=a.shape + (1,))
    right_shape = b.shape[:-2] + (1,) + b.shape[-2:]
    right = add_node(lw, "reshape", [b], right_shape, "right", shape=right_shape)
    terms_shape = torch.broadcast_shapes(left.shape, right_shape)
    terms = add_node(lw, "mul_bilinear", [left, right], terms_shape, "terms")
    return lw.add("sum", [terms], dims=(len(terms_shape) - 1,), keepdim=False)


@aten_lowering("maximum.default", "minimum.default")
def lower_max_min(lw, a, b):
    """max(a, b) = b + relu(a - b), min(a, b) = a - relu(a - b): ReLU's relaxation of the
    difference, whose bounds the method computes (tighter than the operands' own)."""
    a_v, b_v = lw.value(a), lw.value(b)
    like = a_v if isinstance(a_v, Node) and a_v.perturbed else b_v
    a, b = lw.operand(a, like), lw.operand(b, like)
    shape = lw.meta_shape()[0][1:]
    diff = add_node(lw, "sub", [a, b], shape, "diff")
    gap = add_node(lw, "relu", [diff], shape, "gap")
    if str(lw.fx_node.target).startswith("aten.maximum"):
        return lw.add("add", [b, gap])
    return lw.add("sub", [a, gap])

