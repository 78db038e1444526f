"""softmax, log_softmax, logsumexp, layer_norm and vector norms, lowered to registered ops.

softmax_i = 1 / (1 + sum_{j != i} exp(x_j - x_i)): the differences come from one exact affine
op (pairwise_diff), so IBP gives the standard bound exp(u_i) / (exp(u_i) + sum_{j != i}
exp(l_j)), and one op (softmax_from_diffs, ir/ops/softmax.py) relaxes each softmax_i jointly
in its differences, around their own (tighter) bounds. log_softmax_i = -log1p(sum_{j != i}
exp(x_j - x_i)) likewise (log_softmax_from_diffs); logsumexp = x_i - log_softmax_i (averaged
over i).
layer_norm = center(x) * rsqrt(mean(center(x)^2) + eps) * weight + bias, with center the exact
affine map x - mean(x) and the product McCormick's (ir/ops/bivariate.py). The L2 norm is
sqrt(sum x^2); F.normalize then divides by its clamp, through bivariate's division.
"""
from __future__ import annotations

import torch

from lirpac.ir.opdef import Interval, Linear, OpDef, aten_lowering, register
from lirpac.ir.ops.bivariate import add_node
from lirpac.ir.ops.common import (all_finite, elementwise, fold, linear_map, map_unbounded,
                                  unbounded_map_ibp)
from lirpac.ir.ops.relaxation import Curve, concave_lines, convex_lines, sound_relax
from lirpac.ir.scalar import centre_radius


# -- curves on inputs known to be >= floor -------------------------------------------------------
# A sum of squares is >= 0 whatever its computed bounds say (a forward-mode or CROWN lower
# bound of it can dip below 0, and then 1/x, 1/sqrt(x), sqrt would have no linear bound).
# These ops relax on [max(l, floor), max(u, floor)], which holds every value the input takes.

def floored(name, fn, df, convex: bool, increasing: bool, doc: str):
    curve = Curve(fn, df)
    lines = convex_lines if convex else concave_lines

    def clip(lower, upper, floor):
        # a lower bound of +inf is an overflow (a sum of exponentials past the largest float,
        # whose real value is finite): the largest float is a true lower bound of it
        big = torch.finfo(lower.dtype).max
        return lower.clamp(min=floor, max=big), upper.clamp(min=floor)

    def relax(lower, upper, floor):
        return lines(curve, *clip(lower, upper, floor))

    def ibp(x: Interval, floor) -> Interval:
        lo, hi = (fn(v) for v in clip(x.lower, x.upper, floor))
        return Interval(lo, hi) if increasing else Interval(hi, lo)

    # the forward is fn itself: the floor only narrows the relaxation
    elementwise(name, lambda x, floor=None: fn(x), sound_relax(relax, ibp), ibp=ibp, doc=doc)


floored("reciprocal_floored", torch.reciprocal, lambda x: -torch.reciprocal(x * x), True, False,
        "1 / x for x >= floor > 0")
floored("rsqrt_floored", torch.rsqrt, lambda x: -0.5 * torch.rsqrt(x) / x, True, False,
        "1 / sqrt(x) for x >= floor > 0")
floored("sqrt_floored", torch.sqrt, lambda x: 0.5 / torch.sqrt(x), False, True,
        "sqrt(x) for x >= floor >= 0")


# -- pairwise_diff: d[.., i, m, ..] = x[.., j(i, m), ..] - x[.., i, ..] over all j != i ---------

def _others(x, dim):
    """x[.., j, ..] for every i and j != i: the dim of size K becomes (K, K - 1)."""
    size = x.shape[dim]
    index = torch.arange(size - 1, device=x.device)
    rows = torch.arange(size, device=x.device).unsqueeze(1)
    picks = (index + (index >= rows)).reshape(-1)          # j(i, m) = m + [m >= i]
    taken = x.index_select(dim, picks)
    return taken.reshape(*x.shape[:dim], size, size - 1, *x.shape[dim + 1:])


def _selves(x, dim):
    size = x.shape[dim]
    return x.unsqueeze(dim + 1).expand(*x.shape[:dim + 1], size - 1, *x.shape[dim + 1:])


def _pairwise_diff(x, *, dim):
    return _others(x, dim) - _selves(x, dim)


def _pairwise_forward_mode(x: Linear, *, dim) -> Linear:
    def lin(a, b, lead):
        d = dim + lead - 1
        return _others(a, d) - _selves(b, d)
    return Linear(lin(x.lw, x.uw, 2), lin(x.lb, x.ub, 1), lin(x.uw, x.lw, 2), lin(x.ub, x.lb, 1))


