"""Patches: backward coefficients of conv-shaped nodes stored as one small window per row.

A backward pass that starts at a neuron of a (C, H, W) map and goes back through convolutions
only ever touches that neuron's receptive field, so its coefficient row is zero outside a
window of KH x KW positions. ``Patches`` keeps for each of the k rows (one row per neuron being
bounded) just that window:

    dense[b, r, c, top[r] + i, left[r] + j] = coeff[b, r, c, i, j]

``coeff`` is (B, k, C, KH, KW); ``top``/``left`` are (k,) integer tensors, or (B, k) when each
sample bounds its own rows (runtime.straddling_rows); they may be negative or run past the map's
edge: padding. Invariant: entries whose position lies outside the map
are zero, so sums over a window (biases, concretization) never need a mask.

Rules (an op's optional ``OpDef.backward_patches``) call the methods below: ``windows`` gathers
a per-node tensor (a relaxation slope, a constant) at every row's window, ``conv_transpose``
composes a convolution's kernel with the windows (patches of patches), ``to_dense`` converts
exactly. A (B, k, C, H, W) matrix costs C*H*W per row; patches cost C*KH*KW, so the identity
start (a 1x1 window) and the first few convolutions back from it are far smaller.
"""
from __future__ import annotations

import torch

from lirpac.ir.ops.common import overflow_unbounded
from lirpac.ir.ops.linear import conv_transpose_2d

# A window position is an affine function of the starting neuron's position h: a*h + b, with
# extent K; the code generator tracks (a, b, K) per spatial dim to size windows statically.
Geometry = tuple[tuple[int, int, int], tuple[int, int, int]]


