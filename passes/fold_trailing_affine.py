"""fold_trailing_affine: fold add/sub/mul/div by constants after a linear/conv into that layer.

``layer(x) * c + d`` with c, d constant per output channel (anything, for a linear layer of a
vector) is one layer: W' = diag(c) W, b' = c * b + d. The step must be the layer's only user.
Exact for every method: the layer computes the same affine function, and a per-channel scale
commutes with the absolute values of IBP's radius (|diag(c) W| = diag(|c|) |W|).

It also serves spec folding. The spec C is only known at bound time, so the torch backend
folds it (for IBP, ``ibp_spec_linear``: C W as one layer) when the output node is a linear
layer; a model ending in ``fc(z) + 1.0`` or ``fc(z) / T`` hides that layer, and this pass
exposes it again. There IBP with a spec gets tighter (C folded into the layer, as it is for a
model ending in a linear layer); everything else is unchanged.
"""
from __future__ import annotations

import torch

from lirpac.ir.graph import Graph
from lirpac.passes.rewrite import (const_expr, constant_affine_step, fold_output_affine,
                                   foldable_layer, literal_constant, move_next_to_user, remove_dead,
                                   single_user)


def fold_trailing_affine(graph: Graph) -> Graph:
    changed = True
    while changed:
        changed = False
        users = graph.users()
        for step in [n for n in graph.nodes if n.op in ("add", "sub", "mul", "div")]:
            layer = next((i for i in step.inputs if i.perturbed), None)
            if layer is None or not foldable_layer(layer) or single_user(graph, layer, users) is not step:
                continue
            if layer.op == "linear" and len(layer.shape) != 1:
                continue
            found = constant_affine_step(step, per_channel=layer.op == "conv")
            if found is None:
                continue
            move_next_to_user(graph, layer, step)
            vec = const_expr(graph, layer, "as_vector", [found[1]], f"{step.name}_vector", size=layer.shape[0])
            scale = shift = None
            if step.op == "add":
                shift = vec
            elif step.op == "sub":
                shift = const_expr(graph, layer, "neg", [vec], f"{step.name}_shift")
            elif step.op == "mul":
                scale = vec
            else:
                one = literal_constant(graph, layer, torch.ones((), dtype=vec.dtype), f"{step.name}_one")
                scale = const_expr(graph, layer, "div", [one, vec], f"{step.name}_scale")
            fold_output_affine(graph, layer, scale, shift)
            graph.replace_all_uses(step, layer)
            graph.remove(step)
            changed = True
            break
    return remove_dead(graph)
