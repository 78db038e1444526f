"""lirpac.compat: auto_LiRPA's names give lirpac's bounds."""
import pytest
import torch

import lirpac
from lirpac.compat import BoundedModule, BoundedTensor, PerturbationLpNorm
from models import ARCHS, reinit

NAMES = {"IBP": "ibp", "CROWN": "crown", "backward": "crown", "forward": "forward",
         "CROWN-IBP": "crown-ibp", "IBP+backward": "crown-ibp", "Forward+Backward": "forward+crown"}


@pytest.fixture(scope="module")
def setup():
    cls, shape = ARCHS["convnet"]
    model = cls().eval()
    reinit(model, 1)
    x = torch.randn(2, *shape)
    return model, BoundedModule(model, torch.empty_like(x)), x


@pytest.mark.parametrize("name", sorted(NAMES))
def test_method_names_map_to_lirpac_methods(setup, name):
    model, bounded, x = setup
    ptb = PerturbationLpNorm(eps=0.05)
    lower, upper = bounded.compute_bounds(x=(BoundedTensor(x, ptb),), method=name)
    ref_lower, ref_upper = bounded.net.bounds(x, lirpac.LpBall(eps=0.05), method=NAMES[name])
    assert torch.equal(lower, ref_lower) and torch.equal(upper, ref_upper)


def test_forward_runs_the_model_and_x_L_x_U_clip(setup):
    model, bounded, x = setup
    bx = BoundedTensor(x, PerturbationLpNorm(eps=0.3, x_L=x - 0.1, x_U=x + 0.1))
    assert torch.equal(bounded(bx), model(x))
    wide = bounded.compute_bounds(x=(bx,), method="IBP")
    narrow = bounded.net.bounds(x, lirpac.LpBall(eps=0.1), method="ibp")
    assert torch.allclose(wide[0], narrow[0]) and torch.allclose(wide[1], narrow[1])


def test_return_A_gives_sound_linear_bounds(setup):
    model, bounded, x = setup
    C = torch.randn(2, 3, bounded.net.output_shape[0])
    lower, upper, A = bounded.compute_bounds(x=(BoundedTensor(x, PerturbationLpNorm(eps=0.05)),),
                                             method="CROWN", C=C, return_A=True)
    entry = A[bounded.output_name()[0]][bounded.input_name()[0]]
    assert entry["lA"].shape == (2, 3, *x.shape[1:])
    # at the centre the linear bounds enclose the output
    y = torch.einsum("bso,bo->bs", C, model(x))
    lin_lo = (entry["lA"] * x.unsqueeze(1)).flatten(2).sum(-1) + entry["lbias"]
    lin_up = (entry["uA"] * x.unsqueeze(1)).flatten(2).sum(-1) + entry["ubias"]
    assert torch.all(lin_lo <= y + 1e-5) and torch.all(y <= lin_up + 1e-5)


def test_unknown_method_and_missing_perturbation(setup):
    _, bounded, x = setup
    with pytest.raises(lirpac.InputError, match="unknown method"):
        bounded.compute_bounds(x=(BoundedTensor(x, PerturbationLpNorm(eps=0.1)),), method="magic")
    with pytest.raises(lirpac.InputError, match="BoundedTensor"):
        bounded.compute_bounds(x=(x,), method="IBP")
