"""dead_code: remove nodes the output does not depend on.

A dead node changes no value of the output, but a dead nonlinear node would still make its
input need intermediate bounds (one CROWN backward pass per such node), and dead constants
would still be computed on every call. Removing them is exact by definition. The inputs stay,
so the compiled function keeps its signature.
"""
from __future__ import annotations

from lirpac.ir.graph import Graph
from lirpac.passes.rewrite import remove_dead


def dead_code(graph: Graph) -> Graph:
    return remove_dead(graph)
