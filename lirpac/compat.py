"""auto_LiRPA-style interface, so its users can switch by changing an import:

    from lirpac.compat import BoundedModule, BoundedTensor, PerturbationLpNorm
    model = BoundedModule(net, torch.empty_like(x))
    lb, ub = model.compute_bounds(x=(BoundedTensor(x, PerturbationLpNorm(eps=0.1)),), method="CROWN")
"""
from __future__ import annotations

import math

import torch

from lirpac.api import compile as _compile
from lirpac.errors import InputError
from lirpac.perturbation import LpBall

_METHODS = {
    "ibp": "ibp", "crown": "crown", "backward": "crown", "forward": "forward",
    "crown-ibp": "crown-ibp", "ibp+backward": "crown-ibp", "forward+backward": "forward+crown",
    "forward+crown": "forward+crown", "alpha-crown": "alpha-crown", "crown-optimized": "alpha-crown",
}


class PerturbationLpNorm(LpBall):
    """auto_LiRPA's PerturbationLpNorm(eps, norm, x_L, x_U)."""

    def __init__(self, eps=0.0, norm=math.inf, x_L=None, x_U=None):
        super().__init__(eps=eps, norm=norm, lower=x_L, upper=x_U)


class BoundedTensor(torch.Tensor):
    """A tensor that carries its perturbation (``.ptb``)."""

    @staticmethod
    def __new__(cls, x: torch.Tensor, ptb=None):
        tensor = torch.Tensor._make_subclass(cls, x.detach() if x.requires_grad else x, x.requires_grad)
        tensor.ptb = ptb
        return tensor

    # operations on a BoundedTensor give plain tensors
    __torch_function__ = torch._C._disabled_torch_function_impl


class BoundedModule(torch.nn.Module):
    """Wraps a model: ``forward`` runs it, ``compute_bounds`` bounds it (compiled once)."""

    def __init__(self, model: torch.nn.Module, global_input: torch.Tensor, bound_opts=None,
                 device=None, **kwargs):
        super().__init__()
        self.model = model
        self.bound_opts = bound_opts or {}
        self.net = _compile(model, global_input)
        self._last_x = None

    def forward(self, *x):
        self._last_x = x[0]
        return self.model(*(torch.Tensor(t) if isinstance(t, BoundedTensor) else t for t in x))

    def compute_bounds(self, x=None, C=None, method="backward", IBP=False, forward=False,
                       bound_lower=True, bound_upper=True, return_A=False, needed_A_dict=None, **kwargs):
        if x is None:
            x = (self._last_x,)
        bx = x[0] if isinstance(x, (tuple, list)) else x
        ptb = getattr(bx, "ptb", None)
        if ptb is None:
            raise InputError("compute_bounds needs a BoundedTensor input carrying a perturbation")
        key = method.lower()
        if key not in _METHODS:
            raise InputError(f"unknown method {method!r}; choose one of "
                             "IBP, CROWN, backward, forward, CROWN-IBP, IBP+backward, Forward+Backward")
        name = _METHODS[key]
        if key == "backward" and IBP:
            name = "crown-ibp"
        if key == "backward" and forward:
            name = "forward+crown"
        x_plain = bx.as_subclass(torch.Tensor)
        if not return_A:
            return self.net.bounds(x_plain, ptb, method=name, C=C, bound_lower=bound_lower,
                                   bound_upper=bound_upper)
        lin = self.net.linear_bounds(x_plain, ptb, method=name, C=C, bound_lower=bound_lower,
                                     bound_upper=bound_upper)
        out_name = self.net.graph.output.name
        in_name = self.net.graph.perturbed_input.name
        A = {out_name: {in_name: {"lA": lin.lower_coeff, "uA": lin.upper_coeff,
                                  "lbias": lin.lower_bias, "ubias": lin.upper_bias}}}
        return lin.lower, lin.upper, A

    def output_name(self):
        return [self.net.graph.output.name]

    def input_name(self):
        return [self.net.graph.perturbed_input.name]
