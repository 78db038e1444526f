"""Helpers shared by the rewrite passes: users, insertion in topological order, constant
nodes computed from parameters, and dead-node removal.

Passes mutate the graph they are given and return it; ``run_passes`` hands them a copy, so the
frontend's graph (which a user may hold) is never changed. Tensors are shared with the model
and never written to: a folded weight is a new non-perturbed node evaluated by the generated
code from the live parameters (see ir/ops/folding.py).
"""
from __future__ import annotations

import torch

from lirpac.ir.graph import Graph, Node
from lirpac.ir.opdef import get_op

AFFINE_LAYERS = ("linear", "conv")


def single_user(graph: Graph, node: Node, users: dict | None = None) -> Node | None:
    """The one node that uses ``node``, or None (several users, or it is the output)."""
    found = (users or graph.users())[node]
    if len(found) != 1 or graph.output is node:
        return None
    return found[0]


def literal(node: Node) -> torch.Tensor | None:
    """The value of a constant that belongs to no module (a literal the model wrote), else None.
    Buffers (constants with a ``target``) are live module state and may change after compile."""
    if node.op == "constant" and "target" not in node.attrs and node.value is not None:
        return node.value
    return None


def is_literal_all(node: Node, number: float) -> bool:
    value = literal(node)
    return value is not None and value.numel() > 0 and bool((value == number).all())


def constant_value(node: Node) -> torch.Tensor:
    """Current value of a non-perturbed node (for shapes; never baked into the graph)."""
    if node.op in ("param", "constant"):
        return node.value
    with torch.no_grad():
        return get_op(node.op).forward(*[constant_value(i) for i in node.inputs], **node.attrs)


def insert_before(graph: Graph, anchor: Node, node: Node) -> Node:
    """Move a node just made by ``graph.add`` (at the end) to just before ``anchor``."""
    graph.nodes.remove(node)
    graph.nodes.insert(graph.nodes.index(anchor), node)
    return node


def const_expr(graph: Graph, anchor: Node, op: str, inputs: list[Node], name: str, **attrs) -> Node:
    """A non-perturbed node ``op(*inputs)`` placed before ``anchor``; its shape and dtype are
    read off its current value, but the generated code recomputes it on every call."""
    with torch.no_grad():
        value = get_op(op).forward(*[constant_value(i) for i in inputs], **attrs)
    node = graph.add(op, inputs, name=name, attrs=attrs, shape=tuple(value.shape), dtype=value.dtype,
                     source=anchor.source)
    return insert_before(graph, anchor, node)


def literal_constant(graph: Graph, anchor: Node, value: torch.Tensor, name: str) -> Node:
    node = graph.add("constant", [], name=name, shape=tuple(value.shape), dtype=value.dtype, value=value)
    return insert_before(graph, anchor, node)


def remove_dead(graph: Graph) -> Graph:
    """Keep the inputs and the nodes the output depends on."""
    live = graph.ancestors(graph.output) | {graph.output} | set(graph.inputs)
    graph.nodes = [n for n in graph.nodes if n in live]
    graph._names = {n.name for n in graph.nodes}
    return graph


# -- folding a per-channel affine map y = x * scale + shift into an affine layer --------------

def foldable_layer(layer: Node) -> bool:
    """A linear or conv node with constant weights (so the fold is parameter arithmetic)."""
    return layer.op in AFFINE_LAYERS and not any(i.perturbed for i in layer.inputs[1:])


def move_next_to_user(graph: Graph, layer: Node, user: Node) -> None:
    """Move ``layer`` (whose only user is ``user``) to just before it, so that nodes the user
    reads (a constant defined after the layer) can feed the layer's new weights."""
    graph.nodes.remove(layer)
    graph.nodes.insert(graph.nodes.index(user), layer)


