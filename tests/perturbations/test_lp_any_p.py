"""Lp balls for any p >= 1: closed forms on linear nets (the max of a . x over the ball is
a . x0 + eps ||a||_q, 1/p + 1/q = 1, attained), the exact first-layer bound of linear and conv
layers, and sampled soundness of every method on small nets."""
import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

import lirpac
from models import own_compiled, reinit
from sampling import assert_contains

METHODS = ["ibp", "crown", "forward", "crown-ibp", "forward+crown"]
P_VALUES = [1.0, 1.5, 3.0, 4.0, 7.5]


def dual(p):
    return math.inf if p == 1 else p / (p - 1)


def sample_lp(x, eps, p, n, generator):
    """(n, B, *shape) points of the Lp ball: on its sphere (half) and inside, plus the points
    where a few random linear functions reach their max (x0 + eps sgn(a) |a|^(q-1) / ||a||_q^(q-1))."""
    shape = (n,) + tuple(x.shape)
    d = torch.randn(shape, generator=generator, dtype=x.dtype)
    d = d * torch.rand(shape, generator=generator, dtype=x.dtype).pow(3)     # some sparse-ish
    norms = torch.linalg.vector_norm(d.flatten(2), ord=p, dim=-1).reshape(n, x.shape[0], *([1] * (x.dim() - 1)))
    d = d / norms.clamp(min=1e-12)
    scale = torch.rand((n,) + (1,) * x.dim(), generator=generator, dtype=x.dtype)
    scale[: n // 2] = 1.0
    q = dual(p)
    a = torch.randn(shape, generator=generator, dtype=x.dtype)[: n // 4]
    if q == math.inf:
        top = a.flatten(2).abs().argmax(-1)
        best = torch.zeros_like(a).flatten(2).scatter_(2, top.unsqueeze(-1), 1.0).reshape(a.shape)
        best = best * a.sign()
    else:
        best = a.sign() * a.abs().pow(q - 1)
        best = best / torch.linalg.vector_norm(best.flatten(2), ord=p, dim=-1).reshape(
            best.shape[0], x.shape[0], *([1] * (x.dim() - 1)))
    d = torch.cat([d * scale, best])
    return x.unsqueeze(0) + eps * d


@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("method", ["crown", "forward"])
def test_linear_net_matches_dual_norm(p, method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 4)).eval().double()
    x = torch.randn(3, 5, dtype=torch.float64)
    net = lirpac.compile(model, x[:1])
    C = torch.randn(3, 2, 4, dtype=torch.float64)
    lower, upper = net.bounds(x, lirpac.LpBall(eps=0.3, norm=p), method=method, C=C)
    W = model[1].weight @ model[0].weight
    b = model[1].weight @ model[0].bias + model[1].bias
    CW = C @ W
    centre = torch.einsum("bsi,bi->bs", CW, x) + C @ b
    radius = 0.3 * torch.linalg.vector_norm(CW, ord=dual(p), dim=-1)
    torch.testing.assert_close(lower, centre - radius, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(upper, centre + radius, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("p", [1.5, 1.0])
def test_first_layer_bound_is_exact_for_conv(p):
    """IBP's first-layer bound (the set's first_affine, the conv's row norms over the taps
    inside the image) equals CROWN's, which is exact on an affine map; both are attained."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Flatten()).eval().double()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    net = lirpac.compile(model, x[:1])
    ball = lirpac.LpBall(eps=0.2, norm=p)
    ibp = net.bounds(x, ball, method="ibp")
    crown = net.bounds(x, ball, method="crown")
    for a, b in zip(ibp, crown):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    # attained: for one output, the maximiser of its row
    J = torch.autograd.functional.jacobian(lambda t: model(t.unsqueeze(0))[0, 4], x[0])
    q = dual(p)
    if q == math.inf:
        best = torch.zeros_like(J).flatten()
        best[J.abs().flatten().argmax()] = 1.0
        best = best.reshape(J.shape) * J.sign()
    else:
        best = J.sign() * J.abs().pow(q - 1)
        best = best / torch.linalg.vector_norm(best.flatten(), ord=p)
    top = model((x[0] + 0.2 * best).unsqueeze(0))[0, 4]
    torch.testing.assert_close(top, ibp[1][0, 4], rtol=1e-9, atol=1e-9)


def test_large_dual_exponent_does_not_overflow():
    """p close to 1: q is large and |a|^q overflows float32; the norm is taken scaled."""
    model = nn.Linear(3, 2).eval()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[30.0, -20.0, 1.0], [0.5, 0.25, 0.0]]))
        model.bias.zero_()
    net = lirpac.compile(model, torch.zeros(1, 3))
    x = torch.zeros(1, 3)
    for method in ("ibp", "crown"):
        lower, upper = net.bounds(x, lirpac.LpBall(eps=1.0, norm=1.01), method=method)
        assert torch.isfinite(upper).all()
        expected = torch.linalg.vector_norm(model.weight.double(), ord=101.0, dim=1).float()
        torch.testing.assert_close(upper[0], expected, rtol=1e-4, atol=1e-5)


@settings(max_examples=5, deadline=None)
@given(arch=st.sampled_from(["mlp", "convnet"]), method=st.sampled_from(METHODS),
       p=st.sampled_from(P_VALUES + [1.2, 2.5]), seed=st.integers(0, 10**6),
       eps=st.floats(0.01, 1.0), with_box=st.booleans())
def test_sound_by_sampling(arch, method, p, seed, eps, with_box):
    model, net, shape = own_compiled(arch)
    reinit(model, seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, *shape, generator=g)
    box = {"lower": 0.0, "upper": 1.0} if with_box else {}
    lower, upper = net.bounds(x, lirpac.LpBall(eps=eps, norm=p, **box), method=method)
    points = sample_lp(x, eps, p, 96, g)
    if with_box:
        points = points.clamp(0.0, 1.0)     # still in the ball: x lies in the box
    assert_contains(model, points, lower, upper)


@pytest.mark.slow
def test_alpha_crown_sound_for_p3():
    model, net, shape = own_compiled("mlp")
    reinit(model, 3)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, *shape, generator=g)
    ball = lirpac.LpBall(eps=0.5, norm=3)
    lower, upper = net.bounds(x, ball, method="alpha-crown", options={"iterations": 5})
    crown = net.bounds(x, ball, method="crown")
    assert (lower >= crown[0] - 1e-5).all() and (upper <= crown[1] + 1e-5).all()
    assert_contains(model, sample_lp(x, 0.5, 3.0, 128, g), lower, upper)


def test_norm_below_one_is_refused_with_a_pointer_to_l0():
    with pytest.raises(lirpac.InputError, match="L0Ball"):
        lirpac.LpBall(eps=0.1, norm=0)
