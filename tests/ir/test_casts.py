"""Values the torch frontend must not take as they are. Casts that round (to an integer, bool
or half-precision dtype) are no aliases (they were lowered as the identity, so that even a
zero-radius ball's bounds missed the model's output): on a constant the frontend computes them,
on the perturbed tensor an integer cast is trunc, a bool cast x != 0, and a half-precision one
is refused, naming the node. The indices of a max/min are refused by name where they are read."""
import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

import lirpac
from lirpac.errors import UnsupportedOperationError
from sampling import assert_contains, sample_lp_ball


class ScaledByIntegerPart(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.tensor([1.5, 2.7, -0.5]))

    def forward(self, x):
        return x * self.scale.long() + self.scale.half()


class Cast(nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, x):
        return x.to(self.dtype).to(x.dtype) * 2


def test_rounding_cast_of_a_constant_is_computed():
    model = ScaledByIntegerPart().eval()
    x = torch.tensor([[0.3, 1.7, -2.5], [0.0, 0.9, 1.2]])
    net = lirpac.compile(model, x)
    lower, upper = net.bounds(x, lirpac.LpBall(eps=0.0), method="ibp")
    expected = model(x)
    assert torch.allclose(lower, expected) and torch.allclose(upper, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_cast_of_the_perturbed_tensor_is_refused(dtype):
    with pytest.raises(UnsupportedOperationError,
                       match=f"cast of the perturbed tensor to {dtype}.*at node %.*test_casts.py"):
        lirpac.compile(Cast(dtype).eval(), torch.randn(2, 3))


class RoundsHidden(nn.Module):
    """linear -> cast to ``dtype`` and back -> linear: x.long() truncates toward 0, x.bool()
    is x != 0."""

    def __init__(self, dtype):
        super().__init__()
        self.fc1, self.fc2, self.dtype = nn.Linear(3, 4), nn.Linear(4, 2), dtype

    def forward(self, x):
        h = self.fc1(x) * 2
        return self.fc2(h.to(self.dtype).to(h.dtype))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.sampled_from([0.0, 0.05, 0.5, 2.0]))
def test_integer_and_bool_casts_are_bounded_as_rounding(dtype, seed, eps):
    """Lowered as trunc and as sign(|x|): every method's bounds contain the outputs at sampled
    points of the ball, corners included."""
    model, net = _compiled(dtype)
    torch.manual_seed(seed)
    for p in model.parameters():
        nn.init.normal_(p)
    x = torch.randn(2, 3, dtype=torch.float64)
    points = sample_lp_ball(x, eps, math.inf, 64, generator=torch.Generator().manual_seed(seed))
    for method in ("ibp", "crown", "forward", "crown-ibp"):
        lower, upper = net.bounds(x, lirpac.LpBall(eps=eps), method=method)
        assert_contains(model, points, lower, upper, what=method)


_NETS = {}


def _compiled(dtype):
    if dtype not in _NETS:
        model = RoundsHidden(dtype).double().eval()
        _NETS[dtype] = (model, lirpac.compile(model, torch.zeros(2, 3, dtype=torch.float64)))
    return _NETS[dtype]


def test_exact_casts_stay_aliases():
    model = Cast(torch.float64).eval()
    x = torch.randn(2, 3)
    net = lirpac.compile(model, x)
    lower, upper = net.bounds(x, lirpac.LpBall(eps=0.1), method="crown")
    assert torch.allclose(upper - lower, torch.full_like(lower, 0.4))


class IndexOfMax(nn.Module):
    def __init__(self, use):
        super().__init__()
        self.fc, self.use = nn.Linear(3, 4), use

    def forward(self, x):
        h = self.fc(x)
        return self.use(h, h.max(1, keepdim=True)[1])


@pytest.mark.parametrize("use", [lambda h, i: h + i, lambda h, i: i.float() * 2,
                                 lambda h, i: torch.gather(h, 1, i), lambda h, i: i])
def test_indices_of_a_max_are_refused_by_name(use):
    """max.dim's indices of a perturbed tensor are not lowered (None): reading them failed
    deep inside torch ('Expected a proper Tensor but got None', 'must be real number') or
    claimed the output did not depend on the input."""
    with pytest.raises(UnsupportedOperationError, match="indices of a max/min"):
        lirpac.compile(IndexOfMax(use).eval(), torch.randn(2, 3))
