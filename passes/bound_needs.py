"""Analysis: which nodes need intermediate bounds.

A nonlinear op relaxes around the bounds of its perturbed inputs, so exactly those inputs need
concrete bounds before the final bound can be formed. Every method computes bounds for this
set only (CROWN runs one backward pass per node in it).
"""
from __future__ import annotations

from lirpac.ir.graph import Graph, Node
from lirpac.ir.opdef import get_op


def nodes_needing_bounds(graph: Graph) -> list[Node]:
    needed: list[Node] = []
    for node in graph.nodes:
        if node.perturbed and get_op(node.op).nonlinear:
            for i in node.inputs:
                if i.perturbed and i not in needed:
                    needed.append(i)
    order = {n: k for k, n in enumerate(graph.nodes)}
    return sorted(needed, key=order.__getitem__)


def annotate(graph: Graph) -> Graph:
    """Mark the nodes in the dump (``[needs_bounds]``)."""
    for node in nodes_needing_bounds(graph):
        node.notes["needs_bounds"] = True
    return graph
