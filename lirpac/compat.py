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
from lirpac.perturbation import Box, L0Ball, LpBall, Perturbation
# certified training: auto_LiRPA's schedulers, meters and loss wrapper (lirpac/compat_training.py)
from lirpac.compat_training import (AdaptiveScheduler, CrossEntropyWrapper, FixedScheduler,  # noqa: F401
                                    LinearScheduler, MultiAverageMeter, MultiTimer,
                                    SmoothedScheduler, get_spec_matrix, is_loss_wrapper)
from lirpac.perturbations.weights import PerturbedParameters
from lirpac.ir.ops.relu_variants import OPS as RELU_LOWER_LINES, use_relu_lower_line

# auto_LiRPA's method names (matched without case) and the lirpac method each one runs
# (Method.compat_names)
_BY_KEY = methods.by_compat_name()
# the method that is interval arithmetic throughout (method=None with IBP=True)
_INTERVAL = next(m for m in methods.REGISTRY.values() if m.intermediate == m.final == "ibp")
# auto_LiRPA method names lirpac refuses, with what to use instead
_REFUSED_METHODS = {
    "forward-optimized": "lirpac has no optimised forward mode; method='alpha-CROWN' optimises "
                         "the relaxation's slopes in backward mode",
}

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


class PerturbationL0Norm(Perturbation):
    """auto_LiRPA's PerturbationL0Norm(eps, ratio): at most ceil(eps) elements change, each
    within [x - ratio x, x + ratio (1 - x)] (ratio 1: anywhere in [0, 1], its pixel range), the
    set whose bounds its concretization gives; lirpac.L0Ball bounds it (in every method)."""

    def __init__(self, eps, x_L=None, x_U=None, ratio=1.0):
        if x_L is not None or x_U is not None:
            raise InputError("PerturbationL0Norm: auto_LiRPA does not use x_L / x_U (each changed "
                             "element lies in [0, 1]); for other ranges use "
                             "lirpac.L0Ball(k, lower, upper)")
        if not 0.0 <= float(ratio) <= 1.0:
            raise InputError(f"PerturbationL0Norm: ratio must lie in [0, 1], got {ratio!r}")
        self.eps, self.x_L, self.x_U, self.ratio = eps, x_L, x_U, float(ratio)

    def bind(self, x: torch.Tensor):
        return L0Ball(math.ceil(self.eps), x * (1.0 - self.ratio),
                      x + self.ratio * (1.0 - x)).bind(x)

    def __repr__(self):
        return f"PerturbationL0Norm(eps={self.eps!r}, ratio={self.ratio})"


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
    it (lirpac.PerturbedParameters: weights and biases of nn.Linear, nn.Conv, nn.LayerNorm and
    eval-mode nn.BatchNorm layers)."""

    def __new__(cls, data: torch.Tensor, ptb=None, requires_grad: bool = True):
        param = torch.nn.Parameter.__new__(cls, data, requires_grad)
        param.ptb = ptb
        return param


# bound_opts keys that tune only auto_LiRPA's speed and memory (sparsity, batching, logging):
# lirpac's bounds are the same whatever they say. Any other key lirpac does not read is refused.
_PERFORMANCE_OPTS = {"sparse_intermediate_bounds", "sparse_conv_intermediate_bounds",
                     "sparse_intermediate_bounds_with_ibp", "sparse_features_alpha",
                     "sparse_spec_alpha", "minimum_sparsity", "crown_batch_size",
                     "forward_max_dim", "use_full_conv_alpha", "use_full_conv_alpha_thresh",
                     "verbosity", "optimize_graph", "deterministic", "max_crown_size",
                     "forward_before_compute_bounds", "disabled_optimization"}
_READ_OPTS = {"conv_mode", "relu", "activation_bound_option", "optimize_bound_args"}


def _read_bound_opts(bound_opts) -> tuple[str, dict, str]:
    """(conv_mode, alpha-CROWN options, ReLU lower line) from auto_LiRPA's bound_opts
    (activation_bound_option, or its older name relu: ir/ops/relu_variants.py); the options lirpac reads
    are checked here, so a wrong type fails at construction with the option's own name. Keys
    that only tune auto_LiRPA's speed are accepted; any other key is refused by name (never
    silently ignored: it may change auto_LiRPA's bounds)."""
    if bound_opts is None:
        return "auto", {}, "adaptive"
    if not isinstance(bound_opts, dict):
        raise InputError(f"bound_opts must be a dict such as {{'conv_mode': 'patches'}} or None, "
                         f"got {type(bound_opts).__name__} {bound_opts!r}")
    unknown = sorted(set(bound_opts) - _READ_OPTS - _PERFORMANCE_OPTS)
    if unknown:
        raise InputError(f"bound_opts {unknown} are not supported by lirpac.compat (it reads "
                         f"{sorted(_READ_OPTS)} and accepts auto_LiRPA's speed options); leave "
                         "them out")
    conv_mode = bound_opts.get("conv_mode", "auto")
    if not isinstance(conv_mode, str) or conv_mode not in ("patches", "matrix", "auto"):
        raise InputError(f"bound_opts['conv_mode'] must be 'patches' or 'matrix', got {conv_mode!r}")
    lines = ("adaptive", *RELU_LOWER_LINES)
    for key in ("relu", "activation_bound_option"):
        if bound_opts.get(key) not in (None, *lines):
            raise InputError(f"bound_opts['{key}']={bound_opts[key]!r} is not supported: ReLU's "
                             f"lower line is one of {', '.join(map(repr, lines))}")
    relu = bound_opts.get("activation_bound_option") or bound_opts.get("relu") or "adaptive"
    return conv_mode, _read_alpha_options(bound_opts.get("optimize_bound_args", {})), relu


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
                 device="auto", verbose=False, custom_ops=None, **kwargs):
        super().__init__()
        if kwargs:
            raise InputError(f"BoundedModule got unknown arguments {sorted(kwargs)}; it takes "
                             "model, global_input, bound_opts, device, verbose and custom_ops")
        _check_custom_ops(custom_ops)
        self.model = model
        conv_mode, self._alpha_options, self._relu = _read_bound_opts(bound_opts)
        self.bound_opts = dict(bound_opts or {})
        self.global_input = global_input
        self._last_method = None
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
        self._inner, self._example = inner, example
        self.net = _compile(inner, example, conv_mode=conv_mode)
        use_relu_lower_line(self.net, self._relu)
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
        if isinstance(method, str) and method.lower() in _REFUSED_METHODS:
            raise InputError(f"method {method!r} is not supported: {_REFUSED_METHODS[method.lower()]}")
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
        if needed_A_dict and not return_A:
            raise InputError("compute_bounds(needed_A_dict=...) needs return_A=True")
        if self._fused_loss:
            result = self._fused_bounds(x_plain, ptb, name, C, bound_lower)
        elif not return_A:
            result = self.net.bounds(x_plain, ptb, method=name, C=C, bound_lower=bound_lower,
                                     bound_upper=bound_upper, options=options)
        else:
            result = self._bounds_and_A(x_plain, ptb, name, C, bound_lower, bound_upper)
            if needed_A_dict:
                result[2].update(self._intermediate_A(x_plain, ptb, name, needed_A_dict))
        self._intermediate = self._intermediate or methods.get(name).intermediate
        self._last_method = name
        if interval:
            self._ibp_bounds = result
        return result

    def _fused_bounds(self, x, ptb, name, C, bound_lower):
        """(None, upper bound of sum_j exp(z_j - z_y)) of a CrossEntropyWrapper, by loss fusion."""
        from lirpac.training import ROBUST_METHODS, fused_ce_bound
        if C is not None or bound_lower or name not in ROBUST_METHODS:
            raise InputError("a CrossEntropyWrapper model is bounded by loss fusion: call "
                             "compute_bounds(x=(x, labels), C=None, bound_lower=False) with one "
                             f"of {', '.join(m.upper() for m in ROBUST_METHODS)} (got "
                             f"C={'given' if C is not None else None}, bound_lower={bound_lower}, "
                             f"method {name})")
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

    @property
    def output_name(self) -> "_Names":
        return _Names([self.net.graph.output.name])

    @property
    def input_name(self) -> "_Names":
        return _Names([self.net.graph.perturbed_input.name])

    # -- auto_LiRPA's other accessors ------------------------------------------------------------
    def set_bound_opts(self, new_opts: dict) -> None:
        """Update bound_opts as auto_LiRPA does (nested dicts merged); a new conv_mode
        recompiles."""
        merged = dict(self.bound_opts)
        for key, value in (new_opts or {}).items():
            merged[key] = ({**merged[key], **value} if isinstance(value, dict)
                           and isinstance(merged.get(key), dict) else value)
        conv_mode, self._alpha_options, relu = _read_bound_opts(merged)
        self.bound_opts = merged
        if conv_mode != self.net.conv_mode or relu != self._relu:
            self.net = _compile(self._inner, self._example, conv_mode=conv_mode)
            self._relu = relu
            use_relu_lower_line(self.net, relu)
            self.__dict__.pop("_subnets", None)
        self._new_input(self._last_x)

    def get_split_nodes(self):
        """(pre-activation nodes, {name: [(activation node, input index)]}) of the activations
        branch and bound splits (ReLU-like: exact once their input's sign is known)."""
        from lirpac.ir.opdef import get_op
        nodes, activations = [], {}
        for node in self.net.graph.nodes:
            if node.perturbed and get_op(node.op).exact_when_sign_known:
                pre = node.inputs[0]
                if pre.name not in activations:
                    nodes.append(pre)
                    activations[pre.name] = []
                activations[pre.name].append((node, 0))
        return nodes, activations

    def intermediate_bounds(self) -> dict:
        """{node name: (lower, upper)} of every pre-activation node and the output, for the
        last compute_bounds call's input and method (each node bounded as that method bounds
        it as an output)."""
        if self._last_x is None or getattr(self._last_x, "ptb", None) is None:
            raise InputError("intermediate bounds need a compute_bounds call first (with a "
                             "BoundedTensor input)")
        x = self._last_x.as_subclass(torch.Tensor)
        method = self._last_method or "ibp"
        out = {}
        for node in self._bounded_nodes():
            net = self._subnet(node.name)
            lower, upper = net.bounds(x, self._last_x.ptb, method=method)
            out[node.name] = (lower.reshape(x.shape[0], *node.shape),
                              upper.reshape(x.shape[0], *node.shape))
        return out

    def save_intermediate(self, save_path=None) -> dict:
        """auto_LiRPA's save_intermediate: the intermediate bounds (see intermediate_bounds),
        also written with torch.save when a path is given."""
        bounds = self.intermediate_bounds()
        if save_path is not None:
            torch.save(bounds, save_path)
        return bounds

    def _bounded_nodes(self):
        from lirpac.ir.opdef import get_op
        graph = self.net.source_graph
        pre = [n.inputs[0] for n in graph.nodes
               if n.perturbed and n.inputs and get_op(n.op).nonlinear and n.inputs[0].perturbed
               and n.inputs[0].op != "input"]
        seen, out = set(), []
        for node in pre + [graph.output]:
            if node.name not in seen:
                seen.add(node.name)
                out.append(node)
        return out

    def _subnet(self, name: str):
        """The model up to node ``name`` (of the frontend's graph), compiled (cached)."""
        import copy
        from lirpac.api import CompiledNet
        from lirpac.ir.torch_frontend import remove_dead_nodes
        cache = self.__dict__.setdefault("_subnets", {})
        if name not in cache:
            graph = self.net.source_graph
            node = next((n for n in graph.nodes if n.name == name and n.perturbed), None)
            if node is None:
                names = [n.name for n in graph.nodes if n.perturbed]
                raise InputError(f"no perturbed node named {name!r}; the model's are {names}")
            keep = {id(n.value): n.value for n in graph.nodes if n.value is not None}
            sub = copy.deepcopy(graph, keep)
            sub.output = next(n for n in sub.nodes if n.name == name)
            remove_dead_nodes(sub)
            cache[name] = CompiledNet(sub, conv_mode=self.net.conv_mode)
        return cache[name]

    def _intermediate_A(self, x, ptb, method, needed_A_dict: dict) -> dict:
        """auto_LiRPA's needed_A_dict {node name: [input names]}: the linear bounds of each
        node in the perturbed input."""
        in_name = self.net.graph.perturbed_input.name
        out = {}
        for name, inputs in needed_A_dict.items():
            if name == self.net.graph.output.name:
                continue            # the output's A is there already
            wanted = [inputs] if isinstance(inputs, str) else list(inputs)
            if any(i != in_name for i in wanted):
                raise InputError(f"needed_A_dict[{name!r}] asks for inputs {wanted}; lirpac gives "
                                 f"A matrices with respect to the perturbed input {in_name!r}")
            lin = self._subnet(name).linear_bounds(x, ptb, method=method)
            out[name] = {in_name: {"lA": lin.lower_coeff, "uA": lin.upper_coeff,
                                   "lbias": lin.lower_bias, "ubias": lin.upper_bias}}
        return out


