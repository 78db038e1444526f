"""Minimised failures the differential fuzzer (tests/fuzz_checks.py) found, one test each."""
import math

import pytest
import torch
from torch import nn

import lirpac
from lirpac.testing import assert_contains, sample_lp_ball


class RatioOfSquare(nn.Module):
    """a / (b * b + 1): IBP proves b * b + 1 >= 1, while a CROWN or forward-mode bound of
    b * b (a tangent below) dips below 0, where the reciprocal has no relaxation."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x):
        b = self.b(x)
        return self.a(x) / (b * b + 1)


class LogOfSquare(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        y = self.fc(x)
        return torch.log(y * y + 0.5) + torch.sqrt(y * y) + (y * y + 1) ** -0.5


@pytest.mark.parametrize("cls", [RatioOfSquare, LogOfSquare])
@pytest.mark.parametrize("method", lirpac.methods.METHODS)
def test_domain_ops_keep_ibp_bounds(cls, method):
    """A relaxation with a domain (reciprocal, log, sqrt, negative powers) reads bounds no
    looser than IBP's: every method bounds what IBP bounds, soundly."""
    torch.manual_seed(0)
    model = cls().double()
    x = torch.randn(2, 3, dtype=torch.float64)
    net = lirpac.compile(model, x)
    ball = lirpac.LpBall(eps=1.5, norm=math.inf)
    lower, upper = net.bounds(x, ball, method=method,
                              options={"iterations": 2} if method == "alpha-crown" else None)
    points = sample_lp_ball(x, 1.5, math.inf, 64, generator=torch.Generator().manual_seed(0))
    assert_contains(model, points, lower, upper)
