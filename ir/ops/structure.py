"""More structural ops: indexing (index_select, gather), repeat, nearest upsampling,
cumsum, flip, roll; and the ATen lowerings of the multi-output ops (split, chunk, unbind) and
of stack onto existing ops (slice, reshape, cat).

Each op is a linear map whose matrix holds only 0s and 1s (cumsum: a triangle of 1s), so IBP
maps both ends and forward mode maps every function (``common.linear_map``); backward applies
the exact transpose. Dimensions in attrs are those of the full batch-first tensor.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lirpac.ir.graph import Node
from lirpac.ir.opdef import aten_lowering, get_op
from lirpac.ir.ops.common import linear_map


# -- indexing ---------------------------------------------------------------------------------

def _index_select(x, *, dim, index):
    return x.index_select(dim, torch.tensor(index, device=x.device))


def _index_select_transpose(a, in_shape, dim, index):
    full = a.new_zeros(a.shape[0], *in_shape)
    return full.index_add(dim, torch.tensor(index, device=a.device), a)


linear_map("index_select", _index_select, transpose=_index_select_transpose,
           doc="x.index_select(dim, index) along a non-batch dim; index a tuple of ints")


def _gather(x, *, dim, index):
    index = index.to(x.device)
    return torch.gather(x, dim, index.expand(x.shape[0], *index.shape[1:]))


def _gather_transpose(a, in_shape, dim, index):
    index = index.to(a.device).expand(a.shape[0], *index.shape[1:])
    return a.new_zeros(a.shape[0], *in_shape).scatter_add(dim, index, a)


linear_map("gather", _gather, transpose=_gather_transpose,
           doc="torch.gather(x, dim, index) with a constant index of batch size 1 (broadcast)")


# -- tiling and upsampling (expand lives in normalization.py) ------------------------------------------------------------------

def _repeat(x, *, repeats):
    return x.repeat(1, *repeats)


linear_map("repeat", _repeat, doc="tile along non-batch dims (Tensor.repeat, repeats per sample)")


def _upsample_nearest(x, *, output_size):
    return F.interpolate(x, size=tuple(output_size), mode="nearest")


linear_map("upsample_nearest", _upsample_nearest,
           doc="nearest-neighbour upsampling (1-3 spatial dims) to output_size")


_LINEAR_MODES = {3: "linear", 4: "bilinear", 5: "trilinear"}


def _upsample_linear(x, *, output_size, align_corners):
    return F.interpolate(x, size=tuple(output_size), mode=_LINEAR_MODES[x.dim()],
                         align_corners=align_corners)


# each output is a convex combination of inputs (weights >= 0): IBP maps both ends exactly
linear_map("upsample_linear", _upsample_linear,
           doc="(bi/tri)linear upsampling (1-3 spatial dims) to output_size, align_corners or not")


# -- scans and permutations -------------------------------------------------------------------

def _cumsum(x, *, dim):
    return x.cumsum(dim)


linear_map("cumsum", _cumsum, transpose=lambda a, in_shape, dim: a.flip(dim).cumsum(dim).flip(dim),
           doc="cumulative sum along a non-batch dim")


linear_map("flip", lambda x, *, dims: x.flip(dims),
           transpose=lambda a, in_shape, dims: a.flip(dims), doc="reverse non-batch dims")


linear_map("roll", lambda x, *, shifts, dims: x.roll(shifts, dims),
           transpose=lambda a, in_shape, shifts, dims: a.roll(tuple(-s for s in shifts), dims),
           doc="cyclic shift along non-batch dims")


# -- ATen lowerings ---------------------------------------------------------------------------

def _dims_of(lw, node, dims) -> list[int]:
    from lirpac.ir.torch_frontend import _dims
    return _dims(node, dims, lw)


def _dim(lw, node, dim) -> int:
    return _dims_of(lw, node, dim)[0]


def _shaped(lw, op, inputs, out_shape, name, **attrs):
    """A node whose per-sample shape is given (outputs of multi-output ATen ops have no single
    meta shape to read)."""
    from lirpac.ir.torch_frontend import source_of
    return lw.graph.add(op, inputs, name=name, attrs=attrs, shape=tuple(int(s) for s in out_shape),
                        dtype=inputs[0].dtype, batched=True,
                        perturbed=any(i.perturbed for i in inputs), source=source_of(lw.fx_node))


def _pieces(lw, x, sizes, dim):
    """Slices of x along dim with the given sizes (a split); a whole-size piece is x itself."""
    dim = _dim(lw, x, dim)
    out, start = [], 0
    for i, size in enumerate(sizes):
        if size == x.shape[dim - 1]:
            out.append(x)
        else:
            shape = list(x.shape)
            shape[dim - 1] = size
            out.append(_shaped(lw, "slice", [x], shape, f"{lw.fx_node.name}_{i}",
                               dim=dim, start=start, end=start + size, step=1))
        start += size
    return out


@aten_lowering("split.Tensor", "split_with_sizes.default", "unsafe_split.Tensor",
               "unsafe_split_with_sizes.default")
def _split(lw, x, split_size, dim=0):
    node = lw.value(x)
    length = node.shape[_dim(lw, node, dim) - 1]
    if isinstance(split_size, int):
        sizes = [min(split_size, length - s) for s in range(0, length, split_size)]
    else:
        sizes = list(split_size)
    return _pieces(lw, node, sizes, dim)


@aten_lowering("chunk.default", "unsafe_chunk.default")
def _chunk(lw, x, chunks, dim=0):
    node = lw.value(x)
    length = node.shape[_dim(lw, node, dim) - 1]
    size = -(-length // chunks)
    return _pieces(lw, node, [min(size, length - s) for s in range(0, length, size)], dim)


@aten_lowering("unbind.int")
def _unbind(lw, x, dim=0):
    node = lw.value(x)
    d = _dim(lw, node, dim)
    shape = node.shape[:d - 1] + node.shape[d:]
    return [_shaped(lw, "reshape", [piece], shape, f"{lw.fx_node.name}_{i}_squeeze", shape=shape)
            for i, piece in enumerate(_pieces(lw, node, [1] * node.shape[d - 1], dim))]


@aten_lowering("stack.default")
def _stack(lw, tensors, dim=0):
    nodes = [lw.value(t) for t in tensors]
    if not all(n.batched for n in nodes):
        raise lw.error("stack of a perturbed tensor with a constant; broadcast the constant "
                       "over the batch with torch.cat instead")
    rank = len(nodes[0].shape) + 2
    dim = dim + rank if dim < 0 else dim
    if dim == 0:
        raise lw.error("stack along the batch dimension (dim 0)")
    unsqueezed = []
    for n in nodes:
        shape = n.shape[:dim - 1] + (1,) + n.shape[dim - 1:]
        unsqueezed.append(_shaped(lw, "reshape", [n], shape, f"{n.name}_unsqueeze", shape=shape))
    return lw.add("cat", unsqueezed, dim=dim, sizes=(1,) * len(nodes))


@aten_lowering("index_select.default")
def _lower_index_select(lw, x, dim, index):
    node = lw.value(x)
    return lw.add("index_select", [node], dim=_dim(lw, node, dim),
                  index=tuple(int(i) for i in _constant_value(lw, index).reshape(-1)))


@aten_lowering("index.Tensor")
def _lower_index(lw, x, indices):
    """x[:, ..., idx] with one constant integer index tensor (advanced indexing on one dim)."""
    node = lw.value(x)
    given = [(d, i) for d, i in enumerate(indices) if i is not None]
    if len(given) != 1 or given[0][0] == 0:
        raise lw.error("advanced indexing with several index tensors or on the batch dim",
                       "index one non-batch dim at a time (x[:, idx])")
    dim, index = given[0]
    value = _constant_value(lw, index)
    if value.dim() != 1 or value.dtype == torch.bool:
        raise lw.error("advanced indexing with a mask or a multi-dim index",
                       "use a 1-D integer index (x[:, idx])")
    size = node.shape[dim - 1]
    return lw.add("index_select", [node], dim=dim,
                  index=tuple(int(i) % size for i in value))


@aten_lowering("gather.default")
def _lower_gather(lw, x, dim, index, sparse_grad=False):
    node = lw.value(x)
    value = _constant_value(lw, index)
    if value.shape[0] != 1:
        raise lw.error("gather with a per-sample index", "use an index of batch size 1")
    return lw.add("gather", [node], dim=_dim(lw, node, dim), index=value)


def _constant_value(lw, arg) -> torch.Tensor:
    node = lw.value(arg)
    if not isinstance(node, Node) or node.perturbed or node.batched:
        raise lw.error("an index that is not a constant tensor",
                       "index with a constant (a registered buffer or a literal tensor)")
    return _evaluate(node).detach()


def _evaluate(node: Node) -> torch.Tensor:
    """The value of a constant node (a const_fn chain evaluated on its constant inputs)."""
    if node.value is not None:
        return node.value
    return get_op(node.op).forward(*[_evaluate(i) for i in node.inputs], **node.attrs)


@aten_lowering("repeat.default")
def _lower_repeat(lw, x, repeats):
    node = lw.value(x)
    if len(repeats) != len(node.shape) + 1 or repeats[0] != 1:
        raise lw.error("repeat along the batch dimension (or adding leading dims)",
                       "repeat non-batch dims only: x.repeat(1, ...)")
    if all(r == 1 for r in repeats):
        return node
    return lw.add("repeat", [node], repeats=tuple(int(r) for r in repeats[1:]))


@aten_lowering("upsample_nearest1d.vec", "upsample_nearest2d.vec", "upsample_nearest3d.vec",
               "upsample_nearest1d.default", "upsample_nearest2d.default",
               "upsample_nearest3d.default")
def _lower_upsample(lw, x, *args, **kwargs):
    node = lw.value(x)
    shape, _ = lw.meta_shape()
    spatial = tuple(int(s) for s in shape[2:])
    in_spatial = node.shape[1:]
    if any(o % i for o, i in zip(spatial, in_spatial)):
        raise lw.error("nearest upsampling by a non-integer factor",
                       "use an integer scale_factor")
    return lw.add("upsample_nearest", [node], output_size=spatial)


@aten_lowering("upsample_linear1d.vec", "upsample_bilinear2d.vec", "upsample_trilinear3d.vec")
def _lower_upsample_linear(lw, x, output_size, align_corners, *rest):
    """Whole factors only: then the size and the scale factor give torch the same grid."""
    node = lw.value(x)
    spatial = tuple(int(s) for s in lw.meta_shape()[0][2:])
    if any(o % i for o, i in zip(spatial, node.shape[1:])):
        raise lw.error("linear upsampling by a non-integer factor", "use an integer scale_factor")
    return lw.add("upsample_linear", [node], output_size=spatial, align_corners=bool(align_corners))


@aten_lowering("cumsum.default")
def _lower_cumsum(lw, x, dim, dtype=None):
    node = lw.value(x)
    return lw.add("cumsum", [node], dim=_dim(lw, node, dim))


@aten_lowering("flip.default")
def _lower_flip(lw, x, dims):
    node = lw.value(x)
    return lw.add("flip", [node], dims=tuple(_dims_of(lw, node, dims)))


@aten_lowering("roll.default")
def _lower_roll(lw, x, shifts, dims=()):
    node = lw.value(x)
    if not dims:
        raise lw.error("roll without dims (it rolls the flattened tensor, batch included)",
                       "give dims, e.g. torch.roll(x, 1, dims=1)")
    shifts = [shifts] if isinstance(shifts, int) else list(shifts)
    return lw.add("roll", [node], shifts=tuple(int(s) for s in shifts),
                  dims=tuple(_dims_of(lw, node, dims)))


# -- composite ATen ops torch.export keeps whole, lowered onto the ops above -------------------

@aten_lowering("narrow.default")
def _lower_narrow(lw, x, dim, start, length):
    node = lw.value(x)
    d = _dim(lw, node, dim)
    start = start % node.shape[d - 1]
    return lw.add("slice", [node], dim=d, start=start, end=start + length, step=1)


@aten_lowering("movedim.int")
def _lower_movedim(lw, x, source, destination):
    from lirpac.ir.torch_frontend import _permute
    node = lw.value(x)
    dims = list(range(len(node.shape) + 1))
    moved = dims.pop(_dim(lw, node, source))
    dims.insert(_dim(lw, node, destination), moved)
    return _permute(lw, x, dims)


@aten_lowering("swapaxes.default", "swapdims.default")
def _lower_swapaxes(lw, x, dim0, dim1):
    from lirpac.ir.torch_frontend import _transpose
    return _transpose(lw, x, dim0, dim1)


@aten_lowering("unflatten.int")
def _lower_unflatten(lw, x, dim, sizes):
    from lirpac.ir.torch_frontend import _reshape
    _dim(lw, lw.value(x), dim)      # refuses the batch dim
    return _reshape(lw, x)


@aten_lowering("tile.default")
def _lower_tile(lw, x, dims):
    node = lw.value(x)
    dims = [1] * (len(node.shape) + 1 - len(dims)) + list(dims)
    return _lower_repeat(lw, x, dims)


@aten_lowering("repeat_interleave.self_int")
def _lower_repeat_interleave(lw, x, repeats, dim=None, output_size=None):
    node = lw.value(x)
    if dim is None:
        raise lw.error("repeat_interleave without dim (it flattens the batch)", "give dim")
    d = _dim(lw, node, dim)
    index = tuple(i for i in range(node.shape[d - 1]) for _ in range(int(repeats)))
    return lw.add("index_select", [node], dim=d, index=index)


@aten_lowering("tensor_split.sections", "tensor_split.indices")
def _lower_tensor_split(lw, x, sections_or_indices, dim=0):
    node = lw.value(x)
    length = node.shape[_dim(lw, node, dim) - 1]
    if isinstance(sections_or_indices, int):
        base, extra = divmod(length, sections_or_indices)
        sizes = [base + (i < extra) for i in range(sections_or_indices)]
    else:
        cuts = [0] + [min(max(int(c), 0), length) for c in sections_or_indices] + [length]
        sizes = [max(b - a, 0) for a, b in zip(cuts, cuts[1:])]
    return _pieces(lw, node, sizes, dim)


@aten_lowering("hstack.default")
def _lower_hstack(lw, tensors):
    from lirpac.ir.torch_frontend import _cat
    return _cat(lw, tensors, 1)


@aten_lowering("_upsample_nearest_exact1d.vec", "_upsample_nearest_exact2d.vec",
               "_upsample_nearest_exact3d.vec")
def _lower_upsample_exact(lw, x, *args, **kwargs):
    """With an integer factor, 'nearest-exact' picks the same source pixels as 'nearest'."""
    return _lower_upsample(lw, x)
