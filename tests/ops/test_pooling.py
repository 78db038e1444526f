"""Max pooling and max/min reductions: every method is sound (two pools in a row included),
window extraction matches torch on every pooling configuration, and a pool whose windows are
disjoint with a stable winner is bounded exactly."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import lirpac
from bound_checks import METHODS, NORMS, check_sound
from lirpac.ir.opdef import get_op
from lirpac.ir.ops.pooling import _pool_windows


class TwoPools(nn.Module):
    """conv -> max_pool (stride 1, padding, ceil_mode) -> max_pool (dilated) -> linear."""
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 2 * 2, 3)

    def forward(self, x):
        h = F.max_pool2d(self.conv(x), 2, stride=1, padding=1, ceil_mode=True)
        h = F.max_pool2d(h, 2, stride=2, dilation=2)
        return self.fc(h.flatten(1))


class Reductions(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 6)

    def forward(self, x):
        h = self.fc(x).view(-1, 2, 3)
        return torch.cat([h.amax(-1), h.amin(1), h.max(dim=2).values, h.min(dim=1, keepdim=True)[0][:, 0],
                          h.amax((1, 2)).unsqueeze(1)], 1)


SHAPES = {TwoPools: (1, 5, 5), Reductions: (4,)}


@settings(max_examples=15, deadline=None)
@given(cls=st.sampled_from(sorted(SHAPES, key=lambda c: c.__name__)),
       method=st.sampled_from(METHODS), norm=st.sampled_from(NORMS),
       seed=st.integers(0, 10_000), eps=st.floats(0.0, 0.3))
def test_sound(cls, method, norm, seed, eps):
    check_sound(cls, SHAPES[cls], method, norm, seed, eps)


@settings(max_examples=25, deadline=None)
@given(size=st.integers(3, 7), kernel=st.integers(1, 3), stride=st.integers(1, 3),
       dilation=st.integers(1, 2), ceil_mode=st.booleans(), data=st.data())
def test_windows_match_torch(size, kernel, stride, dilation, ceil_mode, data):
    padding = data.draw(st.integers(0, kernel // 2))
    if dilation * (kernel - 1) + 1 > size + 2 * padding:
        return
    x = torch.randn(2, 3, size, size + 1)
    attrs = dict(kernel_size=(kernel, kernel), stride=(stride, stride), padding=(padding, padding),
                 dilation=(dilation, dilation), ceil_mode=ceil_mode)
    want = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
    assert torch.equal(_pool_windows(x, fill=-math.inf, **attrs).max(-1).values, want)
    assert torch.equal(get_op("max_pool").forward(x, **attrs), want)


@pytest.mark.parametrize("method", METHODS)
def test_disjoint_windows_with_stable_winner_are_exact(method):
    """Each 2x2 window's winner beats the others by more than 2 eps: the pool is exact, the
    bounds are the winner's own +-eps."""
    class Pool(nn.Module):
        def forward(self, x):
            return F.max_pool2d(x, 2).flatten(1)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 4, 4, generator=g)
    x[:, :, ::2, ::2] += 2.0
    eps = 0.1
    lower, upper = lirpac.compile(Pool().eval(), x).bounds(x, lirpac.LpBall(eps=eps), method=method)
    want = F.max_pool2d(x, 2).flatten(1)
    assert torch.allclose(lower, want - eps, atol=1e-6) and torch.allclose(upper, want + eps, atol=1e-6)


def test_linear_bounds_of_pool_are_the_winner():
    """CROWN's lower bound of a pool picks the entry with the largest lower bound."""
    class Pool(nn.Module):
        def forward(self, x):
            return F.max_pool2d(x, 2).flatten(1)
    x = torch.tensor([[[[0.0, 1.0], [0.5, 0.9]]]]).repeat(2, 1, 1, 1)
    lower, upper = lirpac.compile(Pool().eval(), x).bounds(x, lirpac.LpBall(eps=0.2), method="crown")
    assert torch.allclose(lower, torch.full_like(lower, 0.8)) and torch.allclose(upper, torch.full_like(upper, 1.2))
