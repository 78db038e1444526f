"""The torch backend: turns a bound IR graph and a method into straight-line Python.

The generated function has one statement per node and mode, with node names as variable
names and attributes as literals, so running it costs no graph walk, no dict lookups and no
per-node dispatch: only the torch calls of the rules themselves. Its source is kept on the
compiled object (``net.dump()``) and can be stepped through in a debugger.

Variables in the generated code, for a node ``%h``:
  ``h``          its constant value, or its IBP interval when perturbed
  ``h_bounds``   its intermediate bounds (an Interval), for nodes that need them
  ``lA_h, uA_h`` coefficients of the lower/upper linear bound during a backward pass
  ``h_lin``      its forward-mode linear bounds
"""
from __future__ import annotations

import linecache
import math
from dataclasses import dataclass

from lirpac.codegen import patches, runtime
from lirpac.errors import InputError
from lirpac.ir.graph import Graph, Node
from lirpac.ir.opdef import Interval, Linear, REGISTRY, get_op
from lirpac.passes.bound_needs import nodes_needing_bounds

METHODS = ("ibp", "crown", "forward", "crown-ibp", "forward+crown")
# how each method gets intermediate bounds, and how it forms the final bound
_INTERMEDIATE = {"ibp": "ibp", "crown": "backward", "forward": "forward",
                 "crown-ibp": "ibp", "forward+crown": "forward"}
_FINAL = {"ibp": "ibp", "crown": "backward", "forward": "forward",
          "crown-ibp": "backward", "forward+crown": "backward"}
# ops that only select, reorder or pad coordinates: a chain of them keeps inputs distinct
_SELECTION_OPS = frozenset({"reshape", "permute", "slice", "pad"})
_MODE_PREFIX = {"ibp": "ibp", "backward": "bwd", "forward_mode": "fwd", "forward": "val",
                "jacobian": "jac", "backward_patches": "pat"}


@dataclass(frozen=True)
class _PassLayout:
    """Representation of one backward pass's coefficients: ``patched`` nodes carry Patches
    (with their static window geometry), ``densify`` nodes may receive Patches but turn them
    into matrices before their rule; ``row_elements`` is the largest coefficient row."""
    patched: dict
    densify: set
    row_elements: int


@dataclass(frozen=True)
class Plan:
    """What one generated function computes."""
    method: str
    spec: bool = False          # a spec C is given
    lower: bool = True
    upper: bool = True
    return_A: bool = False      # also return the linear bounds at the input
    sparse: bool = True         # CROWN: backward passes only for neurons an IBP reference leaves unstable
    conv_mode: str = "auto"     # backward through convs on "patches", "matrix", or by a cost model
    max_memory: int | None = None   # bytes of coefficients one backward pass may hold (rows chunked)


def _literal(value, consts: dict) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return repr(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else f"float('{value}')"
    if isinstance(value, tuple):
        inner = ", ".join(_literal(v, consts) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v, consts) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_literal(v, consts)}" for k, v in value.items()) + "}"
    name = f"_k{len(consts)}"
    consts[name] = value
    return name


