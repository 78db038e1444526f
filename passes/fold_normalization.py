"""fold_normalization: fold elementwise affine maps by constants into the next linear/conv.

Input normalisation ``(x - mean) / std`` (and any chain of add/sub/mul/div by constants
feeding a linear or conv layer) is a map x * s + t with s and t per channel. It folds into the
layer: W' = W diag(s), and the shift becomes W t in the bias (a linear, or a conv with no
padding) or, for a zero-padded conv, a bias map: the conv of the constant shift image, because
padding inserts zeros after the shift, not before it, so the border outputs see only part of
W t (folding the shift into a plain bias there would be wrong). Exact for every method: the
layer computes the same affine function of x, and an elementwise map followed by a layer has the
same IBP centre/radius result as the folded layer (|W diag(s)| = |W| diag(|s|)).

Constants count when they broadcast along the channel axis only (conv) or anywhere (a linear of
a vector). s and t are computed in the generated code from the live constants.
"""
from __future__ import annotations

import torch

from lirpac.ir.graph import Graph, Node
from lirpac.passes.rewrite import (can_fold_input_affine, const_expr, constant_affine_step,
                                   fold_input_affine, foldable_layer, literal_constant, remove_dead,
                                   single_user)


def _fold_chain(graph: Graph, layer: Node, users) -> bool:
    chain: list[tuple[Node, Node]] = []      # (step node, constant), from the layer upwards
    node = layer.inputs[0]
    while True:
        step = constant_affine_step(node, per_channel=layer.op == "conv")
        if step is None or single_user(graph, node, users) is not (chain[-1][0] if chain else layer):
            break
        chain.append((node, step[1]))
        node = step[0]
    if not chain or not can_fold_input_affine(layer, node):
        return False
    size = node.shape[0]
    scale = shift = None
    for step, c in reversed(chain):
        vec = const_expr(graph, layer, "as_vector", [c], f"{step.name}_vector", size=size)
        if step.op == "add":
            shift = vec if shift is None else const_expr(graph, layer, "add", [shift, vec], f"{step.name}_shift")
        elif step.op == "sub":
            shift = const_expr(graph, layer, "neg", [vec], f"{step.name}_shift") if shift is None else \
                const_expr(graph, layer, "sub", [shift, vec], f"{step.name}_shift")
        elif step.op == "mul":
            scale = vec if scale is None else const_expr(graph, layer, "mul", [scale, vec], f"{step.name}_scale")
            if shift is not None:
                shift = const_expr(graph, layer, "mul", [shift, vec], f"{step.name}_shift")
        else:
            if scale is None:
                one = literal_constant(graph, layer, torch.ones((), dtype=vec.dtype), f"{step.name}_one")
                scale = const_expr(graph, layer, "div", [one, vec], f"{step.name}_scale")
            else:
                scale = const_expr(graph, layer, "div", [scale, vec], f"{step.name}_scale")
            if shift is not None:
                shift = const_expr(graph, layer, "div", [shift, vec], f"{step.name}_shift")
    fold_input_affine(graph, layer, node, scale, shift)
    return True


def fold_normalization(graph: Graph) -> Graph:
    for layer in [n for n in graph.nodes if n.op in ("linear", "conv")]:
        if layer.perturbed and foldable_layer(layer):
            _fold_chain(graph, layer, graph.users())
    return remove_dead(graph)
