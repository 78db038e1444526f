"""(Bi)linear upsampling (upsample_linear): each output is a convex combination of inputs, so
every method bounds it exactly (IBP maps both ends), and a model around it is bounded soundly."""
import math

import torch
import torch.nn as nn

import lirpac
from sampling import assert_contains, sample_lp_ball


class Upsampled(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 2)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear")
        self.up_corners = nn.Upsample(scale_factor=(1, 3), mode="bilinear", align_corners=True)

    def forward(self, x):
        return self.up_corners(torch.relu(self.up(self.conv(x))))


def test_linear_upsampling_is_exact_and_sound():
    torch.manual_seed(0)
    up = nn.Upsample(scale_factor=3, mode="linear")
    x = torch.randn(2, 2, 4)
    net = lirpac.compile(up, x)
    for method in ["ibp", "crown", "forward"]:
        lower, upper = net.bounds(x, lirpac.LpBall(eps=0.1), method=method)
        torch.testing.assert_close(lower.reshape(2, -1), up(x - 0.1).reshape(2, -1))
        torch.testing.assert_close(upper.reshape(2, -1), up(x + 0.1).reshape(2, -1))
    model = Upsampled().eval()
    x = torch.randn(2, 1, 3, 3)
    net = lirpac.compile(model, x)
    points = sample_lp_ball(x, 0.2, math.inf, 32, generator=torch.Generator().manual_seed(0))
    for method in ["ibp", "crown", "forward", "alpha-crown"]:
        lower, upper = net.bounds(x, lirpac.LpBall(eps=0.2), method=method)
        assert_contains(model, points, lower, upper, what=method)
