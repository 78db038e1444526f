"""fold_batchnorm: merge eval-mode BatchNorm into the linear or conv layer next to it.

Eval-mode BatchNorm is a per-channel affine map y = x * s + t with s = gamma / sqrt(var + eps)
and t = beta - mean * s. After a conv/linear layer (its only user), it becomes that layer's
weight and bias: W' = diag(s) W, b' = s * b + t. With no such layer before it, it folds into the
linear/conv layer that is its only user (W' = W diag(s), the shift into the bias; see
``fold_input_affine`` for zero-padded convs). Exact: the layer computes the same affine
function, and every bound method bounds an affine map of a box or of linear functions through
|W'| = |W| |diag(s)| etc., with the same result (IBP's centre/radius rule included, since a
per-channel scale commutes with taking absolute values).

s and t are non-perturbed nodes computed in the generated code from the live parameters and
buffers, so bounds stay differentiable in gamma, beta and the layer's weights, and weight
updates after compile are seen.
"""
from __future__ import annotations

from lirpac.ir.graph import Graph, Node
from lirpac.passes.rewrite import (can_fold_input_affine, const_expr, fold_input_affine,
                                   fold_output_affine, foldable_layer, move_next_to_user, remove_dead,
                                   single_user)


def _scale_shift(graph: Graph, bn: Node, anchor: Node) -> tuple[Node, Node]:
    _, gamma, beta, mean, var = bn.inputs
    scale = const_expr(graph, anchor, "bn_scale", [gamma, var], f"{bn.name}_scale", eps=bn.attrs["eps"])
    shift = const_expr(graph, anchor, "bn_shift", [beta, mean, scale], f"{bn.name}_shift")
    return scale, shift


def _fold_into_previous(graph: Graph, bn: Node, users) -> bool:
    layer = bn.inputs[0]
    if not (layer.perturbed and foldable_layer(layer) and single_user(graph, layer, users) is bn):
        return False
    if layer.op == "linear" and len(layer.shape) != 1:
        return False    # the BN channel axis is not the linear layer's output axis
    move_next_to_user(graph, layer, bn)
    scale, shift = _scale_shift(graph, bn, layer)
    fold_output_affine(graph, layer, scale, shift)
    graph.replace_all_uses(bn, layer)
    graph.remove(bn)
    return True


def _fold_into_next(graph: Graph, bn: Node, users) -> bool:
    x, layer = bn.inputs[0], single_user(graph, bn, users)
    if layer is None or not foldable_layer(layer) or layer.inputs[0] is not bn or \
            bn in layer.inputs[1:] or not can_fold_input_affine(layer, x):
        return False
    scale, shift = _scale_shift(graph, bn, layer)
    fold_input_affine(graph, layer, x, scale, shift)
    graph.remove(bn)
    return True


def fold_batchnorm(graph: Graph) -> Graph:
    for bn in [n for n in graph.nodes if n.op == "batch_norm"]:
        if not bn.perturbed or any(i.perturbed for i in bn.inputs[1:]):
            continue
        users = graph.users()
        _fold_into_previous(graph, bn, users) or _fold_into_next(graph, bn, users)
    return remove_dead(graph)
