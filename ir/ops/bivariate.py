"""Products of two perturbed tensors (x * y, x / y, x @ y) and their max/min.

x * y is relaxed by McCormick's planes (McCormick 1976), from the bounds [lx, ux] and
[ly, uy] of its operands: two planes below,
  P1 = ly x + lx y - lx ly   since (x - lx)(y - ly) >= 0,
  P2 = uy x + ux y - ux uy   since (x - ux)(y - uy) >= 0,
and two above (U1 with (x - lx)(y - uy) <= 0, U2 with (x - ux)(y - ly) <= 0). Any blend
t P1 + (1 - t) P2 (t in [0, 1]) is a lower plane too, and these are all the planes that touch
the convex envelope max(P1, P2); likewise above. CROWN's BoundMul (Shi et al. 2020) takes
t = 1. Here t = 1/2 where both operands straddle 0 (q k^T in attention): each single plane
misses x y by up to (ux - lx)(uy - ly) at a corner, their mean by half that, the least
worst-case gap (benchmarks/word_substitution.py: attention scores 2.9x -> 2.3x the exact
range); where an operand's sign is known (a sigmoid gate times a tanh in an LSTM) t = 1 was
the tighter one, and the mean looser (LSTM 2.1x -> 3.6x). alpha-CROWN optimises t per
element and spec row, one t for the lower and upper planes that a coefficient's sign picks.
Everything else lowers to a small subgraph of registered ops: x / y = x * reciprocal(y),
x @ y = sum_k x[.., m, k, 1] * y[.., 1, k, n] (McCormick on every product term), max(x, y) =
y + relu(x - y) and min(x, y) = x - relu(x - y).
"""
from __future__ import annotations

import torch

from lirpac.ir.graph import Node
from lirpac.ir.opdef import Interval, Linear, OpDef, aten_lowering, get_op, register
from lirpac.ir.ops.common import split_pos_neg, times, unbroadcast
from lirpac.ir.ops.relaxation import slack


def _broadcast_bounds(x: Interval, y: Interval):
    return torch.broadcast_tensors(x.lower, x.upper, y.lower, y.upper)


def _mul_ibp(x: Interval, y: Interval) -> Interval:
    lx, ux, ly, uy = _broadcast_bounds(x, y)
    # 0 * inf (an unbounded operand, e.g. 1/y with 0 in y's range) is 0: the other corners
    # carry the infinity (a NaN bound stays NaN)
    corners = torch.stack([times(lx, ly), times(lx, uy), times(ux, ly), times(ux, uy)])
    return Interval(corners.min(0).values, corners.max(0).values)


def crown_share(lx, ux, ly, uy):
    """CROWN's t: 1/2 where both operands straddle 0, else 1 (see the module docstring)."""
    both = (lx < 0) & (ux > 0) & (ly < 0) & (uy > 0)
    return torch.where(both, 0.5, 1.0).to(lx.dtype)


def _planes(x: Interval, y: Interval, t=None, rows: bool = False):
    """(slope on x, slope on y, offset) of the lower and upper planes blended by t (CROWN's
    ``crown_share`` by default; alpha-CROWN's (B, S, ...) per row), (B, *out), or (B, 1 or S,
    *out) with ``rows``. They need finite bounds and offsets: elsewhere (an unbounded operand,
    or an offset beyond the float range) the planes are constant at the product's interval
    bounds, the largest float for an unbounded side (as ``relaxation.finish``: 0 * that is
    0, never NaN). Offsets are moved out by a few ulps of their terms (products round)."""
    lx, ux, ly, uy = _broadcast_bounds(x, y)
    if t is None:
        t = crown_share(lx, ux, ly, uy)
    if rows:
        lx, ux, ly, uy = (v.unsqueeze(1) for v in (lx, ux, ly, uy))
    s = 1 - t
    pad = slack((lx * ly).abs() + (ux * uy).abs() + (lx * uy).abs() + (ux * ly).abs())
    low = (t * ly + s * uy, t * lx + s * ux, -t * (lx * ly) - s * (ux * uy) - pad)
    up = (t * uy + s * ly, t * lx + s * ux, -t * (lx * uy) - s * (ux * ly) + pad)
    bounded = torch.isfinite(low[2] + up[2] + ux + uy)
    if bool(bounded.all()):
        return low, up
    big = torch.finfo(lx.dtype).max
    box = _mul_ibp(x, y)
    box = Interval(box.lower.unsqueeze(1), box.upper.unsqueeze(1)) if rows else box
    zero = torch.zeros((), dtype=lx.dtype, device=lx.device)

    def constant(plane, level):
        return tuple(torch.where(bounded, t, c) for t, c in zip(plane, (zero, zero, level)))
    return constant(low, box.lower.clamp(-big, big)), constant(up, box.upper.clamp(-big, big))


def _planes_backward(lA, uA, low, up, in_shapes, low_u=None, up_u=None):
    """Coefficients and biases through planes (B, 1 or S, *out): a lower bound's positive
    coefficients meet the lower plane, its negative ones the upper (``low_u``, ``up_u``: the
    upper bound's own planes, else the same)."""
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
    ux_c, uy_c, ubias = side(uA, up if up_u is None else up_u, low if low_u is None else low_u)
    return [(lx_c, ux_c), (ly_c, uy_c)], lbias, ubias


def _mul_backward(lA, uA, x: Interval, y: Interval, *, in_shapes):
    low, up = [[t.unsqueeze(1) for t in plane] for plane in _planes(x, y)]
    return _planes_backward(lA, uA, low, up, in_shapes)


def _straddles(lower, upper):
    return (lower < 0) & (upper > 0)


def _mul_alpha_init(lower, upper, **attrs):
    """alpha-CROWN's start, on x's shape (the slots take the first operand's: t is shared
    along the dims x broadcasts over): 1/2 where x straddles 0, else 1. ``_share`` maps it
    to CROWN's t, which also depends on y (not seen here)."""
    return torch.where(_straddles(lower, upper), 0.5, 1.0).to(lower.dtype)


def _share(alpha, x: Interval, y: Interval):
    """t from alpha in [0, 1], covering [0, 1] with CROWN's t at the start: t = alpha, except
    where x straddles 0 and y does not (start 1/2, CROWN's t = 1): t = min(2 alpha, 1)."""
    lx, ux, ly, uy = (v.unsqueeze(1) for v in _broadcast_bounds(x, y))
    doubled = _straddles(lx, ux) & ~_straddles(ly, uy)
    return torch.where(doubled, (2 * alpha).clamp(max=1), alpha)


def _mul_backward_alpha(lA, uA, x: Interval, y: Interval, alpha_l, alpha_u, *, in_shapes):
    """McCormick with the blend t of ``_share(alpha)`` (per spec row and element of x) on the
    lower bound's side and on the upper's."""
    planes = [None if a is None else _planes(x, y, _share(a, x, y), rows=True) for a in (alpha_l, alpha_u)]
    (low_l, up_l), (low_u, up_u) = [p if p is not None else planes[1 - i] for i, p in enumerate(planes)]
    return _planes_backward(lA, uA, low_l, up_l, in_shapes, low_u, up_u)


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
               backward_alpha=_mul_backward_alpha, alpha_init=_mul_alpha_init,
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

