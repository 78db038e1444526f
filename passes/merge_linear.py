"""merge_linear: merge two consecutive linear layers when the product is cheaper.

linear(linear(x, W1, b1), W2, b2) = linear(x, W2 W1, W2 b1 + b2) when nothing else reads the
inner layer. Merged only when out*in < mid*in + out*mid (parameters and multiply-adds per
sample), e.g. a bottleneck-free 784-256-10 head. The merged weight is computed in the generated
code from the live weights, so gradients reach W1 and W2.

Exact for the function and for CROWN (backward through W2 then W1 multiplies the same
matrices). Interval-like rules are NOT unchanged: IBP uses |W2 W1| <= |W2| |W1| entrywise, and
forward mode splits W2 W1 into positive and negative parts once instead of twice, so IBP,
forward mode and the intermediate bounds of CROWN-IBP and forward+crown can only get tighter,
never looser (with P - N the two-step split, the merged lower function exceeds the two-step one
by D (u - l) >= 0 on the domain). Because it changes those numbers, this pass is not in
DEFAULT_PASSES; ask for it with ``lirpac.compile(..., passes=[..., "merge_linear", ...])``.
"""
from __future__ import annotations

from lirpac.ir.graph import Graph
from lirpac.passes.rewrite import const_expr, remove_dead, single_user


def merge_linear(graph: Graph) -> Graph:
    for outer in [n for n in graph.nodes if n.op == "linear"]:
        inner = outer.inputs[0]
        if inner.op != "linear" or any(i.perturbed for i in outer.inputs[1:] + inner.inputs[1:]):
            continue
        if single_user(graph, inner) is not outer:
            continue
        (w2, *b2), (x, w1, *b1) = outer.inputs[1:], inner.inputs
        n_out, n_mid = w2.shape
        n_in = w1.shape[1]
        if n_out * n_in >= n_mid * n_in + n_out * n_mid:
            continue
        weight = const_expr(graph, outer, "matmul_const_right", [w2, w1], f"{outer.name}_merged_weight")
        if b1:
            bias = const_expr(graph, outer, "linear", [b1[0], w2] + b2, f"{outer.name}_merged_bias")
        else:
            bias = b2[0] if b2 else None
        outer.inputs = [x, weight] + ([bias] if bias is not None else [])
    return remove_dead(graph)
