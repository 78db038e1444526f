"""Graph passes: each one file, a function Graph -> Graph, registered here by name.

``run_passes`` runs them in order; with ``LIRPAC_DUMP=passes`` (or ``all``) it prints the IR
after each pass with the time it took and how the node count changed.
"""
from __future__ import annotations

import time
from typing import Callable

from lirpac.ir.graph import Graph
from lirpac.passes import bound_needs

PASSES: dict[str, Callable[[Graph], Graph]] = {
    "annotate_bounds": bound_needs.annotate,
}
DEFAULT_PASSES = ["annotate_bounds"]


def run_passes(graph: Graph, names: list[str] | None = None, dump=None) -> tuple[Graph, list[tuple]]:
    """Run ``names`` (default: DEFAULT_PASSES) on a copy of graph; returns (graph, timings)."""
    from lirpac.errors import InputError
    timings = []
    graph = graph.copy()
    for name in DEFAULT_PASSES if names is None else names:
        if name not in PASSES:
            raise InputError(f"unknown pass {name!r}; available: {', '.join(PASSES)}")
        before = len(graph.nodes)
        start = time.perf_counter()
        graph = PASSES[name](graph)
        elapsed = time.perf_counter() - start
        timings.append((name, elapsed, before, len(graph.nodes)))
        if dump is not None:
            dump(f"after pass {name} ({elapsed * 1e3:.2f} ms, nodes {before} -> {len(graph.nodes)})",
                 str(graph))
    return graph, timings
