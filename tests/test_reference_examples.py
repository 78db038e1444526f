"""What the reference library's example scripts need from lirpac.compat beyond the basics (its
module paths, names its star imports bring, its L0 perturbation, bounds of a two-input model
given by forward), each checked against closed forms or sampled outputs."""
import math

import pytest
import torch
import torch.nn as nn

import lirpac
from lirpac.compat import BoundedModule, BoundedTensor
from sampling import assert_contains, sample_lp_ball


def test_module_paths_and_star_import_names():
    namespace = {}
    exec("from lirpac.compat.perturbations import *", namespace)
    assert namespace["np"].inf == math.inf and namespace["torch"] is torch
    from lirpac.compat.eps_scheduler import FixedScheduler, LinearScheduler  # noqa: F401
    from lirpac.compat.utils import Flatten, MultiAverageMeter  # noqa: F401
    meter = MultiAverageMeter()
    meter.update("Loss", 2.0, 3)
    assert "Loss=2.0000" in str(meter)


class TwoHalves(nn.Module):
    """An image given as its top and bottom halves (the reference's two-node example)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, stride=2, padding=1)
        self.fc = nn.Linear(3 * 4 * 4, 4)

    def forward(self, top, bottom):
        x = torch.cat([top, bottom], dim=2)
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_two_inputs_bounded_after_forward_hold_on_samples():
    from lirpac.compat.perturbations import PerturbationLpNorm
    torch.manual_seed(0)
    model = TwoHalves().eval()
    image = torch.rand(2, 1, 8, 8)
    top, bottom = torch.split(image, [4, 4], dim=2)
    bounded = BoundedModule(model, (torch.empty_like(top), torch.empty_like(bottom)),
                            bound_opts={"conv_mode": "matrix"})
    ptb = PerturbationLpNorm(norm=math.inf, eps=0.1)
    pred = bounded(BoundedTensor(top, ptb), BoundedTensor(bottom, ptb))
    torch.testing.assert_close(pred, model(top, bottom))
    lb, ub = bounded.compute_bounds()
    points = sample_lp_ball(image, 0.1, math.inf, 64)
    assert_contains(lambda x: model(x[:, :, :4], x[:, :, 4:]), points, lb, ub)


@pytest.mark.parametrize("eps, ratio", [(1, 1.0), (2.5, 1.0), (2, 0.4), (0, 1.0)])
def test_l0_perturbation_closed_form_on_a_linear_map(eps, ratio):
    """w . x' with at most ceil(eps) elements moved, each within [x - ratio x, x + ratio (1 - x)]:
    the bounds move w . x by the largest ceil(eps) gains (or losses) of single elements."""
    from lirpac.compat.perturbations import PerturbationL0Norm
    torch.manual_seed(1)
    model = nn.Linear(6, 1, bias=False)
    x = torch.rand(1, 6)
    bounded = BoundedModule(model, x)
    bx = BoundedTensor(x, PerturbationL0Norm(eps=eps, ratio=ratio))
    w = model.weight.detach()[0]
    up = torch.maximum(w * ratio * (1 - x[0]), -w * ratio * x[0])
    down = torch.minimum(w * ratio * (1 - x[0]), -w * ratio * x[0])
    k = math.ceil(eps)
    centre = float(model(x).detach())
    expected_ub = centre + float(up.sort(descending=True).values[:k].sum())
    expected_lb = centre + float(down.sort().values[:k].sum())
    for method in ("IBP", "backward"):
        lb, ub = (t.detach() for t in bounded.compute_bounds(x=(bx,), method=method))
        if method == "backward":     # a linear map: exact
            assert float(lb) == pytest.approx(expected_lb, abs=1e-5)
            assert float(ub) == pytest.approx(expected_ub, abs=1e-5)
        assert float(lb) <= expected_lb + 1e-5 and float(ub) >= expected_ub - 1e-5


def test_l0_perturbation_refuses_what_the_reference_ignores():
    from lirpac.compat.perturbations import PerturbationL0Norm
    with pytest.raises(lirpac.InputError, match="x_L"):
        PerturbationL0Norm(eps=1, x_L=torch.zeros(1, 2))
    with pytest.raises(lirpac.InputError, match="ratio"):
        PerturbationL0Norm(eps=1, ratio=2.0)
