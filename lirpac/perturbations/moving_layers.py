"""Layers whose weight and/or bias are given per call, batched (one value per sample), written
with ops lirpac bounds: what lirpac.PerturbedParameters puts in place of a layer whose
parameters move.

A moving weight meets a perturbed input (the model's input is always one of the joined inputs,
fixed or not), so the layer computes a product of two perturbed tensors:
- nn.Linear:  W x as a batched matmul (ir/ops/bivariate.py: McCormick on each product term),
  the input's rows (B, *, in) at once;
- nn.Conv1d/2d/3d: im2col by zero padding and strided slices, then the same batched matmul of
  the flattened kernels (B, O, C*K) with the columns (B, C*K, L); exact when x is a point.
  (A fixed weight stays one conv op; only a moving one pays for the columns.)
- nn.BatchNorm (eval), nn.LayerNorm: the normalisation, then x_hat * weight + bias with the
  factors broadcast over the other dims;
A moving bias is added, broadcast, after the product (exact under linear bounds).
"""
from __future__ import annotations

import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

from lirpac.errors import InputError


class MovingLayer(nn.Module):
    """Holds the original layer (``inner``) and the per-call values of its moving parameters
    (``given``). Reading a moving parameter from outside the layer (``layer.weight`` in the
    model's own code) is refused: that read would see the fixed value, not the moving one."""

    def __init__(self, inner: nn.Module, name: str):
        super().__init__()
        self.inner = inner
        self.owner_name = name
        self.moving: set[str] = set()
        self.given: dict[str, torch.Tensor] = {}

    def value(self, kind: str):
        return self.given.get(kind, getattr(self.inner, kind))

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            pass
        if name in self.__dict__.get("moving", ()):
            raise InputError(
                f"PerturbedParameters: the model reads {self.owner_name}.{name} outside "
                f"{type(self.inner).__name__}.forward; that read would see the fixed value, not "
                "the perturbed one. Only the layer's own use of a perturbed parameter is "
                "supported: compute with the layer (call it) instead of reading its parameter")
        return getattr(super().__getattr__("inner"), name)


class MovingLinear(MovingLayer):
    def forward(self, x):
        weight, bias = self.value("weight"), self.value("bias")
        if weight.dim() == 3:
            if x.dim() < 2:
                raise InputError(f"PerturbedParameters: {self.owner_name} (nn.Linear) with a "
                                 f"perturbed weight needs a batched input, got {x.dim()} dims")
            if x.dim() == 2:
                y = torch.matmul(weight, x.unsqueeze(-1)).squeeze(-1)
            else:                                 # (B, *, in): rows of one matrix per sample
                rows = x.reshape(x.shape[0], -1, x.shape[-1])
                y = torch.matmul(rows, weight.transpose(-1, -2)).reshape(*x.shape[:-1], -1)
        else:
            y = F.linear(x, weight)
        if bias is None:
            return y
        return y + (bias if bias.dim() == 1 else bias.reshape(bias.shape[0], *([1] * (y.dim() - 2)), -1))


