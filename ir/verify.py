"""IR verifier: structural invariants every pass must keep.

Checks topological order, unique names, registered ops, the perturbed/batched flags (derived
from the inputs), and, when an example input is given, that each node's forward gives the
recorded shape and dtype.
"""
from __future__ import annotations

import torch

from lirpac.errors import LirpacError
from lirpac.ir.graph import Graph
from lirpac.ir.opdef import REGISTRY, get_op


class IRVerificationError(LirpacError):
    """The IR broke an invariant (a bug in a frontend or a pass)."""


def verify_graph(graph: Graph, example: torch.Tensor | None = None) -> None:
    seen, names = set(), set()
    get_op("input")
    for n in graph.nodes:
        if n.name in names:
            raise IRVerificationError(f"duplicate node name %{n.name}")
        names.add(n.name)
        if n.op not in REGISTRY:
            raise IRVerificationError(f"%{n.name}: unregistered op {n.op!r}")
        for i in n.inputs:
            if i not in seen:
                raise IRVerificationError(f"%{n.name} uses %{i.name} before it is defined")
        if n.op not in ("input", "param", "constant"):
            if n.perturbed != any(i.perturbed for i in n.inputs):
                raise IRVerificationError(f"%{n.name}: perturbed flag does not follow its inputs")
            if n.batched != any(i.batched for i in n.inputs):
                raise IRVerificationError(f"%{n.name}: batched flag does not follow its inputs")
        elif n.value is None and n.op != "input":
            raise IRVerificationError(f"%{n.name}: {n.op} without a value")
        seen.add(n)
    if graph.output is None or graph.output not in seen:
        raise IRVerificationError("the graph has no output node")
    if example is not None:
        from lirpac.ir.interpret import evaluate
        values = evaluate(graph, example, all_nodes=True)
        for n in graph.nodes:
            v = values[n]
            shape = tuple(v.shape[1:]) if n.batched else tuple(v.shape)
            if shape != n.shape:
                raise IRVerificationError(f"%{n.name}: recorded shape {n.shape}, forward gives {shape}")
