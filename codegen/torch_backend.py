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
from lirpac.codegen.program import Program, Statement, free_dead, print_program, statement
from lirpac.ir.graph import Graph, Node
from lirpac.ir.opdef import Interval, Linear, REGISTRY, get_op
from lirpac.ir.ops.common import add_bias, prepare_lines, relaxed_backward_lines
from lirpac.passes.bound_needs import (affine_of_input, chosen_mode, image_of_bounded_input,
                                       nodes_needing_bounds, selection_of_input,
                                       single_affine_of_input)

MODES = ("ibp", "backward", "forward")   # how a plan bounds intermediate nodes and the output
_MODE_PREFIX = {"ibp": "ibp", "backward": "bwd", "forward_mode": "fwd", "forward": "val",
                "jacobian": "jac", "backward_patches": "pat", "backward_alpha": "bwa",
                "relax": "relax", "alpha_lines": "alines", "zero_where": "zero", "of_set": "set"}


@dataclass(frozen=True)
class _PassLayout:
    """Representation of one backward pass's coefficients: ``patched`` nodes carry Patches
    (with their static window geometry), ``densify`` nodes may receive Patches but turn them
    into matrices before their rule; ``row_elements`` is the largest coefficient row;
    ``why``: for the dump, each node's choice and the cost estimate behind it."""
    patched: dict
    densify: set
    row_elements: int
    why: dict = None


