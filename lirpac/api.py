"""The public entry point: ``lirpac.compile`` and the compiled network it returns."""
from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from lirpac import allocator, methods
from lirpac.alpha import AlphaState
from lirpac.batch_stats import (batch_statistics, evaluate_with_batch_statistics,
                                uses_batch_statistics)
from lirpac.codegen import cuda_graphs as graph_capture, triton as triton_backend
from lirpac.codegen.torch_backend import Plan
from lirpac.errors import InputError
from lirpac.ir.graph import Graph
from lirpac.live_tensors import LiveTensors
from lirpac.perturbation import LpBall, Perturbation, all_finite
from lirpac.perturbations.joint import joint_arguments
from lirpac.perturbations.substitution import check_token_ids
from lirpac.passes import run_passes


DUMP_STAGES = ("ir", "passes", "code", "all", "1")
_WARNED_DUMP: set[str] = set()


def _dump_enabled(stage: str) -> bool:
    value = os.environ.get("LIRPAC_DUMP", "")
    stages = {s.strip().lower() for s in value.split(",") if s.strip()}
    unknown = sorted(stages.difference(DUMP_STAGES))
    if unknown and value not in _WARNED_DUMP:   # a typo (LIRPAC_DUMP=cdoe) would print nothing
        _WARNED_DUMP.add(value)
        warnings.warn(f"LIRPAC_DUMP: unknown stage(s) {', '.join(map(repr, unknown))} ignored; "
                      f"use a comma-separated list of ir, passes, code (or all)", stacklevel=2)
    return bool(stages & {stage, "all", "1"})


def _print_stage(title: str, text: str) -> None:
    print(f"==== lirpac: {title} ====\n{text}", file=sys.stderr)


@dataclass
class LinearBounds:
    """Linear bounds valid over the whole perturbation set:
    ``lower_coeff . x + lower_bias <= C f(x) <= upper_coeff . x + upper_bias``.
    Coefficients have shape (batch, n_spec, *input_shape), biases (batch, n_spec); a model of
    token ids has them on the embedded sentence (batch, n_spec, *ids_shape, d)."""
    lower_coeff: torch.Tensor | None
    lower_bias: torch.Tensor | None
    upper_coeff: torch.Tensor | None
    upper_bias: torch.Tensor | None
    lower: torch.Tensor | None
    upper: torch.Tensor | None


def method_name(method) -> str:
    """The method's canonical (lower-case) name (lirpac/methods/ holds the list)."""
    return methods.get(method).name


def _require_values(t: torch.Tensor, what: str) -> None:
    """A meta tensor has a shape but no values: nothing to bound (or to multiply by)."""
    if t.device.type == "meta":
        raise InputError(f"{what} is on the meta device, which holds shapes but no values; "
                         "give a tensor on the cpu or a gpu")


def _no_autocast(x: torch.Tensor):
    """Bounds run in the dtype _check chose: under torch.autocast a matmul would round its
    operands to half precision and the bounds could miss the model's outputs. (Entering the
    context costs about 10 us, so only when autocast is on.)"""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


