"""Maxima over windows: max pooling (1-D as 2-D, 2-D, 3-D) and max reductions (amax;
amin = -amax(-x)).

Both are y = max_k w_k over windows w = W(x) of the input (W picks entries, so it is linear).
IBP is exact: the max of the lower and of the upper bounds. The linear relaxation (DeepPoly's,
Singh et al. 2019): below, y >= w_j for j the entry with the largest lower bound; above,
y <= w_j too when that entry is the stable winner (l_j >= u_k for every other k: then y = w_j),
else the constant max_k u_k. Each pool relaxes around its own input bounds, so stacked pools
stay sound.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lirpac.ir.opdef import Interval, Linear, OpDef, aten_lowering, register
from lirpac.ir.ops.bivariate import add_node
from lirpac.ir.ops.common import fold, split_pos_neg, vjp_transpose


def _winner(wl: torch.Tensor, wu: torch.Tensor):
    """From window bounds (B, *out, K): the index of the largest lower bound (B, *out, 1),
    whether it is the stable winner, the largest upper bound (both (B, *out)), and K."""
    index = wl.argmax(-1, keepdim=True)
    best_lower = wl.gather(-1, index).squeeze(-1)
    others = wu.scatter(-1, index, -math.inf).max(-1).values
    return index, best_lower >= others, wu.max(-1).values, wl.shape[-1]


def window_max(name: str, forward, windows, doc: str) -> OpDef:
    """Register y = max over the last dim of windows(x, fill=..., **attrs): (B, *out, K);
    ``fill`` is the value of entries outside the input (padding)."""
    def relax(x: Interval, attrs):
        wl = windows(x.lower, fill=-math.inf, **attrs)
        wu = windows(x.upper, fill=-math.inf, **attrs)
        return _winner(wl, wu)

    def ibp(x: Interval, **attrs) -> Interval:
        return Interval(forward(x.lower, **attrs), forward(x.upper, **attrs))

    def backward(lA, uA, x: Interval, *, in_shapes, **attrs):
        index, stable, top, size = relax(x, attrs)
        stable = stable.to(top.dtype).unsqueeze(1)
        top = top.unsqueeze(1)
        picks = index.unsqueeze(1)

        def side(coeff, lower: bool):
            if coeff is None:
                return None, 0
            pos, neg = split_pos_neg(coeff)
            # the lower line picks w_j; the upper picks it when stable, else is the constant top
            toward_upper = neg if lower else pos
            on_pick = coeff - toward_upper * (1 - stable)
            bias = (toward_upper * (1 - stable) * top).reshape(*coeff.shape[:2], -1).sum(-1)
            spread = torch.zeros(*on_pick.shape, size, dtype=coeff.dtype,
                                 device=coeff.device)
            spread = spread.scatter(-1, picks.expand(*on_pick.shape, 1), on_pick.unsqueeze(-1))
            back = fold(spread, lambda t: vjp_transpose(
                lambda z, **kw: windows(z, fill=0.0, **kw), t, in_shapes[0], **attrs))
            return back, bias

        new_l, lbias = side(lA, True)
        new_u, ubias = side(uA, False)
        return [(new_l, new_u)], lbias, ubias

    def forward_mode(x: Linear, **attrs) -> Linear:
        index, stable, top, _ = relax(x.bounds, attrs)
        stable = stable.to(top.dtype)

        def pick(t, lead):
            w = fold(t, lambda z: windows(z, fill=0.0, **attrs)) if lead == 2 else \
                windows(t, fill=0.0, **attrs)
            idx = index.unsqueeze(1).expand(*w.shape[:-1], 1) if lead == 2 else index
            return w.gather(-1, idx).squeeze(-1)
        return Linear(pick(x.lw, 2), pick(x.lb, 1), pick(x.uw, 2) * stable.unsqueeze(1),
                      pick(x.ub, 1) * stable + (1 - stable) * top)

    return register(OpDef(name=name, forward=forward, ibp=ibp, backward=backward,
                          forward_mode=forward_mode, nonlinear=True, backward_needs_shapes=True,
                          doc=doc))


# -- max pooling (2-D) ------------------------------------------------------------------------

def _pool_out(size, kernel, stride, padding, dilation, ceil_mode):
    """Output length of torch's max pooling along one dim."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _max_pool(x, *, kernel_size, stride, padding, dilation, ceil_mode):
    return F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)