@dataclass(frozen=True)
class Plan:
    """What one generated function computes. ``method`` names it (lirpac/methods/, which
    fills in the rest); the code depends only on the fields: how intermediate nodes and the
    output are bounded (``intermediate``, ``final``: "ibp", "backward" or "forward")."""
    method: str
    intermediate: str = ""
    final: str = ""
    forward_when_exact: bool = False   # intermediate nodes forward mode bounds exactly and cheaper
    spec: bool = False          # a spec C is given
    lower: bool = True
    upper: bool = True
    return_A: bool = False      # also return the linear bounds at the input
    sparse: bool = True         # CROWN: backward passes only for neurons an IBP reference leaves unstable
    conv_mode: str = "auto"     # backward through convs on "patches", "matrix", or by a cost model
    max_memory: int | None = None   # bytes of coefficients one backward pass may hold (rows chunked)
    intersect: bool = False     # CROWN rows keep the intersection with the IBP reference (see runtime.tighten)
    backend: str = "torch"      # "triton": the same program on fused kernels (codegen/triton)


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
    # IBP references restart from tightened bounds; alpha-CROWN keeps the plain reference,
    # whose unstable rows (the shapes of its slopes) then stay fixed across iterations
    restart_reference = True
    # intermediate passes of ReLU inputs bound one side per row first (runtime.one_side_first)
    one_side_passes = True

    signature = "inp, C, params"    # arguments of the generated function

    def __init__(self, graph: Graph, plan: Plan):
        self.graph = graph
        self.plan = plan
        # statements of the program, and of the compound statements being emitted into
        self.blocks: list[list[Statement]] = [[]]
        self.node: Node | None = None     # the node of the next statement (set by ``rule``)
        self.consts: dict = {}
        self.rules: set[tuple[str, str]] = set()
        self.bounds: dict[Node, str] = {}      # node -> expression of its intermediate bounds
        self.lines_of: dict[Node, str] = {}    # node -> variable of its relaxation's lines
        # node -> {input index: variable} for constant inputs backward passes read pruned
        self.pruned: dict[Node, dict[int, str]] = {}
        self.live_of: dict[Node, str] = {}     # node -> variable of its live neurons' indices
        self.users = graph.users()
        self.needs = nodes_needing_bounds(graph)
        # CROWN bounds a node by forward mode where that is exact and cheaper (a hook:
        # alpha-CROWN optimises every intermediate backward pass instead)
        self.forward_when_exact = plan.forward_when_exact
        self.x = graph.set_leaf
        self.before_x = graph.ancestors(self.x)    # (token ids before their embedding)
        # the last backward pass ends with coefficients nothing else shares (``backward``)
        self.owned = False
        self.anchors: dict[Node, str] = {}     # node -> variable of its product's anchor

    def emit(self, line: str) -> None:
        """Append one statement (a line of Python, a compound header ending in ':' whose body
        ``enter`` opens, or a comment) to the block being emitted."""
        self.blocks[-1].append(statement(line, self.node))
        self.node = None

    def enter(self) -> None:
        """Emit into the body of the last compound statement, until ``leave``."""
        self.blocks.append(self.blocks[-1][-1].body)

    def leave(self) -> None:
        self.blocks.pop()

    def rule(self, op: str, mode: str, node: Node) -> str:
        opdef = get_op(op)
        if mode != "forward":
            opdef.rule(mode, node)     # raises a clear error if the op lacks the mode
        self.rules.add((op, mode))
        self.node = node
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
        return [n for n in self.graph.nodes if n in keep and n.perturbed and n not in self.before_x]

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
                if single_affine_of_input(self.graph, n):
                    self.first_affine(n)
            if n in self.needs:
                self.bounds[n] = n.name

    def forward_line(self, n: Node) -> None:
        """``n``'s forward-mode linear bounds (``<n>_lin``) from its inputs'."""
        if n is self.x:
            self.emit(f"{n.name}_lin = input_linear(inp.lower)")
            return
        args = [f"{i.name}_lin" if i.perturbed else i.name for i in n.inputs]
        self.emit(f"{n.name}_lin = {self.call(self.rule(n.op, 'forward_mode', n), args, self.attrs(n))}")

    def forward_mode(self, nodes: list[Node]) -> None:
        interval_done: set[Node] = set()
        for n in nodes:
            self.forward_line(n)
            if n not in self.needs:
                continue
            bounds = ("Interval(inp.lower, inp.upper)" if n is self.x
                      else f"Interval(*inp.concretize_linear({n.name}_lin))")
            if n is not self.x and self.feeds_domain(n):
                # IBP of its region too, to keep the relaxation's input inside its domain
                todo = [m for m in self.region([n]) if m not in interval_done]
                kept = dict(self.bounds)
                self.ibp(todo)
                self.bounds.clear()
                self.bounds.update(kept)
                interval_done.update(todo)
                bounds = f"intersect({bounds}, {n.name})"
            self.emit(f"{n.name}_lin = {n.name}_lin._replace(bounds={bounds})")
            self.bounds[n] = f"{n.name}_lin.bounds"

    def backward(self, target: Node, spec: bool, lower: bool, upper: bool, rows: str | None = None,
                 layout: "_PassLayout | None" = None, after_start=None, signed: bool = False) -> bool:
        """Emit a backward pass from ``target``; leaves lA_<x>, uA_<x>, lbias, ubias.
        ``rows`` names a tensor of neuron indices: the pass then bounds those neurons only.
        ``layout`` says which nodes carry Patches (codegen/patches.py) instead of matrices.
        Returns whether the pass may fold its sides (both asked, dense coefficients): then
        ``_fold`` says at run time whether it bounds the rows [c; -c] from below only
        (runtime.fold_pair: each rule runs once instead of once per side, worth it while the
        folded rows are small), and ``finish_sides`` gives both sides' bounds. ``after_start``
        is called with the names the pass's start defines (its first coefficients, biases and
        fold decision), before the first rule: intermediate passes close a function there.
        ``signed``: the pass takes ``_signs``, and when given bounds one side per row, the lower
        side of each row times its sign (runtime.one_side_first)."""
        nodes = self.region([target])
        patched = layout.patched if layout is not None else {}
        fold = lower and upper and not patched
        have: set[Node] = set()
        # nodes whose coefficients share memory with no tensor that outlives the pass (made by
        # a "fresh" rule or a relaxation, then only viewed): ``self.owned`` says so of the input
        owned: set[Node] = set()
        what = "spec C" if spec else ("identity spec" if rows is None else f"identity rows {rows}")
        self.emit(f"# backward from %{target.name} ({what}{', patches' if patched else ''})")
        for n in nodes:
            if layout is not None and layout.why and n in layout.why:
                self.emit(f"#   %{n.name}: {layout.why[n]}")
        pick = (lambda t: t) if rows is None else (lambda t: f"pick_rows({t}, {rows})")
        op = get_op(target.op)
        skip_target = False
        if target in patched:
            start = f"identity_patches(B, {rows}, {target.shape!r}, inp.lower)"
            self.emit(f"lA_{target.name} = {start if lower else None}")
            self.emit(f"uA_{target.name} = {(f'lA_{target.name}' if lower else start) if upper else None}")
            self.emit("lbias = ubias = 0")
            have.add(target)
        elif not spec and op.jacobian is not None and len(target.shape) == 1:
            # (the Jacobian rule gives one row per output: a 1-D node; linear on (T, d) has a
            # block-diagonal Jacobian it does not build)
            args = self.constant_args(target, ["None"] * len(target.inputs))
            self.emit(f"_coeffs, _bias = {self.call(self.rule(target.op, 'jacobian', target), ['B'] + args, self.attrs(target))}")
            self.emit(f"lbias = {pick('_bias') if lower else 0}")
            self.emit(f"ubias = {('lbias' if lower else pick('_bias')) if upper else 0}")
            for k, i in enumerate(target.inputs):
                if i.perturbed:
                    self.emit(f"lA_{i.name} = {pick(f'_coeffs[{k}]') if lower else None}")
                    self.emit(f"uA_{i.name} = {(f'lA_{i.name}' if lower else pick(f'_coeffs[{k}]')) if upper else None}")
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
        if signed:
            self.emit("if _signs is not None:  # one side per row: the lower side of signs * row")
            self.enter()
            for n in have:
                self.emit(f"lA_{n.name}, uA_{n.name} = sign_rows(lA_{n.name}, _signs), None")
            self.emit("lbias, ubias = sign_rows(lbias, _signs), 0")
            self.leave()
        if fold:
            # one lower-side pass over [c; -c] bounds both sides: max c.f = -min (-c).f
            first = next(iter(have))
            width = max(math.prod(n.shape) for n in nodes if n.perturbed)
            condition = self.fold_condition(f'fold_worth(lA_{first.name}, {width})')
            if signed:
                condition = f"_signs is None and {condition}"
            self.emit(f"_fold = {condition}  # {width}: the widest node's elements")
            for n in have:
                self.emit(f"lA_{n.name}, uA_{n.name} = fold_pair(lA_{n.name}, uA_{n.name}, _fold)")
            self.emit("lbias, ubias = fold_bias(lbias, ubias, _fold)")
        if after_start is not None:
            after_start([f"{side}A_{n.name}" for n in have for side in "lu"] + ["lbias", "ubias"]
                        + (["_fold"] if fold else []))
        for n in reversed(nodes):
            if n is self.x or n not in have or (skip_target and n is target):
                continue
            opdef = get_op(n.op)
            args = self.constant_args(n, [(self.bounds[i] if opdef.nonlinear else "None") if i.perturbed else None
                                          for i in n.inputs])
            self.at_coefficients(target, n, n in patched)
            if n in self.lines_of:
                # the lines were computed once for every pass (``relaxations``)
                self.node = n
                self.emit(f"_coeffs, _lb, _ub = relaxed(lA_{n.name}, uA_{n.name}, {self.lines_of[n]})")
            elif n in patched:
                fn, args = self.patches_rule(target, n, args)
            else:
                fn, args = self.backward_rule(target, n, args)
                if layout is not None and n in layout.densify:
                    self.emit(f"lA_{n.name}, uA_{n.name} = dense_pair(lA_{n.name}, uA_{n.name})")
            if n not in self.lines_of:
                attrs = self.attrs(n, opdef.backward_needs_shapes)
                if n in self.anchors and n not in patched:
                    attrs += f", anchor={self.anchors[n]}"
                self.emit(f"_coeffs, _lb, _ub = {self.call(fn, [f'lA_{n.name}', f'uA_{n.name}'] + args, attrs)}")
            # (add_bias: a rule's zero bias, the int 0, costs no tensor op)
            if lower:
                self.emit("lbias = add_bias(lbias, _lb)")
            if upper:
                self.emit("ubias = add_bias(ubias, _ub)")
            # (a node on Patches runs its patches rule, which backward_memory does not describe)
            memory = "unknown" if n in patched else "fresh" if n in self.lines_of else opdef.backward_memory
            fresh = memory == "fresh" or memory == "view" and n in owned and \
                not (layout is not None and n in layout.densify)
            for k, i in enumerate(n.inputs):
                if not i.perturbed:
                    continue
                if i in have:
                    self.emit(f"lA_{i.name} = acc(lA_{i.name}, _coeffs[{k}][0])")
                    self.emit(f"uA_{i.name} = acc(uA_{i.name}, _coeffs[{k}][1])")
                    owned.discard(i)
                else:
                    self.emit(f"lA_{i.name}, uA_{i.name} = _coeffs[{k}]")
                    have.add(i)
                    if fresh and sum(j is i for j in n.inputs) == 1:
                        owned.add(i)
        self.owned = self.x in owned
        return fold

    def constant_args(self, n: Node, perturbed: list[str]) -> list[str]:
        """Arguments of ``n``'s rule in a backward pass: ``perturbed[k]`` for a perturbed
        input k, else the constant's variable (pruned to the live neurons, ``drop_dead``)."""
        pruned = self.pruned.get(n, {})
        return [p if i.perturbed else pruned.get(k, i.name)
                for k, (i, p) in enumerate(zip(n.inputs, perturbed))]

    def fold_condition(self, expr: str) -> str:
        """The expression that decides whether a pass folds its sides (a hook: alpha-CROWN's
        slopes shared by a pass's rows stay one per side)."""
        return expr

    def at_coefficients(self, target: Node, n: Node, patched: bool) -> None:
        """A hook where ``n``'s coefficients in the pass from ``target`` are complete, before
        its backward rule (beta-CROWN adds its split multipliers there)."""

    def relaxations(self, target: Node, drop_dead: bool = False) -> None:
        """Emit, before the backward passes from ``target``, the relaxation lines of the
        elementwise nodes they cross: computed once from final bounds, shared by every pass
        and chunk (the final pass re-crosses every earlier layer). ``drop_dead``: the passes
        bound many rows (intermediate ones), worth dropping dead neurons for."""
        for n in self.region([target]):
            kind = None if n is self.x else self.lines_kind(n)
            if kind is None or n in kind[0]:
                continue
            table, mode, wrap = kind
            bounds = next(self.bounds[i] for i in n.inputs if i.perturbed)
            call = self.call(self.rule(n.op, mode, n), [f"{bounds}.lower", f"{bounds}.upper"], self.attrs(n))
            self.emit(f"{n.name}_lines = {wrap.format(call)}")
            table[n] = f"{n.name}_lines"
            if drop_dead:
                self.drop_dead(n, bounds, table)

    def drop_dead(self, n: Node, bounds: str, table: dict) -> None:
        """Between two linear layers ``a -> n -> b`` that nothing else reads, neurons of ``n``
        that are 0 on the whole set (OpDef.zero_where) add nothing to any later pass: those
        passes use ``n``'s lines (in ``table``) and a's weight rows and b's weight columns at
        the live neurons only (fewer multiply-adds in the products, the same bounds up to
        rounding). Decided at run time (runtime.live_neurons)."""
        layers = self.dead_drop_layers(n)
        if layers is None:
            return
        a, b = layers
        live = self.live_of[n] = f"{n.name}_live"
        fixed = self.fixed_bounds(a, bounds)
        zero = self.call(self.rule(n.op, "zero_where", n), [f"{fixed}.lower", f"{fixed}.upper"], self.attrs(n))
        self.emit(f"# neurons of %{n.name} that are 0 on the whole set leave the later passes")
        self.emit(f"{live} = live_neurons({self.zero_neurons(a, zero)})")
        self.emit(f"{n.name}_live_lines = prune_lines({table[n]}, {live})")
        table[n] = f"{n.name}_live_lines"
        for layer, prune, ks in ((a, "prune_rows", range(1, len(a.inputs))), (b, "prune_columns", (1,))):
            pruned = self.pruned.setdefault(layer, {})
            for k in ks:
                name = f"{layer.name}_{'weight' if k == 1 else 'bias'}_live"
                name += "_2" if k in pruned else ""    # (rows, then columns: at most twice)
                self.emit(f"{name} = {prune}({live}, {pruned.get(k, layer.inputs[k].name)})")
                pruned[k] = name

    def fixed_bounds(self, a: Node, bounds: str) -> str:
        """Bounds of ``a`` whose dead neurons are dead in ``bounds`` too (a hook: alpha-CROWN
        takes them from the pass's reference, the same in every step of a call)."""
        return bounds

    def zero_neurons(self, a: Node, expr: str) -> str:
        """The expression for the neurons after ``a`` that may leave the passes (a hook:
        branch and bound keeps the ones whose signs it constrains)."""
        return expr

    def dead_drop_layers(self, n: Node) -> tuple[Node, Node] | None:
        """(a, b) when ``n`` (with a ``zero_where`` rule) is ``a -> n -> b`` for two linear
        layers with constant weights on vectors, and nothing else reads a or n."""
        if get_op(n.op).zero_where is None or len(n.shape) != 1 or len(self.users[n]) != 1:
            return None
        a, b = n.inputs[0], self.users[n][0]
        out = self.graph.output
        if self.users[a] != [n] or out in (a, n) or b.inputs[0] is not n:
            return None
        for layer in (a, b):
            if layer.op != "linear" or len(layer.shape) != 1 or any(i.perturbed for i in layer.inputs[1:]):
                return None
        return a, b

    def lines_kind(self, n: Node) -> tuple[dict, str, str] | None:
        """How ``n``'s lines are computed once for every pass: (the table of their variables,
        the op's rule, a wrapper of its call), or None when its backward rule takes none (a
        hook: alpha-CROWN's ops take their ``alpha_lines`` instead)."""
        opdef = get_op(n.op)
        if opdef.relax is None or sum(i.perturbed for i in n.inputs) != 1:
            return None
        return self.lines_of, "relax", "prepare_lines({})"

    def backward_rule(self, target: Node, n: Node, args: list[str]) -> tuple[str, list[str]]:
        """The rule of ``n`` in a backward pass from ``target``, and its arguments: a hook for
        methods that parametrise relaxations per pass (codegen/alpha_crown.py)."""
        return self.rule(n.op, "backward", n), args

    def patches_rule(self, target: Node, n: Node, args: list[str]) -> tuple[str, list[str]]:
        """``backward_rule`` for a node whose coefficients are Patches."""
        return self.rule(n.op, "backward_patches", n), args

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
        why: dict[Node, str] = {}
        reached = {target}
        for n in reversed(nodes):
            if n not in reached or n is self.x:
                continue
            inputs = [i for i in n.inputs if i.perturbed]
            reached.update(inputs)
            geo = patched.get(n)
            outs = None if geo is None else self.patch_inputs(n, geo)
            if geo is not None and outs is None:
                why[n] = f"matrix after it: {n.op} passes no patches on here"
            if outs is not None and mode == "auto":
                wide = [(i, g) for i, g in outs if g[0][2] * g[1][2] >= i.shape[1] * i.shape[2]]
                if wide:
                    i, g = wide[0]
                    why[n] = (f"matrix after it: a {g[0][2]}x{g[1][2]} window on %{i.name} covers "
                              f"its {i.shape[1]}x{i.shape[2]} map")
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
                why.setdefault(n, f"patches: {kh}x{kw} windows, {size} of {math.prod(n.shape)} "
                                  "elements per row")
            row = max(row, size)
        return _PassLayout(patched, densify, row, why)

    def patch_inputs(self, n: Node, geo) -> list | None:
        """Geometry on each perturbed input of ``n`` from its own, or None if ``n`` cannot
        pass Patches on (no patch rule, not 2-D maps, a window the op cannot keep)."""
        opdef = get_op(n.op)
        if opdef.backward_patches is None:
            return None
        window = None if opdef.reads_window is None else opdef.reads_window(n.attrs, [i.shape for i in n.inputs])
        if opdef.reads_window is not None and window is None:
            return None
        outs = []
        for i in n.inputs:
            if not i.perturbed:
                continue
            if len(i.shape) != 3:
                return None
            if window is not None:
                outs.append((i, patches.conv_geometry(geo, *window)))
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
        x = self.x.name
        budget = self.plan.max_memory or "default_max_memory(inp.lower)"
        done: set[Node] = set()
        for n in self.needs:
            # the IBP reference restarts from the tightened bounds of earlier nodes (rebound
            # below, as auto_LiRPA does): it proves more neurons stable, which saves their
            # passes and makes their relaxation exact
            todo = [m for m in self.region([n]) if m not in done]
            self.ibp(todo)
            done.update(todo)
            if n is self.x:
                self.emit(f"{n.name}_bounds = Interval(inp.lower, inp.upper)")
                self.bounds[n] = f"{n.name}_bounds"
                continue
            if single_affine_of_input(self.graph, n) or selection_of_input(self.graph, n):
                # its reference is exact already (centre/radius of a box, dual norm of a ball)
                self.emit(f"{n.name}_bounds = {self.kept_bounds(n, n.name)}")
                self.bounds[n] = f"{n.name}_bounds"
                continue
            if image_of_bounded_input(self.graph, n):
                self.monotone_image(n)
                continue
            sparse = self.plan.sparse and all(
                get_op(u.op).exact_when_sign_known for u in self.users[n] if get_op(u.op).nonlinear)
            rows = f"{n.name}_rows"
            reference = self.pass_reference(n)
            picked = f"{'straddling_rows' if sparse else 'all_rows'}({reference})"
            self.emit(f"{rows} = {self.pass_rows(n, picked)}")
            forward = self.forward_when_exact and chosen_mode(self.graph, n) == "forward"
            # a dead neuron's lower bound changes no ReLU-like user: one side first
            signed = sparse and not forward and self.one_side_passes and bool(self.users[n]) and all(
                get_op(u.op).zero_where is not None for u in self.users[n])
            sign_arg = ", _signs=None" if signed else ""
            # the side a stable row did not need: only later passes' references would read it
            one_side = ("dead" if any(n in self.region([m]) for m in self.needs[self.needs.index(n) + 1:])
                        else "stable") if signed else None
            if forward:
                self.emit(f"# forward mode: exact for %{n.name} and cheaper (passes/bound_needs.py)")
                self.emit(f"def {n.name}_pass(_rows):")
                self.enter()
                self.forward_rows(n)
                self.leave()
                row_bytes = "0"    # one call: its size grows with the input, not with the rows
            else:
                layout = self.pass_layout(n)
                self.relaxations(n, drop_dead=True)
                self.emit(f"def {n.name}_start(_rows{sign_arg}):")
                self.enter()

                def open_pass(names, n=n, sign_arg=sign_arg):
                    # the start reads no bounds of the pass: a function of the rows alone
                    # (``start_function``: alpha-CROWN's steps compute it once)
                    listed = ", ".join(names)
                    self.emit(f"return {listed}")
                    self.leave()
                    self.start_function(n)
                    self.emit(f"def {n.name}_pass(_rows{sign_arg}):")
                    self.enter()
                    self.emit(f"{listed} = {n.name}_start(_rows{', _signs' if sign_arg else ''})")

                folded = self.backward(n, spec=False, lower=True, upper=True, rows="_rows", layout=layout,
                                       after_start=open_pass, signed=signed)
                consume = ", consume=True" if self.owned else ""
                if folded:
                    self.emit(f"return finish_sides(inp, lA_{x}, lbias, uA_{x}, ubias, _fold{consume})")
                else:
                    self.emit(f"return concretize_pair(inp, lA_{x}, lbias, uA_{x}, ubias{consume})")
                self.leave()
                # lA, uA, their successors and a relaxation step's gathered lines and
                # selections: about 10 coefficient-sized tensors at the widest node (measured
                # on cnn_4c_bn)
                row_bytes = f"B * 10 * {layout.row_elements} * inp.lower.element_size()"
                limit = f"max_memory={budget}" if self.plan.max_memory else "the default budget (128 MiB on the CPU)"
                self.emit(f"# rows in chunks of at most {limit} bytes of coefficients, "
                          f"~10 tensors of the widest row ({layout.row_elements} elements) each")
            tightened = (f"tighten_chunks({reference}, {rows}, {self.pass_callable(n)}, {row_bytes}, {budget}"
                         f"{', intersect=True' if self.plan.intersect or self.feeds_domain(n) else ''}"
                         f"{', straddling=True' if sparse else ''}{f', one_side={one_side!r}' if signed else ''})")
            self.emit(f"{n.name}_bounds = {self.kept_bounds(n, tightened)}")
            if self.restart_reference:
                self.emit(f"{n.name} = {n.name}_bounds")
            self.bounds[n] = f"{n.name}_bounds"

    def monotone_image(self, n: Node) -> None:
        """``n``'s bounds as its monotone op's image of its input's bounds, with no pass
        (never looser than one: passes/bound_needs.py image_of_bounded_input)."""
        args = [self.bounds[i] if i.perturbed else i.name for i in n.inputs]
        image = self.call(self.rule(n.op, "ibp", n), args, self.attrs(n))
        self.emit(f"# %{n.name}: its monotone image of the input's bounds (no pass can be tighter)")
        self.emit(f"{n.name}_bounds = {self.kept_bounds(n, f'intersect({self.pass_reference(n)}, {image})')}")
        if self.restart_reference:
            self.emit(f"{n.name} = {n.name}_bounds")
        self.bounds[n] = f"{n.name}_bounds"

    def feeds_domain(self, n: Node) -> bool:
        """Some user of ``n`` relaxes only inside a domain (``OpDef.needs_domain``: 1 / x away
        from 0, log on x > 0): ``n`` keeps the intersection of its linear and IBP bounds,
        which stays inside where IBP proves it (1 / (y * y + 1): a tangent of y * y dips
        below -1 where IBP gives y * y >= 0)."""
        def needs(u: Node) -> bool:
            rule = get_op(u.op).needs_domain
            return rule(**u.attrs) if callable(rule) else rule
        return any(needs(u) for u in self.users[n])

    def pass_callable(self, n: Node) -> str:
        """The pass function for ``n`` that ``tighten_chunks`` calls (a hook: alpha-CROWN's
        steps recompute a pass's graph in the backward step instead of keeping it)."""
        return f"{n.name}_pass"

    def start_function(self, n: Node) -> None:
        """A hook after ``<n>_start(_rows)``, the first coefficients of the pass for ``n``, is
        defined (alpha-CROWN computes them once per call)."""

    def pass_reference(self, n: Node) -> str:
        """The bounds a pass for ``n`` tightens, which also pick its rows: its IBP reference
        (a hook: alpha-CROWN narrows it with bounds it recorded before its steps)."""
        return n.name

    def pass_rows(self, n: Node, expr: str) -> str:
        """The expression for the rows a pass for ``n`` bounds (a hook: alpha-CROWN may skip
        the pass once the bounds are recorded)."""
        return expr

    def kept_bounds(self, n: Node, expr: str) -> str:
        """The expression that becomes ``n``'s bounds (a hook: alpha-CROWN records them)."""
        return expr

    def forward_rows(self, target: Node) -> None:
        """Body of a pass that bounds the rows ``_rows`` of ``target`` by forward mode (where
        it is exact: bound_needs.forward_exact). Nodes with intermediate bounds carry them, so
        each relaxation uses the lines a backward pass would."""
        for m in self.region([target]):
            self.forward_line(m)
            if m in self.bounds and m is not target:
                self.emit(f"{m.name}_lin = {m.name}_lin._replace(bounds={self.bounds[m]})")
        self.emit(f"return forward_rows(inp, {target.name}_lin, _rows)")

    def function_of_input(self, name: str, target: Node) -> str:
        """Emit ``def name(_t)``: ``target``'s value (forward rules) with ``_t`` in place of the
        set's leaf; returns ``name``."""
        self.emit(f"def {name}(_t):")
        self.enter()
        for m in self.region([target]):
            if m is not self.x:
                # (local names: the outer ones hold the nodes' bounds)
                args = ["_t" if i is self.x else f"_{i.name}" if i.perturbed else i.name for i in m.inputs]
                self.emit(f"_{m.name} = {self.call(self.rule(m.op, 'forward', m), args, self.attrs(m))}")
        self.emit(f"return {'_t' if target is self.x else '_' + target.name}")
        self.leave()
        return name

    def product_anchors(self) -> None:
        """For each product of two affine maps of the input (``OpDef.anchored_product``), the
        set's anchor (``InputSet.product_anchor``), once per call: its backward rules then take
        planes through the set's centre where those are tighter than McCormick's."""
        for n in self.graph.nodes:
            factors = [i for i in n.inputs if i.perturbed]
            if not (n.perturbed and get_op(n.op).anchored_product and len(factors) == 2
                    and all(affine_of_input(self.graph, i) for i in factors)):
                continue
            chains = [m for i in factors for m in self.region([i])]
            if any(i.batched and not i.perturbed for m in chains for i in m.inputs):
                continue      # (the maps run on a batch of moved points: no per-sample constants)
            maps = [self.function_of_input(f"{n.name}_{side}", i) for side, i in zip(("left", "right"), factors)]
            self.node = n
            self.emit(f"{n.name}_anchor = inp.product_anchor({maps[0]}, {maps[1]})")
            self.anchors[n] = f"{n.name}_anchor"

    def first_affine(self, n: Node) -> None:
        """Intersect ``n``'s IBP bounds with the set's exact bound of its first affine map
        (``InputSet.first_affine``: the rows' dual norms over an Lp ball, the k largest gains
        over an L0 set; None over a box, where IBP is exact already)."""
        below = n.inputs[0]       # (its one perturbed input: single_affine_of_input)
        select = "None" if below is self.x else self.function_of_input(f"{n.name}_select", below)
        args = [f'"{n.op}"', select] + [i.name for i in n.inputs[1:]]
        self.emit(f"_first = {self.call('inp.first_affine', args, self.attrs(n))}")
        self.emit("if _first is not None:  # the set bounds this affine map exactly")
        self.enter()
        self.emit(f"{n.name} = intersect({n.name}, _first)")
        self.leave()

    # -- the whole function ----------------------------------------------------------------
    def generate(self, fn_name: str) -> Program:
        plan, graph, out = self.plan, self.graph, self.graph.output
        leaves = [n.name for n in graph.nodes if n.op in ("param", "constant")]
        self.emit("B = inp.batch")
        if leaves:
            self.emit(f"{', '.join(leaves)}{',' if len(leaves) == 1 else ''} = params")
        self.constants()
        if self.x is not graph.perturbed_input:
            args = ["inp"] + [i.name for i in self.x.inputs[1:]]
            self.emit(f"# the set over %{graph.perturbed_input.name} as a set over %{self.x.name}")
            self.emit(f"inp = {self.call(self.rule(self.x.op, 'of_set', self.x), args, self.attrs(self.x))}")
        mode, final = plan.intermediate, plan.final
        if "backward" in (mode, final):
            self.product_anchors()
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
            self.emit("lower = inp.concretize(_out.lw, _out.lb, upper=False)" if lo else "lower = None")
            self.emit("upper = inp.concretize(_out.uw, _out.ub, upper=True)" if up else "upper = None")
            ret_A = "(_out.lw, _out.lb, _out.uw, _out.ub)"
        else:
            self.relaxations(out)
            folded = self.backward(out, spec=plan.spec, lower=lo, upper=up)
            x = self.x.name
            if folded:
                # (the coefficients, returned with return_A, are not consumed then)
                consume = ", consume=True" if self.owned and not plan.return_A else ""
                self.emit(f"lower, upper = finish_sides(inp, lA_{x}, lbias, uA_{x}, ubias, _fold{consume})")
                ret_A = f"unfold_coefficients(lA_{x}, lbias, uA_{x}, ubias, _fold)"
            else:
                self.emit(f"lower = inp.concretize(lA_{x}, lbias, upper=False)" if lo else "lower = None")
                self.emit(f"upper = inp.concretize(uA_{x}, ubias, upper=True)" if up else "upper = None")
                ret_A = f"(lA_{x}, lbias, uA_{x}, ubias)"
        self.emit(f"return lower, upper, {ret_A if plan.return_A else 'None'}")
        doc = f"{plan.method} bounds{' of C . f(x)' if plan.spec else ''} for the graph below (generated)."
        return Program(fn_name, [p.strip() for p in self.signature.split(",")], doc, self.blocks[0])

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