def _pairwise_transpose(a, dim):
    """The transpose of ``_pairwise_diff`` applied to a (.., K, K - 1, ..): x_j's coefficient is
    the sum of the a[i, m] that read it (m = j - [j > i]) minus the sum of a[j, :]. The (K, K - 1)
    entries are the off-diagonal ones of a K x K matrix in row order, which after the first
    diagonal entry sit in rows of K + 1 whose last is the next diagonal entry: one strided
    copy places them, and the sum over i reads the column (autograd's index_add through the
    forward's gather took twice as long on attention's (B S, heads, L, L - 1))."""
    k = a.shape[dim]
    moved = a.movedim((dim, dim + 1), (-2, -1))
    lead = moved.shape[:-2]
    full = moved.new_zeros(*lead, k * k)
    full[..., 1:].view(*lead, k - 1, k + 1)[..., :k] = moved.reshape(*lead, k - 1, k)
    return (full.view(*lead, k, k).sum(-2) - moved.sum(-1)).movedim(-1, dim)


def _pairwise_backward(lA, uA, x, *, dim, in_shapes):
    def back(a):
        return _pairwise_transpose(a, dim)
    return [(None if lA is None else fold(lA, back), None if uA is None else fold(uA, back))], 0, 0


register(OpDef(
    name="pairwise_diff", forward=_pairwise_diff,
    ibp=lambda x, dim: Interval(_others(x.lower, dim) - _selves(x.upper, dim),
                                _others(x.upper, dim) - _selves(x.lower, dim)),
    backward=_pairwise_backward, forward_mode=_pairwise_forward_mode, backward_needs_shapes=True,
    doc="x_j - x_i for all i and j != i along dim (K -> K, K - 1): exact affine map"))


# -- center: x - mean(x) over dims --------------------------------------------------------------

def _center(x, *, dims):
    return x - x.mean(dim=dims, keepdim=True)


def _count(shape, dims):
    n = 1
    for d in dims:
        n *= shape[d]
    return n


def _center_ibp(x: Interval, *, dims) -> Interval:
    """Centre and radius through M = I - J/n: |M| r = (1 - 2/n) r + mean(r), exact."""
    mid, rad = centre_radius(x.lower, x.upper)
    n = _count(mid.shape, dims)
    if not all_finite(rad):         # an infinite end: the centre would be inf - inf
        return unbounded_map_ibp(*_center_parts(n, dims), x)
    spread = (1 - 2 / n) * rad + rad.mean(dim=dims, keepdim=True)
    centred = _center(mid, dims=dims)
    return Interval(centred - spread, centred + spread)


def _center_parts(n: int, dims):
    """The positive and negative parts of M = I - J/n as maps: (1 - 1/n) v and (v - sum v)/n."""
    return (lambda v: (1 - 1 / n) * v), (lambda v: (v - v.sum(dim=dims, keepdim=True)) / n)


def _center_forward_mode(x: Linear, *, dims) -> Linear:
    """M's positive part is (1 - 1/n) I, its negative part -(J - I)/n: the lower function is
    (1 - 1/n) l + u/n - mean(u) (upper: l and u swapped)."""
    n = _count(x.lb.shape, dims)
    wdims = tuple(d + 1 for d in dims)

    def side(a, b, ds):
        return (1 - 1 / n) * a + b / n - b.mean(dim=ds, keepdim=True)

    def bias(a, b):
        if finite:
            return side(a, b, dims)
        pos, neg = _center_parts(n, dims)     # an infinite bias: b/n - mean(b) is inf - inf
        return map_unbounded(pos, a, 1) + map_unbounded(neg, b, -1)
    finite = all_finite(x.lb, x.ub)
    return Linear(side(x.lw, x.uw, wdims), bias(x.lb, x.ub),
                  side(x.uw, x.lw, wdims), bias(x.ub, x.lb))


def _center_backward(lA, uA, x, *, dims):
    """M is symmetric: coefficients are centred the same way."""
    cdims = tuple(d + 1 for d in dims)
    return [(None if lA is None else _center(lA, dims=cdims),
             None if uA is None else _center(uA, dims=cdims))], 0, 0


register(OpDef(name="center", forward=_center, ibp=_center_ibp, backward=_center_backward,
               forward_mode=_center_forward_mode,
               doc="x - mean(x) over dims (exact affine map; IBP by centre and radius)"))


def _expand(x, *, shape):
    lead = len(shape) - (x.dim() - 1)
    return x.reshape(x.shape[0], *([1] * lead), *x.shape[1:]).expand(x.shape[0], *shape)


linear_map("expand", _expand, doc="broadcast to a per-sample shape (expand, expand_as)")


# -- lowerings ----------------------------------------------------------------------------------

def _dim(lw, node, dim) -> int:
    """A batch-first dim index that is not the batch."""
    d = dim % (len(node.shape) + 1)
    if d == 0:
        raise lw.error("a softmax/normalisation over the batch dimension cannot be bounded "
                       "per sample")
    return d