class _Names(list):
    """auto_LiRPA's ``output_name`` / ``input_name`` lists; calling one gives the list too
    (lirpac's earlier methods)."""

    def __call__(self):
        return list(self)


def _bound_class_not_run(op_name: str, bound_op) -> None:
    import warnings
    warnings.warn(
        f"{op_name}: lirpac does not run auto_LiRPA's Bound classes "
        f"({getattr(bound_op, '__name__', type(bound_op).__name__)} is not used). torch.export "
        "traces the op's torch forward (an autograd.Function's forward is inlined), and lirpac "
        "bounds the ops it is made of with its own rules, or names the one it cannot bound; to "
        "give your own rules use lirpac.register_op (docs/custom_ops.md)", stacklevel=3)


def _check_custom_ops(custom_ops) -> None:
    """auto_LiRPA's custom_ops maps op names to its Bound classes, which lirpac does not run
    (a warning says so); lirpac's ops are registered with lirpac.register_op."""
    if not custom_ops:
        return
    from lirpac.ir.opdef import OpDef
    if not isinstance(custom_ops, dict):
        raise InputError(f"custom_ops must be a dict {{op name: op}}, got {type(custom_ops).__name__}")
    for name, op in custom_ops.items():
        if not isinstance(op, OpDef):
            _bound_class_not_run(f"custom_ops[{name!r}]", op)