class _Emitter:
    def __init__(self, graph: Graph, plan: Plan):
        self.graph = graph
        self.plan = plan
        self.lines: list[str] = []
        self.indent = 0
        self.consts: dict = {}
        self.rules: set[tuple[str, str]] = set()
        self.bounds: dict[Node, str] = {}      # node -> expression of its intermediate bounds
        self.needs = nodes_needing_bounds(graph)
        self.x = graph.perturbed_input

    def emit(self, line: str = "") -> None:
        self.lines.append(("    " * (1 + self.indent) + line) if line else "")

    def rule(self, op: str, mode: str, node: Node) -> str:
        opdef = get_op(op)
        if mode != "forward":
            opdef.rule(mode, node)     # raises a clear error if the op lacks the mode
        self.rules.add((op, mode))
        return f"{_MODE_PREFIX[mode]}_{op}"

    def attrs(self, node: Node, with_shapes: bool = False) -> str:
        parts = [f"{k}={_literal(v, self.consts)}" for k, v in node.attrs.items()]
        if with_shapes:
            shapes = tuple(i.shape if i.perturbed else None for i in node.inputs)
            parts.append(f"in_shapes={_literal(shapes, self.consts)}")
        return ", ".join(parts)

    def call(self, fn: str, args: list[str], attrs: str) -> str:
        return f"{fn}({', '.join(args + ([attrs] if attrs else []))})"

    # -- sections ------------------------------------------------------------------------
    def region(self, targets: list[Node]) -> list[Node]:
        """Perturbed nodes some target depends on (targets included), in graph order."""
        keep: set[Node] = set(targets)
        for t in targets:
            keep |= {a for a in self.graph.ancestors(t) if a.perturbed}
        return [n for n in self.graph.nodes if n in keep and n.perturbed]

    def constants(self) -> None:
        for n in self.graph.nodes:
            if not n.perturbed and n.op not in ("param", "constant", "input"):
                args = [i.name for i in n.inputs]
                self.emit(f"{n.name} = {self.call(self.rule(n.op, 'forward', n), args, self.attrs(n))}")

    def ibp(self, nodes: list[Node]) -> None:
        for n in nodes:
            if n is self.x:
                self.emit(f"{n.name} = Interval(inp.lower, inp.upper)")
            else:
                self.emit(f"{n.name} = {self.call(self.rule(n.op, 'ibp', n), [i.name for i in n.inputs], self.attrs(n))}")
            if n in self.needs:
                self.bounds[n] = n.name

    def forward_mode(self, nodes: list[Node]) -> None:
        for n in nodes:
            if n is self.x:
                self.emit(f"{n.name}_lin = input_linear(inp.lower)")
                if n in self.needs:
                    self.emit(f"{n.name}_lin = {n.name}_lin._replace(bounds=Interval(inp.lower, inp.upper))")
            else:
                args = [f"{i.name}_lin" if i.perturbed else i.name for i in n.inputs]
                self.emit(f"{n.name}_lin = {self.call(self.rule(n.op, 'forward_mode', n), args, self.attrs(n))}")
                if n in self.needs:
                    self.emit(f"{n.name}_lin = {n.name}_lin._replace("
                              f"bounds=Interval(*inp.concretize_linear({n.name}_lin)))")
            if n in self.needs:
                self.bounds[n] = f"{n.name}_lin.bounds"

    def backward(self, target: Node, spec: bool, lower: bool, upper: bool, rows: str | None = None,
                 layout: "_PassLayout | None" = None) -> None:
        """Emit a backward pass from ``target``; leaves lA_<x>, uA_<x>, lbias, ubias.
        ``rows`` names a tensor of neuron indices: the pass then bounds those neurons only.
        ``layout`` says which nodes carry Patches (codegen/patches.py) instead of matrices."""
        nodes = self.region([target])
        patched = layout.patched if layout is not None else {}
        have: set[Node] = set()
        what = "spec C" if spec else ("identity spec" if rows is None else f"identity rows {rows}")
        self.emit(f"# backward from %{target.name} ({what}{', patches' if patched else ''})")
        pick = "" if rows is None else f".index_select(1, {rows})"
        op = get_op(target.op)
        skip_target = False
        if target in patched:
            start = f"identity_patches(B, {rows}, {target.shape!r}, inp.lower)"
            self.emit(f"lA_{target.name} = {start if lower else None}")
            self.emit(f"uA_{target.name} = {(f'lA_{target.name}' if lower else start) if upper else None}")
            self.emit("lbias = ubias = 0")
            have.add(target)
        elif not spec and op.jacobian is not None:
            args = ["None" if i.perturbed else i.name for i in target.inputs]
            self.emit(f"_coeffs, _bias = {self.call(self.rule(target.op, 'jacobian', target), ['B'] + args, self.attrs(target))}")
            self.emit(f"lbias = {'_bias' + pick if lower else 0}")
            self.emit(f"ubias = {('lbias' if lower else '_bias' + pick) if upper else 0}")
            for k, i in enumerate(target.inputs):
                if i.perturbed:
                    self.emit(f"lA_{i.name} = {f'_coeffs[{k}]{pick}' if lower else None}")
                    self.emit(f"uA_{i.name} = {(f'lA_{i.name}' if lower else f'_coeffs[{k}]{pick}') if upper else None}")
                    have.add(i)
            skip_target = True
        else:
            start = (f"spec_coeffs(C, B, {target.shape!r})" if spec
                     else f"identity_spec(B, {target.shape!r}, inp.lower)" if rows is None
                     else f"identity_rows(B, {rows}, {target.shape!r}, inp.lower)")
            self.emit(f"lA_{target.name} = {start if lower else None}")
            self.emit(f"uA_{target.name} = {(f'lA_{target.name}' if lower else start) if upper else None}")
            self.emit("lbias = ubias = 0")
            have.add(target)
        for n in reversed(nodes):
            if n is self.x or n not in have or (skip_target and n is target):
                continue
            opdef = get_op(n.op)
            args = [(self.bounds[i] if opdef.nonlinear else "None") if i.perturbed else i.name
                    for i in n.inputs]
            if n in patched:
                fn = self.rule(n.op, "backward_patches", n)
            else:
                fn = self.rule(n.op, "backward", n)
                if layout is not None and n in layout.densify:
                    self.emit(f"lA_{n.name}, uA_{n.name} = dense_pair(lA_{n.name}, uA_{n.name})")
            self.emit(f"_coeffs, _lb, _ub = {self.call(fn, [f'lA_{n.name}', f'uA_{n.name}'] + args, self.attrs(n, opdef.backward_needs_shapes))}")
            if lower:
                self.emit("lbias = lbias + _lb")
            if upper:
                self.emit("ubias = ubias + _ub")
            for k, i in enumerate(n.inputs):
                if not i.perturbed:
                    continue
                if i in have:
                    self.emit(f"lA_{i.name} = acc(lA_{i.name}, _coeffs[{k}][0])")
                    self.emit(f"uA_{i.name} = acc(uA_{i.name}, _coeffs[{k}][1])")
                else:
                    self.emit(f"lA_{i.name}, uA_{i.name} = _coeffs[{k}]")
                    have.add(i)

    def pass_layout(self, target: Node) -> "_PassLayout":
        """Choose, for a backward pass from ``target``, the nodes whose coefficients are Patches.

        Geometry is static (codegen/patches.py), so the choice is made here: starting at a
        (C, H, W) target, a node keeps Patches while its op has a patch rule, its inputs are
        (C, H, W) maps and (conv_mode "auto") the windows stay smaller than the map, the cost
        model: per row, memory and transposed-conv FLOPs both scale with the window area
        against the map's area in matrix form. A node reached by a matrix contribution is a
        matrix. Also returns the largest coefficient row (elements), to size row chunks."""
        nodes = self.region([target])
        mode = self.plan.conv_mode
        patched: dict[Node, patches.Geometry] = {}
        if mode != "matrix" and len(target.shape) == 3 and target is not self.x:
            patched[target] = ((1, 0, 1), (1, 0, 1))
        dense: set[Node] = set()
        densify: set[Node] = set()
        reached = {target}
        for n in reversed(nodes):
            if n not in reached or n is self.x:
                continue
            inputs = [i for i in n.inputs if i.perturbed]
            reached.update(inputs)
            geo = patched.get(n)
            outs = None if geo is None else self.patch_inputs(n, geo)
            if outs is not None and mode == "auto" and any(
                    g[0][2] * g[1][2] >= i.shape[1] * i.shape[2] for i, g in outs):
                outs = None
            if outs is None:
                if patched.pop(n, None) is not None:
                    densify.add(n)
                dense.add(n)
                for i in inputs:
                    if patched.pop(i, None) is not None:
                        densify.add(i)
                    dense.add(i)
                continue
            for i, g in outs:
                if i in dense:
                    densify.add(i)
                    continue
                merged = g if i not in patched else patches.merge_geometry(patched[i], g)
                if merged is None:
                    del patched[i]
                    densify.add(i)
                    dense.add(i)
                else:
                    patched[i] = merged
        row = 0
        for n in reached:
            size = math.prod(n.shape)
            if n in patched:
                (_, _, kh), (_, _, kw) = patched[n]
                size = n.shape[0] * kh * kw
            row = max(row, size)
        return _PassLayout(patched, densify, row)

    def patch_inputs(self, n: Node, geo) -> list | None:
        """Geometry on each perturbed input of ``n`` from its own, or None if ``n`` cannot
        pass Patches on (no patch rule, not 2-D maps)."""
        if get_op(n.op).backward_patches is None:
            return None
        outs = []
        for i in n.inputs:
            if not i.perturbed:
                continue
            if len(i.shape) != 3:
                return None
            if n.op == "conv":
                weight = n.inputs[1].shape
                outs.append((i, patches.conv_geometry(geo, n.attrs["stride"], n.attrs["padding"],
                                                      n.attrs["dilation"], weight[2:])))
            elif i.shape == n.shape:
                outs.append((i, geo))
            else:
                return None
        return outs

    def intermediate_backward(self) -> None:
        """CROWN's intermediate bounds: a backward pass per node that needs bounds, tightening
        an IBP reference. When every nonlinear user of the node is exact once the sign is
        known (ReLU), only neurons whose reference straddles 0 get a pass (their rows of the
        identity spec); the others keep the reference, which changes no relaxation. Rows go
        through the pass in chunks whose coefficients fit in ``plan.max_memory``; a node with
        no row to bound costs nothing."""
        self.ibp(self.region(self.needs))
        users = self.graph.users()
        x = self.x.name
        budget = self.plan.max_memory or runtime.DEFAULT_MAX_MEMORY
        for n in self.needs:
            if n is self.x:
                self.emit(f"{n.name}_bounds = Interval(inp.lower, inp.upper)")
                self.bounds[n] = f"{n.name}_bounds"
                continue
            single_affine = self.single_affine_of_input(n)
            if single_affine:
                self.emit("if inp.is_box:  # one affine map of a box: IBP is already exact")
                self.emit(f"    {n.name}_bounds = {n.name}")
                self.emit("else:")
                self.indent += 1
            sparse = self.plan.sparse and all(
                get_op(u.op).exact_when_sign_known for u in users[n] if get_op(u.op).nonlinear)
            rows = f"{n.name}_rows"
            self.emit(f"{rows} = {'straddling_rows' if sparse else 'all_rows'}({n.name})")
            layout = self.pass_layout(n)
            self.emit(f"def {n.name}_pass(_rows):")
            self.indent += 1
            self.backward(n, spec=False, lower=True, upper=True, rows="_rows", layout=layout)
            self.emit(f"return concretize_pair(inp, lA_{x}, lbias, uA_{x}, ubias)")
            self.indent -= 1
            # lA, uA, their successors and a relaxation step's gathered lines and selections:
            # about 10 coefficient-sized tensors at the widest node (measured on cnn_4c_bn)
            self.emit(f"{n.name}_bounds = tighten_chunks({n.name}, {rows}, {n.name}_pass, "
                      f"B * {10 * layout.row_elements} * inp.lower.element_size(), {budget})")
            if single_affine:
                self.indent -= 1
            self.bounds[n] = f"{n.name}_bounds"

    def single_affine_of_input(self, target: Node) -> bool:
        """``target`` is one affine op (with a Jacobian rule) of the input reached through
        coordinate selections only (reshape, permute, slice, pad): each of its outputs is then
        an affine function of distinct input coordinates, and IBP's centre/radius rule gives
        its exact range over a box, so a backward pass cannot tighten it."""
        if get_op(target.op).jacobian is None:
            return False
        for n in self.region([target]):
            if n is self.x:
                continue
            if sum(i.perturbed for i in n.inputs) != 1:
                return False
            if n is not target and n.op not in _SELECTION_OPS:
                return False
        return True

    # -- the whole function ----------------------------------------------------------------
    def generate(self, fn_name: str) -> str:
        plan, graph, out = self.plan, self.graph, self.graph.output
        leaves = [n.name for n in graph.nodes if n.op in ("param", "constant")]
        body_start = len(self.lines)
        self.emit(f"B = inp.batch")
        if leaves:
            self.emit(f"{', '.join(leaves)}{',' if len(leaves) == 1 else ''} = params")
        self.constants()
        mode = _INTERMEDIATE[plan.method]
        final = _FINAL[plan.method]
        if self.needs:
            self.emit(f"# intermediate bounds ({mode}) of {', '.join('%' + n.name for n in self.needs)}")
        if mode == "ibp":
            self.ibp(self.region(self.needs + ([out] if final == "ibp" else [])))
        elif mode == "forward":
            self.forward_mode(self.region(self.needs + ([out] if final == "forward" else [])))
        else:
            self.intermediate_backward()
        self.emit(f"# final bound ({final}{', spec C' if plan.spec else ''})")
        lo, up = plan.lower, plan.upper
        ret_A = "None"
        if final == "ibp":
            self.final_ibp(out)
            if not lo:
                self.emit("lower = None")
            if not up:
                self.emit("upper = None")
        elif final == "forward":
            self.emit(f"_out = forward_spec({'C' if plan.spec else 'None'}, {out.name}_lin)")
            self.emit(f"lower = inp.concretize(_out.lw, _out.lb, upper=False)" if lo else "lower = None")
            self.emit(f"upper = inp.concretize(_out.uw, _out.ub, upper=True)" if up else "upper = None")
            ret_A = "(_out.lw, _out.lb, _out.uw, _out.ub)"
        else:
            self.backward(out, spec=plan.spec, lower=lo, upper=up)
            x = self.x.name
            self.emit(f"lower = inp.concretize(lA_{x}, lbias, upper=False)" if lo else "lower = None")
            self.emit(f"upper = inp.concretize(uA_{x}, ubias, upper=True)" if up else "upper = None")
            ret_A = f"(lA_{x}, lbias, uA_{x}, ubias)"
        self.emit(f"return lower, upper, {ret_A if plan.return_A else 'None'}")
        body = self.lines[body_start:]
        doc = f'"""{plan.method} bounds{" of C . f(x)" if plan.spec else ""} for the graph below (generated)."""'
        return "\n".join([f"def {fn_name}(inp, C, params):", "    " + doc] + body) + "\n"

    def final_ibp(self, out: Node) -> None:
        if not self.plan.spec:
            self.emit(f"lower = {out.name}.lower.reshape(B, -1)")
            self.emit(f"upper = {out.name}.upper.reshape(B, -1)")
            return
        if out.op == "linear" and not any(i.perturbed for i in out.inputs[1:]):
            # fold the spec into the last layer (exact, tighter than intervals of the logits)
            w, b = out.inputs[1].name, out.inputs[2].name if len(out.inputs) > 2 else "None"
            self.emit(f"lower, upper = ibp_spec_linear(C, {out.inputs[0].name}, {w}, {b})")
        else:
            self.emit(f"lower, upper = ibp_spec(C, {out.name})")


