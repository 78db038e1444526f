"""Patches (codegen/patches.py): the windowed form of backward coefficients through convs gives
the same bounds as the dense matrix form, for strides, padding, dilation, groups and residual
adds, every method that runs a backward pass, with and without a spec; and stays sound."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import assume, given, settings, strategies as st

import lirpac
from lirpac.codegen.patches import Patches, acc_patches, identity_patches
from lirpac.ir.ops.linear import _conv_backward
from models import ConvNet, ResNetTiny, reinit
from sampling import assert_contains, sample_lp_ball


class StridedDilatedGrouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=2, dilation=2)
        self.c3 = nn.Conv2d(4, 6, (3, 2), stride=(1, 2), padding=(0, 1), groups=2)
        self.fc = nn.Linear(6 * 3 * 3, 3)

    def forward(self, x):                           # x: (B, 2, 10, 9)
        h = F.relu(self.c1(x))                      # (4, 5, 5)
        h = F.relu(self.c2(h) * 0.7 - 0.1)          # (4, 5, 5)
        h = F.relu(self.c3(h))                      # (6, 3, 3)
        return self.fc(h.flatten(1))


class TwoBlocks(nn.Module):
    """Identity skip, then a strided block whose skip is a 1x1 conv: the windows of the two
    branches differ in size and offset and must be merged."""
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.a1, self.n1 = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.a2, self.n2 = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.b1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.b2 = nn.Conv2d(4, 4, 3, padding=1)
        self.skip = nn.Conv2d(3, 4, 1, stride=2)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):                           # x: (B, 1, 8, 8)
        h = F.relu(self.stem(x))
        h = F.relu(self.n2(self.a2(F.relu(self.n1(self.a1(h))))) + h)
        h = F.relu(self.b2(F.relu(self.b1(h))) + self.skip(h))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


class DensePooled(nn.Module):
    """DenseNet's pattern: channel concatenations (with a constant operand too), average
    pooling as a depthwise convolution, and one pooling that is not one (padding left out of
    the count), where the windows must go dense."""
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(5, 2, 3, padding=1)
        self.c3 = nn.Conv2d(8, 3, 1)
        self.register_buffer("const", torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4))
        self.fc = nn.Linear(3 * 2 * 2, 3)

    def forward(self, x):                           # x: (B, 2, 8, 8)
        h = torch.cat([x, F.relu(self.c1(x))], 1)   # (5, 8, 8)
        h = torch.cat([h, F.relu(self.c2(h)) + 0.1, F.relu(-h[:, :1])], 1)   # (8, 8, 8)
        h = F.avg_pool2d(F.relu(h), 2)              # (8, 4, 4)
        h = torch.cat([F.relu(self.c3(h))[:, :2], self.const.expand(x.shape[0], 1, 4, 4)], 1)
        h = F.avg_pool2d(F.relu(h), 3, stride=2, padding=1, count_include_pad=False)   # (3, 2, 2)
        return self.fc(F.relu(h).flatten(1))


MODELS = {
    "dense_pooled": (DensePooled, (2, 8, 8)),
    "strided": (StridedDilatedGrouped, (2, 10, 9)),
    "two_blocks": (TwoBlocks, (1, 8, 8)),
    "convnet": (ConvNet, (2, 8, 8)),
    "resnet_tiny": (ResNetTiny, (1, 5, 5)),
}
_NETS = {}


def nets(name):
    """(model, {conv_mode: net}) in float64, compiled once."""
    if name not in _NETS:
        cls, shape = MODELS[name]
        model = reinit(cls().double(), 0)
        example = torch.zeros(1, *shape, dtype=torch.float64)
        _NETS[name] = (model, {mode: lirpac.compile(model, example, conv_mode=mode)
                               for mode in ("matrix", "patches", "auto")}, shape)
    return _NETS[name]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("method", ["crown", "crown-ibp", "forward+crown"])
@pytest.mark.parametrize("use_spec", [False, True])
def test_patches_and_matrix_give_the_same_bounds(name, method, use_spec):
    model, compiled, shape = nets(name)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, *shape, generator=g, dtype=torch.float64)
    C = torch.randn(2, 2, compiled["matrix"].output_shape[0], generator=g, dtype=torch.float64) \
        if use_spec else None
    for norm in (math.inf, 2.0):
        ball = lirpac.LpBall(eps=0.05, norm=norm)
        ref = compiled["matrix"].bounds(x, ball, method=method, C=C)
        for mode in ("patches", "auto"):
            got = compiled[mode].bounds(x, ball, method=method, C=C)
            for a, b in zip(got, ref):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_crown_really_runs_on_patches(name):
    _, compiled, _ = nets(name)
    assert "identity_patches" in compiled["patches"].source("crown")
    assert "identity_patches" not in compiled["matrix"].source("crown")


def test_chunked_rows_give_the_same_bounds():
    model, compiled, shape = nets("two_blocks")
    x = torch.rand(2, *shape, dtype=torch.float64)
    ball = lirpac.LpBall(eps=0.1)
    ref = compiled["patches"].bounds(x, ball, method="crown")
    for mode in ("matrix", "patches"):
        tiny = lirpac.compile(model, x[:1], conv_mode=mode, max_memory=1)   # one row a pass
        for a, b in zip(tiny.bounds(x, ball, method="crown"), ref):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_bad_conv_mode_is_an_input_error():
    model, _, shape = nets("convnet")
    with pytest.raises(lirpac.errors.InputError, match="conv_mode"):
        lirpac.compile(model, torch.zeros(1, *shape, dtype=torch.float64), conv_mode="dense")


# -- the Patches type alone ---------------------------------------------------------------------

def random_patches(batch, rows, shape, kernel, generator):
    """Rows at random positions (some hanging over the edges) with zeros outside the map."""
    channels, height, width = shape
    top = torch.randint(-kernel + 1, height, (rows,), generator=generator)
    left = torch.randint(-kernel + 1, width, (rows,), generator=generator)
    coeff = torch.randn(batch, rows, channels, kernel, kernel, generator=generator, dtype=torch.float64)
    p = Patches(coeff, top, left, shape)
    p.coeff = p.coeff * p._inside_mask()
    return p


@pytest.mark.parametrize("stride,padding,dilation,groups", [
    ((1, 1), (1, 1), (1, 1), 1), ((2, 2), (1, 0), (1, 1), 1), ((1, 2), (2, 2), (2, 1), 2),
    ((3, 3), (0, 0), (1, 1), 4)])
def test_conv_transpose_of_patches_matches_the_dense_rule(stride, padding, dilation, groups):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 4 // groups, 3, 3, generator=g, dtype=torch.float64)
    x = torch.randn(1, 4, 11, 10, dtype=torch.float64, generator=g)
    out_shape = F.conv2d(x, weight, None, stride, padding, dilation, groups).shape[1:]
    p = random_patches(2, 7, tuple(out_shape), 2, g)
    dense = p.to_dense()
    (expect, _), _ = _conv_backward(dense, dense, None, weight, in_shapes=((4, 11, 10), None),
                                    stride=stride, padding=padding, dilation=dilation, groups=groups)[0]
    got = p.conv_transpose(weight, stride, padding, dilation, groups, (4, 11, 10))
    torch.testing.assert_close(got.to_dense(), expect)


@settings(max_examples=30, deadline=None)
@given(channels=st.integers(1, 5), kernel=st.integers(1, 5), stride=st.integers(1, 3),
       padding=st.integers(0, 2), height=st.integers(1, 9), width=st.integers(1, 9),
       extra=st.integers(0, 2), one_channel=st.booleans())
def test_transposed_convolution_of_one_channel_by_fold_matches_torch(channels, kernel, stride, padding,
                                                                     height, width, extra, one_channel):
    """ir/ops/linear.conv_transpose_2d: a convolution that reads one channel goes back by a
    product and a fold, the others by oneDNN on channels-last; both are torch's adjoint, output
    padding (``extra`` rows a strided convolution never reads) included."""
    from lirpac.ir.ops.linear import conv_transpose_2d
    g = torch.Generator().manual_seed(channels * 131 + kernel * 17 + height)
    in_channels = 1 if one_channel else 2
    weight = torch.randn(channels, in_channels, kernel, kernel, generator=g, dtype=torch.float64)
    size = ((height - 1) * stride - 2 * padding + kernel + min(extra, stride - 1),
            (width - 1) * stride - 2 * padding + kernel + min(extra, stride - 1))
    assume(min(size) >= 1)
    a = torch.randn(3, channels, height, width, generator=g, dtype=torch.float64)
    out_pad = tuple(s - ((n - 1) * stride - 2 * padding + kernel) for s, n in zip(size, (height, width)))
    expect = F.conv_transpose2d(a, weight, None, stride, padding, out_pad)
    got = conv_transpose_2d(a, weight, (stride, stride), (padding, padding), (1, 1), 1, size)
    torch.testing.assert_close(got, expect)


def test_conv_transpose_of_one_channel_patches_matches_the_dense_rule():
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(4, 1, 4, 4, generator=g, dtype=torch.float64)
    p = random_patches(2, 9, (4, 6, 6), 3, g)
    dense = p.to_dense()
    (expect, _), _ = _conv_backward(dense, dense, None, weight, in_shapes=((1, 12, 12), None),
                                    stride=(2, 2), padding=(1, 1), dilation=(1, 1), groups=1)[0]
    got = p.conv_transpose(weight, (2, 2), (1, 1), (1, 1), 1, (1, 12, 12))
    torch.testing.assert_close(got.to_dense(), expect)


def test_windows_bias_and_merge_match_dense():
    g = torch.Generator().manual_seed(2)
    shape = (3, 6, 5)
    a = random_patches(2, 5, shape, 3, g)
    b = Patches(torch.randn(2, 5, 3, 2, 2, generator=g, dtype=torch.float64), a.top + 1, a.left - 1, shape)
    b.coeff = b.coeff * b._inside_mask()
    t = torch.randn(2, *shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(a.bias(t), (a.to_dense() * t.unsqueeze(1)).flatten(2).sum(-1))
    merged = acc_patches(a, b)
    assert isinstance(merged, Patches)
    torch.testing.assert_close(merged.to_dense(), a.to_dense() + b.to_dense())
    rows = torch.tensor([0, 7, 29, 89])
    eye = identity_patches(2, rows, shape, t).to_dense().reshape(2, 4, -1)
    torch.testing.assert_close(eye, torch.eye(90, dtype=torch.float64)[rows].expand(2, 4, 90))


# -- soundness on patches ------------------------------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(name=st.sampled_from(sorted(MODELS)), norm=st.sampled_from([math.inf, 2.0, 1.0]),
       seed=st.integers(0, 10_000), eps=st.floats(0.0, 0.5), use_spec=st.booleans())
def test_patch_bounds_contain_sampled_outputs(name, norm, seed, eps, use_spec):
    model, compiled, shape = nets(name)
    net = compiled["patches"]
    reinit(model, seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, *shape, generator=g, dtype=torch.float64)
    C = torch.randn(2, 2, net.output_shape[0], generator=g, dtype=torch.float64) if use_spec else None
    lower, upper = net.bounds(x, lirpac.LpBall(eps=eps, norm=norm), method="crown", C=C)
    points = sample_lp_ball(x, eps, norm, 64, generator=g)
    assert_contains(model, points, lower, upper, C=C)
    reinit(model, 0)


class PaddedPool(nn.Module):
    """Average pooling with padding counted (a depthwise convolution with zero padding) and
    a stride that does not divide the map, between two convolutions."""
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 2, 2)
        self.fc = nn.Linear(2 * 3 * 3, 2)

    def forward(self, x):                           # x: (B, 2, 7, 7)
        h = F.avg_pool2d(F.relu(self.c1(x)), 3, stride=2, padding=1)   # (3, 4, 4)
        return self.fc(F.relu(self.c2(F.relu(h))).flatten(1))


def test_padded_average_pooling_keeps_windows_and_bounds():
    model = reinit(PaddedPool().double(), 3)
    x = torch.rand(2, 2, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ball = lirpac.LpBall(eps=0.1)
    nets = {mode: lirpac.compile(model, x[:1], conv_mode=mode) for mode in ("matrix", "patches")}
    assert "pat_avg_pool" in nets["patches"].source("crown")
    ref = nets["matrix"].bounds(x, ball, method="crown")
    for a, b in zip(nets["patches"].bounds(x, ball, method="crown"), ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert_contains(model, sample_lp_ball(x, 0.1, math.inf, 64), *ref)
