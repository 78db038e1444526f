"""fold_constants: evaluate constant subgraphs once, at compile time.

A non-perturbed node whose leaves are all literal constants (tensors the model wrote itself,
such as ``torch.ones(3)`` or ONNX initializers) becomes one ``constant`` node holding its value.
The generated code then reads the value instead of recomputing the subgraph on every call;
the value is what the subgraph computes, so every bound is unchanged.

What is not folded, by design: anything that depends on a ``param`` (bounds must stay
differentiable with respect to the parameters, and a weight update after compile must show in
the bounds) or on a buffer (a constant with a ``target``, e.g. BatchNorm running statistics:
live module state that training updates in place). Such subgraphs stay nodes that the
generated code evaluates from the live tensors on every call.
"""
from __future__ import annotations

import torch

from lirpac.ir.graph import Graph, Node
from lirpac.passes.rewrite import constant_value, literal, remove_dead


def fold_constants(graph: Graph) -> Graph:
    frozen: set[Node] = set()   # nodes whose value cannot change after compile
    for node in graph.nodes:
        if literal(node) is not None or (
                node.op not in ("param", "constant", "input") and not node.perturbed and
                not node.batched and all(i in frozen for i in node.inputs)):
            frozen.add(node)
    users = graph.users()
    for node in list(graph.nodes):
        # fold where the frozen region ends: some user outside it reads the value
        if node in frozen and node.op != "constant" and any(u not in frozen for u in users[node]):
            _replace_by_constant(graph, node)
    return remove_dead(graph)


def _replace_by_constant(graph: Graph, node: Node) -> None:
    with torch.no_grad():
        value = constant_value(node).detach().clone()
    index = graph.nodes.index(node)
    graph.remove(node)
    const = graph.add("constant", [], name=node.name, shape=tuple(value.shape), dtype=value.dtype,
                      value=value, source=node.source)
    graph.nodes.remove(const)
    graph.nodes.insert(index, const)
    graph.replace_all_uses(node, const)
