"""Weight perturbation: chosen parameters of nn.Linear, nn.Conv1d/2d/3d, nn.LayerNorm and
eval-mode nn.BatchNorm layers become inputs of the model, each with its own set (an Lp ball on
the whole tensor, say), beside the model's input.

    wm = lirpac.PerturbedParameters(model, ["fc1.weight", "conv1.bias"])
    net = lirpac.compile(wm, wm.inputs(x))
    lower, upper = net.bounds(wm.inputs(x), (None, lirpac.LpBall(eps=0.01, norm=2), None))

A layer whose weight moves computes a product of two perturbed tensors (the input is one of the
joined inputs, fixed or not), relaxed by McCormick's planes (ir/ops/bivariate.py), exact when x
is a point; moving_layers.py writes each layer that way. Each parameter travels with a batch
dimension, like every input (``inputs`` expands it). Any other use of a perturbed parameter is
refused (an InputError naming it and its op), never computed with the fixed value.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from lirpac.errors import InputError
from lirpac.perturbations.moving_layers import moving_layer_for


class PerturbedParameters(nn.Module):
    """``model`` as a function of (x, *parameters): the parameters ``names`` (weights or biases
    of nn.Linear, nn.Conv, nn.LayerNorm and eval-mode nn.BatchNorm layers) are taken from the
    call, batched, instead of from the model. A parameter shared by several layers moves in all of them."""

    def __init__(self, model: nn.Module, names):
        super().__init__()
        names = [names] if isinstance(names, str) else list(names)
        params = dict(model.named_parameters(remove_duplicate=False))   # (any alias of a tied one)
        shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
        self.model = copy.deepcopy(model, shared)        # the same parameter objects
        self.names = names
        for name in names:
            if name not in params:
                raise InputError(f"PerturbedParameters: the model has no parameter {name!r} (it has "
                                 f"{', '.join(params) or 'none'})")
        if len({id(params[name]) for name in names}) < len(names):
            raise InputError(f"PerturbedParameters: a parameter is named twice in {names} (tied "
                             "parameters are one parameter: name it once)")
        modules = list(self.model.named_modules(remove_duplicate=False))
        uses = [[(owner, kind) for owner, module in modules
                 for kind, p in module._parameters.items() if p is params[name]] for name in names]
        replaced = {}
        for owner, kind in [use for per_name in uses for use in per_name]:
            if owner not in replaced:
                module = self.model.get_submodule(owner)
                replaced[owner] = moving_layer_for(module, owner, kind)(module, owner)
            replaced[owner].moving.add(kind)
        for owner, layer in replaced.items():
            parent, _, child = owner.rpartition(".")
            if owner:
                setattr(self.model.get_submodule(parent) if parent else self.model, child, layer)
            else:                                       # the model is the layer
                self.model = layer
        # per name, every (moving layer, kind) that uses it
        self.slots = [[(replaced[owner], kind) for owner, kind in per_name] for per_name in uses]
        self._inner_names = [f"{owner + '.' if owner else ''}inner.{kind}" for owner, kind in
                             (per_name[0] for per_name in uses)]
        self.train(model.training)

    def forward(self, x, *values):
        for slot, value in zip(self.slots, values):
            for module, kind in slot:
                module.given[kind] = value
        try:
            return self.model(x)
        finally:
            for slot in self.slots:
                for module, kind in slot:
                    module.given.pop(kind, None)

    def inputs(self, x: torch.Tensor) -> tuple:
        """(x, each parameter's current value expanded over x's batch): the model's inputs, and
        the centres of the parameter sets."""
        params = dict(self.model.named_parameters(remove_duplicate=False))
        values = [params[name] for name in self._inner_names]   # (differentiable: training)
        return (x, *[v.to(x.dtype).unsqueeze(0).expand(x.shape[0], *v.shape) for v in values])
