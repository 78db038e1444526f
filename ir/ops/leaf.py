"""Leaves and constant computations: inputs, parameters, constants, and any ATen op applied
to constants only (evaluated in the generated code, so gradients reach the parameters)."""
from __future__ import annotations

import torch

from lirpac.ir.opdef import OpDef, register


def _no_forward(*args, **kwargs):
    raise RuntimeError("leaf nodes are bound by the generated code, not evaluated")


register(OpDef(name="input", forward=_no_forward, doc="a model input (perturbed or not)"))
register(OpDef(name="param", forward=_no_forward, doc="a model parameter (a live nn.Parameter)"))
register(OpDef(name="constant", forward=_no_forward, doc="a constant tensor (buffer or literal)"))


def resolve_aten(target: str):
    """'aten.t.default' -> torch.ops.aten.t.default"""
    namespace, packet, overload = target.split(".")
    return getattr(getattr(getattr(torch.ops, namespace), packet), overload)


def _const_fn(*inputs, target: str, args: tuple, kwargs: dict, item: int | None = None):
    """Call ``target`` with ``args`` where each ``None``-free ``('input', i)`` slot is inputs[i];
    ``item``: the output of that index, for ops that return several (split)."""
    def fill(a):
        if isinstance(a, tuple) and len(a) == 2 and a[0] == "%input":
            return inputs[a[1]]
        if isinstance(a, list):
            return [fill(v) for v in a]
        return a
    out = resolve_aten(target)(*[fill(a) for a in args], **{k: fill(v) for k, v in kwargs.items()})
    return out if item is None else out[item]


register(OpDef(name="const_fn", forward=_const_fn,
               doc="an ATen op on constant inputs, evaluated as is (no bound rule needed)"))
