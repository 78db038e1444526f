"""Exact cases: a linear network's range over an Lp ball has a closed form (dual norm), and
every linear method must reach it; single ReLU neurons have known bounds."""
import math

import pytest
import torch
import torch.nn as nn

import lirpac

METHODS = ["ibp", "crown", "forward", "crown-ibp", "forward+crown"]


def linear_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 4)).eval()


@pytest.mark.parametrize("norm", [math.inf, 2.0, 1.0])
@pytest.mark.parametrize("method", ["crown", "forward", "crown-ibp", "forward+crown"])
def test_linear_net_matches_dual_norm(norm, method):
    model = linear_net()
    x = torch.randn(3, 5, dtype=torch.float64)
    eps = 0.3
    net = lirpac.compile(model, x[:1].float())
    C = torch.randn(3, 2, 4, dtype=torch.float64)
    lower, upper = net.bounds(x, lirpac.LpBall(eps=eps, norm=norm), method=method, C=C)
    model = model.double()
    W = model[1].weight @ model[0].weight
    b = model[1].weight @ model[0].bias + model[1].bias
    CW = C @ W                                        # (B, S, in)
    center = torch.einsum("bsi,bi->bs", CW, x) + C @ b
    dual = {math.inf: 1, 2.0: 2, 1.0: math.inf}[norm]
    radius = eps * CW.norm(p=dual, dim=-1)
    torch.testing.assert_close(lower, center - radius, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(upper, center + radius, rtol=1e-9, atol=1e-9)
    model.float()


def test_ibp_is_exact_on_one_linear_layer():
    torch.manual_seed(1)
    model = nn.Linear(4, 3).eval()
    x = torch.randn(2, 4, dtype=torch.float64)
    net = lirpac.compile(model, x[:1].float())
    lower, upper = net.bounds(x, lirpac.LpBall(eps=0.2), method="ibp")
    W, b = model.weight.double(), model.bias.double()
    center = x @ W.T + b
    radius = 0.2 * W.abs().sum(1)
    torch.testing.assert_close(lower, center - radius)
    torch.testing.assert_close(upper, center + radius)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("l,u", [(-1.0, 2.0), (-2.0, 1.0), (0.5, 1.5), (-1.5, -0.5)])
def test_single_relu_neuron(method, l, u):
    """y = relu(x), x in [l, u]: upper is max(u, 0) exactly; the lower bound of the relaxation
    is exact (0 or l) for stable neurons and for unstable ones CROWN's lower line gives
    min(slope * l, 0) with slope 1 if u > -l else 0."""
    model = nn.ReLU().eval()
    center = torch.tensor([[(l + u) / 2]], dtype=torch.float64)
    net = lirpac.compile(model, center.float())
    lower, upper = net.bounds(center, lirpac.LpBall(eps=(u - l) / 2), method=method)
    assert upper.item() == pytest.approx(max(u, 0.0))
    if l >= 0 or u <= 0 or method == "ibp":
        assert lower.item() == pytest.approx(max(l, 0.0))
    else:
        slope = 1.0 if u > -l else 0.0
        assert lower.item() == pytest.approx(slope * l)