def generate(graph: Graph, plan: Plan) -> tuple[str, dict]:
    """Source of the function ``bound`` for ``plan`` and the namespace it runs in."""
    if plan.method not in METHODS:
        raise InputError(f"unknown method {plan.method!r}; choose one of {', '.join(METHODS)}")
    emitter = _Emitter(graph, plan)
    source = emitter.generate("bound")
    namespace = {"Interval": Interval, "Linear": Linear, "acc": runtime.acc,
                 "identity_spec": runtime.identity_spec, "spec_coeffs": runtime.spec_coeffs,
                 "ibp_spec": runtime.ibp_spec, "ibp_spec_linear": runtime.ibp_spec_linear,
                 "input_linear": runtime.input_linear, "forward_spec": runtime.forward_spec,
                 "straddling_rows": runtime.straddling_rows, "identity_rows": runtime.identity_rows,
                 "tighten": runtime.tighten, "all_rows": runtime.all_rows,
                 "tighten_chunks": runtime.tighten_chunks,
                 "identity_patches": patches.identity_patches, "dense_pair": runtime.dense_pair,
                 "concretize_pair": patches.concretize_pair}
    for op, mode in emitter.rules:
        opdef = REGISTRY[op]
        namespace[f"{_MODE_PREFIX[mode]}_{op}"] = getattr(opdef, mode)
    namespace.update(emitter.consts)
    return source, namespace


_counter = [0]


def build(graph: Graph, plan: Plan):
    """Compile the generated source into a function (registered with linecache so tracebacks
    and debuggers show the generated lines)."""
    source, namespace = generate(graph, plan)
    _counter[0] += 1
    filename = f"<lirpac-generated-{_counter[0]}-{plan.method}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)
    return namespace["bound"], source
