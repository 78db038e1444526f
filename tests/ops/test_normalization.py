"""softmax, log_softmax, logsumexp, layer_norm and L2 normalize: every method is sound on small
nets (one with L2 normalize then softmax); softmax's IBP is the standard closed form; the
centring map's IBP is the exact range of an affine map."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import lirpac
from bound_checks import METHODS, NORMS, check_sound
from lirpac.ir.opdef import Interval, get_op


class Softmaxes(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 8)

    def forward(self, x):
        h = self.fc(x)
        a, b = h[:, :4], h[:, 4:]
        return torch.cat([F.softmax(a, -1), F.log_softmax(b, 1),
                          torch.logsumexp(a, 1, keepdim=True)], 1)


class LayerNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.norm = nn.LayerNorm(6)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        return self.out(self.norm(self.fc(x)))


class NormalizeSoftmax(nn.Module):
    """L2 normalize then softmax: the pattern the issue reports mature libraries fail on."""
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        return F.softmax(self.out(F.normalize(self.fc(x) + 2.0, dim=-1)), dim=-1)


class InnerDims(nn.Module):
    """softmax and L2 normalize over a middle dim, layer norm over two dims without affine."""
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.norm = nn.LayerNorm([3, 2], elementwise_affine=False)

    def forward(self, x):
        h = self.fc(x)
        return torch.cat([F.softmax(h, 1), self.norm(h), F.normalize(h + 2.0, dim=1),
                          F.log_softmax(h, 1)], 1).flatten(1)


SHAPES = {Softmaxes: (4,), LayerNormNet: (4,), NormalizeSoftmax: (4,), InnerDims: (3, 2)}


@settings(max_examples=25, deadline=None)
@given(cls=st.sampled_from(sorted(SHAPES, key=lambda c: c.__name__)),
       method=st.sampled_from(METHODS), norm=st.sampled_from(NORMS),
       seed=st.integers(0, 10_000), eps=st.floats(0.0, 0.2))
def test_sound(cls, method, norm, seed, eps):
    check_sound(cls, SHAPES[cls], method, norm, seed, eps)


def test_softmax_ibp_is_the_standard_bound():
    """softmax_i in [exp(l_i) / (exp(l_i) + sum_{j!=i} exp(u_j)), exp(u_i) / (exp(u_i) +
    sum_{j!=i} exp(l_j))] on a box input."""
    class Softmax(nn.Module):
        def forward(self, x):
            return F.softmax(x, -1)
    g = torch.Generator().manual_seed(0)
    lo = torch.randn(2, 5, generator=g, dtype=torch.float64)
    hi = lo + torch.rand(2, 5, generator=g, dtype=torch.float64)
    net = lirpac.compile(Softmax().eval(), lo)
    lower, upper = net.bounds((lo + hi) / 2, lirpac.Box(lo, hi), method="ibp")

    def standard(own, rest):
        others = rest.exp().sum(-1, keepdim=True) - rest.exp()
        return own.exp() / (own.exp() + others)
    assert torch.allclose(lower, standard(lo, hi)) and torch.allclose(upper, standard(hi, lo))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_center_ibp_is_exact(seed):
    g = torch.Generator().manual_seed(seed)
    lo = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    hi = lo + torch.rand(2, 3, 4, generator=g, dtype=torch.float64)
    got = get_op("center").ibp(Interval(lo, hi), dims=(2,))
    matrix = torch.eye(4, dtype=torch.float64) - 1 / 4
    mid, rad = (lo + hi) / 2, (hi - lo) / 2
    want_mid, want_rad = mid @ matrix.T, rad @ matrix.abs().T
    assert torch.allclose(got.lower, want_mid - want_rad) and torch.allclose(got.upper, want_mid + want_rad)


def test_crown_tightens_softmax_over_ibp():
    model = Softmaxes().eval()
    x = torch.randn(2, 4)
    net = lirpac.compile(model, x)
    ball = lirpac.LpBall(eps=0.05)
    ibp_l, ibp_u = net.bounds(x, ball, method="ibp")
    crown_l, crown_u = net.bounds(x, ball, method="crown")
    assert (crown_u - crown_l).mean() < (ibp_u - ibp_l).mean()


def test_softmax_bounds_past_exp_range_have_finite_gradients():
    """A score interval wider than exp's range makes exp's upper bound inf and the softmax's
    lower bound 0; its gradient must be 0 there, not inf * 0 = NaN (certified training steps
    on it)."""
    import lirpac
    class Scores(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(200.0))

        def forward(self, x):
            return torch.softmax(self.scale * x, -1)
    model = Scores()
    net = lirpac.compile(model, torch.zeros(1, 3))
    lower, upper = net.bounds(torch.zeros(2, 3), lirpac.LpBall(eps=0.5), method="ibp")
    assert (lower == 0).all()
    (upper - lower).sum().backward()
    assert torch.isfinite(model.scale.grad)
