"""Every architecture family of examples/models/families.py compiles and is bounded soundly by
IBP, CROWN and CROWN-IBP: sampled points of the ball (corners included) land in the bounds.
A family whose ops lirpac lacks is skipped with the missing op named."""
import math
import os
import sys

import pytest
import torch

import lirpac
from lirpac.errors import UnsupportedOperationError
from sampling import assert_contains, sample_lp_ball

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from examples.models.families import FAMILIES  # noqa: E402

METHODS = ["ibp", "crown", "crown-ibp"]
_COMPILED = {}


def compiled(name):
    if name not in _COMPILED:
        factory, shape = FAMILIES[name]
        model = factory(seed=1)
        try:
            net = lirpac.compile(model, torch.zeros(1, *shape))
        except UnsupportedOperationError as err:
            _COMPILED[name] = err
        else:
            _COMPILED[name] = (model, net, shape)
    if isinstance(_COMPILED[name], UnsupportedOperationError):
        pytest.skip(f"{name}: {_COMPILED[name]}")
    return _COMPILED[name]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_bounds_are_sound(name, method):
    model, net, shape = compiled(name)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *shape, generator=g)
    for norm, eps in ((math.inf, 0.02), (2.0, 0.1)):
        try:
            lower, upper = net.bounds(x, lirpac.LpBall(eps=eps, norm=norm), method=method)
        except UnsupportedOperationError as err:
            pytest.skip(f"{name} with {method}: {err}")
        assert torch.isfinite(lower).all() and torch.isfinite(upper).all()
        assert torch.all(lower <= upper + 1e-5)
        assert_contains(model, sample_lp_ball(x, eps, norm, 32, generator=g), lower, upper)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_point_bounds_are_the_output(name):
    model, net, shape = compiled(name)
    x = torch.randn(2, *shape)
    lower, upper = net.bounds(x, lirpac.LpBall(eps=0.0), method="ibp")
    out = model(x).detach()
    assert torch.allclose(lower, out, atol=1e-4) and torch.allclose(upper, out, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["forward", "forward+crown", "alpha-crown"])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_bounds_are_sound_other_methods(name, method):
    test_family_bounds_are_sound(name, method)