class CompiledNet:
    """A model lowered to the bound IR, with generated bound functions cached per plan."""

    def __init__(self, graph: Graph, passes: list[str] | None = None, module=None,
                 conv_mode: str = "auto", max_memory: int | None = None, backend: str = "auto"):
        # "torch", "triton" or "auto" (codegen/triton: triton for CUDA tensors when it imports)
        self.backend = triton_backend.check_backend(backend)
        if conv_mode not in ("auto", "patches", "matrix"):
            raise InputError(f"conv_mode must be 'auto', 'patches' or 'matrix', got {conv_mode!r}")
        if max_memory is not None:
            if (isinstance(max_memory, bool) or not isinstance(max_memory, (int, float))
                    or not 1 <= max_memory < math.inf):
                raise InputError(f"max_memory must be a number of bytes >= 1 (or None: the "
                                 f"default), got {max_memory!r}")
            max_memory = int(max_memory)
        # how backward passes hold coefficients of conv layers, and how much memory they may use
        self.conv_mode, self.max_memory = conv_mode, max_memory
        self.source_graph = graph
        self.module = module
        dump = _print_stage if _dump_enabled("passes") else None
        if _dump_enabled("ir"):
            _print_stage("IR from the frontend", str(graph))
        self.graph, self.pass_timings = run_passes(graph, passes, dump)
        self._leaves = [n for n in self.graph.nodes if n.op in ("param", "constant")]
        # the module's tensors the leaves read, re-checked on each call (lirpac/live_tensors.py)
        self._live = LiveTensors(module, (graph, self.graph))
        self._cache: dict[Plan, tuple] = {}
        x = self.graph.perturbed_input
        self.input_shape = x.shape
        # token ids: bounds start at the embedding that reads them (Graph.set_leaf), in its dtype
        self.leaf_shape = self.graph.set_leaf.shape
        self.tokens = not x.dtype.is_floating_point
        self.dtype = self.graph.set_leaf.dtype
        allocator.tune()    # freed temporaries reused, not faulted in on every call (allocator.py)
        self.output_shape = self.graph.output.shape
        # per-sample shapes of a model's several inputs (compile(model, (x1, x2))), else None
        self.input_shapes = None

    # -- code -----------------------------------------------------------------------------
    def plan(self, method: str = "crown", x: torch.Tensor | None = None, **fields) -> Plan:
        """The plan of ``method`` on this network (``fields``: Plan's, such as spec=True), on
        the backend that runs a call on ``x`` (codegen/triton.resolve)."""
        fields = {"conv_mode": self.conv_mode, "max_memory": self.max_memory,
                  "backend": triton_backend.resolve(self.backend, x), **fields}
        found = methods.get(method)
        return found.complete(Plan(method=found.name, **fields))

    def function(self, plan: Plan):
        """The generated function of ``plan`` (built on first use; its method fills in the
        plan's modes)."""
        method = methods.get(plan.method)
        plan = method.complete(plan)
        if plan not in self._cache:
            if plan.backend == "triton":
                from lirpac.codegen.triton.backend import build as triton_build
                fn, source = triton_build(self.graph, plan, method.build)
            else:
                fn, source = method.build(self.graph, plan)
            if getattr(self, "cuda_graphs", False) and not method.iterative:
                fn = graph_capture.GraphedBound(fn)   # (codegen/cuda_graphs.py: replayed per call signature)
            self._cache[plan] = (fn, source)
            if _dump_enabled("code"):
                _print_stage(f"generated code ({plan.method})", source)
        return self._cache[plan][0]

    def source(self, method: str = "crown", spec: bool = False) -> str:
        plan = self.plan(method, spec=spec)
        self.function(plan)
        return self._cache[plan][1]

    def dump(self, method: str | None = None) -> str:
        """The IR after passes, the pass timings, and the generated source of the methods
        used so far (or of ``method``)."""
        parts = ["# IR after passes", str(self.graph), "", "# passes"]
        parts += [f"#   {r.name}: {r.seconds * 1e3:.2f} ms, {r.summary}" for r in self.pass_timings]
        if method is not None:
            self.source(method)
        for plan, (_, source) in self._cache.items():
            if method is None or plan.method == method:
                parts += ["", f"# generated: {plan}", source]
        return "\n".join(parts)

    # -- bounds ---------------------------------------------------------------------------
    def _params(self, x: torch.Tensor) -> list[torch.Tensor]:
        # BatchNorm modules in training mode: the clean batch's statistics (lirpac/batch_stats.py)
        self._live.sync()
        stats = batch_statistics(self.source_graph, self.module, x)
        out = []
        dtype = self._compute_dtype(x)     # (x's own, or the model's for token ids)
        for n in self._leaves:
            v = stats.get(n.attrs.get("target"), n.value) if stats else n.value
            if v.is_floating_point() and (v.dtype != dtype or v.device != x.device):
                v = v.to(dtype=dtype, device=x.device)
            elif v.device != x.device:
                v = v.to(device=x.device)
            out.append(v)
        return out

    def _check(self, x, perturbation, C):
        """The one validation of a bound call's input and spec: (x in the dtype the bounds are
        computed in, C as a tensor of that dtype, or None)."""
        if not isinstance(x, torch.Tensor):
            raise InputError(f"x must be a torch.Tensor, got {type(x).__name__}")
        _require_values(x, "x")
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            raise InputError(f"input shape {tuple(x.shape)} does not match the compiled model's "
                             f"(batch, {', '.join(map(str, self.input_shape))})")
        if x.shape[0] == 0:
            raise InputError(f"x has batch size 0 (shape {tuple(x.shape)}); bounds need at least "
                             "one sample")
        if self.tokens:
            x = check_token_ids(x, perturbation)
        elif not x.is_floating_point():
            raise InputError(f"x must be a floating-point tensor, got {x.dtype}")
        if not isinstance(perturbation, Perturbation):
            raise InputError("perturbation must be a lirpac perturbation such as "
                             f"lirpac.LpBall(eps=...) or lirpac.Box(lower, upper), got {type(perturbation).__name__}")
        x = x if self.tokens else x.to(self._compute_dtype(x))
        return x, None if C is None else self._check_spec(C, x)

    def _compute_dtype(self, x: torch.Tensor) -> torch.dtype:
        """The wider of the model's and x's dtypes, so that neither the weights nor the input
        are rounded; never below float32 (a half-precision x is upcast, exactly)."""
        return torch.promote_types(torch.promote_types(x.dtype, self.dtype), torch.float32)

    def _check_spec(self, C, x: torch.Tensor) -> torch.Tensor:
        n_out = 1
        for s in self.output_shape:
            n_out *= s
        if not isinstance(C, torch.Tensor) or C.dim() != 3 or C.shape[2] != n_out or \
                C.shape[0] not in (1, x.shape[0]):
            shape = tuple(C.shape) if isinstance(C, torch.Tensor) else type(C).__name__
            raise InputError(f"C must have shape (batch, n_spec, {n_out}) (batch {x.shape[0]} or 1), "
                             f"got {shape}")
        _require_values(C, "C")
        if C.dtype == torch.bool or C.is_complex():
            raise InputError(f"C must be a real (floating-point or integer) tensor, got {C.dtype}")
        C = C.to(dtype=self._compute_dtype(x), device=x.device)
        if not all_finite(C):
            bad = (~torch.isfinite(C)).nonzero()[0].tolist()
            raise InputError(f"C contains NaN or inf (first at index {tuple(bad)}, in {C.dtype}); "
                             "the bounds of C f(x) would be NaN or infinite")
        return C

    def _run(self, x, perturbation, method, C, bound_lower, bound_upper, return_A, options=None):
        """(lower, upper, A, alpha state or None) of one bound computation."""
        method = methods.get(method)
        if self.input_shapes is not None:    # several inputs: one joined input, a product set
            x, perturbation = joint_arguments(x, perturbation, self.input_shapes)
        x, C = self._check(x, perturbation, C)
        if not (bound_lower or bound_upper):
            raise InputError("at least one of bound_lower and bound_upper must be True")
        if options is not None and not isinstance(options, Mapping):
            raise InputError(f"options must be a dict such as {{'iterations': 20}} or None, got "
                             f"{type(options).__name__} {options!r}")
        plan_fields, run_options = methods.read_options(method, options or {})
        plan = self.plan(method.name, x, spec=C is not None, lower=bound_lower, upper=bound_upper,
                         return_A=return_A, **plan_fields)
        fn = self.function(plan)
        # (an iterative method differentiates its steps with respect to its own parameters
        # only: the input set is detached)
        inp = perturbation.bind(x.detach() if method.iterative else x)
        with _no_autocast(x):
            return method.run(fn, inp, C, self._params(x), plan, self.graph.output.name, run_options)

    def bounds(self, x: torch.Tensor, perturbation: Perturbation, method: str = "crown", C=None,
               bound_lower: bool = True, bound_upper: bool = True, options: dict | None = None):
        """Lower and upper bounds of f(x') (or C f(x')) for all x' in the perturbation set:
        tensors of shape (batch, n_out) or (batch, n_spec); a side not asked for is None.
        ``options`` tune method="alpha-crown" (lirpac.AlphaOptions' fields, and ``state``: a
        lirpac.AlphaState to start from, updated in place; see ``alpha_crown``) and
        method="crown": ``{"intersect": True}`` keeps each intermediate neuron's bounds as the
        intersection of its backward-pass and IBP bounds. That is never looser neuron by
        neuron, and on trained nets often much tighter at the output (mnist-net_256x4,
        prop_0_0.03: mean margin bound -1.69 instead of -3.84), but CROWN's adaptive slopes
        make the output non-monotone in them, so on random nets it can be looser; the default
        reproduces published CROWN. A model compiled with several inputs takes a tuple ``x``
        and a tuple of sets, one per input (None: that input is fixed), or one set for all."""
        lower, upper, _, _ = self._run(x, perturbation, method, C, bound_lower, bound_upper, False, options)
        return lower, upper

    def alpha_crown(self, x: torch.Tensor, perturbation: Perturbation, C=None, *,
                    state: AlphaState | None = None, bound_lower: bool = True,
                    bound_upper: bool = True, **options) -> "AlphaResult":
        """alpha-CROWN bounds (lirpac/alpha.py) and the slopes found, to warm-start a later call
        on the same graph and spec shape: ``r = net.alpha_crown(x, ball, C=C, iterations=50)``,
        then ``net.alpha_crown(x, ball, C=C, state=r.state)``. Options: lirpac.AlphaOptions
        (iterations=20, lr=0.5, lr_decay=0.98, patience=10, alpha_shared=False,
        optimize_intermediate=True)."""
        options = dict(options, state=state)
        lower, upper, _, state = self._run(x, perturbation, "alpha-crown", C, bound_lower,
                                           bound_upper, False, options)
        return AlphaResult(lower, upper, state)

    def linear_bounds(self, x: torch.Tensor, perturbation: Perturbation, method: str = "crown", C=None,
                      bound_lower: bool = True, bound_upper: bool = True) -> LinearBounds:
        """Linear functions of the input that bound C f(x) over the whole set (backward and
        forward methods), with their concretized values (alpha-crown: the functions of the step
        with the best objective, and the elementwise best bounds, no looser than theirs)."""
        if not methods.get(method).linear:
            linear = ", ".join(m.name for m in methods.REGISTRY.values() if m.linear)
            raise InputError(f"linear_bounds needs a linear method ({linear}); "
                             f"{method_name(method)} gives intervals only")
        lower, upper, A, _ = self._run(x, perturbation, method, C, bound_lower, bound_upper, True)
        lA, lb, uA, ub = A
        # (several inputs: coefficients on the joined input, ir/joint_inputs.py)
        shape = ((x[0] if self.input_shapes is not None else x).shape[0], -1, *self.leaf_shape)
        lb = lb if isinstance(lb, torch.Tensor) or lower is None else torch.zeros_like(lower)
        ub = ub if isinstance(ub, torch.Tensor) or upper is None else torch.zeros_like(upper)
        return LinearBounds(None if lA is None else lA.reshape(shape), lb if lower is not None else None,
                            None if uA is None else uA.reshape(shape), ub if upper is not None else None,
                            lower, upper)

    def __call__(self, x):
        """The model's own output (for convenience: checks and counterexamples): the function
        that is bounded, so BatchNorm modules in training mode use x's batch statistics (and
        running statistics are not updated)."""
        if self.module is None:
            raise InputError("this compiled network has no torch module to run")
        if uses_batch_statistics(self.source_graph, self.module):
            return evaluate_with_batch_statistics(self.source_graph, self.module, x)[0]
        if isinstance(self.module, torch.nn.Module):
            from lirpac.ir.torch_frontend import eval_mode
            with eval_mode(self.module):    # as bounded, whatever mode the user keeps it in
                return self.module(*x) if self.input_shapes is not None else self.module(x)
        return self.module(x)