def register_custom_op(op_name: str, bound_op=None, **rules):
    """auto_LiRPA's register_custom_op(op_name, BoundClass), with lirpac's rules instead of a
    Bound class: ``register_custom_op("custom::Plus", forward=..., relax=...)`` registers the
    op (lirpac.register_op) for ONNX nodes of domain "custom" and type "Plus" and for the
    torch.library op custom::Plus when it exists."""
    from lirpac.custom_ops import register_op
    if bound_op is not None:
        if rules:
            raise InputError(f"register_custom_op({op_name!r}): give a Bound class or lirpac's "
                             "rules (forward=, relax= or ibp=/backward=/forward_mode=), not both")
        _bound_class_not_run(f"register_custom_op({op_name!r})", bound_op)
        return None
    domain, _, op_type = op_name.rpartition("::")
    name = "".join(c if c.isalnum() else "_" for c in op_name)
    torch_op = rules.pop("torch_op", None)
    if torch_op is None and domain and hasattr(getattr(torch.ops, domain, None), op_type):
        torch_op = f"{domain}::{op_type}"
    forward = rules.pop("forward", None)
    if forward is None:
        raise InputError(f"register_custom_op({op_name!r}): give the op's forward= function")
    return register_op(name, forward, torch_op=torch_op,
                       onnx_op=(domain, op_type) if domain else op_type, **rules)


