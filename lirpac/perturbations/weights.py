"""Weight perturbation: chosen parameters of nn.Linear layers become inputs of the model, each
with its own set (an Lp ball on the whole tensor, say), beside the model's input.

    wm = lirpac.PerturbedParameters(model, ["fc1.weight"])
    net = lirpac.compile(wm, wm.inputs(x))
    lower, upper = net.bounds(wm.inputs(x), (None, lirpac.LpBall(eps=0.01, norm=2)))

A layer whose weight moves computes W x with both factors perturbed (the input is one of the
joined inputs, fixed or not): the product of two perturbed tensors, relaxed by McCormick's
planes (ir/ops/bivariate.py), exact when x is a point. Each parameter travels with a batch
dimension, like every input (``inputs`` expands it).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from lirpac.errors import InputError


class _MovingLinear(nn.Module):
    """An nn.Linear whose weight and/or bias are given per call, batched (B, out, in) / (B, out)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear
        self.given: dict[str, torch.Tensor] = {}

    def forward(self, x):
        weight = self.given.get("weight", self.linear.weight)
        bias = self.given.get("bias", self.linear.bias)
        if weight.dim() == 3:
            if x.dim() != 2:
                raise InputError("a perturbed nn.Linear weight needs a (batch, features) input, got "
                                 f"{x.dim()} dims")
            y = torch.matmul(weight, x.unsqueeze(-1)).squeeze(-1)
        else:
            y = torch.nn.functional.linear(x, weight)
        return y if bias is None else y + bias


class PerturbedParameters(nn.Module):
    """``model`` as a function of (x, *parameters): the parameters ``names`` (weights or biases
    of nn.Linear layers) are taken from the call, batched, instead of from the model."""

    def __init__(self, model: nn.Module, names):
        super().__init__()
        names = [names] if isinstance(names, str) else list(names)
        params = dict(model.named_parameters())
        shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
        self.model = copy.deepcopy(model, shared)        # the same parameter objects
        self.names = names
        self.slots = []
        modules = dict(self.model.named_modules())
        replaced: dict[str, _MovingLinear] = {}
        for name in names:
            if name not in params:
                raise InputError(f"PerturbedParameters: the model has no parameter {name!r} (it has "
                                 f"{', '.join(params) or 'none'})")
            owner, _, kind = name.rpartition(".")
            module = modules.get(owner)
            if not isinstance(module, nn.Linear) or kind not in ("weight", "bias"):
                raise InputError(f"PerturbedParameters: {name!r} is not the weight or bias of an "
                                 "nn.Linear; lirpac perturbs nn.Linear parameters only")
            if owner not in replaced:
                replaced[owner] = _MovingLinear(module)
                parent, _, child = owner.rpartition(".")
                setattr(modules[parent] if parent else self.model, child, replaced[owner])
            self.slots.append((replaced[owner], kind, tuple(params[name].shape)))
        self.train(model.training)

    def forward(self, x, *values):
        for (module, kind, _), value in zip(self.slots, values):
            module.given[kind] = value
        try:
            return self.model(x)
        finally:
            for module, kind, _ in self.slots:
                module.given.pop(kind, None)

    def inputs(self, x: torch.Tensor) -> tuple:
        """(x, each parameter's current value expanded over x's batch): the model's inputs, and
        the centres of the parameter sets."""
        params = dict(self.model.named_parameters())
        values = [params[self._inner(name)] for name in self.names]   # (differentiable: training)
        return (x, *[v.to(x.dtype).unsqueeze(0).expand(x.shape[0], *v.shape) for v in values])

    def _inner(self, name: str) -> str:
        """The name of the parameter ``name`` in the copy (a replaced layer adds ``.linear``)."""
        owner, _, kind = name.rpartition(".")
        return f"{owner}.linear.{kind}" if owner else name