class Patches:
    """Coefficients of k rows on a (C, H, W) node, each nonzero on one window only."""
    __slots__ = ("coeff", "top", "left", "shape")

    def __init__(self, coeff: torch.Tensor, top: torch.Tensor, left: torch.Tensor, shape: tuple):
        self.coeff, self.top, self.left, self.shape = coeff, top, left, tuple(shape)

    def with_coeff(self, coeff: torch.Tensor) -> "Patches":
        return Patches(coeff, self.top, self.left, self.shape)

    def channels(self, start: int, size: int) -> "Patches":
        """The rows' coefficients on channels [start, start + size) of the node, as Patches on
        a node of that many channels (an operand of a channel concatenation)."""
        return Patches(self.coeff.narrow(2, start, size), self.top, self.left, (size, *self.shape[1:]))

    def __neg__(self) -> "Patches":
        return self.with_coeff(-self.coeff)

    @property
    def per_sample(self) -> bool:
        """Whether each sample has its own rows (positions (B, k)) rather than shared ones."""
        return self.top.dim() == 2

    def _positions(self):
        """Each row's window rows and columns: (k, KH) and (k, KW), or (B, k, ..) per sample."""
        kh, kw = self.coeff.shape[-2:]
        ys = self.top[..., None] + torch.arange(kh, device=self.top.device)
        xs = self.left[..., None] + torch.arange(kw, device=self.left.device)
        return ys, xs

    def windows(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (broadcastable to (B, C, H, W) or (C, H, W)) at every row's window, shaped to
        multiply ``coeff``: (B or 1, k, C, KH, KW), or (.., 1, C, 1, 1) when ``t`` is constant
        over space. Positions outside the map read a clamped neighbour: harmless, since the
        coefficients there are zero."""
        while t.dim() < 4:
            t = t.unsqueeze(0)
        if t.shape[-2:] == (1, 1):
            return t.unsqueeze(1)
        channels, height, width = self.shape
        batch, (kh, kw) = t.shape[0], self.coeff.shape[-2:]
        ys, xs = self._positions()
        ys, xs = ys.clamp(0, height - 1), xs.clamp(0, width - 1)
        flat = ys[..., :, None] * width + xs[..., None, :]
        if self.per_sample:
            # sample b's positions index its own map: one gather over the batch's maps
            batch = self.top.shape[0]
            flat = flat + height * width * torch.arange(batch, device=flat.device).view(-1, 1, 1, 1)
        # channels last: each gathered position is one contiguous run of C values
        t = t.expand(batch, channels, height, width).permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        if self.per_sample:
            picked = t.reshape(batch * height * width, channels).index_select(0, flat.reshape(-1))
        else:
            picked = t.index_select(1, flat.reshape(-1))
        return picked.reshape(batch, -1, kh, kw, channels).permute(0, 1, 4, 2, 3)

    def bias(self, t) -> torch.Tensor:
        """sum(dense * t) over the node: (B, k). A ``t`` constant over space (a convolution's
        bias, a BatchNorm shift) meets each channel's window sum: no product tensor of the
        coefficients' size."""
        at = self.windows(t)
        if at.shape[-2:] == (1, 1):
            return (self.coeff.sum((3, 4)) * at.flatten(2)).sum(2)
        return (self.coeff * at).sum((2, 3, 4))

    def to_dense(self) -> torch.Tensor:
        """The (B, k, C, H, W) matrix these patches stand for (exact)."""
        batch, k, channels, kh, kw = self.coeff.shape
        _, height, width = self.shape
        ys, xs = self._positions()
        # every position outside the map holds a zero (the invariant): all of them land on a
        # one-wide margin around the map, which is cut off
        ys = ys.clamp(-1, height) + 1
        xs = xs.clamp(-1, width) + 1
        rows = torch.arange(k, device=self.top.device)
        if self.per_sample:
            canvas = self.coeff.new_zeros(batch, k, height + 2, width + 2, channels)
            samples = torch.arange(batch, device=self.top.device)[:, None, None, None]
            canvas[samples, rows[None, :, None, None], ys[..., :, None], xs[..., None, :]] = \
                self.coeff.permute(0, 1, 3, 4, 2)
            return canvas[:, :, 1:1 + height, 1:1 + width].permute(0, 1, 4, 2, 3)
        canvas = self.coeff.new_zeros(k, height + 2, width + 2, batch, channels)
        canvas[rows[:, None, None], ys[:, :, None], xs[:, None, :]] = self.coeff.permute(1, 3, 4, 0, 2)
        return canvas[:, 1:1 + height, 1:1 + width].permute(3, 0, 4, 1, 2)

    def conv_transpose(self, weight, stride, padding, dilation, groups, in_shape) -> "Patches":
        """Back through y = conv(x, weight): each window of y maps to the window of x it reads,
        ((K-1)*stride + (k-1)*dilation + 1) wide, by a transposed convolution of the window."""
        coeff = self.coeff
        shared = coeff.shape[0] > 1 and coeff.stride(0) == 0    # same rows for every sample
        if shared:
            coeff = coeff[:1]
        batch, k = coeff.shape[:2]
        windows = coeff.reshape(batch * k, *coeff.shape[2:])
        size = tuple(read_extent(extent, s, d, w)
                     for extent, s, d, w in zip(windows.shape[2:], stride, dilation, weight.shape[2:]))
        new = conv_transpose_2d(windows, weight, stride, (0, 0), dilation, groups, size)
        new = new.reshape(batch, k, *new.shape[1:])
        top = self.top * stride[0] - padding[0]
        left = self.left * stride[1] - padding[1]
        out = Patches(new, top, left, in_shape)
        out.coeff = out.coeff.mul_(out._inside_mask())     # the convolution's own output
        if shared:
            out.coeff = out.coeff.expand(self.coeff.shape[0], *out.coeff.shape[1:])
        return out

    def _inside_mask(self) -> torch.Tensor:
        """(k, 1, KH, KW) mask of the window positions that lie inside the map ((B, k, ..) per
        sample)."""
        _, height, width = self.shape
        ys, xs = self._positions()
        inside = ((ys >= 0) & (ys < height))[..., :, None] & ((xs >= 0) & (xs < width))[..., None, :]
        return inside.unsqueeze(-3).to(self.coeff.dtype)


def identity_patches(batch: int, rows: torch.Tensor | None, shape: tuple, like: torch.Tensor) -> Patches:
    """The identity rows ``rows`` (flat neuron indices (k,), or (B, k) per sample; None: all)
    of a (C, H, W) node as 1x1 windows: the structured form of ``identity_rows``, k*C numbers
    instead of k*C*H*W."""
    channels, height, width = shape
    if rows is None:
        rows = torch.arange(channels * height * width, device=like.device)
    if rows.dim() == 2:
        onehot = like.new_zeros(*rows.shape, channels, 1, 1)
        onehot.scatter_(2, (rows // (height * width))[..., None, None, None].expand(*rows.shape, 1, 1, 1), 1.0)
        return Patches(onehot, (rows // width) % height, rows % width, shape)
    onehot = like.new_zeros(rows.shape[0], channels, 1, 1)
    onehot[torch.arange(rows.shape[0], device=like.device), rows // (height * width)] = 1.0
    coeff = onehot.expand(batch, *onehot.shape)
    return Patches(coeff, (rows // width) % height, rows % width, shape)


def to_dense(coeff):
    """Dense coefficients from Patches; anything else (a tensor, None) passes through."""
    return coeff.to_dense() if isinstance(coeff, Patches) else coeff


def acc_patches(total, extra):
    """Sum of two contributions on one node. Two Patches whose windows sit at a constant offset
    of each other (two branches of a residual block) merge into the union window; otherwise the
    sum is dense."""
    if total is None or extra is None:
        return extra if total is None else total
    if isinstance(total, Patches) and isinstance(extra, Patches):
        merged = _merge(total, extra)
        if merged is not None:
            return merged
    return to_dense(total) + to_dense(extra)


def _merge(a: Patches, b: Patches) -> Patches | None:
    if a.top.numel() == 0:
        return a if a.coeff.shape[-2:] >= b.coeff.shape[-2:] else b
    if a.top.shape != b.top.shape:
        return None
    dy, dx = (b.top - a.top).flatten(), (b.left - a.left).flatten()
    if not (bool((dy == dy[0]).all()) and bool((dx == dx[0]).all())):
        return None
    dy, dx = int(dy[0]), int(dx[0])
    (ah, aw), (bh, bw) = a.coeff.shape[-2:], b.coeff.shape[-2:]
    y0, x0 = min(0, dy), min(0, dx)
    height, width = max(ah, dy + bh) - y0, max(aw, dx + bw) - x0
    union = _sum_in_window([(a.coeff, -y0, -x0), (b.coeff, dy - y0, dx - x0)], height, width)
    return Patches(union, a.top + y0, a.left + x0, a.shape)


def _sum_in_window(parts, height: int, width: int) -> torch.Tensor:
    """Sum of window coefficients (B, k, C, h, w), each placed at its (row, column) offset in a
    height x width window. Built in the channels-last layout the windows have (that of
    ``conv_transpose`` and ``windows``): a sum in another layout would make every later
    elementwise step mix layouts, several times slower, and the next transposed convolution
    copy it back. A part that covers the whole window is copied, not added to zeros."""
    coeffs = [c for c, _, _ in parts]
    batch = max(c.shape[0] for c in coeffs)
    shared = batch > 1 and all(c.stride(0) == 0 for c in coeffs)   # same rows for every sample
    if shared:
        parts = [(c[:1], y, x) for c, y, x in parts]
    first = parts[0][0]
    size = (1 if shared else batch, first.shape[1], height, width, first.shape[2])
    out = first.new_empty(size).permute(0, 1, 4, 2, 3)
    full = [i for i, (c, _, _) in enumerate(parts) if c.shape[-2:] == (height, width)]
    if full:
        out.copy_(parts.pop(full[0])[0])
    else:
        out.zero_()
    for coeff, y, x in parts:
        out[..., y:y + coeff.shape[-2], x:x + coeff.shape[-1]].add_(coeff)
    if shared:
        out = out.expand(batch, *out.shape[1:])
    return out


def concretize_pair(inp, lA, lbias, uA, ubias, consume: bool = False):
    """``inp.concretize_pair`` for coefficients that may be Patches: over a box, the centre and
    radius terms are window sums (no dense matrix); other sets get the dense form (dense
    coefficients that share memory with nothing else may be ``consume``d). A side given as
    None (a pass over signed rows, runtime.tighten_chunks) stays None."""
    if lA is None or uA is None:
        lower = None if lA is None else _concretize(inp, lA, lbias, False, consume)
        return lower, None if uA is None else _concretize(inp, uA, ubias, True, consume)
    if isinstance(lA, Patches) and isinstance(uA, Patches) and inp.is_box:
        return _concretize(inp, lA, lbias, False), _concretize(inp, uA, ubias, True)
    if isinstance(lA, Patches) or isinstance(uA, Patches):
        consume = False
    return inp.concretize_pair(to_dense(lA), lbias, to_dense(uA), ubias, consume)


def _concretize(inp, coeff, bias, upper: bool, consume: bool = False):
    """One side's extreme over the set: window sums for Patches over a box."""
    if isinstance(coeff, Patches) and inp.is_box:
        mid, rad = (t.reshape(inp.lower.shape) for t in inp.box_centre_radius())
        radius = (coeff.coeff.abs() * coeff.windows(rad)).sum((2, 3, 4))
        value = coeff.bias(mid) + (radius if upper else -radius) + bias
        return overflow_unbounded(value, upper)
    return inp.concretize(to_dense(coeff), bias, upper=upper, consume=consume and not isinstance(coeff, Patches))


# -- static sizing, for the code generator's choice between patches and a dense matrix ----------

def read_extent(extent: int, stride: int, dilation: int, kernel: int) -> int:
    """Extent of the input window that an ``extent``-wide window of a conv's output reads."""
    return (extent - 1) * stride + (kernel - 1) * dilation + 1


def conv_geometry(geometry: Geometry, stride, padding, dilation, kernel) -> Geometry:
    """Window geometry on a conv's input from the geometry on its output."""
    return tuple((a * s, b * s - p, read_extent(k, s, d, w))
                 for (a, b, k), s, p, d, w in zip(geometry, stride, padding, dilation, kernel))


def merge_geometry(g1: Geometry, g2: Geometry) -> Geometry | None:
    """Union window of two contributions, or None when they cannot share windows."""
    out = []
    for (a1, b1, k1), (a2, b2, k2) in zip(g1, g2):
        if a1 != a2:
            return None
        b = min(b1, b2)
        out.append((a1, b, max(b1 + k1, b2 + k2) - b))
    return tuple(out)
