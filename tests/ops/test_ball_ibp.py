"""OpDef.ibp_ball: the range of one affine layer over an Lp ball is f(c) +- eps * ||row||_dual,
exactly; checked against the rows of the layer's dense Jacobian (padding, stride, groups)."""
import math

import pytest
import torch

from lirpac.ir.ops.linear import _conv, _conv_ball, _linear_ball


@pytest.mark.parametrize("dual", [2.0, math.inf])
@pytest.mark.parametrize("nd,channels,out,groups", [(1, 2, 4, 1), (2, 4, 6, 2), (3, 2, 2, 1)])
def test_conv_ball_radius_is_the_dual_norm_of_each_row(dual, nd, channels, out, groups):
    torch.manual_seed(nd)
    spatial = (7,) * nd if nd < 3 else (4,) * 3
    weight = torch.randn(out, channels // groups, *(3,) * nd, dtype=torch.float64)
    center = torch.randn(1, channels, *spatial, dtype=torch.float64)
    attrs = dict(stride=(2,) * nd, padding=(1,) * nd, dilation=(1,) * nd, groups=groups)
    jac = torch.autograd.functional.jacobian(lambda t: _conv(t, weight, None, **attrs), center)
    rows = jac.reshape(-1, center.numel())
    eps = torch.full((1, 1), 0.3, dtype=torch.float64)
    bounds = _conv_ball(center, eps, dual, weight, None, **attrs)
    torch.testing.assert_close(((bounds.upper - bounds.lower) / 2).flatten(), 0.3 * rows.norm(p=dual, dim=1))
    torch.testing.assert_close((bounds.upper + bounds.lower).flatten() / 2, _conv(center, weight, None, **attrs).flatten())


@pytest.mark.parametrize("dual", [2.0, math.inf])
def test_linear_ball_radius(dual):
    weight = torch.randn(5, 7, dtype=torch.float64)
    center = torch.randn(3, 7, dtype=torch.float64)
    eps = torch.tensor([[0.1], [0.2], [0.0]], dtype=torch.float64)
    bounds = _linear_ball(center, eps, dual, weight)
    torch.testing.assert_close((bounds.upper - bounds.lower) / 2, eps * weight.norm(p=dual, dim=1))
