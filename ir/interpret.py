"""Concrete evaluation of an IR graph (each node's forward rule): the reference that checks a
frontend against the original model and a pass against the graph it rewrote."""
from __future__ import annotations

import torch

from lirpac.ir.graph import Graph, Node
from lirpac.ir.opdef import get_op


def evaluate(graph: Graph, x: torch.Tensor, all_nodes: bool = False):
    """The graph's output on the input batch ``x`` (or every node's value)."""
    values: dict[Node, torch.Tensor] = {}
    for n in graph.nodes:
        if n.op == "input":
            values[n] = x
        elif n.op in ("param", "constant"):
            # (token ids: tables keep their own float dtype)
            values[n] = n.value.to(x.device) if not (n.value.is_floating_point() and x.is_floating_point()) \
                else n.value.to(device=x.device, dtype=x.dtype)
        else:
            values[n] = get_op(n.op).forward(*[values[i] for i in n.inputs], **n.attrs)
    return values if all_nodes else values[graph.output]
