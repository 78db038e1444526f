"""Shared check of the op-family tests: every method's bounds contain sampled outputs of a
small model (compiled once per model class, re-initialised per example); and the switch that
turns the dropping of dead neurons on or off for a test."""
import contextlib
import math

import torch

import lirpac
from models import reinit
from sampling import assert_contains, sample_lp_ball

METHODS = ["ibp", "crown", "forward", "crown-ibp", "forward+crown"]
NORMS = [math.inf, 2.0, 1.0]
_COMPILED = {}


def compiled(cls, shape):
    if cls not in _COMPILED:
        model = cls().eval()
        _COMPILED[cls] = (model, lirpac.compile(model, torch.zeros(2, *shape)))
    return _COMPILED[cls]


def check_sound(cls, shape, method, norm, seed, eps, batch=2, n_points=64):
    """Bounds of ``method`` contain the model's outputs at points of the Lp ball."""
    model, net = compiled(cls, shape)
    reinit(model, seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *shape, generator=g)
    lower, upper = net.bounds(x, lirpac.LpBall(eps=eps, norm=norm), method=method)
    assert torch.all(lower <= upper + 1e-6)
    assert_contains(model, sample_lp_ball(x, eps, norm, n_points, generator=g), lower, upper)
    return lower, upper


@contextlib.contextmanager
def _runtime_setting(name: str, value):
    """codegen/runtime's module constant ``name`` set to ``value`` for the block."""
    from lirpac.codegen import runtime
    old = getattr(runtime, name)
    setattr(runtime, name, value)
    try:
        yield
    finally:
        setattr(runtime, name, old)


def dead_neurons_dropped(always: bool):
    """Backward passes drop every dead neuron, even when few are (``always``), or none
    (codegen/runtime.PRUNE_MIN_DEAD); with ``always`` and none dead, the live index holds
    every neuron."""
    return _runtime_setting("PRUNE_MIN_DEAD", 0.0 if always else 2.0)


def whole_passes(always: bool):
    """Intermediate passes run over all of a node's neurons whenever they bound any
    (``always``), or only over the neurons they bound (codegen/runtime.WHOLE_PASS_FRACTION)."""
    return _runtime_setting("WHOLE_PASS_FRACTION", 0.0 if always else 2.0)
