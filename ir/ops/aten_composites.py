"""ATen ops of common PyTorch models lowered onto registered ops, each exactly (the lowered
graph computes the op's value; its bounds are those of the parts).

- where / masked_fill with a constant condition m: x * m + y * (1 - m), each entry one side
  times 1 plus the other times 0 (a constant side is folded into one constant).
- einsum of one perturbed operand and one constant: einsum_const (ir/ops/linear.py).
- group_norm, instance_norm, rms_norm: statistics as in layer_norm (ir/ops/normalization.py),
  over each group, each channel's spatial dims, or the normalized dims (no centring).
- var / std: sum of squares of center(x), scaled by 1 / (N - correction), and its sqrt.
- reflect, replicate and circular padding, conv padding='same'/'valid': index selections
  along each padded dim (0/1 matrices), then the convolution.
- pixel_shuffle / pixel_unshuffle: reshape, permute, reshape.
- softshrink = x - clamp(x, -l, l); hardshrink and threshold add steps (heaviside) for their
  jumps; exp2 = exp(x ln 2); adaptive max pooling with uniform windows is max pooling.
"""
from __future__ import annotations

import math
import string

import torch

from lirpac.ir.graph import Node
from lirpac.ir.opdef import aten_lowering
from lirpac.ir.ops.bivariate import add_node
from lirpac.ir.ops.structure import _constant_value, _evaluate


def _per_sample(lw) -> tuple[int, ...]:
    return tuple(int(s) for s in lw.meta_shape()[0][1:])


def _batch_dim_of(lw, node: Node, dim: int) -> int:
    """A batch-first dim index (not the batch) of ``node``."""
    d = dim % (len(node.shape) + 1)
    if d == 0:
        raise lw.error(f"'{lw.fx_node.target}' along the batch dimension (dim 0) cannot be "
                       "bounded per sample")
    return d


# -- where / masked_fill ------------------------------------------------------------------------

def _condition(lw, cond) -> torch.Tensor:
    node = lw.value(cond)
    if isinstance(node, Node) and node.perturbed:
        raise lw.error(f"'{lw.fx_node.target}' with a condition that depends on the perturbed "
                       "input", "lirpac bounds where/masked_fill with a constant mask; write a "
                       "choice that depends on x with torch.maximum, torch.clamp or torch.relu")
    if isinstance(node, Node) and node.batched:
        raise lw.error(f"'{lw.fx_node.target}' with a per-sample condition",
                       "use a constant mask (a registered buffer or a literal tensor)")
    return _constant_value(lw, cond).bool() if isinstance(node, Node) else torch.tensor(bool(node))


def _side_value(lw, side, like: Node):
    """A constant side's value (a scalar or a constant node), else None."""
    v = lw.value(side)
    if isinstance(v, Node):
        return None if v.perturbed else _evaluate(v).to(like.dtype)
    return torch.tensor(float(v), dtype=like.dtype)


@aten_lowering("where.self", "where.ScalarSelf", "where.ScalarOther", "where.Scalar")
def _lower_where(lw, cond, x, y):
    mask = _condition(lw, cond)
    like = next(v for v in (lw.value(x), lw.value(y)) if isinstance(v, Node) and v.perturbed)
    keep = mask.to(like.dtype)
    picked, fixed = [], torch.zeros((), dtype=like.dtype)
    for side, m in ((x, keep), (y, 1 - keep)):
        value = _side_value(lw, side, like)
        if value is None:
            node = lw.value(side)
            shape = torch.broadcast_shapes((1, *node.shape), m.shape)[1:]
            picked.append(add_node(lw, "mul", [node, lw.constant(m, like)], shape, "pick"))
        else:   # the constant side's value where it is chosen, 0 elsewhere
            fixed = fixed + torch.where(m.bool(), value, torch.zeros((), dtype=like.dtype))
    if not bool(torch.isfinite(fixed).all()):
        # (a softmax after it would take differences -inf - -inf = NaN)
        raise lw.error(f"'{lw.fx_node.target}' fills with an infinite value",
                       "lirpac bounds finite values: fill with a large finite one such as -1e4 "
                       "(a softmax then gives the masked entries e^-1e4, i.e. 0)")
    if len(picked) == 2:
        return lw.add("add", picked)
    return lw.add("add", [picked[0], lw.constant(fixed, like)])


@aten_lowering("masked_fill.Scalar", "masked_fill.Tensor")
def _lower_masked_fill(lw, x, mask, value):
    return _lower_where(lw, mask, value, x)


