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
x @ y = sum_k x[.., m, k] y[.., k, n] takes McCormick on every term (matmul_bilinear, whose
backward coefficients are matmuls, never the terms). Where both factors are affine maps of the
input and the set knows how their deviations from its centre multiply (word substitution:
lirpac/perturbations/anchor.py), x @ y = x0 @ y + x @ y0 - x0 @ y0 + E takes planes through
the centre (plus slopes that take up E's part moved by one position alone), E's remaining range
as their offsets, on the elements where those are closer together than McCormick's. The rest lowers to small subgraphs of
registered ops: x / y = x * reciprocal(y), max(x, y) = y + relu(x - y) and
min(x, y) = x - relu(x - y).
"""
from __future__ import annotations

import math

import torch

from lirpac.ir.graph import Node
from lirpac.ir.opdef import Interval, Linear, OpDef, aten_lowering, get_op, register
from lirpac.ir.ops.common import HOST_CHECKS, split_pos_neg, times, unbroadcast
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
    return torch.where(_straddles(lx, ux) & _straddles(ly, uy), 0.5, 1.0).to(lx.dtype)


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


def _matmul_blend(a: Interval, b: Interval):
    """``crown_share`` for the terms a[m, k] b[k, n] as t = 1 - h[m, k] g[k, n]: h = 1/2
    where a straddles 0, g = 1 where b does (shaped like a's and b's bounds)."""
    return (0.5 * _straddles(a.lower, a.upper).to(a.lower.dtype),
            _straddles(b.lower, b.upper).to(b.lower.dtype))


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


def _matmul_terms(a: Interval, b: Interval):
    """The bounds of the factors of the terms a[.., m, k, 1] * b[.., 1, k, n] of a @ b."""
    return (Interval(a.lower.unsqueeze(-1), a.upper.unsqueeze(-1)),
            Interval(b.lower.unsqueeze(-3), b.upper.unsqueeze(-3)))


def _matmul_ibp(a: Interval, b: Interval) -> Interval:
    terms = _mul_ibp(*_matmul_terms(a, b))
    return Interval(terms.lower.sum(-2), terms.upper.sum(-2))


def _matmul_backward(lA, uA, a: Interval, b: Interval, *, in_shapes):
    """McCormick's planes on every term a[m, k] b[k, n], summed over k, blended as ``_planes``
    does (``crown_share``: t = 1 - h[m, k] g[k, n], h = 1/2 where a straddles 0, g = 1 where
    b does): each coefficient is then a matmul, (B, S, .., M, N) with the bounds' (.., N, K)
    or (.., K, N), never the (B, S, .., M, K, N) terms. The lower plane of a term is
    ly a + lx b - lx ly + h g ((uy - ly) a + (ux - lx) b - (ux uy - lx ly)), the upper one
    with uy and ly swapped (its b slope is the same). Unbounded operands take the per-term
    rule (``_planes``)."""
    if not all(bool(torch.isfinite(t).all()) for t in (*a, *b)):
        return _matmul_backward_per_term(lA, uA, a, b, in_shapes=in_shapes)
    # (both operands are batched, so of the same rank: dim 1 is the spec's)
    la, ua, lb, ub = (t.unsqueeze(1) for t in (*a, *b))
    h, g = (t.unsqueeze(1) for t in _matmul_blend(a, b))
    blended = not HOST_CHECKS[0] or (bool(h.any()) and bool(g.any()))
    la_lb, la_ub = la.matmul(lb), la.matmul(ub)
    if blended:
        ha_l, ha_u, gb_l, gb_u = h * la, h * ua, g * lb, g * ub
        la_lb = la_lb + ha_u.matmul(gb_u) - ha_l.matmul(gb_l)    # lower plane's offset
        la_ub = la_ub + ha_u.matmul(gb_l) - ha_l.matmul(gb_u)    # upper plane's
        b_width_t = (g * (ub - lb)).transpose(-1, -2)
        on_b_extra = (h * (ua - la)).transpose(-1, -2)
    la_t = la.transpose(-1, -2)

    def side(coeff, first, second, first_offset, second_offset, sign):
        # positive coefficients meet the `first` plane, negative ones the `second`
        if coeff is None:
            return None, None, 0
        pos, neg = split_pos_neg(coeff)
        on_a = pos.matmul(first.transpose(-1, -2)) + neg.matmul(second.transpose(-1, -2))
        on_b = la_t.matmul(coeff)
        if blended:
            on_a = on_a + sign * h * (pos - neg).matmul(b_width_t)
            on_b = on_b + g * on_b_extra.matmul(coeff)
        bias = -(pos * first_offset + neg * second_offset).flatten(2).sum(-1)
        return unbroadcast(on_a, in_shapes[0]), unbroadcast(on_b, in_shapes[1]), bias

    la_c, lb_c, lbias = side(lA, lb, ub, la_lb, la_ub, 1)
    ua_c, ub_c, ubias = side(uA, ub, lb, la_ub, la_lb, -1)
    return [(la_c, ua_c), (lb_c, ub_c)], lbias, ubias


def _matmul_backward_per_term(lA, uA, a: Interval, b: Interval, *, in_shapes):
    """The backward rule on the materialised terms (B, S, .., M, K, N)."""
    return _on_terms(_mul_backward, lA, uA, a, b, in_shapes)


def _matmul_backward_alpha(lA, uA, a: Interval, b: Interval, alpha_l, alpha_u, *, in_shapes):
    """alpha-CROWN's blend of the planes (``_mul_backward_alpha``), one t per spec row and
    element a[m, k], shared by the terms a[m, k] b[k, n] over n: on the materialised terms,
    as alpha-CROWN's graphs of attention scores are small."""
    alphas = [None if t is None else t.unsqueeze(-1) for t in (alpha_l, alpha_u)]
    return _on_terms(_mul_backward_alpha, lA, uA, a, b, in_shapes, *alphas)


def _on_terms(rule, lA, uA, a: Interval, b: Interval, in_shapes, *extra):
    """A product's backward ``rule`` on the terms a[.., m, k, 1] * b[.., 1, k, n] of a @ b
    (coefficients repeated over k), its coefficients summed back to a's and b's shapes."""
    k = a.lower.shape[-1]
    grow = [None if c is None else c.unsqueeze(-2).expand(*c.shape[:-1], k, c.shape[-1])
            for c in (lA, uA)]
    term_shapes = (tuple(in_shapes[0]) + (1,), tuple(in_shapes[1][:-2]) + (1,) + tuple(in_shapes[1][-2:]))
    coeffs, lbias, ubias = rule(*grow, *_matmul_terms(a, b), *extra, in_shapes=term_shapes)
    (la_c, ua_c), (lb_c, ub_c) = coeffs
    return ([tuple(None if c is None else c.squeeze(-1) for c in (la_c, ua_c)),
             tuple(None if c is None else c.squeeze(-3) for c in (lb_c, ub_c))], lbias, ubias)


def _matmul_forward_mode(a: Linear, b: Linear) -> Linear:
    """Forward mode on the terms (B, N_in, .., M, K, N), summed over k."""
    def terms(v: Linear, dim: int) -> Linear:
        return Linear(v.lw.unsqueeze(dim), v.lb.unsqueeze(dim), v.uw.unsqueeze(dim), v.ub.unsqueeze(dim),
                      Interval(v.bounds.lower.unsqueeze(dim), v.bounds.upper.unsqueeze(dim)))
    product = _mul_forward_mode(terms(a, -1), terms(b, -3))
    return Linear(product.lw.sum(-2), product.lb.sum(-2), product.uw.sum(-2), product.ub.sum(-2))


def _mccormick_gap_at(a0, b0, a: Interval, b: Interval):
    """Upper minus lower of CROWN's blended planes (``_matmul_backward``) at (a0, b0), summed
    over the terms: per term (uy - ly) (a0 - lx + h g (ux + lx - 2 a0))."""
    h, g = _matmul_blend(a, b)
    width = b.upper - b.lower
    return (a0 - a.lower).matmul(width) + (h * (a.upper + a.lower - 2 * a0)).matmul(g * width)


def _anchor_backward(lA, uA, anchor, err: Interval, in_shapes):
    """Coefficients through the planes a0 @ b + a @ b0 - a0 @ b0 + sa . (a - a0) + sb . (b - b0)
    + E', E' in ``err`` (lirpac/perturbations/anchor.py); lA, uA are zero where McCormick's
    planes are taken."""
    a0, b0 = anchor.a0.unsqueeze(1), anchor.b0.unsqueeze(1)
    slope_a, slope_b = anchor.slope_a.unsqueeze(1), anchor.slope_b.unsqueeze(1)
    centre = a0.matmul(b0) + anchor.shift.unsqueeze(1)
    low, high = err.lower.unsqueeze(1), err.upper.unsqueeze(1)

    def side(coeff, first, second):
        if coeff is None:
            return None, None, 0
        pos, neg = split_pos_neg(coeff)
        bias = (pos * first + neg * second - coeff * centre).flatten(2).sum(-1)
        # (einsum: one batched product per row of slopes, not a (B, S, .., M, N, K) tensor)
        on_a = coeff.matmul(b0.transpose(-1, -2)) + torch.einsum("bs...mn,bt...mnk->bs...mk", coeff, slope_a)
        on_b = a0.transpose(-1, -2).matmul(coeff) + torch.einsum("bs...mn,bt...mnk->bs...kn", coeff, slope_b)
        return unbroadcast(on_a, in_shapes[0]), unbroadcast(on_b, in_shapes[1]), bias

    la_c, lb_c, lbias = side(lA, low, high)
    ua_c, ub_c, ubias = side(uA, high, low)
    return [(la_c, ua_c), (lb_c, ub_c)], lbias, ubias


# alpha-CROWN optimises McCormick's blend per spec row, which the anchor's planes do not have:
# it takes them only where their gap at the centre is this much smaller than McCormick's
# (benchmarks/word_substitution.py's attention, alpha-CROWN at k = 1/2/3: 1 gave 1.94/2.23/2.24
# the exact width, 0.5 1.94/2.12/2.12, 0.25 1.94/2.16/2.20, 0.1 1.94/2.15/2.19)
ALPHA_ANCHOR_SHARE = 0.5


def _anchored(rule, share: float = 1.0):
    """``rule`` (CROWN's or alpha-CROWN's McCormick) with an ``anchor`` (the generated code's
    ``InputSet.product_anchor``, None for most sets): each output element takes the anchor's
    planes where their gap (the width of E's range) is below ``share`` times the gap between
    McCormick's planes at the centre, McCormick's elsewhere."""
    def anchored(lA, uA, a: Interval, b: Interval, *alphas, in_shapes, anchor=None):
        if anchor is None:
            return rule(lA, uA, a, b, *alphas, in_shapes=in_shapes)
        err = anchor.deviation_range(a, b)
        take = err.upper - err.lower < share * _mccormick_gap_at(anchor.a0, anchor.b0, a, b)
        err = Interval(torch.where(take, err.lower, 0.0), torch.where(take, err.upper, 0.0))
        take = take.unsqueeze(1)
        if HOST_CHECKS[0] and bool(take.all()):
            return _anchor_backward(lA, uA, anchor, err, in_shapes)
        split = [(None, None) if c is None else (c * take, c * ~take) for c in (lA, uA)]
        coeffs, lbias, ubias = _anchor_backward(split[0][0], split[1][0], anchor, err, in_shapes)
        rest, rest_l, rest_u = rule(split[0][1], split[1][1], a, b, *alphas, in_shapes=in_shapes)
        summed = [tuple(None if p is None else p + q for p, q in zip(mine, theirs))
                  for mine, theirs in zip(coeffs, rest)]
        return summed, lbias + rest_l, ubias + rest_u
    anchored.__doc__ = rule.__doc__
    return anchored


register(OpDef(name="matmul_bilinear", forward=torch.matmul, ibp=_matmul_ibp,
               backward=_anchored(_matmul_backward), forward_mode=_matmul_forward_mode, nonlinear=True,
               backward_alpha=_anchored(_matmul_backward_alpha, ALPHA_ANCHOR_SHARE), anchored_product=True, alpha_init=_mul_alpha_init,
               backward_needs_shapes=True, backward_memory="fresh",
               doc="x @ y, both perturbed (per-sample matrices, broadcasting leading dims); "
                   "McCormick planes on each term, summed; over word substitution, planes through "
                   "the sentence where both factors are affine in it"))


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
    return lw.add("matmul_bilinear", [a, b])


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

