"""Minimised failures the differential fuzzer (tests/fuzz_checks.py) found, one test each."""
import math

import pytest
import torch
from torch import nn

import lirpac
from lirpac.testing import assert_contains, sample_lp_ball


class RatioOfSquare(nn.Module):
    """a / (b * b + 1): IBP proves b * b + 1 >= 1, while a CROWN or forward-mode bound of
    b * b (a tangent below) dips below 0, where the reciprocal has no relaxation."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x):
        b = self.b(x)
        return self.a(x) / (b * b + 1)


class LogOfSquare(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        y = self.fc(x)
        return torch.log(y * y + 0.5) + torch.sqrt(y * y) + (y * y + 1) ** -0.5


@pytest.mark.parametrize("cls", [RatioOfSquare, LogOfSquare])
def test_domain_ops_keep_ibp_bounds(cls):
    """A relaxation with a domain (reciprocal, log, sqrt, negative powers) reads bounds no
    looser than IBP's: every method bounds what IBP bounds, soundly."""
    torch.manual_seed(0)
    model = cls().double()
    x = torch.randn(2, 3, dtype=torch.float64)
    net = lirpac.compile(model, x)
    ball = lirpac.LpBall(eps=1.5, norm=math.inf)
    points = sample_lp_ball(x, 1.5, math.inf, 64, generator=torch.Generator().manual_seed(0))
    for method in lirpac.methods.METHODS:
        lower, upper = net.bounds(x, ball, method=method,
                                  options={"iterations": 2} if method == "alpha-crown" else None)
        assert_contains(model, points, lower, upper, what=method)


class NormalizedRelu(nn.Module):
    """F.normalize of ReLU features: IBP bounded the quotient by x * (1 / 1e-12) and the next
    layer's centre-radius form lost its bias against ends of 1e12 (float32: a lower bound of
    0 where the output is -0.632 at x = 0)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 1)
        with torch.no_grad():
            self.fc.weight[:] = torch.tensor([[1.446, 2.0211]])
            self.fc.bias[:] = -0.632

    def forward(self, x):
        return self.fc(torch.nn.functional.normalize(torch.relu(x), dim=1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normalize_of_relu_features(dtype):
    model = NormalizedRelu().to(dtype)
    x = torch.tensor([[0.5, 0.7]], dtype=dtype)
    net = lirpac.compile(model, x)
    box = lirpac.Box(torch.tensor([[-0.3, -0.1]], dtype=dtype), torch.tensor([[2.5, 2.7]], dtype=dtype))
    at_zero = model(torch.zeros(1, 2, dtype=dtype)).item()
    corners = torch.tensor([[a, b] for a in (-0.3, 2.5) for b in (-0.1, 2.7)], dtype=dtype)
    for method in ("ibp", "crown", "crown-ibp"):
        lower, upper = net.bounds(x, box, method=method)
        assert lower.item() <= at_zero + 1e-6, method
        assert upper.item() < 10, method     # the quotient is known to lie in [-1, 1]
        assert_contains(model, corners.unsqueeze(1), lower, upper, what=method)


def test_onnx_conv_transpose_matches_torch():
    """The ONNX frontend lowers ConvTranspose (it refused it: a torch model with
    nn.ConvTranspose2d compiled directly but not once exported) to the same bounds."""
    import io
    import warnings
    onnx = pytest.importorskip("onnx")
    torch.manual_seed(0)
    model = nn.Sequential(nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    x = torch.randn(2, 2, 4, 4)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, x[:1], buffer, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
    from_onnx = lirpac.compile(onnx.load_from_string(buffer.getvalue()))
    from_torch = lirpac.compile(model, x)
    ball = lirpac.LpBall(eps=0.1)
    for method in ("ibp", "crown"):
        for a, b in zip(from_onnx.bounds(x, ball, method=method), from_torch.bounds(x, ball, method=method)):
            torch.testing.assert_close(a, b)


class SqrtOfSoftplus(nn.Module):
    """sqrt(softplus(y)): softplus underflows to 0 for very negative y and its padded IBP
    bound is -1.2e-38, which kept sqrt from relaxing under every linear method."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        return torch.sqrt(torch.nn.functional.softplus(self.fc(x) * 100))


def test_sqrt_of_underflowing_softplus():
    torch.manual_seed(0)
    model = SqrtOfSoftplus()
    x = torch.randn(2, 2)
    net = lirpac.compile(model, x)
    points = sample_lp_ball(x, 3.0, math.inf, 64, generator=torch.Generator().manual_seed(0))
    for method in ("crown", "forward", "crown-ibp"):
        lower, upper = net.bounds(x, lirpac.LpBall(eps=3.0), method=method)
        assert_contains(model, points, lower, upper, what=method)
