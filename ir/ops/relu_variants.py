"""ReLU with auto_LiRPA's other lower-line choices for unstable neurons (its bound_opts
``activation_bound_option``): "same-slope" (the lower line parallel to the upper chord,
through the origin: slope u / (u - l)), "zero-lb" (slope 0) and "one-lb" (slope 1). Any slope
in [0, 1] through the origin lies below max(x, 0) on the whole line, so each is sound; the
upper line is CROWN's chord, and stable neurons stay exact.

With "same-slope" a backward pass multiplies the lower and the upper coefficients by the same
slopes, so the linear bounds of the output share their coefficients (A_lower = A_upper) and
differ only in the bias. alpha-CROWN optimises the lower slopes from these starting values
with the chord as the upper line (auto_LiRPA moves its upper line with the optimised slope
instead); the bounds are sound either way.

The frontends emit plain "relu"; ``use_relu_lower_line`` switches a compiled net's ReLU nodes
to one of these ops.
"""
from __future__ import annotations

import torch

from lirpac.errors import InputError
from lirpac.ir.ops.activations import _relu_upper, relu_zero_where
from lirpac.ir.ops.common import elementwise
from lirpac.ir.ops.kink_alpha import kink_alpha_rules
from lirpac.ir.scalar import scalar


def _lower_slope_rule(choice: str):
    def relax(lower, upper):
        lo, hi, unstable, u_slope, u_bias = _relu_upper(lower, upper)
        if choice == "same-slope":
            return u_slope, 0, u_slope, u_bias     # exact where stable: slope 1 or 0 there
        active = torch.ge(lower, scalar(0.0, lower))
        fill = scalar(1.0 if choice == "one-lb" else 0.0, lower)
        l_slope = torch.where(unstable, fill, active.to(u_slope.dtype))
        return l_slope, 0, u_slope, u_bias
    relax.__name__ = f"relu_{choice.replace('-', '_')}_relax"
    return relax


# auto_LiRPA's option name -> the op that relaxes ReLU that way
OPS = {"same-slope": "relu_same_slope", "zero-lb": "relu_zero_lb", "one-lb": "relu_one_lb"}

for _choice, _name in OPS.items():
    _relax = _lower_slope_rule(_choice)
    elementwise(_name, torch.relu, _relax, doc=f"max(x, 0), lower line {_choice} where unstable",
                exact_when_sign_known=True, zero_where=relu_zero_where,
                **kink_alpha_rules(_relax, lambda: 0.0))


def use_relu_lower_line(net, choice: str | None) -> None:
    """Relax every ReLU of the compiled ``net`` with ``choice`` ("adaptive" or None: CROWN's
    default; or a key of OPS), before any bound function is generated."""
    if choice in (None, "adaptive"):
        return
    if choice not in OPS:
        raise InputError(f"unknown ReLU lower line {choice!r}; choose 'adaptive', "
                         f"{', '.join(repr(k) for k in OPS)}")
    if net._cache:
        raise InputError("the ReLU relaxation must be chosen before the first bound call")
    for graph in (net.graph, net.source_graph):
        for node in graph.nodes:
            if node.op == "relu":
                node.op = OPS[choice]
