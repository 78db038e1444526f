"""auto_LiRPA-style interface, so its users can switch by changing an import:

    from lirpac.compat import BoundedModule, BoundedTensor, PerturbationLpNorm
    model = BoundedModule(net, torch.empty_like(x))
    lb, ub = model.compute_bounds(x=(BoundedTensor(x, PerturbationLpNorm(eps=0.1)),), method="CROWN")

The semantics are auto_LiRPA 0.7.1's, measured on it: the set a PerturbationLpNorm describes,
the method that flags such as ``IBP=True`` select, and the reuse of the intermediate bounds of
an earlier call on the same input (the CROWN-IBP flow of its certified-training example).
"""
from __future__ import annotations

import math

import torch

from lirpac import methods
from lirpac.alpha import AlphaOptions
from lirpac.api import compile as _compile
from lirpac.errors import InputError
from lirpac.perturbation import Box, LpBall, Perturbation
# certified training: auto_LiRPA's schedulers, meters and loss wrapper (lirpac/compat_training.py)
from lirpac.compat_training import (AdaptiveScheduler, CrossEntropyWrapper, FixedScheduler,  # noqa: F401
                                    LinearScheduler, MultiAverageMeter, MultiTimer,
                                    SmoothedScheduler, get_spec_matrix, is_loss_wrapper)
from lirpac.perturbations.weights import PerturbedParameters

# auto_LiRPA's method names (matched without case) and the lirpac method each one runs
# (Method.compat_names)
_BY_KEY = methods.by_compat_name()
# the method that is interval arithmetic throughout (method=None with IBP=True)
_INTERVAL = next(m for m in methods.REGISTRY.values() if m.intermediate == m.final == "ibp")

# auto_LiRPA's optimize_bound_args that lirpac's alpha-CROWN reads, and their lirpac names
_ALPHA_OPTIONS = {"iteration": "iterations", "lr_alpha": "lr", "lr_decay": "lr_decay",
                  "early_stop_patience": "patience", "use_shared_alpha": "alpha_shared"}

# compute_bounds arguments that only save work or memory in auto_LiRPA: any value gives the
# same (sound) bounds here
_IGNORED_ARGUMENTS = {"reuse_alpha", "average_A", "cache_bounds", "aux_reference_bounds"}
# arguments that change what is bounded or how: accepted only at their default
_UNSUPPORTED_ARGUMENTS = {"aux", "final_node_name", "interm_bounds", "reference_bounds",
                          "intermediate_constr", "alpha_idx", "need_A_only", "cutter",
                          "decision_thresh", "update_mask", "ibp_nodes"}


def _method_list() -> str:
    names = [alias for m in methods.REGISTRY.values() for alias in m.compat_names]
    return ", ".join(names) + ", or method=None with IBP=True"


class PerturbationLpNorm(Perturbation):
    """auto_LiRPA's PerturbationLpNorm(eps, norm, x_L, x_U), with its semantics:

    - norm inf: the box [x_L, x_U]; a side not given is x - eps (or x + eps), so with both
      x_L and x_U given eps is not used, and the box need not contain x;
    - norm 2 or 1: the ball of radius eps around x; x_L and x_U are not used (auto_LiRPA
      bounds the whole ball; its training example passes x_L = x_U = x there).
    """

    def __init__(self, eps=0.0, norm=math.inf, x_L=None, x_U=None):
        self.norm = LpBall(eps=0.0, norm=norm).norm
        self.x_L, self.x_U = x_L, x_U
        self.set_eps(eps)

    def set_eps(self, eps) -> None:
        self.eps = eps
        self._ball()        # checks eps now, not at the first bound

    def _ball(self) -> LpBall | None:
        """The eps-ball, built from the attributes at each use (auto_LiRPA's users assign
        ``ptb.eps`` directly). eps may be None only where it is not used: norm inf with both
        x_L and x_U given."""
        if self.eps is not None:
            return LpBall(eps=self.eps, norm=self.norm)
        if self.norm == math.inf and self.x_L is not None and self.x_U is not None:
            return None
        raise InputError("PerturbationLpNorm needs eps (a number or a tensor); only a norm-inf "
                         "perturbation with both x_L and x_U given may leave it out")

    def bind(self, x: torch.Tensor):
        if self.norm != math.inf or (self.x_L is None and self.x_U is None):
            return self._ball().bind(x)
        if self.x_L is not None and self.x_U is not None:
            lower, upper = self.x_L, self.x_U
        else:
            ball = self._ball().bind(x)
            lower = ball.lower if self.x_L is None else self.x_L
            upper = ball.upper if self.x_U is None else self.x_U
        try:
            return Box(lower, upper).bind(x)
        except InputError as err:
            raise InputError(f"PerturbationLpNorm, the box [x_L, x_U] (a side not given is x - eps "
                             f"or x + eps): {err}") from None

    def __repr__(self):
        return f"PerturbationLpNorm(eps={self.eps!r}, norm={self.norm}, x_L={self.x_L!r}, x_U={self.x_U!r})"


