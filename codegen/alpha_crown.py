"""alpha-CROWN's generated step: CROWN's code with parametrised relaxations.

One call of the generated function is one step of the optimisation (the loop is lirpac/alpha.py):
it is CROWN's straight-line code, except that a node whose op has a ``backward_alpha`` rule
(ReLU) takes its slopes from ``ctx.slot(target, node, op, lA, uA, bounds)``, one pair of
tensors per backward pass (the target) and node, so every intermediate pass and the final pass
relax each unstable neuron with its own slope per row. ``ctx`` is an argument of the function
(a lirpac.alpha.StepContext), never a property of the graph.

The rows of an intermediate pass are the neurons its reference leaves unstable: the IBP
reference intersected with the bounds the loop's first evaluation recorded (lirpac/alpha.py;
CROWN's slopes), which leaves far fewer rows than IBP alone. They do not depend on the
slopes, so every step has the same alpha shapes. Passes run as one chunk (the
slopes of all rows live anyway, and autograd keeps the coefficients for the gradient). Passes
through convolutions use Patches as CROWN's do (the same cost model): a ReLU there gets one
slope per row and position of the row's window, which is a dense per-row slope restricted to
the only neurons the row touches. A pass over few rows folds its sides as CROWN's do (one
lower-side pass over [c; -c]: its slopes are one tensor, the upper side's rows after the
lower's), except with slopes shared by a pass's rows (one per side, as unfolded).

An op's ``alpha_lines`` (the part of its rule that depends on the bounds only) is computed once
per bounds, next to the other relaxations, and ``build`` splits the function into the loop's
``prepare`` and ``step`` (codegen/hoist.py): what no slope reaches runs once per call, and so
do the first coefficients of each intermediate pass (``<node>_start``, a function of the pass's
rows, which are the same in every step: runtime.once_per_rows).
"""
from __future__ import annotations

from lirpac.codegen import hoist, torch_backend
from lirpac.codegen.torch_backend import Plan
from lirpac.ir.graph import Graph, Node
from lirpac.ir.opdef import get_op
from lirpac.passes.bound_needs import sign_splittable

ONE_CHUNK = 1 << 62   # max_memory of alpha-CROWN's plans: passes run as one chunk
# graphs bounding this many nodes or more recompute each pass's autograd graph in the backward
# step rather than keep them all (the zoo's CNNs and ResNets bound 3-7 nodes, the LSTM 48)
RECOMPUTE_FROM_PASSES = 12


