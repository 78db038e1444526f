"""Graph passes: each one file, registered here by name, run in order by ``run_passes``.

A pass is ``Graph -> Graph``: it may rewrite the graph it is given and returns the result.
``run_passes`` gives the first pass a copy of the frontend's graph, so the graph a user holds
is never changed; tensors are shared with the model and never written. An analysis pass only
annotates nodes (``node.notes``) and returns the same graph.

With ``LIRPAC_DUMP=passes`` (or ``all``) the IR is printed after each pass, with the pass's
time and what changed (nodes removed, added, rewritten).

Spec folding (C into the last linear layer) needs C, which a pass cannot see: the torch
backend folds it at codegen (``ibp_spec_linear`` for IBP; backward methods start from C, so
their first step multiplies C into the last layer anyway). The rewrites help it fire: after
fold_batchnorm and fold_trailing_affine, a trailing BatchNorm or ``+ bias`` / ``/ T`` no longer
hides the last linear layer, so IBP with a spec gets C folded into it (tighter; the only
bound a default pass changes).
"""
from __future__ import annotations

import time
from typing import Callable, NamedTuple

from lirpac.ir.graph import Graph, Node
from lirpac.passes import bound_needs
from lirpac.passes.canonicalize import canonicalize
from lirpac.passes.dead_code import dead_code
from lirpac.passes.fold_batchnorm import fold_batchnorm
from lirpac.passes.fold_constants import fold_constants
from lirpac.passes.fold_normalization import fold_normalization
from lirpac.passes.fold_trailing_affine import fold_trailing_affine
from lirpac.passes.merge_linear import merge_linear


PASSES: dict[str, Callable[[Graph], Graph]] = {
    "canonicalize": canonicalize,
    "fold_constants": fold_constants,
    "fold_batchnorm": fold_batchnorm,
    "fold_normalization": fold_normalization,
    "fold_trailing_affine": fold_trailing_affine,
    "merge_linear": merge_linear,
    "dead_code": dead_code,
    "annotate_bounds": bound_needs.annotate,     # an analysis: marks nodes, changes nothing
}
# Every rewrite that leaves the bounds unchanged (bar IBP with a spec, tighter once the last
# linear layer is exposed), clean-ups first so the folds see canonical chains. merge_linear is
# left out because it changes IBP and forward-mode bounds (tighter; see its docstring).
DEFAULT_PASSES = ["canonicalize", "fold_constants", "fold_batchnorm", "fold_normalization",
                  "fold_trailing_affine", "canonicalize", "fold_constants", "dead_code",
                  "annotate_bounds"]


class PassRecord(NamedTuple):
    name: str
    seconds: float
    nodes_before: int
    nodes_after: int
    summary: str


def _signature(node: Node) -> tuple:
    attrs = tuple((k, id(v) if hasattr(v, "shape") else repr(v)) for k, v in node.attrs.items())
    return node.op, tuple(i.name for i in node.inputs), attrs, id(node.value), repr(node.notes)


def describe_change(before: dict[str, tuple], graph: Graph) -> str:
    """'removed 2 (%a, %b), added 1 (%c), rewritten 1 (%d)' from name -> signature maps."""
    after = {n.name: _signature(n) for n in graph.nodes}
    kept = [k for k in after if k in before]
    groups = [("removed", [k for k in before if k not in after]),
              ("added", [k for k in after if k not in before]),
              ("rewritten", [k for k in kept if after[k][:-1] != before[k][:-1]]),
              ("annotated", [k for k in kept if after[k][:-1] == before[k][:-1] and after[k] != before[k]])]
    parts = []
    for label, names in groups:
        if names:
            shown = ", ".join("%" + n for n in names[:6]) + (", ..." if len(names) > 6 else "")
            parts.append(f"{label} {len(names)} ({shown})")
    return "; ".join(parts) or "no change"


def run_passes(graph: Graph, names: list[str] | None = None, dump=None) -> tuple[Graph, list[PassRecord]]:
    """Run ``names`` (default: DEFAULT_PASSES) on a copy of ``graph``; returns the final graph
    and one PassRecord per pass. ``dump(title, text)``, when given, sees the IR after each."""
    from lirpac.errors import InputError
    names = DEFAULT_PASSES if names is None else list(names)
    unknown = [n for n in names if n not in PASSES]
    if unknown:
        raise InputError(f"unknown pass {unknown[0]!r}; available passes: {', '.join(PASSES)} "
                         f"(default: {', '.join(DEFAULT_PASSES)})")
    records = []
    graph = graph.copy()
    for name in names:
        before = {n.name: _signature(n) for n in graph.nodes}
        start = time.perf_counter()
        graph = PASSES[name](graph)
        elapsed = time.perf_counter() - start
        change = describe_change(before, graph)
        summary = f"nodes {len(before)} -> {len(graph.nodes)}; {change}"
        records.append(PassRecord(name, elapsed, len(before), len(graph.nodes), summary))
        if dump is not None:
            dump(f"after pass {name} ({elapsed * 1e3:.2f} ms; {summary})", str(graph))
    return graph, records
