"""canonicalize: remove ops that do nothing and collapse chains of reshapes.

Rewrites, applied to a fixpoint:
- a reshape to the shape it already has, a pad by zero on every side, a full slice, an identity
  permute: replaced by their input;
- reshape(reshape(x)): one reshape of x (a reshape only reads the row-major order);
- x + 0, 0 + x, x - 0, x * 1, 1 * x, x / 1 with a literal constant that does not broadcast x
  to a larger shape: replaced by x;
- neg(neg(x)): x.
Each replaced node computes exactly its input, so every bound method sees the same function and
the same linear maps (IBP, CROWN and forward mode are unchanged). Dropout, clone and contiguous
never reach the IR (the frontends lower them to their input). Only literal constants count as
0 or 1: a buffer may change after compile. Nodes left unused are removed.
"""
from __future__ import annotations

from lirpac.ir.graph import Graph, Node
from lirpac.passes.rewrite import is_literal_all, remove_dead

_NEUTRAL = {"add": (0.0, (0, 1)), "sub": (0.0, (1,)), "mul": (1.0, (0, 1)), "div": (1.0, (1,))}


def _same_value(node: Node, x: Node) -> bool:
    return node.shape == x.shape and node.batched == x.batched and node.dtype == x.dtype


def _replacement(node: Node) -> Node | None:
    """The node ``node`` can be replaced by, or None."""
    op, ins = node.op, node.inputs
    if op in ("reshape", "slice"):
        # same shape: the identity reshape, a full slice
        return ins[0] if _same_value(node, ins[0]) else None
    if op == "pad":
        return ins[0] if all(p == 0 for p in node.attrs["pad"]) else None
    if op == "permute":
        return ins[0] if tuple(node.attrs["dims"]) == tuple(range(len(node.attrs["dims"]))) else None
    if op == "neg" and ins[0].op == "neg":
        return ins[0].inputs[0]
    if op in _NEUTRAL:
        number, slots = _NEUTRAL[op]
        for k in slots:
            x = ins[1 - k]
            if is_literal_all(ins[k], number) and _same_value(node, x):
                return x
    return None


def _collapse_reshape(node: Node) -> bool:
    if node.op == "reshape" and node.inputs[0].op == "reshape":
        node.inputs = [node.inputs[0].inputs[0]]
        return True
    return False


def canonicalize(graph: Graph) -> Graph:
    changed = True
    while changed:
        changed = False
        for node in list(graph.nodes):
            if node.op in ("input", "param", "constant"):
                continue
            changed |= _collapse_reshape(node)
            new = _replacement(node)
            if new is not None:
                graph.replace_all_uses(node, new)
                graph.remove(node)
                changed = True
    return remove_dead(graph)