class BoundedTensor(torch.Tensor):
    """A tensor that carries its perturbation (``.ptb``)."""

    @staticmethod
    def __new__(cls, x: torch.Tensor, ptb=None):
        tensor = torch.Tensor._make_subclass(cls, x.detach() if x.requires_grad else x, x.requires_grad)
        tensor.ptb = ptb
        return tensor

    # operations on a BoundedTensor give plain tensors
    __torch_function__ = torch._C._disabled_torch_function_impl


class BoundedParameter(torch.nn.Parameter):
    """A parameter that carries a perturbation (``.ptb``): BoundedModule bounds the model over
    it (lirpac.PerturbedParameters: weights and biases of nn.Linear layers)."""

    def __new__(cls, data: torch.Tensor, ptb=None, requires_grad: bool = True):
        param = torch.nn.Parameter.__new__(cls, data, requires_grad)
        param.ptb = ptb
        return param


def _read_bound_opts(bound_opts) -> tuple[str, dict]:
    """(conv_mode, alpha-CROWN options) from auto_LiRPA's bound_opts; the options lirpac reads
    are checked here, so a wrong type fails at construction with the option's own name. The
    other keys tune auto_LiRPA's internals and are ignored, as auto_LiRPA ignores unknown keys."""
    if bound_opts is None:
        return "auto", {}
    if not isinstance(bound_opts, dict):
        raise InputError(f"bound_opts must be a dict such as {{'conv_mode': 'patches'}} or None, "
                         f"got {type(bound_opts).__name__} {bound_opts!r}")
    conv_mode = bound_opts.get("conv_mode", "auto")
    if not isinstance(conv_mode, str) or conv_mode not in ("patches", "matrix", "auto"):
        raise InputError(f"bound_opts['conv_mode'] must be 'patches' or 'matrix', got {conv_mode!r}")
    relu = bound_opts.get("relu")
    if relu not in (None, "adaptive"):
        raise InputError(f"bound_opts['relu']={relu!r} is not supported: lirpac relaxes ReLU with "
                         "CROWN's adaptive lower slope only; leave 'relu' out or set it to 'adaptive'")
    return conv_mode, _read_alpha_options(bound_opts.get("optimize_bound_args", {}))


def _read_alpha_options(args) -> dict:
    if not isinstance(args, dict):
        raise InputError(f"bound_opts['optimize_bound_args'] must be a dict such as "
                         f"{{'iteration': 20}}, got {type(args).__name__} {args!r}")
    options = {}
    for name, lirpac_name in _ALPHA_OPTIONS.items():
        if name in args:
            try:
                AlphaOptions.from_dict({lirpac_name: args[name]})
            except InputError as err:
                raise InputError(f"bound_opts['optimize_bound_args']['{name}']={args[name]!r}: "
                                 f"{err}") from None
            options[lirpac_name] = args[name]
    return options