def _pool_windows(x, *, kernel_size, stride, padding, dilation, ceil_mode, fill):
    """(B, C, H_out, W_out, kh * kw): each output's window, entries outside the input = fill
    (ceil_mode's extra windows reach past the padding: filled as well)."""
    outs, pads = [], []
    for size, k, s, p, d in zip(x.shape[-2:], kernel_size, stride, padding, dilation):
        out = _pool_out(size, k, s, p, d, ceil_mode)
        outs.append(out)
        pads.append((p, p + max(0, (out - 1) * s + d * (k - 1) + 1 - (size + 2 * p))))
    padded = F.pad(x, (*pads[1], *pads[0]), value=fill)
    cols = F.unfold(padded, kernel_size, dilation=dilation, stride=stride)
    channels = x.shape[1]
    return cols.reshape(x.shape[0], channels, -1, *outs).movedim(2, -1)


window_max("max_pool", _max_pool, _pool_windows,
           doc="2-D max pooling (kernel, stride, padding, dilation, ceil_mode)")


def _pair(v):
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return tuple(v * 2 if len(v) == 1 else v)


@aten_lowering("max_pool2d.default")
def _lower_max_pool(lw, x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    node = lw.value(x)
    if len(node.shape) != 3:
        raise lw.error("max_pool2d needs per-sample (C, H, W) inputs", "add a channel dim")
    kernel = _pair(kernel_size)
    return lw.add("max_pool", [node], kernel_size=kernel,
                  stride=_pair(stride) if stride not in ((), [], None) else kernel,
                  padding=_pair(padding), dilation=_pair(dilation), ceil_mode=bool(ceil_mode))



# -- max pooling (3-D) ------------------------------------------------------------------------

def _max_pool3d(x, *, kernel_size, stride, padding, dilation, ceil_mode):
    return F.max_pool3d(x, kernel_size, stride, padding, dilation, ceil_mode)


def _pool_windows3d(x, *, kernel_size, stride, padding, dilation, ceil_mode, fill):
    """(B, C, D_out, H_out, W_out, kd * kh * kw): as _pool_windows, by Tensor.unfold per
    spatial dim (F.unfold is 2-D only); each unfold takes the dilated span, then every d-th."""
    outs, pads = [], []
    for size, k, s, p, d in zip(x.shape[-3:], kernel_size, stride, padding, dilation):
        out = _pool_out(size, k, s, p, d, ceil_mode)
        outs.append(out)
        pads.append((p, p + max(0, (out - 1) * s + d * (k - 1) + 1 - (size + 2 * p))))
    windows = F.pad(x, [v for pair in reversed(pads) for v in pair], value=fill)
    for axis, (k, s, d, out) in enumerate(zip(kernel_size, stride, dilation, outs), start=2):
        windows = windows.unfold(axis, d * (k - 1) + 1, s).narrow(axis, 0, out)[..., ::d]
    return windows.reshape(*windows.shape[:5], -1)


window_max("max_pool3d", _max_pool3d, _pool_windows3d,
           doc="3-D max pooling (kernel, stride, padding, dilation, ceil_mode)")


def _per_dim(v, n: int) -> tuple:
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return tuple(v * n if len(v) == 1 else v)


@aten_lowering("max_pool3d.default")
def _lower_max_pool3d(lw, x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    node = lw.value(x)
    if len(node.shape) != 4:
        raise lw.error("max_pool3d needs per-sample (C, D, H, W) inputs", "add a channel dim")
    kernel = _per_dim(kernel_size, 3)
    return lw.add("max_pool3d", [node], kernel_size=kernel,
                  stride=_per_dim(stride, 3) if stride not in ((), [], None) else kernel,
                  padding=_per_dim(padding, 3), dilation=_per_dim(dilation, 3),
                  ceil_mode=bool(ceil_mode))


@aten_lowering("max_pool1d.default")
def _lower_max_pool1d(lw, x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    """A 2-D pool of (C, 1, L) with a (1, k) kernel: the same windows, exact."""
    node = lw.value(x)
    if len(node.shape) != 2:
        raise lw.error("max_pool1d needs per-sample (C, L) inputs", "add a channel dim")
    (k,), (p,), (d,) = (_per_dim(v, 1) for v in (kernel_size, padding, dilation))
    (s,) = _per_dim(stride, 1) if stride not in ((), [], None) else (k,)
    channels, length = node.shape
    rows = add_node(lw, "reshape", [node], (channels, 1, length), "rows", shape=(channels, 1, length))
    out = _pool_out(length, k, s, p, d, bool(ceil_mode))
    pooled = add_node(lw, "max_pool", [rows], (channels, 1, out), "pool", kernel_size=(1, k),
                      stride=(1, s), padding=(0, p), dilation=(1, d), ceil_mode=bool(ceil_mode))
    return lw.add("reshape", [pooled], shape=(channels, out))

# -- max / min over dims ----------------------------------------------------------------------

def _amax(x, *, dims, keepdim=False):
    return x.amax(dim=dims, keepdim=keepdim)


def _reduce_windows(x, *, dims, keepdim=False, fill):
    """(B, *out, K): the reduced dims moved last and flattened."""
    kept = [d for d in range(1, x.dim()) if d not in dims]
    moved = x.permute(0, *kept, *dims)
    out = [1 if d in dims else x.shape[d] for d in range(1, x.dim())] if keepdim else \
        [x.shape[d] for d in kept]
    return moved.reshape(x.shape[0], *out, -1)


window_max("amax", _amax, _reduce_windows, doc="max over non-batch dims (amax, max.dim)")


def _reduce_dims(lw, node, dim):
    rank = len(node.shape) + 1
    if dim in (None, [], ()):
        return tuple(range(1, rank))
    dims = tuple(sorted(d % rank for d in ([dim] if isinstance(dim, int) else dim)))
    if 0 in dims:
        raise lw.error("a max/min over the batch dimension cannot be bounded per sample")
    return dims


def _lower_extreme(lw, x, dim, keepdim, is_max: bool):
    node = lw.value(x)
    dims = _reduce_dims(lw, node, dim)
    val = lw.fx_node.meta["val"]
    shape = (val[0] if isinstance(val, (tuple, list)) else val).shape[1:]
    if is_max:
        return add_node(lw, "amax", [node], shape, "values", dims=dims, keepdim=bool(keepdim))
    flipped = add_node(lw, "neg", [node], node.shape, "neg")
    top = add_node(lw, "amax", [flipped], shape, "amax", dims=dims, keepdim=bool(keepdim))
    return add_node(lw, "neg", [top], shape, "values")


@aten_lowering("amax.default", "amin.default")
def _lower_amax(lw, x, dim=(), keepdim=False):
    return _lower_extreme(lw, x, dim, keepdim, str(lw.fx_node.target).startswith("aten.amax"))


@aten_lowering("max.default", "min.default")
def _lower_max_all(lw, x):
    return _lower_extreme(lw, x, None, False, str(lw.fx_node.target).startswith("aten.max"))


@aten_lowering("max.dim", "min.dim")
def _lower_max_dim(lw, x, dim, keepdim=False):
    """The values only: the indices (item 1) are not a bounded quantity."""
    values = _lower_extreme(lw, x, dim, keepdim, str(lw.fx_node.target).startswith("aten.max"))
    return (values, None)