def generate(graph: Graph, plan: Plan, emitter: "_Emitter | None" = None) -> tuple[Program, dict]:
    """The program of the function ``bound`` for ``plan`` and the namespace it runs in
    (``emitter``: a subclass instance for methods that extend the generated code)."""
    if plan.intermediate not in MODES or plan.final not in MODES:
        raise ValueError(f"plan {plan} has no modes: lirpac.methods.get(name).complete(plan) gives them")
    emitter = emitter or _Emitter(graph, plan)
    program = emitter.generate("bound")
    namespace = {"Interval": Interval, "Linear": Linear, "acc": runtime.acc,
                 "identity_spec": runtime.identity_spec, "spec_coeffs": runtime.spec_coeffs,
                 "ibp_spec": runtime.ibp_spec, "ibp_spec_linear": runtime.ibp_spec_linear,
                 "input_linear": runtime.input_linear, "forward_spec": runtime.forward_spec,
                 "straddling_rows": runtime.straddling_rows, "identity_rows": runtime.identity_rows,
                 "tighten": runtime.tighten, "intersect": runtime.intersect, "all_rows": runtime.all_rows,
                 "tighten_chunks": runtime.tighten_chunks, "fold_worth": runtime.fold_worth,
                 "sign_rows": runtime.sign_rows, "default_max_memory": runtime.default_max_memory,
                 "pick_rows": runtime.pick_rows,
                 "fold_pair": runtime.fold_pair, "fold_bias": runtime.fold_bias, "finish_sides": runtime.finish_sides,
                 "once_per_rows": runtime.once_per_rows,
                 "unfold_coefficients": runtime.unfold_coefficients,
                 "forward_rows": runtime.forward_rows,
                 "identity_patches": patches.identity_patches, "dense_pair": runtime.dense_pair,
                 "concretize_pair": patches.concretize_pair, "prepare_lines": prepare_lines,
                 "relaxed": relaxed_backward_lines, "add_bias": add_bias,
                 "live_neurons": runtime.live_neurons, "prune_lines": runtime.prune_lines,
                 "prune_rows": runtime.prune_rows, "prune_columns": runtime.prune_columns,
                 "prune_bounds": runtime.prune_bounds}
    for op, mode in emitter.rules:
        opdef = REGISTRY[op]
        namespace[f"{_MODE_PREFIX[mode]}_{op}"] = getattr(opdef, mode)
    namespace.update(emitter.consts)
    return program, namespace


_counter = [0]


def build(graph: Graph, plan: Plan, emitter: "_Emitter | None" = None):
    """The generated function ``bound`` of ``plan`` and its source."""
    program, namespace = generate(graph, plan, emitter)
    (fn,), source = compile_programs([program], namespace, plan.method)
    return fn, source


def compile_programs(programs: list[Program], namespace: dict, label: str) -> tuple[list, str]:
    """Print ``programs`` (each with coefficients freed after their last use) and compile them
    into functions of ``namespace``; the source is registered with linecache, so tracebacks
    and debuggers show the generated lines."""
    freed = [Program(p.name, p.params, p.doc, free_dead(p.body)) for p in programs]
    source = "\n".join(print_program(p) for p in freed)
    exec(compile(source, register_source(source, label), "exec"), namespace)
    for p in freed:
        namespace[p.name].program = p     # (its statements: a backend reads the rules they call)
    return [namespace[p.name] for p in programs], source


def register_source(source: str, label: str) -> str:
    """A fresh file name for generated ``source``, known to linecache."""
    _counter[0] += 1
    filename = f"<lirpac-generated-{_counter[0]}-{label}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    return filename
