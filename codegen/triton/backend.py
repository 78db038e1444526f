"""The Triton backend's build: the torch backend's generated program, run with a dispatch table
that swaps its fused steps for the Triton versions.

The generated code calls its rules by name from its namespace (``relaxed``, ``bwa_relu``,
...) and concretizes through the bound input set (``inp.concretize``, ``finish_sides``), so
the same program runs on the kernels when (1) those names point at the kernels' launchers and
(2) ``inp`` is a ``TritonInputSet``. Every swapped function falls back to the torch rule where
its kernel does not apply (a device Triton does not run on, an unusual broadcast), so the
bounds are the torch backend's up to float rounding. The listing names the nodes each kernel
runs for, read off the bound program (``fn.program``, codegen/program.py): each statement
carries its IR node and the rules it calls.
"""
from __future__ import annotations

import ast
import functools
import inspect

from lirpac.codegen.triton import (concretize, forward_step, ibp_affine, ibp_scale, patches_step, relaxed_step,
                                   relaxed_step_grad)
from lirpac.ir.opdef import REGISTRY

# generated name -> (replacement, the kernels it launches)
_RELAXED_KERNELS = (relaxed_step.relaxed_step_kernel, relaxed_step_grad.relaxed_step_grad_kernel)
_FUSED = {"relaxed": (relaxed_step.relaxed, _RELAXED_KERNELS)}
# (the same names on Patches: relaxed_step dispatches to patches_step.py)
_PATCHES_KERNELS = (patches_step.patches_step_kernel, patches_step.patches_step_grad_kernel)


def _kink_ops() -> dict:
    """alpha-CROWN's kink ops (ReLU, leaky ReLU): ``bwa_<op>`` -> the fused rule."""
    out = {}
    for name, opdef in REGISTRY.items():
        rule = opdef.backward_alpha
        slope = getattr(rule, "bottom_slope", None)
        if rule is not None and slope is not None:
            out[f"bwa_{name}"] = (relaxed_step.kink_backward_alpha(rule, slope), _RELAXED_KERNELS)
    return out


def _forward_ops() -> dict:
    """Elementwise ops' forward-mode rules (ir/ops/common.py ``elementwise``): ``fwd_<op>`` ->
    the fused rule."""
    out = {}
    for name, opdef in REGISTRY.items():
        relax = getattr(opdef.forward_mode, "relaxed_by", None)
        if relax is not None:
            out[f"fwd_{name}"] = (forward_step.forward_rule(relax), (forward_step.forward_step_kernel,))
    return out


def _ibp_ops() -> dict:
    """Affine layers' IBP (linear, conv): ``ibp_<op>`` -> the rule with its elementwise
    prologue and epilogue fused (the products stay cuBLAS/cuDNN); batch norm's and a constant
    scale's: one kernel."""
    kernels = (ibp_affine.centre_radius_kernel, ibp_affine.interval_of_kernel)
    table = {name: (rule, kernels) for name, rule in ibp_affine.ibp_rules().items()}
    # per-channel affine maps (batch norm, a constant scale): one kernel, no product
    table.update({name: (rule, (ibp_scale.scale_shift_ibp_kernel,)) for name, rule in ibp_scale.ibp_rules().items()})
    return table


def dispatch_table(namespace: dict) -> dict:
    """The swaps for the names this program uses."""
    table = {**_FUSED, **_kink_ops(), **_forward_ops(), **_ibp_ops()}
    return {name: entry for name, entry in table.items() if name in namespace}


def kernel_source(kernels) -> str:
    """The Triton source of ``kernels`` (shown beside the generated code)."""
    parts = []
    for kernel in kernels:
        fn = getattr(kernel, "fn", kernel)
        parts.append(f"# {fn.__module__}.{fn.__name__}\n{inspect.getsource(fn)}")
    return "\n".join(parts)


def build(graph, plan, base_build):
    """``base_build(graph, plan)`` (the torch or alpha-CROWN build) on the Triton dispatch
    table: the function (inputs bound as TritonInputSets) and its source, followed by the
    swaps, the nodes each kernel runs for, and the kernels' Triton source."""
    fn, source = base_build(graph, plan)
    namespace = fn.__globals__
    table = dispatch_table(namespace)
    for name, (replacement, _) in table.items():
        namespace[name] = replacement
    wrapped = _on_triton_sets(fn)
    hoisted = getattr(fn, "hoisted", None)
    if hoisted is not None:
        wrapped.hoisted = tuple(_on_triton_sets(f) for f in hoisted)
    notes, used = [], {}
    calls = nodes_by_rule(fn.program)
    for name, (_, kernels) in table.items():
        nodes = calls.get(name)
        if nodes:
            used.update({getattr(k, "fn", k).__name__: k for k in kernels})
            notes.append(f"# {name} -> {', '.join(getattr(k, 'fn', k).__name__ for k in kernels)}: "
                         f"{', '.join(nodes)}")
    stepped = [name for name in table if name in calls and table[name][1] == _RELAXED_KERNELS]
    if stepped and "identity_patches" in _called_names(fn.program):
        for kernel in _PATCHES_KERNELS:
            used[kernel.fn.__name__ if hasattr(kernel, "fn") else kernel.__name__] = kernel
        notes.append(f"# {', '.join(stepped)} on Patches -> patches_step_kernel, patches_step_grad_kernel: "
                     "the nodes a pass above marks 'patches'")
    used["concretize_kernel"] = concretize.concretize_kernel
    notes.append("# inp.concretize, concretize_pair -> concretize_kernel (TritonInputSet): each pass's end")
    listing = "\n".join([source, "# ---- Triton backend (lirpac.codegen.triton): the steps it fuses ----",
                         *notes, "", kernel_source(used.values())])
    return wrapped, listing


def nodes_by_rule(program) -> dict[str, list[str]]:
    """Generated name -> the IR nodes (``%name``) whose statements call it, in program order:
    read off the bound program's statements (their node and the calls in their trees), nested
    pass functions and branches included."""
    found: dict[str, list[str]] = {}

    def walk(body):
        for st in body:
            if st.compound:
                walk(st.body)
                continue
            if st.node is None:
                continue
            for call in st.calls():
                if isinstance(call.func, ast.Name):
                    nodes = found.setdefault(call.func.id, [])
                    if f"%{st.node.name}" not in nodes:
                        nodes.append(f"%{st.node.name}")
    walk(program.body)
    return found


def _called_names(program) -> set[str]:
    """Every function name the program's statements call."""
    names = set()

    def walk(body):
        for st in body:
            names.update(c.func.id for c in st.calls() if isinstance(c.func, ast.Name))
            walk(st.body)
    walk(program.body)
    return names


def _on_triton_sets(fn):
    """``fn(inp, ...)`` with ``inp`` bound as a TritonInputSet."""
    @functools.wraps(fn)
    def run(inp, *args, **kwargs):
        return fn(concretize.TritonInputSet.wrap(inp), *args, **kwargs)
    return run