def _differences(lw, node, d):
    """x_j - x_i for every i and j != i along batch-first dim d: (.., K, K - 1, ..)."""
    size = node.shape[d - 1]
    diff_shape = node.shape[:d - 1] + (size, size - 1) + node.shape[d:]
    return add_node(lw, "pairwise_diff", [node], diff_shape, "diff", dim=d)


@aten_lowering("softmax.int", "_softmax.default")
def _lower_softmax(lw, x, dim, *rest):
    """One op on the differences (ir/ops/softmax.py), relaxed in all of them at once."""
    node = lw.value(x)
    d = _dim(lw, node, dim)
    return lw.add("softmax_from_diffs", [_differences(lw, node, d)], dim=d)


@aten_lowering("log_softmax.int", "_log_softmax.default")
def _lower_log_softmax(lw, x, dim, *rest):
    node = lw.value(x)
    d = _dim(lw, node, dim)
    return lw.add("log_softmax_from_diffs", [_differences(lw, node, d)], dim=d)


def _dims(lw, node, dim):
    if dim in (None, [], ()):
        return tuple(range(1, len(node.shape) + 1))
    return tuple(sorted(_dim(lw, node, d) for d in ([dim] if isinstance(dim, int) else dim)))


@aten_lowering("logsumexp.default")
def _lower_logsumexp(lw, x, dim, keepdim=False):
    """logsumexp = x_i - log_softmax_i for every i; their mean over i (one dim at a time) is
    as sound and treats the entries alike."""
    node = lw.value(x)
    dims = _dims(lw, node, dim)
    for k, d in enumerate(reversed(dims)):
        last = k == len(dims) - 1
        log_p = add_node(lw, "log_softmax_from_diffs", [_differences(lw, node, d)], node.shape,
                         "log_p", dim=d)
        terms = add_node(lw, "sub", [node, log_p], node.shape, "terms")
        shape = tuple(1 if i == d - 1 else n for i, n in enumerate(node.shape)) if keepdim else \
            node.shape[:d - 1] + node.shape[d:]
        if last:
            return lw.add("mean", [terms], dims=(d,), keepdim=bool(keepdim))
        node = add_node(lw, "mean", [terms], shape, "lse", dims=(d,), keepdim=bool(keepdim))


@aten_lowering("layer_norm.default")
def _lower_layer_norm(lw, x, normalized_shape, weight=None, bias=None, eps=1e-5, *rest):
    node = lw.value(x)
    rank = len(node.shape)
    dims = tuple(range(rank + 1 - len(normalized_shape), rank + 1))
    stat_shape = tuple(1 if d + 1 in dims else s for d, s in enumerate(node.shape))
    centred = add_node(lw, "center", [node], node.shape, "centred", dims=dims)
    square = add_node(lw, "pow", [centred], node.shape, "square", exponent=2)
    var = add_node(lw, "mean", [square], stat_shape, "var", dims=dims, keepdim=True)
    var_eps = add_node(lw, "add", [var, lw.constant(float(eps), node)], stat_shape, "var_eps")
    scale = add_node(lw, "rsqrt_floored", [var_eps], stat_shape, "inv_std", floor=float(eps))
    steps = [("mul_bilinear", scale)] + [(op, lw.value(v)) for op, v in
                                         (("mul", weight), ("add", bias)) if v is not None]
    out = centred
    for i, (op, operand) in enumerate(steps):
        if i == len(steps) - 1:
            return lw.add(op, [out, operand])
        out = add_node(lw, op, [out, operand], node.shape, op)
    return out


@aten_lowering("linalg_vector_norm.default")
def _lower_vector_norm(lw, x, ord=2, dim=None, keepdim=False, dtype=None):
    node = lw.value(x)
    shape = lw.meta_shape()[0][1:]
    dims = _dims(lw, node, dim)
    if ord == 2:
        square = add_node(lw, "pow", [node], node.shape, "square", exponent=2)
        total = add_node(lw, "sum", [square], shape, "sum", dims=dims, keepdim=bool(keepdim))
        return lw.add("sqrt_floored", [total], floor=0.0)
    if ord in (1, float("inf")):
        size = add_node(lw, "abs", [node], node.shape, "abs")
        return lw.add("sum" if ord == 1 else "amax", [size], dims=dims, keepdim=bool(keepdim))
    raise lw.error(f"vector norm of order {ord}", "use ord 1, 2 or inf")


@aten_lowering("expand.default", "expand_as.default")
def _lower_expand(lw, x, *rest, **kw):
    node = lw.value(x)
    shape = tuple(int(s) for s in lw.meta_shape()[0][1:])
    if not lw.is_batch_dim(lw.meta_shape()[0][0]):
        raise lw.error("expand of a batched tensor must keep the batch dimension")
    return node if shape == node.shape else lw.add("expand", [node], shape=shape)