def fold_output_affine(graph: Graph, layer: Node, scale: Node | None, shift: Node | None) -> None:
    """layer(x) * scale + shift, with scale and shift vectors over the layer's output channels
    (dim 0 of the weight), becomes one layer: W' = diag(scale) W, b' = scale * b + shift.
    scale and shift must be defined before the layer (see ``move_next_to_user``)."""
    weight = layer.inputs[1]
    bias = layer.inputs[2] if len(layer.inputs) > 2 else None
    name = layer.name
    if scale is not None:
        weight = const_expr(graph, layer, "scale_dim", [weight, scale], f"{name}_weight", dim=0)
        if bias is not None:
            bias = const_expr(graph, layer, "mul", [bias, scale], f"{name}_bias")
    if shift is not None:
        bias = shift if bias is None else const_expr(graph, layer, "add", [bias, shift], f"{name}_bias")
    layer.inputs = [layer.inputs[0], weight] + ([bias] if bias is not None else [])


def constant_affine_step(node: Node, per_channel: bool) -> tuple[Node, Node] | None:
    """(perturbed operand, constant operand) when ``node`` is x + c, c + x, x - c, x * c, c * x
    or x / c with c a constant that keeps x's shape and, with ``per_channel``, varies along the
    channel axis (the first per-sample axis) only."""
    if node.op not in ("add", "sub", "mul", "div") or not node.perturbed:
        return None
    a, b = node.inputs
    x, c = (a, b) if a.perturbed else (b, a)
    if c.perturbed or c.batched or (node.op in ("sub", "div") and c is a):
        return None
    if node.shape != x.shape or not x.batched:
        return None
    shape = tuple(c.shape)
    if len(shape) == len(x.shape) + 1:
        if shape[0] != 1:
            return None
        shape = shape[1:]
    if len(shape) > len(x.shape):
        return None
    shape = (1,) * (len(x.shape) - len(shape)) + shape
    if per_channel and any(s != 1 for s in shape[1:]):
        return None
    return x, c


def can_fold_input_affine(layer: Node, x: Node) -> bool:
    """x * scale + shift with per-channel vectors folds into ``layer``'s weight when the layer
    reads whole channels: a linear of a vector, or a conv without groups."""
    if layer.op == "linear":
        return len(x.shape) == 1
    return layer.attrs["groups"] == 1


def fold_input_affine(graph: Graph, layer: Node, x: Node, scale: Node | None, shift: Node | None) -> Node:
    """layer(x * scale + shift) as one layer of x; scale and shift are vectors over x's
    channels (dim 1 of the weight). W' = W diag(scale); the shift moves into the bias: W t for
    a linear or an unpadded conv, where every tap sees a real pixel. A zero-padded conv sees
    the shift only inside the image, so there it becomes a bias map, the conv of the constant
    shift image (exact at the borders too). Returns the node that replaces ``layer``."""
    weight, rest = layer.inputs[1], layer.inputs[2:]
    bias = rest[0] if rest else None
    name = layer.name
    new_weight = weight if scale is None else \
        const_expr(graph, layer, "scale_dim", [weight, scale], f"{name}_weight", dim=1)
    padded = layer.op == "conv" and any(p != 0 for p in layer.attrs["padding"])
    if shift is None:
        layer.inputs = [x, new_weight] + rest
        return layer
    if not padded:
        response = (const_expr(graph, layer, "linear", [shift, weight], f"{name}_shift")
                    if layer.op == "linear" else
                    const_expr(graph, layer, "weight_times_shift", [weight, shift], f"{name}_shift"))
        bias = response if bias is None else const_expr(graph, layer, "add", [bias, response], f"{name}_bias")
        layer.inputs = [x, new_weight, bias]
        return layer
    image = const_expr(graph, layer, "channel_image", [shift], f"{name}_shift_image", shape=x.shape)
    bias_map = const_expr(graph, layer, "conv", [image, weight] + rest, f"{name}_bias_map", **layer.attrs)
    layer.inputs = [x, new_weight]
    total = graph.add("add", [layer, bias_map], name=f"{name}_plus_bias", shape=layer.shape,
                      dtype=layer.dtype, batched=layer.batched, perturbed=layer.perturbed,
                      source=layer.source)
    graph.nodes.remove(total)
    graph.nodes.insert(graph.nodes.index(layer) + 1, total)
    for user in graph.nodes:
        if user is not total:
            user.inputs = [total if i is layer else i for i in user.inputs]
    if graph.output is layer:
        graph.output = total
    return total