# -- einsum ---------------------------------------------------------------------------------

def _explicit(equation: str, shapes) -> tuple[list[str], str]:
    """The equation's operand subscripts and output with '...' spelled out and an implicit
    output (no '->') made explicit: the subscripts that occur once, in order, after the
    broadcast dims."""
    equation = equation.replace(" ", "")
    lhs, arrow, out = equation.partition("->")
    terms = lhs.split(",")
    free = [c for c in string.ascii_letters if c not in equation]
    widest = max((len(s) - len(t.replace("...", "")) for t, s in zip(terms, shapes)
                  if "..." in t), default=0)
    ellipsis = "".join(free[:widest])
    spelled = []
    for t, s in zip(terms, shapes):
        n = len(s) - len(t.replace("...", ""))
        spelled.append(t.replace("...", ellipsis[widest - n:]) if "..." in t else t)
    if arrow:
        out = out.replace("...", ellipsis)
    else:
        letters = "".join(spelled)
        out = ellipsis + "".join(sorted(c for c in set(letters)
                                        if letters.count(c) == 1 and c not in ellipsis))
    return spelled, out


@aten_lowering("einsum.default")
def _lower_einsum(lw, equation, tensors, path=None):
    nodes = [lw.operand(t, next(lw.value(u) for u in tensors if isinstance(lw.value(u), Node)))
             for t in tensors]
    perturbed = [n for n in nodes if n.perturbed]
    if len(nodes) != 2 or len(perturbed) != 1:
        raise lw.error(f"einsum of {len(nodes)} operands, {len(perturbed)} of them perturbed",
                       "lirpac bounds an einsum of one perturbed operand and one constant; "
                       "write products of perturbed tensors with torch.matmul or *")
    shapes = [((1,) + n.shape) if n.batched else n.shape for n in nodes]
    terms, out = _explicit(equation, shapes)
    x_at = nodes.index(perturbed[0])
    x_terms, w_terms = terms[x_at], terms[1 - x_at]
    batch = x_terms[:1]
    if not batch or out[:1] != batch or batch in w_terms or batch in x_terms[1:]:
        raise lw.error(f"einsum '{equation}' does not keep the perturbed operand's first "
                       "subscript (its batch) as the output's first, or uses it elsewhere",
                       "lirpac keeps dim 0 as the batch: write the batch subscript first in "
                       "the perturbed operand and the output only")
    return lw.add("einsum_const", [nodes[x_at], nodes[1 - x_at]],
                  equation=f"{x_terms},{w_terms}->{out}")


# -- group, instance and RMS normalisation -------------------------------------------------------

def _normalized(lw, node: Node, dims: tuple[int, ...], eps: float, centre: bool) -> Node:
    """(x - mean) / sqrt(var + eps) over ``dims`` (centre), or x / sqrt(mean(x^2) + eps)."""
    stat_shape = tuple(1 if d + 1 in dims else s for d, s in enumerate(node.shape))
    base = add_node(lw, "center", [node], node.shape, "centred", dims=dims) if centre else node
    square = add_node(lw, "pow", [base], node.shape, "square", exponent=2)
    mean = add_node(lw, "mean", [square], stat_shape, "meansq", dims=dims, keepdim=True)
    shifted = add_node(lw, "add", [mean, lw.constant(float(eps), node)], stat_shape, "eps")
    scale = add_node(lw, "rsqrt_floored", [shifted], stat_shape, "inv_rms", floor=float(eps))
    return add_node(lw, "mul_bilinear", [base, scale], node.shape, "normed")


def _channel_affine(lw, out: Node, weight, bias, spatial: int) -> Node:
    """out * weight + bias with per-channel (C,) vectors viewed as (C, 1, ..)."""
    steps = [(op, lw.value(v)) for op, v in (("mul", weight), ("add", bias)) if v is not None]
    if not steps:
        return out
    for i, (op, vector) in enumerate(steps):
        shape = (vector.shape[0],) + (1,) * spatial
        viewed = lw.graph.add("const_fn", [vector], name=f"{lw.fx_node.name}_{op}_view",
                              shape=shape, dtype=vector.dtype, attrs=dict(
                                  target="aten.reshape.default", args=(("%input", 0), list(shape)),
                                  kwargs={}))
        if i == len(steps) - 1:
            return lw.add(op, [out, viewed])
        out = add_node(lw, op, [out, viewed], out.shape, op)
    return out


