"""Relations between methods and API invariants: CROWN vs IBP, batch independence, specs,
one-sided bounds, linear bounds, gradients."""
import math

import pytest
import torch
import torch.nn as nn

import lirpac
from models import ARCHS, reinit
from sampling import assert_contains, sample_lp_ball

METHODS = ["ibp", "crown", "forward", "crown-ibp", "forward+crown"]


def relu_mlp(seed, widths=(10, 32, 32, 5)):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).eval()


@pytest.mark.parametrize("seed", range(5))
def test_crown_no_looser_than_ibp_on_random_relu_nets(seed):
    model = relu_mlp(seed)
    x = torch.randn(4, 10)
    net = lirpac.compile(model, x[:1])
    ball = lirpac.LpBall(eps=0.1)
    ibp_l, ibp_u = net.bounds(x, ball, method="ibp")
    cr_l, cr_u = net.bounds(x, ball, method="crown")
    assert (cr_u - cr_l).mean() <= (ibp_u - ibp_l).mean()
    fc_l, fc_u = net.bounds(x, ball, method="forward+crown")
    assert (fc_u - fc_l).mean() <= (ibp_u - ibp_l).mean()


@pytest.mark.parametrize("method", METHODS)
def test_bounds_independent_of_batch_composition(method):
    model, shape = ARCHS["convnet"][0](), ARCHS["convnet"][1]
    reinit(model, 11)
    x = torch.randn(5, *shape)
    net = lirpac.compile(model, x[:1])
    ball = lirpac.LpBall(eps=0.05)
    lower, upper = net.bounds(x, ball, method=method)
    for i in (0, 3):
        li, ui = net.bounds(x[i:i + 1], ball, method=method)
        torch.testing.assert_close(li[0], lower[i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ui[0], upper[i], rtol=1e-5, atol=1e-5)
    lp, up = net.bounds(x.flip(0), ball, method=method)
    torch.testing.assert_close(lp.flip(0), lower, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_identity_spec_equals_no_spec(method):
    model = relu_mlp(3)
    x = torch.randn(2, 10)
    net = lirpac.compile(model, x[:1])
    ball = lirpac.LpBall(eps=0.05)
    lower, upper = net.bounds(x, ball, method=method)
    C = torch.eye(5).expand(2, 5, 5)
    lc, uc = net.bounds(x, ball, method=method, C=C)
    torch.testing.assert_close(lc, lower, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(uc, upper, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_one_sided_bounds_match_two_sided(method):
    model = relu_mlp(4)
    x = torch.randn(2, 10)
    net = lirpac.compile(model, x[:1])
    ball = lirpac.LpBall(eps=0.05)
    lower, upper = net.bounds(x, ball, method=method)
    lo, none = net.bounds(x, ball, method=method, bound_upper=False)
    none2, up = net.bounds(x, ball, method=method, bound_lower=False)
    assert none is None and none2 is None
    torch.testing.assert_close(lo, lower)
    torch.testing.assert_close(up, upper)


@pytest.mark.parametrize("method", ["crown", "crown-ibp", "forward", "forward+crown"])
@pytest.mark.parametrize("norm", [math.inf, 2.0])
def test_linear_bounds_hold_pointwise(method, norm):
    model = relu_mlp(5)
    x = torch.randn(2, 10)
    net = lirpac.compile(model, x[:1])
    C = torch.randn(2, 3, 5)
    lin = net.linear_bounds(x, lirpac.LpBall(eps=0.1, norm=norm), method=method, C=C)
    assert lin.lower_coeff.shape == (2, 3, 10) and lin.lower_bias.shape == (2, 3)
    points = sample_lp_ball(x, 0.1, norm, 128)                         # (n, B, 10)
    with torch.no_grad():
        out = torch.einsum("bso,nbo->nbs", C, model(points.reshape(-1, 10)).reshape(128, 2, 5))
    lin_lo = torch.einsum("bsi,nbi->nbs", lin.lower_coeff, points) + lin.lower_bias
    lin_up = torch.einsum("bsi,nbi->nbs", lin.upper_coeff, points) + lin.upper_bias
    assert (lin_lo <= out + 1e-4).all() and (out <= lin_up + 1e-4).all()
    assert (lin.lower <= lin_lo + 1e-4).all() and (lin_up <= lin.upper + 1e-4).all()


@pytest.mark.parametrize("method", METHODS)
def test_bounds_are_differentiable_wrt_parameters(method):
    model = relu_mlp(6).double()
    x = torch.randn(2, 10, dtype=torch.float64)
    net = lirpac.compile(model, x[:1])
    lower, upper = net.bounds(x, lirpac.LpBall(eps=0.05), method=method)
    loss = (upper - lower).sum()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    # finite-difference check on one weight entry
    p = model[0].weight
    with torch.no_grad():
        p[0, 0] += 1e-6
        l2, u2 = net.bounds(x, lirpac.LpBall(eps=0.05), method=method)
        p[0, 0] -= 1e-6
    fd = ((u2 - l2).sum() - loss.detach()) / 1e-6
    assert fd.item() == pytest.approx(grads[0][0, 0].item(), rel=1e-3, abs=1e-5)


def test_compiled_with_batch_one_bounds_any_batch():
    model = relu_mlp(7)
    net = lirpac.compile(model, torch.randn(1, 10))
    for batch in (1, 2, 17):
        lower, upper = net.bounds(torch.randn(batch, 10), lirpac.LpBall(eps=0.1), method="crown")
        assert lower.shape == (batch, 5)


@pytest.mark.parametrize("method", METHODS)
def test_bounds_without_grad_are_ordinary_tensors_equal_to_grad_mode_ones(method):
    """Without grad the call runs in inference mode; its results leave it as ordinary tensors
    (usable by later autograd code and in place) equal to those of a grad-mode call."""
    model = relu_mlp(8)
    x = torch.randn(3, 10)
    net = lirpac.compile(model, x[:1])
    ball = lirpac.LpBall(eps=0.05)
    tracked = net.bounds(x, ball, method=method)
    with torch.no_grad():
        plain = net.bounds(x, ball, method=method)
    for t, p in zip(tracked, plain):
        assert not p.is_inference() and not p.requires_grad
        assert torch.equal(t.detach(), p)
    w = torch.ones(5, requires_grad=True)
    (plain[0] * w).sum().backward()
    plain[1].add_(1.0)


@pytest.mark.parametrize("eps", [0.0, 0.01, 1 / 255, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_number_eps_box_is_x_plus_minus_eps(eps, dtype):
    """LpBall(eps=number)'s fast bind gives the same box as a per-sample tensor eps."""
    x = torch.rand(4, 3, 5, dtype=dtype) * 4 - 2
    fast = lirpac.LpBall(eps=eps).bind(x)
    general = lirpac.LpBall(eps=torch.full((4,), eps, dtype=dtype)).bind(x)
    assert torch.equal(fast.lower, general.lower) and torch.equal(fast.upper, general.upper)
