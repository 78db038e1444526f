"""hardsigmoid, hardswish, mish and PReLU: the relaxation lines bound f on dense samples of
random intervals (the same intervals as tests/ops/test_activations.py), IBP contains f as
torch computes it, and a Linear -> act -> Linear net is bounded soundly by every method."""
import math
import os
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import lirpac
from lirpac.ir.opdef import Interval, get_op
from sampling import assert_contains, sample_lp_ball

sys.path.insert(0, os.path.dirname(__file__))
from test_activations import KINDS, dense, intervals  # noqa: E402


def _mish64(x):
    return x * torch.tanh(F.softplus(x.double()))


CASES = [("hardsigmoid", None), ("hardswish", None), ("mish", _mish64)]


def lines_of(op, lower, upper, *consts):
    n = lower.shape[0]
    one = torch.ones(n, 1, 1, dtype=lower.dtype)
    box = Interval(lower.reshape(n, 1), upper.reshape(n, 1))
    coeffs, lbias, ubias = op.backward(one, one, box, *consts)
    l_coeff, u_coeff = coeffs[0]
    zero = torch.zeros(n, 1, dtype=lower.dtype)
    return tuple((zero + t).reshape(n) for t in (l_coeff.reshape(n, 1), lbias,
                                                  u_coeff.reshape(n, 1), ubias))


def check_lines(op, lower, upper, f64, forward, consts=()):
    ls, lb, us, ub = lines_of(op, lower, upper, *consts)
    for t in (ls, lb, us, ub):
        assert not torch.isnan(t).any()
    xs = dense(lower, upper)
    x64 = xs.double()
    f = f64(x64)
    finite = torch.isfinite(f)
    low, up = ls.double() * x64 + lb.double(), us.double() * x64 + ub.double()
    tol = 64 * torch.finfo(torch.float64).eps * (1 + f.abs() + (ls.double() * x64).abs()
                                                  + (us.double() * x64).abs())
    tol = torch.where(torch.isfinite(tol), tol, torch.zeros_like(tol))
    assert (low[finite] <= f[finite] + tol[finite]).all(), "lower line above f"
    assert (up[finite] >= f[finite] - tol[finite]).all(), "upper line below f"
    box = op.ibp(Interval(lower.reshape(-1, 1), upper.reshape(-1, 1)), *consts)
    fx = forward(xs)
    assert (box.lower.reshape(-1) <= fx).all() and (fx <= box.upper.reshape(-1)).all()
    return ls, lb, us, ub


@pytest.mark.parametrize("name,ref", CASES, ids=[c[0] for c in CASES])
@settings(max_examples=8, deadline=None)
@given(kind=st.sampled_from(KINDS), seed=st.integers(0, 10_000),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_lines_and_ibp_bound_f(name, ref, kind, seed, dtype):
    op = get_op(name)
    lower, upper = intervals(kind, "any", seed, dtype)
    check_lines(op, lower, upper, ref or op.forward, op.forward)


@settings(max_examples=12, deadline=None)
@given(kind=st.sampled_from(KINDS), seed=st.integers(0, 10_000),
       dtype=st.sampled_from([torch.float32, torch.float64]),
       slope=st.sampled_from([0.25, 0.0, -0.5, 1.0, 2.5]))
def test_prelu_lines_and_ibp_bound_f(kind, seed, dtype, slope):
    op = get_op("prelu")
    lower, upper = intervals(kind, "any", seed, dtype)
    weight = torch.tensor([slope], dtype=dtype)
    check_lines(op, lower, upper, lambda x: torch.where(x >= 0, x, slope * x),
                lambda x: F.prelu(x, weight), (weight,))


def test_exact_cases():
    """Where f is one linear piece on [l, u] the lines are f itself (up to rounding slack)."""
    lower = torch.tensor([-9.0, 4.0, -2.0], dtype=torch.float64)
    upper = torch.tensor([-5.0, 8.0, 1.0], dtype=torch.float64)
    ls, lb, us, ub = lines_of(get_op("hardsigmoid"), lower, upper)
    assert torch.allclose(ls, torch.tensor([0, 0, 1 / 6.], dtype=torch.float64))
    assert torch.allclose(ub, torch.tensor([0, 1, 0.5], dtype=torch.float64))
    ls, lb, us, ub = lines_of(get_op("prelu"), torch.tensor([-3.0, 1.0]),
                              torch.tensor([-1.0, 2.0]), torch.tensor([0.2]))
    assert torch.equal(ls, torch.tensor([0.2, 1.0])) and torch.equal(ls, us)
    box = get_op("hardswish").ibp(Interval(torch.tensor([-2.0]), torch.tensor([-1.0])))
    assert -0.375 - 1e-6 <= box.lower.item() <= -0.375 and box.upper.item() >= -1 / 3


class Net(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(4, 6), act, nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x) * 3))


ACTS = {"hardsigmoid": nn.Hardsigmoid, "hardswish": nn.Hardswish, "mish": nn.Mish,
        "prelu_shared": lambda: nn.PReLU(init=0.3), "prelu_per_channel": lambda: nn.PReLU(6)}


@pytest.mark.parametrize("act", sorted(ACTS))
def test_net_bounds_contain_samples(act):
    torch.manual_seed(0)
    model = Net(ACTS[act]()).eval()
    if act == "prelu_per_channel":
        with torch.no_grad():
            model.act.weight.copy_(torch.tensor([0.1, -0.4, 1.5, 0.0, 0.25, 3.0]))
    x = torch.randn(2, 4)
    net = lirpac.compile(model, x)
    points = sample_lp_ball(x, 0.3, math.inf, 128, generator=torch.Generator().manual_seed(0))
    for method in ["ibp", "crown", "forward", "crown-ibp", "forward+crown", "alpha-crown"]:
        lower, upper = net.bounds(x, lirpac.LpBall(eps=0.3), method=method)
        assert_contains(model, points, lower, upper)
