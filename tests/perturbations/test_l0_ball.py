"""L0 sets (at most k elements change, each within [lower, upper]): exact on linear maps (the
k largest gains per row, checked against enumerating every k-subset's corners), sound on small
nets by enumeration plus random values, and backward bounds no looser than IBP's."""
import itertools

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

import lirpac
from models import own_compiled, reinit
from sampling import assert_contains

METHODS = ["ibp", "crown", "forward", "crown-ibp", "forward+crown"]


def l0_points(x, k, lower, upper, generator, random_per_subset=1):
    """(n, B, *shape): x with every subset of at most k elements moved to every corner of
    [lower, upper], plus random values in [lower, upper] on each subset of exactly k."""
    flat = x.flatten(1)
    lo, hi = (t.to(x.dtype).expand_as(x).flatten(1) for t in (lower, upper))
    n = flat.shape[1]
    points = [flat]
    for size in range(1, min(k, n) + 1):
        for subset in itertools.combinations(range(n), size):
            idx = list(subset)
            for corner in itertools.product((0, 1), repeat=size):
                p = flat.clone()
                pick = torch.tensor(corner, dtype=torch.bool)
                p[:, idx] = torch.where(pick, hi[:, idx], lo[:, idx])
                points.append(p)
            if size == min(k, n):
                for _ in range(random_per_subset):
                    p = flat.clone()
                    t = torch.rand(flat.shape[0], size, generator=generator, dtype=x.dtype)
                    p[:, idx] = lo[:, idx] + t * (hi[:, idx] - lo[:, idx])
                    points.append(p)
    return torch.stack(points).reshape(-1, *x.shape)


@pytest.mark.parametrize("k", [0, 2, 6])
@pytest.mark.parametrize("method", ["ibp", "crown", "forward"])
def test_one_linear_layer_is_exact(k, method):
    torch.manual_seed(k)
    model = nn.Sequential(nn.Linear(6, 4)).eval().double()
    x = torch.rand(2, 6, dtype=torch.float64) * 1.4 - 0.2      # some elements outside [0, 1]
    net = lirpac.compile(model, x[:1])
    lower, upper = net.bounds(x, lirpac.L0Ball(k, 0.0, 1.0), method=method)
    points = l0_points(x, k, torch.zeros(1), torch.ones(1), torch.Generator().manual_seed(0), 0)
    with torch.no_grad():
        out = model(points.flatten(0, 1)).reshape(points.shape[0], 2, 4)
    torch.testing.assert_close(lower, out.amin(0), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(upper, out.amax(0), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("k", [2])
def test_linear_net_with_spec_is_exact_for_backward_modes(k):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 3)).eval().double()
    x = torch.randn(2, 5, dtype=torch.float64)
    lower_box, upper_box = x - torch.rand_like(x), x + torch.rand_like(x)
    net = lirpac.compile(model, x[:1])
    C = torch.randn(2, 2, 3, dtype=torch.float64)
    points = l0_points(x, k, lower_box, upper_box, torch.Generator().manual_seed(0), 0)
    with torch.no_grad():
        out = torch.einsum("bso,nbo->nbs", C, model(points.flatten(0, 1)).reshape(points.shape[0], 2, 3))
    for method in ("crown", "forward", "forward+crown"):
        lower, upper = net.bounds(x, lirpac.L0Ball(k, lower_box, upper_box), method=method, C=C)
        torch.testing.assert_close(lower, out.amin(0), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(upper, out.amax(0), rtol=1e-9, atol=1e-9)


@settings(max_examples=5, deadline=None)
@given(arch=st.sampled_from(["mlp", "residual", "convnet"]), method=st.sampled_from(METHODS),
       k=st.integers(0, 3), seed=st.integers(0, 10**6), wide=st.booleans())
def test_sound_by_enumeration(arch, method, k, seed, wide):
    model, net, shape = own_compiled(arch)
    if arch == "convnet":
        k = min(k, 1)            # 128 inputs: every pair of corners is 32k points
    reinit(model, seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, *shape, generator=g)
    lower_box = torch.zeros(shape) - (1.0 if wide else 0.0)
    upper_box = torch.ones(shape) + torch.rand(shape, generator=g)
    lower, upper = net.bounds(x, lirpac.L0Ball(k, lower_box, upper_box), method=method)
    assert_contains(model, l0_points(x, k, lower_box, upper_box, g), lower, upper)


@pytest.mark.parametrize("arch", ["mlp", "convnet", pytest.param("resnet_tiny", marks=pytest.mark.slow)])
def test_backward_no_looser_than_ibp(arch):
    model, net, shape = own_compiled(arch)
    reinit(model, 11)
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(1))
    ball = lirpac.L0Ball(2, 0.0, 1.0)
    ibp = net.bounds(x, ball, method="ibp")
    crown = net.bounds(x, ball, method="crown")
    assert ((crown[1] - crown[0]) <= (ibp[1] - ibp[0]) + 1e-5).all()
    assert (crown[1] - crown[0]).sum() < (ibp[1] - ibp[0]).sum()


@pytest.mark.slow
def test_alpha_crown_is_sound_and_no_looser():
    model, net, shape = own_compiled("mlp")
    reinit(model, 4)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, *shape, generator=g)
    ball = lirpac.L0Ball(2, -1.0, 2.0)
    lower, upper = net.bounds(x, ball, method="alpha-crown", options={"iterations": 5})
    crown = net.bounds(x, ball, method="crown")
    assert (lower >= crown[0] - 1e-5).all() and (upper <= crown[1] + 1e-5).all()
    assert_contains(model, l0_points(x, 2, torch.full(shape, -1.0), torch.full(shape, 2.0), g), lower, upper)


@pytest.mark.parametrize("k", [-1, 1.5, "2", True])
def test_bad_k_is_refused(k):
    with pytest.raises(lirpac.InputError, match="k must be"):
        lirpac.L0Ball(k, 0.0, 1.0)


def test_empty_range_and_nan_are_refused():
    net = lirpac.compile(nn.Linear(3, 2).eval(), torch.zeros(1, 3))
    with pytest.raises(lirpac.InputError, match="lower > upper"):
        net.bounds(torch.zeros(1, 3), lirpac.L0Ball(1, 1.0, 0.0))
    with pytest.raises(lirpac.InputError, match="NaN"):
        net.bounds(torch.zeros(1, 3), lirpac.L0Ball(1, torch.tensor([0.0, float("nan"), 0.0]), 1.0))
    with pytest.raises(lirpac.InputError, match="infinite"):
        net.bounds(torch.zeros(1, 3), lirpac.L0Ball(1, -float("inf"), 1.0))


@pytest.mark.parametrize("groups,stride,padding,k", [(1, 1, 1, 1), (2, 2, 0, 3),
                                                    pytest.param(2, 1, 2, 2, marks=pytest.mark.slow)])
def test_first_conv_layer_is_exact_for_ibp(groups, stride, padding, k):
    """IBP's first conv bound (each output's k largest gains in its window) equals CROWN's,
    which is exact on an affine map."""
    torch.manual_seed(k + groups)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, stride=stride, padding=padding, groups=groups),
                          nn.Flatten()).eval().double()
    x = torch.rand(2, 2, 5, 6, dtype=torch.float64)
    net = lirpac.compile(model, x[:1])
    ball = lirpac.L0Ball(k, -0.5, 1.5)
    ibp, crown = net.bounds(x, ball, method="ibp"), net.bounds(x, ball, method="crown")
    for a, b in zip(ibp, crown):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