def _check_arguments(kwargs: dict) -> None:
    """auto_LiRPA's other compute_bounds arguments: harmless ones are ignored, the ones that
    would change the answer are refused rather than silently dropped."""
    for name, value in kwargs.items():
        if name in _IGNORED_ARGUMENTS:
            continue
        if name in _UNSUPPORTED_ARGUMENTS:
            if value is None or value is False:
                continue
            raise InputError(f"compute_bounds({name}=...) is not supported by lirpac.compat; use "
                             "lirpac.compile(...).bounds for what lirpac offers")
        raise InputError(f"compute_bounds got an unknown argument {name!r}")


class BoundedModule(torch.nn.Module):
    """Wraps a model: ``forward`` runs it, ``compute_bounds`` bounds it (compiled once).

    As in auto_LiRPA, the intermediate bounds of a call stay with the input until a new one is
    given (``forward``, or ``compute_bounds(x=...)``): a backward call with ``x=None`` reuses
    them, so ``compute_bounds(IBP=True, method=None)`` followed by
    ``compute_bounds(IBP=False, method="backward")`` is CROWN-IBP. lirpac recomputes the
    reused bounds (IBP or forward mode, cheap) for the input's current set, so changing the
    perturbation in place never leaves stale bounds behind."""

    def __init__(self, model: torch.nn.Module, global_input: torch.Tensor, bound_opts=None,
                 device=None, **kwargs):
        super().__init__()
        self.model = model
        conv_mode, self._alpha_options = _read_bound_opts(bound_opts)
        self.bound_opts = bound_opts or {}
        # a CrossEntropyWrapper(model) is bounded by loss fusion: the model compiled alone
        self._fused_loss = is_loss_wrapper(model)
        self._labels = None
        # parameters that carry a perturbation become inputs of the compiled model
        moving = [name for name, p in model.named_parameters() if getattr(p, "ptb", None) is not None]
        self._moving = [p for p in model.parameters() if getattr(p, "ptb", None) is not None]
        if moving and self._fused_loss:
            raise InputError("BoundedModule: perturbed parameters (BoundedParameter) inside a "
                             "CrossEntropyWrapper are not supported; bound the model itself")
        self._weights = PerturbedParameters(model, moving) if moving else None
        if self._fused_loss:
            inner, example = model.model, global_input[0]
        elif self._weights is not None:
            example = global_input[0] if isinstance(global_input, (tuple, list)) else global_input
            inner, example = self._weights, self._weights.inputs(example)
        else:
            inner, example = model, global_input
        self.net = _compile(inner, example, conv_mode=conv_mode)
        self._last_x = None
        self._intermediate = None   # "ibp" | "backward" | "forward": bounds kept for _last_x
        self._ibp_bounds = None     # the last IBP bounds, for reuse_ibp=True

    def _new_input(self, x) -> None:
        self._last_x = x
        self._intermediate = None
        self._ibp_bounds = None

    def forward(self, *x, method_opt=None, **kwargs):
        if method_opt == "compute_bounds":        # auto_LiRPA's route for DataParallel
            return self.compute_bounds(**kwargs)
        if self._fused_loss:                      # (model inputs, labels)
            self._new_input(x[0])
            self._labels = x[1] if len(x) > 1 else self._labels
        else:
            self._new_input(x[0] if len(x) == 1 else x)
        return self.model(*(torch.Tensor(t) if isinstance(t, BoundedTensor) else t for t in x))

    def _method(self, method, IBP: bool, forward: bool) -> str:
        """The lirpac method auto_LiRPA would run for these arguments: IBP=True computes IBP
        bounds of every node first, so a backward pass after it is CROWN-IBP; without it a
        backward pass reuses the kept intermediate bounds, or makes forward-mode ones
        (forward=True), or CROWN ones."""
        if method is None:
            if not IBP:
                raise InputError("compute_bounds(method=None) computes bounds only with IBP=True "
                                 f"(then it is IBP); otherwise give a method: {_method_list()}")
            return _INTERVAL.name
        name = _BY_KEY.get(method.lower()) if isinstance(method, str) else None
        if name is None:
            raise InputError(f"unknown method {method!r}; choose one of {_method_list()}")
        m = methods.get(name)
        if m.final == "backward" and not m.iterative:
            # the intermediate bounds come from an earlier call, from IBP=True, or as asked
            if m.intermediate == "ibp" or IBP:
                return methods.backward_after(self._intermediate or "ibp").name
            if self._intermediate is not None:
                return methods.backward_after(self._intermediate).name
            return methods.backward_after("forward" if forward else m.intermediate).name
        if m.final == "forward" and IBP:
            raise InputError("compute_bounds(IBP=True, method='forward') is not supported (forward "
                             "mode from IBP's intermediate bounds); use method='CROWN-IBP', 'IBP' "
                             "or 'forward'")
        return name

    def compute_bounds(self, x=None, C=None, method="backward", IBP=False, forward=False,
                       bound_lower=True, bound_upper=True, reuse_ibp=False, return_A=False,
                       needed_A_dict=None, **kwargs):
        _check_arguments(kwargs)
        if x is not None:
            if self._fused_loss and isinstance(x, (tuple, list)):
                self._new_input(x[0])
                self._labels = x[1] if len(x) > 1 else self._labels
            else:
                several = isinstance(x, (tuple, list)) and len(x) > 1
                self._new_input(tuple(x) if several else x[0] if isinstance(x, (tuple, list)) else x)
        if isinstance(self._last_x, tuple):     # several inputs: a plain tensor is fixed
            ptb = tuple(getattr(t, "ptb", None) for t in self._last_x)
            if all(p is None for p in ptb):
                ptb = None
        else:
            ptb = getattr(self._last_x, "ptb", None)
        if ptb is None and self._weights is None:
            raise InputError("compute_bounds needs a BoundedTensor input carrying a perturbation")
        name = self._method(method, IBP, forward)
        interval = name == _INTERVAL.name
        if interval and method is None and reuse_ibp and self._ibp_bounds is not None:
            return self._ibp_bounds
        x_plain = (tuple(t.as_subclass(torch.Tensor) for t in self._last_x)
                   if isinstance(self._last_x, tuple) else self._last_x.as_subclass(torch.Tensor))
        if self._weights is not None:      # the input, then each BoundedParameter, with its set
            x_plain = self._weights.inputs(x_plain)
            ptb = (ptb, *[p.ptb for p in self._moving])
        options = self._alpha_options if methods.get(name).iterative else None
        if self._fused_loss:
            result = self._fused_bounds(x_plain, ptb, name, C, bound_lower)
        elif not return_A:
            result = self.net.bounds(x_plain, ptb, method=name, C=C, bound_lower=bound_lower,
                                     bound_upper=bound_upper, options=options)
        else:
            result = self._bounds_and_A(x_plain, ptb, name, C, bound_lower, bound_upper)
        self._intermediate = self._intermediate or methods.get(name).intermediate
        if interval:
            self._ibp_bounds = result
        return result

    def _fused_bounds(self, x, ptb, name, C, bound_lower):
        """(None, upper bound of sum_j exp(z_j - z_y)) of a CrossEntropyWrapper, by loss fusion."""
        from lirpac.training import fused_ce_bound
        if C is not None or bound_lower or name not in ("ibp", "crown-ibp", "crown"):
            raise InputError("a CrossEntropyWrapper model is bounded by loss fusion: call "
                             "compute_bounds(x=(x, labels), C=None, bound_lower=False) with IBP, "
                             f"CROWN-IBP or CROWN (got C={'given' if C is not None else None}, "
                             f"bound_lower={bound_lower}, method {name})")
        if self._labels is None:
            raise InputError("a CrossEntropyWrapper model needs its labels: "
                             "compute_bounds(x=(x, labels), ...)")
        return None, torch.exp(fused_ce_bound(self.net, x, self._labels, ptb, name)).unsqueeze(1)

    def _bounds_and_A(self, x, ptb, name, C, bound_lower, bound_upper):
        lin = self.net.linear_bounds(x, ptb, method=name, C=C, bound_lower=bound_lower,
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
