"""Writes into a region of a tensor: what in-place code (``y[:, 0] = 0``, ``y[:, 1:3] = z``)
becomes once torch.export functionalizes it (``slice_scatter``, ``select_scatter``, ``fill``,
``copy``).

``slice_scatter(base, src)`` is ``base`` with the region ``start:end:step`` of one non-batch dim
replaced by ``src``. It is linear in both operands with a 0/1 matrix (each output element is
one element of base or of src), so IBP maps both ends, forward mode maps the functions and
backward splits the coefficients: the region goes to src, the rest to base. Either operand may
be a constant (its full tensor, batch dim of 1 or B).
"""
from __future__ import annotations

import torch

from lirpac.ir.graph import Node
from lirpac.ir.opdef import Interval, Linear, OpDef, aten_lowering, register
from lirpac.ir.ops.common import bias_of


def _region(dim: int, start: int, end: int, step: int, lead: int = 0) -> tuple:
    """Index of the region; ``lead`` extra leading dims (spec rows, forward-mode inputs)."""
    return (slice(None),) * (dim + lead) + (slice(start, end, step),)


def _place(base, src, region, lead_shape, region_shape):
    """``base`` (broadcast to ``lead_shape`` + its trailing dims) with ``src`` written into
    ``region``; src is reshaped to the region (select_scatter drops the dim)."""
    out = base.expand(*lead_shape, *base.shape[len(lead_shape):]).clone()
    out[region] = src.expand(*lead_shape, *src.shape[len(lead_shape):]).reshape(
        *lead_shape, *region_shape)
    return out


def _forward(base, src, *, dim, start, end, step, region_shape):
    batch = max(base.shape[0], src.shape[0])
    return _place(base, src, _region(dim, start, end, step), (batch,), region_shape)


def _ibp(base, src, **attrs) -> Interval:
    lo = lambda v: v.lower if isinstance(v, Interval) else v  # noqa: E731
    hi = lambda v: v.upper if isinstance(v, Interval) else v  # noqa: E731
    return Interval(_forward(lo(base), lo(src), **attrs), _forward(hi(base), hi(src), **attrs))


def _backward(lA, uA, base, src, *, dim, start, end, step, region_shape, in_shapes):
    region = _region(dim, start, end, step, lead=1)

    def outside(a):
        if a is None:
            return None
        a = a.clone()
        a[region] = 0
        return a

    def inside(a):
        return None if a is None else a[region]

    coeffs, lbias, ubias = [], 0, 0
    for operand, part in ((base, outside), (src, inside)):
        la, ua = part(lA), part(uA)
        if isinstance(operand, torch.Tensor):
            coeffs.append(None)
            value = operand if part is outside else operand.reshape(operand.shape[0], *region_shape)
            lbias = lbias + bias_of(la, value)
            ubias = ubias + bias_of(ua, value)
        else:
            shape = in_shapes[1 if part is inside else 0]
            coeffs.append(tuple(None if a is None else a.reshape(*a.shape[:2], *shape)
                                for a in (la, ua)))
    return coeffs, lbias, ubias


def _forward_mode(base, src, *, dim, start, end, step, region_shape) -> Linear:
    like = base if isinstance(base, Linear) else src
    batch, inputs = like.lw.shape[0], like.lw.shape[1]

    def weights(v, side):
        if isinstance(v, Linear):
            return getattr(v, side)
        return torch.zeros((), dtype=like.lb.dtype, device=like.lb.device).expand(1, 1, *v.shape[1:])

    def value(v, side):
        return getattr(v, side) if isinstance(v, Linear) else v

    def place_w(side):
        return _place(weights(base, side), weights(src, side), _region(dim, start, end, step, 1),
                      (batch, inputs), region_shape)

    def place_b(side):
        return _place(value(base, side), value(src, side), _region(dim, start, end, step),
                      (batch,), region_shape)
    return Linear(place_w("lw"), place_b("lb"), place_w("uw"), place_b("ub"))


register(OpDef(name="slice_scatter", forward=_forward, ibp=_ibp, backward=_backward,
               forward_mode=_forward_mode, backward_needs_shapes=True,
               doc="base with base[..., start:end:step, ...] replaced by src (in-place writes)"))