class Flatten(torch.nn.Module):
    """auto_LiRPA's Flatten: x.view(x.size(0), -1)."""

    def forward(self, x):
        return x.view(x.size(0), -1)


def _perturbations_module():
    """``lirpac.compat.perturbations``: auto_LiRPA's module path of its perturbation classes."""
    import sys
    import types
    import numpy
    module = types.ModuleType(__name__ + ".perturbations", "auto_LiRPA's perturbations path")
    module.PerturbationLpNorm, module.PerturbationL0Norm = PerturbationLpNorm, PerturbationL0Norm
    # its examples' `from auto_LiRPA.perturbations import *` brings these names too
    module.torch, module.np, module.math, module.Perturbation = torch, numpy, math, Perturbation
    sys.modules[module.__name__] = module
    return module


perturbations = _perturbations_module()


def _utils_module():
    """``lirpac.compat.utils``: auto_LiRPA's path of Flatten."""
    import sys
    import types
    module = types.ModuleType(__name__ + ".utils", "auto_LiRPA's utils path (Flatten, meters)")
    module.Flatten = Flatten
    module.MultiAverageMeter, module.MultiTimer = MultiAverageMeter, MultiTimer
    module.get_spec_matrix = get_spec_matrix
    sys.modules[module.__name__] = module
    return module


utils = _utils_module()


def _eps_scheduler_module():
    """``lirpac.compat.eps_scheduler``: auto_LiRPA's path of its eps schedulers."""
    import sys
    import types
    module = types.ModuleType(__name__ + ".eps_scheduler", "auto_LiRPA's eps_scheduler path")
    for cls in (LinearScheduler, AdaptiveScheduler, SmoothedScheduler, FixedScheduler):
        setattr(module, cls.__name__, cls)
    sys.modules[module.__name__] = module
    return module


eps_scheduler = _eps_scheduler_module()


class Bound:
    """auto_LiRPA's operator base class, so its custom-op examples import and define their
    classes; lirpac never runs them (register_custom_op warns)."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def _operators_module():
    """``lirpac.compat.operators``: auto_LiRPA's path of Bound."""
    import sys
    import types
    module = types.ModuleType(__name__ + ".operators", "auto_LiRPA's operators path (Bound)")
    module.Bound = Bound
    sys.modules[module.__name__] = module
    return module


operators = _operators_module()
