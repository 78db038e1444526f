"""Soundness of every method on architectures covering the core op set: points sampled in
the perturbation set (corners included) land inside the bounds."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import lirpac
from models import ARCHS, compiled_arch, reinit
from sampling import assert_contains, sample_lp_ball

METHODS = ["ibp", "crown", "forward", "crown-ibp", "forward+crown"]


@settings(max_examples=25, deadline=None)
@given(arch=st.sampled_from(sorted(ARCHS)), method=st.sampled_from(METHODS),
       norm=st.sampled_from([math.inf, 2.0, 1.0]), seed=st.integers(0, 10_000),
       eps=st.floats(0.0, 0.5), batch=st.integers(1, 3), use_spec=st.booleans())
def test_bounds_contain_sampled_outputs(arch, method, norm, seed, eps, batch, use_spec):
    model, net, shape = compiled_arch(arch)
    reinit(model, seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *shape, generator=g)
    C = torch.randn(batch, 2, net.output_shape[0], generator=g) if use_spec else None
    lower, upper = net.bounds(x, lirpac.LpBall(eps=eps, norm=norm), method=method, C=C)
    assert torch.all(lower <= upper + 1e-6)
    points = sample_lp_ball(x, eps, norm, 64, generator=g)
    assert_contains(model, points, lower, upper, C=C)


@pytest.mark.parametrize("method", METHODS)
def test_domain_box_and_per_sample_eps(method):
    model, net, shape = compiled_arch("convnet")
    reinit(model, 3)
    x = torch.rand(3, *shape)
    eps = torch.tensor([0.0, 0.05, 0.3])
    ball = lirpac.LpBall(eps=eps, lower=0.0, upper=1.0)
    lower, upper = net.bounds(x, ball, method=method)
    points = sample_lp_ball(x, eps, math.inf, 64, lower=0.0, upper=1.0)
    assert_contains(model, points, lower, upper)
    # eps = 0 for the first sample: the bounds are the output itself
    out = model(x[:1]).detach()
    assert torch.allclose(lower[0], out[0], atol=1e-5) and torch.allclose(upper[0], out[0], atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_box_perturbation(method):
    model, net, shape = compiled_arch("mlp")
    reinit(model, 5)
    lo = torch.rand(2, *shape) - 1
    hi = lo + torch.rand(2, *shape)
    lower, upper = net.bounds(lo, lirpac.Box(lo, hi), method=method)
    points = lo + (hi - lo) * torch.randint(0, 2, (64, 2, *shape)).float()
    assert_contains(model, points, lower, upper)


@pytest.mark.parametrize("method", METHODS)
def test_float64(method):
    model, net, shape = compiled_arch("residual")
    reinit(model, 7)
    x = torch.randn(2, *shape, dtype=torch.float64)
    lower, upper = net.bounds(x, lirpac.LpBall(eps=0.1), method=method)
    assert lower.dtype == torch.float64
    points = sample_lp_ball(x, 0.1, math.inf, 64)
    assert_contains(model.double(), points, lower, upper, tol=1e-9)
    model.float()