# -- ATen lowerings ---------------------------------------------------------------------------

def _scatter(lw, base, src, dim, start, end, step):
    base, src = lw.value(base), lw.value(src)
    rank = len(base.shape) + (1 if base.batched else 0)
    dim = dim + rank if dim < 0 else dim
    if dim == 0:
        full = start in (None, 0) and step == 1 and (end is None or not isinstance(end, int)
                                                     or end >= 2 ** 62)
        if full and isinstance(src, Node) and src.batched and src.shape == _per_sample(base):
            return src
        raise lw.error("a write into part of the batch dimension (dim 0)",
                       "write into every sample alike (y[:, ...] = ...)")
    size = base.shape[dim - 1] if base.batched else base.shape[dim]
    start, end, step = slice(start, end, step).indices(size)
    per_sample = list(_per_sample(base))
    per_sample[dim - 1] = len(range(start, end, step))
    return lw.add("slice_scatter", [base, src], dim=dim, start=start, end=end, step=step,
                  region_shape=tuple(per_sample))


@aten_lowering("slice_scatter.default")
def _lower_slice_scatter(lw, base, src, dim=0, start=None, end=None, step=1):
    return _scatter(lw, base, src, dim, start, end, step)


@aten_lowering("select_scatter.default")
def _lower_select_scatter(lw, base, src, dim, index):
    node = lw.value(base)
    rank = len(node.shape) + 1
    d = dim + rank if dim < 0 else dim
    if d == 0:
        raise lw.error("a write into one sample of the batch (dim 0)",
                       "write into every sample alike (y[:, ...] = ...)")
    index = index % node.shape[d - 1]
    return _scatter(lw, base, src, d, index, index + 1, 1)


def _per_sample(node: Node) -> tuple:
    """A node's shape without the batch (constants keep a leading dim of 1)."""
    return tuple(node.shape) if node.batched else tuple(node.shape[1:])


def _constant_like(lw, dst: Node, fill) -> Node:
    """A constant of dst's per-sample shape (batch dim 1, broadcast over the batch)."""
    from lirpac.ir.torch_frontend import source_of
    value = fill(torch.empty((1, *_per_sample(dst)), dtype=dst.dtype))
    node = lw.graph.add("constant", [], name=lw.fx_node.name, shape=tuple(value.shape),
                        dtype=value.dtype, value=value, source=source_of(lw.fx_node))
    lw.row_constants.add(id(node))
    return node


@aten_lowering("fill.Scalar", "fill.Tensor")
def _lower_fill(lw, dst, value):
    """``dst.fill_(v)`` (``y[:, 0] = 0``): a constant of dst's shape."""
    v = lw.value(value)
    if isinstance(v, Node):
        if v.perturbed:
            raise lw.error("fill with a perturbed value", "write the tensor with y[...] = value")
        return _expanded(lw, lw.value(dst), v)
    return _constant_like(lw, lw.value(dst), lambda t: t.fill_(v))


def _expanded(lw, dst: Node, value: Node) -> Node:
    """A constant node (a parameter, say) broadcast to dst's per-sample shape, evaluated in the
    generated code so bounds stay differentiable in it."""
    from lirpac.ir.torch_frontend import source_of
    shape = (1, *_per_sample(dst))
    return lw.graph.add("const_fn", [value], name=lw.fx_node.name, shape=shape,
                        dtype=dst.dtype, source=source_of(lw.fx_node),
                        attrs=dict(target="aten.expand.default",
                                   args=(("%input", 0), list(shape)), kwargs={}))


@aten_lowering("copy.default")
def _lower_copy(lw, dst, src, non_blocking=False):
    """``dst.copy_(src)`` (``y[:, 1:3] = z``): src broadcast to dst's shape."""
    d, s = lw.value(dst), lw.value(src)
    if isinstance(s, Node) and s.perturbed:
        if s.shape == _per_sample(d):
            return s
        raise lw.error(f"a write of a perturbed tensor of shape {s.shape} into one of shape "
                       f"{_per_sample(d)}", "expand the value to the target's shape first")
    if isinstance(s, Node):
        return _expanded(lw, d, s)
    return _constant_like(lw, d, lambda t: t.copy_(torch.as_tensor(s)))
