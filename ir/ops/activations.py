"""Elementwise nonlinear activations: each is its function plus a sound linear relaxation.

A relaxation on [l, u] returns (l_slope, l_bias, u_slope, u_bias) with
l_slope*x + l_bias <= f(x) <= u_slope*x + u_bias for every x in [l, u].
"""
from __future__ import annotations

import torch

from lirpac.ir.ops.common import elementwise
from lirpac.ir.ops.kink_alpha import kink_alpha_rules


def relu_relax(lower, upper):
    """CROWN's ReLU relaxation (Zhang et al. 2018): upper line is the chord from (l, 0) to
    (u, u); for unstable neurons the lower slope is 1 when u > -l, else 0 (the adaptive choice
    that minimises the relaxation's area); stable neurons are exact."""
    lo = lower.clamp(max=0)
    hi = upper.clamp(min=0)
    u_slope = hi / (hi - lo).clamp(min=torch.finfo(hi.dtype).tiny)
    u_bias = -u_slope * lo
    l_slope = (hi > -lo).to(hi.dtype)
    # a neuron that is active on the whole interval (l >= 0) is the identity
    l_slope = torch.where(lower >= 0, torch.ones_like(l_slope), l_slope)
    return l_slope, torch.zeros_like(lo), u_slope, u_bias


elementwise("relu", torch.relu, relu_relax, aten=("relu.default",), doc="max(x, 0)",
            exact_when_sign_known=True, **kink_alpha_rules(relu_relax, lambda: 0.0))