@dataclass
class AlphaResult:
    """What ``CompiledNet.alpha_crown`` returns: the bounds and the optimised slopes."""
    lower: torch.Tensor | None
    upper: torch.Tensor | None
    state: AlphaState


def compile(model, example_input=None, *, passes: list[str] | None = None, conv_mode: str = "auto",
            max_memory: int | None = None, backend: str = "auto", cuda_graphs: bool = False) -> CompiledNet:
    """Lower ``model`` (an nn.Module, or an ONNX path/ModelProto) to the bound IR, run passes,
    and return a CompiledNet whose bound functions are generated on first use.

    ``conv_mode``: backward passes through convolutions hold coefficients as "patches" (one
    window per bounded neuron), as a dense "matrix", or choose per node by size ("auto"); the
    bounds are the same. ``max_memory``: bytes of coefficients a backward pass may hold before
    its rows are split into several passes (default 128 MiB on the CPU, where smaller chunks
    are faster, and 1 GiB on a GPU). ``backend``: "torch", "triton"
    (fused kernels, docs/triton.md) or "auto" (triton for CUDA tensors when it imports).
    ``cuda_graphs``: replay bound calls on CUDA tensors from a CUDA graph per call signature
    where their shapes are static (codegen/cuda_graphs.py; needs a CUDA device)."""
    triton_backend.check_backend(backend)     # (before the export, which takes a while)
    graph_capture.check(cuda_graphs)
    if isinstance(model, torch.nn.Module):
        from lirpac.ir.torch_frontend import lower_module
        if example_input is None:
            raise InputError("compile(model, example_input): an example input is needed to trace "
                             "an nn.Module (any batch size; only the per-sample shape matters)")
        graph = lower_module(model, example_input)
        net = CompiledNet(graph, passes, module=model, conv_mode=conv_mode, max_memory=max_memory,
                          backend=backend)
        if isinstance(example_input, (tuple, list)) and len(example_input) > 1:
            net.input_shapes = [tuple(t.shape[1:]) for t in example_input]
        net.cuda_graphs = cuda_graphs
        return net
    try:
        from lirpac.ir.onnx_frontend import lower_onnx
    except ImportError as err:
        raise InputError(f"compile: cannot load {type(model).__name__} ({err})") from err
    graph, runner = lower_onnx(model)
    net = CompiledNet(graph, passes, module=runner, conv_mode=conv_mode, max_memory=max_memory,
                      backend=backend)
    net.cuda_graphs = cuda_graphs
    return net


__all__ = ["compile", "CompiledNet", "LinearBounds", "LpBall", "AlphaResult"]
