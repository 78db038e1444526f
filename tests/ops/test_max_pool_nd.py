"""3-D max pooling (its own op, max_pool3d) and 1-D max pooling (a 2-D pool over (C, 1, L)):
the windows match torch's pooling on every configuration, and every method is sound."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from bound_checks import METHODS, NORMS, check_sound
from lirpac.ir.ops.pooling import _pool_windows3d


class Pools(nn.Module):
    """conv3d -> max_pool3d (padding, ceil_mode) -> flatten to (C, L) -> max_pool1d -> linear."""
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 2)
        self.fc = nn.Linear(2 * 13, 3)

    def forward(self, x):
        h = F.max_pool3d(self.conv(x), 2, stride=1, padding=1, ceil_mode=True)
        h = F.max_pool1d(h.flatten(2), 3, stride=2, padding=1, dilation=2)
        return self.fc(h.flatten(1))


@settings(max_examples=8, deadline=None)
@given(method=st.sampled_from(METHODS), norm=st.sampled_from(NORMS),
       seed=st.integers(0, 10_000), eps=st.floats(0.0, 0.3))
def test_sound(method, norm, seed, eps):
    check_sound(Pools, (1, 3, 3, 3), method, norm, seed, eps)


@settings(max_examples=25, deadline=None)
@given(kernel=st.tuples(*[st.integers(1, 3)] * 3), stride=st.tuples(*[st.integers(1, 3)] * 3),
       dilation=st.tuples(*[st.integers(1, 2)] * 3), ceil_mode=st.booleans(), data=st.data())
def test_windows_match_torch(kernel, stride, dilation, ceil_mode, data):
    padding = tuple(data.draw(st.integers(0, k // 2)) for k in kernel)
    size = (4, 5, 3)
    if any(d * (k - 1) + 1 > n + 2 * p for d, k, n, p in zip(dilation, kernel, size, padding)):
        return
    x = torch.randn(2, 3, *size)
    attrs = dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation,
                 ceil_mode=ceil_mode)
    windows = _pool_windows3d(x, fill=-math.inf, **attrs)
    assert torch.equal(windows.max(-1).values, F.max_pool3d(x, **attrs))
