"""The fused concretization against InputSet.concretize: boxes, L-inf / L2 / L1 balls with and
without a domain box, both sides at once, values and gradients."""
import math

import pytest
import torch

pytest.importorskip("triton")

import lirpac  # noqa: E402
from lirpac.codegen.triton.concretize import TritonInputSet  # noqa: E402

SETS = {
    "box": lambda x: lirpac.Box(x - 0.3, x + 0.2),
    "linf": lambda x: lirpac.LpBall(eps=0.1),
    "l2": lambda x: lirpac.LpBall(eps=0.4, norm=2),
    "l1": lambda x: lirpac.LpBall(eps=0.4, norm=1),
    "l2_domain": lambda x: lirpac.LpBall(eps=0.4, norm=2, lower=x - 0.1, upper=x + 0.5),
    "l1_domain": lambda x: lirpac.LpBall(eps=0.4, norm=1, lower=x - 0.1, upper=x + 0.5),
}


def _sets(name, n=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(len(name))
    x = torch.randn(2, n, generator=g, dtype=dtype)
    plain = SETS[name](x).bind(x)
    return plain, TritonInputSet.wrap(plain), g


@pytest.mark.parametrize("name", sorted(SETS))
@pytest.mark.parametrize("upper", [False, True])
def test_values_and_gradients_match_torch(name, upper):
    plain, fused, g = _sets(name)
    coeff = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    coeff[0, 0, 1] = 0.0      # a zero coefficient (sign 0)
    coeff[1, 1, :2] = 4.0     # a tie for the largest |a| (the L1 ball's dual norm)
    bias = torch.randn(2, 3, generator=g, dtype=torch.float64)
    results = []
    for wrap in (TritonInputSet.wrap, lambda inp: inp):
        # the set's centre carries a gradient too (an attack, or a trained input layer)
        centre = getattr(plain, "center", None)
        x = centre if centre is not None else (plain.lower + plain.upper) / 2
        x = x.detach().clone().requires_grad_()
        inp = wrap(SETS[name](x).bind(x))
        a = coeff.clone().requires_grad_()
        value = inp.concretize(a, bias, upper=upper)
        grads = torch.autograd.grad((value * torch.arange(1.0, 4.0, dtype=value.dtype)).sum(), (a, x))
        results.append((value.detach(), *grads))
    for f, r in zip(*results):
        torch.testing.assert_close(f, r, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("name", ["box", "linf", "l2"])
def test_pair_wide_rows_float32(name):
    """Both sides of one coefficient tensor (the identity start's sharing), rows wider than
    one column block."""
    plain, fused, g = _sets(name, n=1500, dtype=torch.float32)
    a = torch.randn(2, 2, 1500, generator=g)
    lower_bias, upper_bias = torch.randn(2, 2, generator=g), torch.randn(2, 2, generator=g)
    for f, r in zip(fused.concretize_pair(a, lower_bias, a, upper_bias),
                    plain.concretize_pair(a, lower_bias, a, upper_bias)):
        torch.testing.assert_close(f, r, atol=1e-4, rtol=1e-5)


def test_infinite_bias_stays_unbounded():
    plain, fused, g = _sets("box")
    a = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    bias = torch.zeros(2, 3, dtype=torch.float64)
    bias[0, 1] = -math.inf
    for upper in (False, True):
        torch.testing.assert_close(fused.concretize(a, bias, upper), plain.concretize(a, bias, upper))