def _conv_pads(conv, nd: int) -> list[tuple[int, int]]:
    """(before, after) zero padding per spatial dim, 'same' and 'valid' resolved."""
    if conv.padding == "valid":
        return [(0, 0)] * nd
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        return [(t // 2, t - t // 2) for t in total]
    return [(p, p) for p in conv.padding]


class MovingConv(MovingLayer):
    def forward(self, x):
        conv = self.inner
        weight, bias = self.value("weight"), self.value("bias")
        nd = len(conv.kernel_size)
        if weight.dim() == nd + 2:
            y = conv._conv_forward(x, weight, None)
        else:
            y = self._moving_weight_conv(x, weight, nd)
        if bias is None:
            return y
        lead = bias.shape[:-1]      # () for a fixed bias, (B,) for a moving one
        return y + bias.reshape(*lead, -1, *([1] * nd))

    def _moving_weight_conv(self, x, weight, nd):
        """conv(x, weight) with weight (B, O, C, *kernel): im2col, then a batched matmul."""
        conv = self.inner
        if x.dim() != nd + 2:
            raise InputError(f"PerturbedParameters: {self.owner_name} ({type(conv).__name__}) with "
                             f"a perturbed weight needs a batched (B, C, *spatial) input, got "
                             f"{x.dim()} dims")
        pads = _conv_pads(conv, nd)
        x = F.pad(x, [p for pair in reversed(pads) for p in pair])
        spans = [d * (k - 1) + 1 for d, k in zip(conv.dilation, conv.kernel_size)]
        out = [(size - span) // s + 1 for size, span, s in zip(x.shape[2:], spans, conv.stride)]
        columns = []
        for offset in itertools.product(*[range(k) for k in conv.kernel_size]):
            index = [slice(o * d, o * d + s * (n - 1) + 1, s)
                     for o, d, s, n in zip(offset, conv.dilation, conv.stride, out)]
            columns.append(x[(slice(None), slice(None), *index)])
        groups = conv.groups
        cols = torch.stack(columns, dim=2)                    # (B, C, K, *out)
        cols = cols.reshape(x.shape[0], groups, -1, cols.shape[3:].numel())
        kernels = weight.reshape(weight.shape[0], groups, weight.shape[1] // groups, -1)
        y = torch.matmul(kernels, cols)                       # (B, groups, O / groups, L)
        return y.reshape(x.shape[0], weight.shape[1], *out)


class MovingBatchNorm(MovingLayer):
    def forward(self, x):
        bn = self.inner
        if bn.training or bn.running_mean is None:
            raise InputError(f"PerturbedParameters: {self.owner_name} ({type(bn).__name__}) has a "
                             "perturbed affine parameter and uses batch statistics (training mode "
                             "or track_running_stats=False); only eval-mode batch norm with running "
                             "statistics is supported: call .eval() on the model")
        shape = (-1,) + (1,) * (x.dim() - 2)
        scale = torch.rsqrt(bn.running_var + bn.eps)
        y = (x - bn.running_mean.reshape(shape)) * scale.reshape(shape)
        weight, bias = self.value("weight"), self.value("bias")
        if weight is not None:
            y = y * weight.reshape(*weight.shape[:-1], *shape)
        if bias is not None:
            y = y + bias.reshape(*bias.shape[:-1], *shape)
        return y


class MovingLayerNorm(MovingLayer):
    def forward(self, x):
        norm = self.inner
        y = F.layer_norm(x, norm.normalized_shape, None, None, norm.eps)
        weight, bias = self.value("weight"), self.value("bias")
        if weight is not None:
            y = y * self._aligned(weight, y)
        if bias is not None:
            y = y + self._aligned(bias, y)
        return y

    def _aligned(self, value, y):
        """A fixed (*normalized) or moving (B, *normalized) factor, broadcast against y."""
        dims = len(self.inner.normalized_shape)
        if value.dim() == dims:
            return value
        return value.reshape(value.shape[0], *([1] * (y.dim() - 1 - dims)), *value.shape[1:])


_MOVING = {nn.Linear: MovingLinear, nn.Conv1d: MovingConv, nn.Conv2d: MovingConv,
           nn.Conv3d: MovingConv, nn.BatchNorm1d: MovingBatchNorm, nn.BatchNorm2d: MovingBatchNorm,
           nn.BatchNorm3d: MovingBatchNorm, nn.LayerNorm: MovingLayerNorm}


def moving_layer_for(module: nn.Module, name: str, kind: str) -> type[MovingLayer]:
    """The moving version of ``module`` (whose parameter ``kind`` is perturbed), or an InputError
    that says what is supported. Subclasses with their own forward are refused: the moving
    layer recomputes the standard one."""
    full = f"{name}.{kind}" if name else kind
    base = next((c for c in type(module).__mro__ if c in _MOVING), None)
    standard = base is not None and kind in ("weight", "bias") and all(
        getattr(type(module), f, None) is getattr(base, f, None)
        for f in ("forward", "_conv_forward"))
    if not standard:
        raise InputError(
            f"PerturbedParameters: {full} is used by {_use_of(module, kind)}; lirpac "
            "perturbs only the weight and bias of nn.Linear, nn.Conv1d/2d/3d, nn.LayerNorm and "
            "eval-mode nn.BatchNorm1d/2d/3d layers (with their standard forward). A parameter "
            "used directly in other ops (x * p, x + p, x @ p, ...) cannot be perturbed: move it "
            "into one of those layers (a bias-free nn.Linear for x @ p)")
    if module._forward_hooks or module._forward_pre_hooks:
        raise InputError(f"PerturbedParameters: {full} belongs to a {type(module).__name__} with "
                         "forward hooks, which its perturbed version would skip; remove the hooks")
    if _MOVING[base] is MovingConv and module.padding_mode != "zeros":
        raise InputError(f"PerturbedParameters: {full} belongs to a {type(module).__name__} "
                         f"with padding_mode='{module.padding_mode}'; only zero padding is "
                         "supported for a perturbed convolution")
    return _MOVING[base]


def _use_of(module: nn.Module, kind: str) -> str:
    """How ``module``'s forward uses its parameter ``kind`` (the ops torch.fx sees reading it),
    for the refusal's message."""
    where = f"{type(module).__name__}.forward"
    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception:   # (untraceable forward: name the module only)
        return where
    ops = []
    for node in graph.nodes:
        if node.op == "get_attr" and node.target == kind:
            for user in node.users:
                target = user.target
                ops.append(getattr(target, "__name__", str(target)))
    return f"{', '.join(sorted(set(ops)))} in {where}" if ops else where
