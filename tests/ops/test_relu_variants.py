"""auto_LiRPA's ReLU lower-line options (ir/ops/relu_variants.py): sound on sampled boxes,
closed forms on one neuron, and "same-slope" gives equal lower and upper coefficients."""
import math

import pytest
import torch
import torch.nn as nn

import lirpac
from lirpac.compat import BoundedModule, BoundedTensor, PerturbationLpNorm
from lirpac.ir.ops.relu_variants import OPS
from lirpac.testing import check_op
from sampling import assert_contains, sample_lp_ball


@pytest.mark.parametrize("name", sorted(OPS.values()))
def test_rules_sound_on_random_boxes(name):
    check_op(name, shape=(6,))


class OneRelu(nn.Module):
    def forward(self, x):
        return torch.relu(x)


# x in [-1, 3]: the chord is 0.75 x + 0.75; lower lines 0.75 x, 0, x
@pytest.mark.parametrize("option, lower", [("same-slope", -0.75), ("zero-lb", 0.0),
                                           ("one-lb", -1.0), ("adaptive", -1.0)])
def test_one_neuron_closed_form(option, lower):
    x = torch.tensor([[1.0]])
    bounded = BoundedModule(OneRelu(), x, bound_opts={"activation_bound_option": option})
    bx = BoundedTensor(x, PerturbationLpNorm(eps=2.0))
    lb, ub = bounded.compute_bounds(x=(bx,), method="backward")
    torch.testing.assert_close(lb, torch.tensor([[lower]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(ub, torch.tensor([[3.0]]), atol=1e-5, rtol=0)


def test_same_slope_shares_coefficients_and_is_sound():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.rand(2, 1, 8, 8)
    bounded = BoundedModule(model, x, bound_opts={"activation_bound_option": "same-slope"})
    bx = BoundedTensor(x, PerturbationLpNorm(eps=0.1))
    lb, ub, A = bounded.compute_bounds(x=(bx,), method="backward", return_A=True)
    a = A[bounded.output_name[0]][bounded.input_name[0]]
    torch.testing.assert_close(a["lA"], a["uA"])
    points = sample_lp_ball(x, 0.1, math.inf, 64)
    assert_contains(model, points, lb, ub)
    for method in ("CROWN-Optimized", "IBP+backward", "forward"):
        assert_contains(model, points, *bounded.compute_bounds(x=(bx,), method=method))
    # set_bound_opts switches back to the adaptive lines
    bounded.set_bound_opts({"activation_bound_option": "adaptive"})
    adaptive = lirpac.compile(model, x).bounds(x, lirpac.LpBall(eps=0.1), method="crown")
    torch.testing.assert_close(bounded.compute_bounds(x=(bx,), method="backward")[0], adaptive[0])
