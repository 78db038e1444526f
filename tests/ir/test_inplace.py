"""In-place code as people write it (``out += shortcut``, ``mul_``, ``y[:, 0] = 0``, slice
assignment) is functionalized before lowering and bounded soundly by every method."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import lirpac
from lirpac.errors import UnsupportedOperationError
from sampling import assert_contains, sample_lp_ball

METHODS = ["ibp", "crown", "forward", "crown-ibp", "forward+crown", "alpha-crown"]


class AddInPlace(nn.Module):
    """The ResNet idiom: the block's output plus its shortcut, in place."""
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.shortcut = nn.Sequential()

    def forward(self, x):
        out = F.relu(self.conv(x), inplace=True)
        out += self.shortcut(x)
        return F.relu(out).flatten(1)


class MulInPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = torch.tanh(self.fc(x))
        y.mul_(2.0)
        y.sub_(self.fc(x))
        return y


class FillSlice(nn.Module):
    """``y[:, 0] = 0``, a strided fill and a parameter written into one column."""
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 5)
        self.v = nn.Parameter(torch.randn(3))

    def forward(self, x):
        y = torch.relu(self.fc(x))
        y[:, 0] = 0
        y[:, 1::2] = -0.5
        y[:, 2] = self.v[1]
        return self.fc2(y) if hasattr(self, "fc2") else y


class CopySlice(nn.Module):
    """``y[:, 1:3] = z`` with z perturbed, into a zeros tensor and into a perturbed one."""
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        y = self.fc(x)
        z = torch.zeros_like(y)
        z[:, 1:3] = torch.relu(y[:, :2])
        y[:, 2:] = z[:, :2]
        return torch.cat([y, z], 1)


MODELS = [(AddInPlace, (2, 3, 3)), (MulInPlace, (4,)), (FillSlice, (4,)), (CopySlice, (4,))]


@pytest.mark.parametrize("cls,shape", MODELS, ids=[m.__name__ for m, _ in MODELS])
def test_inplace_idioms_are_bounded_soundly(cls, shape):
    torch.manual_seed(0)
    model = cls().eval()
    x = torch.randn(2, *shape)
    net = lirpac.compile(model, x)
    dump = net.dump()
    assert "_(" not in dump.split("# passes")[0].replace("__", "")  # no mutating op is left
    with torch.no_grad():
        ref = model(x.clone())
    points = sample_lp_ball(x, 0.1, math.inf, 128, generator=torch.Generator().manual_seed(1))
    for method in METHODS:
        lower, upper = net.bounds(x, lirpac.LpBall(eps=0.1), method=method)
        assert torch.all(lower <= ref + 1e-5) and torch.all(ref <= upper + 1e-5), method
        assert_contains(lambda p: model(p.clone()), points, lower, upper)


def test_fill_is_exact_and_the_written_parameter_keeps_its_gradient():
    torch.manual_seed(0)
    model = FillSlice().eval()
    x = torch.randn(2, 4)
    net = lirpac.compile(model, x)
    lower, upper = net.bounds(x, lirpac.LpBall(eps=0.1), method="crown")
    assert torch.all(lower[:, 0] == 0) and torch.all(upper[:, 0] == 0)
    assert torch.all(lower[:, 1::2] == -0.5) and torch.all(upper[:, 3] == -0.5)
    lower.sum().backward()
    assert model.v.grad is not None and model.v.grad[1] == 2


def test_write_into_one_sample_is_refused():
    class OneSample(nn.Module):
        def forward(self, x):
            y = x * 2
            y[0] = 0
            return y
    with pytest.raises(UnsupportedOperationError, match="batch"):
        lirpac.compile(OneSample().eval(), torch.randn(2, 3))


def test_input_mutated_in_place():
    """A model that scales its own input in place still returns one output to bound."""
    class ScaleInput(nn.Module):
        def forward(self, x):
            x.mul_(3.0)
            return torch.relu(x)
    x = torch.randn(2, 3)
    net = lirpac.compile(ScaleInput().eval(), x.clone())
    lower, upper = net.bounds(x, lirpac.LpBall(eps=0.1), method="crown")
    assert torch.allclose(upper, torch.relu(3 * (x + 0.1)), atol=1e-6)