class AlphaEmitter(torch_backend._Emitter):
    signature = "inp, C, params, ctx"
    restart_reference = False
    one_side_passes = False     # its slopes are shaped by the rows of two-sided passes

    def __init__(self, graph: Graph, plan: Plan):
        super().__init__(graph, plan)
        self.splittable = set(sign_splittable(graph))
        self.alpha_lines_of: dict[Node, str] = {}
        self.slot_bounds: dict[Node, str] = {}     # node -> its live neurons' bounds
        self.references: dict[Node, str] = {}      # node -> the reference its passes tighten

    def lines_kind(self, n: Node) -> tuple[dict, str, str] | None:
        # an alpha op's bounds-only part (``alpha_lines``), once for every pass and step
        opdef = get_op(n.op)
        if opdef.backward_alpha is None:
            return super().lines_kind(n)
        return None if opdef.alpha_lines is None else (self.alpha_lines_of, "alpha_lines", "{}")

    def pass_reference(self, n: Node) -> str:
        # the IBP reference, narrowed by the bounds of the loop's first evaluation
        self.emit(f"{n.name}_ref = ctx.reference({n.name!r}, {n.name})")
        self.references[n] = f"{n.name}_ref"
        return f"{n.name}_ref"

    def fixed_bounds(self, a: Node, bounds: str) -> str:
        # a step bounds only the neurons its reference leaves straddling 0 and keeps the
        # reference elsewhere (runtime.tighten), so a neuron dead in the reference is dead in
        # every step: the live neurons, and the slopes' shape, stay those of the call
        return self.references.get(a, bounds)

    def start_function(self, n: Node) -> None:
        # the steps of a call bound the same rows: their first coefficients (a slice of the
        # weights, folded) are computed once, and hoisted with the rows
        self.emit(f"{n.name}_start = once_per_rows({n.name}_start)")

    def pass_callable(self, n: Node) -> str:
        # with many passes, an intermediate pass's autograd graph is recomputed when the
        # gradient reaches it (lirpac/alpha.py StepContext.recomputed): a step then holds one
        # pass's graph at a time, for one more evaluation of each pass (the benchmark MLP's
        # 3 passes: 1.35x the time of keeping them; a 7-step LSTM's 48: over 11 GB kept)
        if len(self.needs) < RECOMPUTE_FROM_PASSES:
            return super().pass_callable(n)
        return f"ctx.recomputed({n.name}_pass)"

    def pass_rows(self, n: Node, expr: str) -> str:
        # none once recorded, when the state freezes intermediate bounds (branch and bound)
        return f"ctx.rows({n.name!r}, {expr})"

    def fold_condition(self, expr: str) -> str:
        return f"{expr} and not ctx.shared"

    def kept_bounds(self, n: Node, expr: str) -> str:
        return f"ctx.record({n.name!r}, {expr})"

    def at_coefficients(self, target: Node, n: Node, patched: bool) -> None:
        # a neuron whose sign a branch-and-bound sub-domain fixes gets a multiplier there
        if not patched and n in self.splittable:
            live = next((self.live_of[u] for u in self.users[n] if u in self.live_of), None)
            self.emit(f"lA_{n.name}, uA_{n.name} = ctx.beta({target.name!r}, {n.name!r}, "
                      f"lA_{n.name}, uA_{n.name}{'' if live is None else ', ' + live})")

    def patches_rule(self, target: Node, n: Node, args: list[str]) -> tuple[str, list[str]]:
        # backward_alpha takes Patches too: slopes per row's window
        if get_op(n.op).backward_alpha is None:
            return super().patches_rule(target, n, args)
        return self.backward_rule(target, n, args)

    def backward_rule(self, target: Node, n: Node, args: list[str]) -> tuple[str, list[str]]:
        if get_op(n.op).backward_alpha is None:
            return super().backward_rule(target, n, args)
        bounds = next(a for i, a in zip(n.inputs, args) if i.perturbed)
        slot = (f"*ctx.slot({target.name!r}, {n.name!r}, {n.op!r}, lA_{n.name}, uA_{n.name}, "
                f"{self.slot_bounds.get(n, bounds)})")
        if get_op(n.op).alpha_lines is not None:
            args = [self.alpha_lines_of[n] if a == bounds else a for a in args]
        return self.rule(n.op, "backward_alpha", n), args + [slot]

    def drop_dead(self, n: Node, bounds: str, table: dict) -> None:
        super().drop_dead(n, bounds, table)
        if n in self.live_of:
            # the slopes are those of the live neurons: no gather in every step
            self.emit(f"{n.name}_live_bounds = prune_bounds({bounds}, {self.live_of[n]})")
            self.slot_bounds[n] = f"{n.name}_live_bounds"

    def zero_neurons(self, a: Node, expr: str) -> str:
        # a neuron whose sign branch and bound constrains keeps its multiplier
        return f"ctx.keep_constrained({a.name!r}, {expr})"


def build(graph: Graph, plan: Plan):
    """The generated step ``bound(inp, C, params, ctx)`` and its source. When some of its
    statements never see a slope, ``bound.hoisted`` is (prepare, step) from codegen/hoist.py:
    ``step(inp, C, params, ctx, prepare(inp, C, params, ctx))`` computes what ``bound``
    does, and the loop runs ``prepare`` once per call."""
    program, namespace = torch_backend.generate(graph, plan, AlphaEmitter(graph, plan))
    parts = hoist.split(program)
    fns, source = torch_backend.compile_programs([program, *(parts or ())], namespace, plan.method)
    if parts is not None:
        fns[0].hoisted = tuple(fns[1:])
    return fns[0], source
