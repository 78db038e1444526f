"""BatchNorm in training mode: the statistics of the batch being bounded.

A BatchNorm module in training mode normalises with the mean and (biased) variance of its
input over the batch (and the spatial dims). Bounding that exactly would make every sample's
output depend on the whole batch; like auto_LiRPA, lirpac bounds the function the training
step uses: the statistics are those of the clean batch x (the centre of the set), computed by
a clean forward pass, and then held fixed while x' moves over the set. So, per sample,

    f_train(x') = the network with each such BatchNorm's (running_mean, running_var) replaced
                  by the clean batch's statistics at that layer,

an ordinary function of x' that the bounds contain. The statistics keep their autograd
graph, so the robust loss is differentiable through them, as PyTorch's training step is.

The model is traced once in eval mode (so every BatchNorm is the affine ``batch_norm`` node
whose mean and var are buffer leaves); at each bound call the leaves of the BatchNorm modules
that are in training mode *now* get the batch statistics instead. Running statistics are
never updated here: bounding changes nothing in the user's module.
"""
from __future__ import annotations

import torch

from lirpac.ir.graph import Graph
from lirpac.ir.opdef import get_op


def _training_batchnorms(graph: Graph, module) -> list:
    """The batch_norm nodes whose BatchNorm module is in training mode."""
    if not isinstance(module, torch.nn.Module) or not module.training:
        return []
    found = []
    for node in graph.nodes:
        if node.op != "batch_norm":
            continue
        target = node.inputs[3].attrs.get("target", "")
        if not target.endswith("running_mean"):
            continue
        owner = target.rsplit(".", 1)[0] if "." in target else ""
        try:
            submodule = module.get_submodule(owner)
        except AttributeError:
            continue
        if submodule.training:
            found.append(node)
    return found


def evaluate_with_batch_statistics(graph: Graph, module, x: torch.Tensor):
    """(output, {buffer target: batch statistic}) of the graph on the clean batch x, the
    BatchNorm modules in training mode normalising with x's batch statistics."""
    training = set(_training_batchnorms(graph, module))
    values, stats = {}, {}
    for n in graph.nodes:
        if n.op == "input":
            values[n] = x
        elif n.op in ("param", "constant"):
            v = n.value
            values[n] = v.to(device=x.device, dtype=x.dtype) if v.is_floating_point() else v.to(x.device)
        elif n in training:
            inp, weight, bias, mean, var = (values[i] for i in n.inputs)
            dims = [0] + list(range(2, inp.dim()))
            mean, var = inp.mean(dim=dims), inp.var(dim=dims, unbiased=False)
            stats[n.inputs[3].attrs["target"]], stats[n.inputs[4].attrs["target"]] = mean, var
            values[n] = get_op("batch_norm").forward(inp, weight, bias, mean, var, **n.attrs)
        else:
            values[n] = get_op(n.op).forward(*[values[i] for i in n.inputs], **n.attrs)
    return values[graph.output], stats


def batch_statistics(graph: Graph, module, x: torch.Tensor) -> dict:
    """{buffer target: the clean batch's statistic} for the BatchNorm modules in training mode
    (empty, at no cost, when there are none)."""
    if not _training_batchnorms(graph, module):
        return {}
    return evaluate_with_batch_statistics(graph, module, x)[1]


def uses_batch_statistics(graph: Graph, module) -> bool:
    return bool(_training_batchnorms(graph, module))