@aten_lowering("group_norm.default")
def _lower_group_norm(lw, x, num_groups, weight=None, bias=None, eps=1e-5, *rest):
    node = lw.value(x)
    channels, spatial = node.shape[0], node.shape[1:]
    grouped_shape = (num_groups, channels // num_groups, *spatial)
    grouped = add_node(lw, "reshape", [node], grouped_shape, "grouped", shape=grouped_shape)
    dims = tuple(range(2, len(grouped_shape) + 1))
    normed = _normalized(lw, grouped, dims, eps, centre=True)
    back = add_node(lw, "reshape", [normed], node.shape, "ungrouped", shape=node.shape)
    return _channel_affine(lw, back, weight, bias, len(spatial))


@aten_lowering("instance_norm.default")
def _lower_instance_norm(lw, x, weight, bias, running_mean, running_var, use_input_stats,
                         momentum, eps, *rest):
    """Per-sample statistics (track_running_stats=False) over each channel's spatial dims;
    running statistics (track_running_stats=True, eval): batch_norm."""
    node = lw.value(x)
    if not use_input_stats:
        from lirpac.ir.torch_frontend import _bn
        return _bn(lw, x, weight, bias, running_mean, running_var, eps)
    dims = tuple(range(2, len(node.shape) + 1))
    normed = _normalized(lw, node, dims, eps, centre=True)
    return _channel_affine(lw, normed, weight, bias, len(node.shape) - 1)


@aten_lowering("rms_norm.default")
def _lower_rms_norm(lw, x, normalized_shape, weight=None, eps=None):
    node = lw.value(x)
    eps = torch.finfo(node.dtype).eps if eps is None else eps
    rank = len(node.shape)
    dims = tuple(range(rank + 1 - len(normalized_shape), rank + 1))
    normed = _normalized(lw, node, dims, eps, centre=False)
    return normed if weight is None else lw.add("mul", [normed, lw.value(weight)])


# -- var / std ----------------------------------------------------------------------------------

def _variance(lw, x, dim, correction, keepdim, root: bool):
    node = lw.value(x)
    dims = (tuple(range(1, len(node.shape) + 1)) if dim in (None, [], ())
            else tuple(sorted(_batch_dim_of(lw, node, d) for d in
                              ([dim] if isinstance(dim, int) else dim))))
    count = math.prod(node.shape[d - 1] for d in dims)
    correction = 1 if correction is None else float(correction)
    if count - correction <= 0:
        raise lw.error(f"'{lw.fx_node.target}' over {count} entries with correction "
                       f"{correction:g} (a division by {count - correction:g})",
                       "reduce over more entries, or use unbiased=False / correction=0")
    out_shape = _per_sample(lw)
    centred = add_node(lw, "center", [node], node.shape, "centred", dims=dims)
    square = add_node(lw, "pow", [centred], node.shape, "square", exponent=2)
    total = add_node(lw, "sum", [square], out_shape, "sumsq", dims=dims, keepdim=bool(keepdim))
    scale = lw.constant(1.0 / (count - correction), node)
    if not root:
        return lw.add("mul", [total, scale])
    var = add_node(lw, "mul", [total, scale], out_shape, "var")
    return lw.add("sqrt_floored", [var], floor=0.0)


def _variance_lowering(root: bool):
    def dim_form(lw, x, dim=None, unbiased=True, keepdim=False):
        return _variance(lw, x, dim, 1 if unbiased else 0, keepdim, root)

    def correction_form(lw, x, dim=None, *, correction=None, keepdim=False):
        return _variance(lw, x, dim, correction, keepdim, root)
    return dim_form, correction_form


_var_dim, _var_correction = _variance_lowering(root=False)
_std_dim, _std_correction = _variance_lowering(root=True)
aten_lowering("var.dim")(_var_dim)
aten_lowering("var.correction")(_var_correction)
aten_lowering("std.dim")(_std_dim)
aten_lowering("std.correction")(_std_correction)


# -- padding by index selection ------------------------------------------------------------------

def _source_index(j: int, size: int, mode: str) -> int:
    """The input position that output position j (-pad_left <= j < size + pad_right) reads."""
    if mode == "reflect":
        period = 2 * (size - 1)
        j = abs(j) % period if period else 0
        return period - j if j >= size else j
    if mode == "replicate":
        return min(max(j, 0), size - 1)
    return j % size     # circular


def pad_by_index(lw, node: Node, pad, mode: str) -> Node:
    """F.pad(x, pad, mode) for mode reflect, replicate or circular: one index_select per
    padded dim (pad lists (left, right) from the last dim backwards)."""
    pairs = [tuple(pad[i:i + 2]) for i in range(0, len(pad), 2)]
    if any(p < 0 for pair in pairs for p in pair):
        raise lw.error(f"pad with mode='{mode}' and a negative pad {tuple(pad)}",
                       "crop with slicing instead")
    out = node
    steps = [(len(node.shape) - k, left, right) for k, (left, right) in enumerate(pairs)
             if left or right]
    if any(d < 1 for d, _, _ in steps):
        raise lw.error(f"pad with mode='{mode}' of the batch dimension")
    for i, (dim, left, right) in enumerate(steps):
        size = out.shape[dim - 1]
        if mode == "reflect" and max(left, right) >= size:
            raise lw.error(f"reflect padding by {max(left, right)} of a dim of size {size}",
                           "reflect pads must be smaller than the dim")
        index = tuple(_source_index(j, size, mode) for j in range(-left, size + right))
        shape = out.shape[:dim - 1] + (len(index),) + out.shape[dim:]
        if i == len(steps) - 1:
            return lw.add("index_select", [out], dim=dim, index=index)
        out = add_node(lw, "index_select", [out], shape, f"pad{dim}", dim=dim, index=index)
    return out


_PAD_MODES = {"reflection": "reflect", "replication": "replicate"}


@aten_lowering("reflection_pad1d.default", "reflection_pad2d.default", "reflection_pad3d.default",
               "replication_pad1d.default", "replication_pad2d.default",
               "replication_pad3d.default", "_pad_circular.default")
def _lower_mode_pad(lw, x, pad):
    name = str(lw.fx_node.target).removeprefix("aten.")
    mode = "circular" if name.startswith("_pad_circular") else _PAD_MODES[name.split("_")[0]]
    return pad_by_index(lw, lw.value(x), list(pad), mode)


@aten_lowering("conv1d.padding", "conv2d.padding", "conv3d.padding")
def _lower_conv_padding(lw, x, weight, bias=None, stride=1, padding="valid", dilation=1,
                        groups=1):
    """padding='valid' is 0; 'same' pads dilation * (k - 1) in all, the odd one on the right
    (as torch): a separate constant pad where the two sides differ."""
    from lirpac.ir.torch_frontend import _conv
    w = lw.value(weight)
    nd = len(w.shape) - 2
    dilation = list(dilation) if isinstance(dilation, (list, tuple)) else [dilation]
    dilation = dilation * nd if len(dilation) == 1 else dilation
    if padding == "valid":
        return _conv(lw, x, weight, bias, stride, 0, dilation, groups)
    if padding != "same":
        raise lw.error(f"conv with padding='{padding}'", "use 'same', 'valid' or integers")
    totals = [d * (k - 1) for d, k in zip(dilation, w.shape[2:])]
    lefts = [t // 2 for t in totals]
    node = lw.value(x)
    if all(t % 2 == 0 for t in totals):
        return _conv(lw, node, weight, bias, stride, lefts, dilation, groups)
    pad = [v for t, left in reversed(list(zip(totals, lefts))) for v in (left, t - left)]
    shape = node.shape[:1] + tuple(s + t for s, t in zip(node.shape[1:], totals))
    padded = add_node(lw, "pad", [node], shape, "same", pad=tuple(pad), value=0.0)
    return _conv(lw, padded, weight, bias, stride, 0, dilation, groups)


# -- pixel shuffle ----------------------------------------------------------------------------

def _pixel_rearrange(lw, x, factor: int, shuffle: bool):
    node = lw.value(x)
    if len(node.shape) != 3:
        raise lw.error(f"'{lw.fx_node.target}' of per-sample shape {node.shape}",
                       "lirpac lowers pixel (un)shuffle of (C, H, W) samples")
    c, h, w = node.shape
    r = int(factor)
    if shuffle:     # (C r r, H, W) -> (C, r, r, H, W) -> (C, H, r, W, r)
        split, dims = (c // (r * r), r, r, h, w), (0, 1, 4, 2, 5, 3)
        moved = (c // (r * r), h, r, w, r)
    else:           # (C, H r, W r) -> (C, H, r, W, r) -> (C, r, r, H, W)
        split, dims = (c, h // r, r, w // r, r), (0, 1, 3, 5, 2, 4)
        moved = (c, r, r, h // r, w // r)
    parts = add_node(lw, "reshape", [node], split, "split", shape=split)
    turned = add_node(lw, "permute", [parts], moved, "moved", dims=dims)
    return lw.add("reshape", [turned], shape=_per_sample(lw))


@aten_lowering("pixel_shuffle.default")
def _lower_pixel_shuffle(lw, x, upscale_factor):
    return _pixel_rearrange(lw, x, upscale_factor, shuffle=True)


@aten_lowering("pixel_unshuffle.default")
def _lower_pixel_unshuffle(lw, x, downscale_factor):
    return _pixel_rearrange(lw, x, downscale_factor, shuffle=False)


# -- shrinkage, threshold, exp2 ---------------------------------------------------------------

def _step(lw, node: Node, offset: float, sign: float, at_zero: float, suffix: str) -> Node:
    """heaviside(sign * x + offset, at_zero)."""
    moved = node
    if sign < 0:
        moved = add_node(lw, "neg", [moved], node.shape, f"{suffix}_neg")
    if offset:
        moved = add_node(lw, "add", [moved, lw.constant(offset, node)], node.shape,
                         f"{suffix}_shift")
    return add_node(lw, "heaviside", [moved, lw.constant(at_zero, node)], node.shape, suffix)


def _clamped(lw, node: Node, lambd: float) -> Node:
    return add_node(lw, "clamp", [node], node.shape, "clamped", min=-lambd, max=lambd)


@aten_lowering("softshrink.default")
def _lower_softshrink(lw, x, lambd=0.5):
    node = lw.value(x)
    return lw.add("sub", [node, _clamped(lw, node, float(lambd))])   # x - clamp(x, -l, l)


@aten_lowering("hardshrink.default")
def _lower_hardshrink(lw, x, lambd=0.5):
    """x for |x| > l, else 0: softshrink(x) + l * (H(x - l) - H(-x - l)), H(0) = 0."""
    node = lw.value(x)
    if lambd == 0:
        return lw.add("sub", [node, _clamped(lw, node, 0.0)])
    soft = add_node(lw, "sub", [node, _clamped(lw, node, float(lambd))], node.shape, "soft")
    up = _step(lw, node, -float(lambd), 1.0, 0.0, "above")
    down = _step(lw, node, -float(lambd), -1.0, 0.0, "below")
    jumps = add_node(lw, "sub", [up, down], node.shape, "jumps")
    scaled = add_node(lw, "mul", [jumps, lw.constant(float(lambd), node)], node.shape, "jump")
    return lw.add("add", [soft, scaled])


@aten_lowering("threshold.default")
def _lower_threshold(lw, x, threshold, value):
    """x for x > t, else v: max(x, t) + (v - t) * H(t - x), H(0) = 1."""
    node = lw.value(x)
    if value == threshold:
        return lw.add("clamp", [node], min=float(threshold))
    floor = add_node(lw, "clamp", [node], node.shape, "floor", min=float(threshold))
    below = _step(lw, node, float(threshold), -1.0, 1.0, "below")
    jump = add_node(lw, "mul", [below, lw.constant(float(value) - float(threshold), node)],
                    node.shape, "jump")
    return lw.add("add", [floor, jump])


@aten_lowering("exp2.default")
def _lower_exp2(lw, x):
    node = lw.value(x)
    scaled = add_node(lw, "mul", [node, lw.constant(math.log(2.0), node)], node.shape, "ln2")
    return lw.add("exp", [scaled])


@aten_lowering("adaptive_max_pool2d.default")
def _lower_adaptive_max_pool(lw, x, output_size):
    """Uniform windows (each output size divides its input size) are max pooling; the
    indices output is not computed."""
    node = lw.value(x)
    if len(node.shape) != 3:
        raise lw.error("adaptive_max_pool2d needs per-sample (C, H, W) inputs")
    spatial, out = node.shape[1:], tuple(int(o) for o in output_size)
    if any(s % o for s, o in zip(spatial, out)):
        raise lw.error(f"adaptive max pooling of {spatial} to {out}, whose windows differ in size",
                       "choose an output size that divides the input size, or use max_pool2d")
    kernel = tuple(s // o for s, o in zip(spatial, out))
    return (lw.add("max_pool", [node], kernel_size=kernel, stride=kernel, padding=(0, 0),
                   dilation=(1, 1), ceil_mode=False), None)
