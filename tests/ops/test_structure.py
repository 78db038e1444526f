"""Structural (linear) ops: each one, lowered from the ATen torch.export produces, inside a small
net bounded soundly by every method; in a purely linear net the bounds are exact (lower ==
upper == f(x) at eps = 0, and CROWN / forward mode give the closed form A x ± eps ||A||_1)."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import lirpac
from lirpac.ir.opdef import Interval, Linear, get_op
from sampling import assert_contains, sample_lp_ball

METHODS = ["ibp", "crown", "forward", "crown-ibp", "forward+crown"]
SHAPE = (2, 4, 4)


def _split(h):
    a, b = torch.split(h, [1, 3], dim=2)
    return torch.cat([b, a], 2)


def _chunk(h):
    a, b = torch.chunk(h, 2, dim=3)
    return torch.cat([b, a * 2], 1)


def _unbind(h):
    a, b = torch.unbind(h, 1)
    return torch.cat([b, a * 2], 1)


def _stack(h):
    return torch.stack([h[:, 1], h[:, 0] * 3], dim=3)


# name -> (op applied to h of shape (B, 2, 4, 4), module or None)
OPS = {
    "index_select": lambda h: torch.index_select(h, 2, torch.tensor([3, 0, 0, 2])),
    "fancy_index": lambda h: h[:, :, :, torch.tensor([1, -1, 1])],
    "slice_step": lambda h: h[:, :, 1::2, ::3],
    "select": lambda h: h[:, 1],
    "split": _split,
    "chunk": _chunk,
    "unbind": _unbind,
    "stack": _stack,
    "expand": lambda h: h[:, :, :1].expand(-1, -1, 3, -1),
    "expand_unsqueezed": lambda h: h[:, :1, 0].unsqueeze(2).expand(-1, 3, 2, 4),
    "repeat": lambda h: h.repeat(1, 2, 1, 3),
    "pad_value": lambda h: F.pad(h, (1, 2, 0, 1), value=0.5),
    "upsample": lambda h: F.interpolate(h, scale_factor=2, mode="nearest"),
    "upsample_size": lambda h: F.interpolate(h, size=(8, 12), mode="nearest"),
    "cumsum": lambda h: torch.cumsum(h, 2),
    "flip": lambda h: torch.flip(h, (1, 3)),
    "roll": lambda h: torch.roll(h, (1, -2), (2, 3)),
    "gather": lambda h: torch.gather(h, 3, torch.tensor([[[[0, 2], [1, 1], [3, 0], [2, 2]]]]).expand(
        h.shape[0], 2, -1, -1)),
    "constant_expanded_over_batch": lambda h: h * torch.arange(32.0).reshape(1, 2, 4, 4).expand(
        h.shape[0], -1, -1, -1),
    "narrow": lambda h: h.narrow(3, 1, 2),
    "movedim": lambda h: h.movedim(1, 3),
    "swapaxes": lambda h: h.swapaxes(1, 2),
    "unflatten": lambda h: h.flatten(2).unflatten(2, (8, 2)),
    "tile": lambda h: h.tile(2, 1),
    "repeat_interleave": lambda h: h.repeat_interleave(2, dim=2),
    "tensor_split": lambda h: torch.cat(h.tensor_split([1, 3], dim=3)[::-1], 3),
    "hstack": lambda h: torch.hstack([h, h * 2]),
    "upsample_exact": lambda h: F.interpolate(h, scale_factor=2, mode="nearest-exact"),
    "conv_transpose": nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1),
    "conv_transpose_groups": nn.ConvTranspose2d(2, 4, 2, stride=2, groups=2, dilation=2,
                                                output_padding=1, bias=False),
    "conv_transpose1d": nn.Sequential(nn.Flatten(2), nn.ConvTranspose1d(2, 2, 3, stride=3)),
}


class OpNet(nn.Module):
    """x -> x * scale + shift (-> relu) -> op -> flatten -> linear(3)."""

    def __init__(self, op, relu: bool):
        super().__init__()
        self.op = op
        self.relu = relu
        self.scale = nn.Parameter(torch.randn(SHAPE))
        self.shift = nn.Parameter(torch.randn(SHAPE))
        with torch.no_grad():
            n = self.op(torch.zeros(1, *SHAPE)).numel()
        self.head = nn.Linear(n, 3)

    def forward(self, x):
        h = x * self.scale + self.shift
        if self.relu:
            h = torch.relu(h)
        return self.head(self.op(h).flatten(1))


_COMPILED = {}


def compiled(name, relu):
    key = (name, relu)
    if key not in _COMPILED:
        torch.manual_seed(len(_COMPILED))
        model = OpNet(OPS[name], relu).eval()
        _COMPILED[key] = (model, lirpac.compile(model, torch.zeros(1, *SHAPE)))
    return _COMPILED[key]


@pytest.mark.parametrize("name", sorted(OPS))
def test_lowered_op(name):
    """The op is lowered to the structural op (not a const_fn or an error) and evaluates right."""
    model, net = compiled(name, True)
    x = torch.randn(3, *SHAPE)
    lower, upper = net.bounds(x, lirpac.LpBall(eps=0.0), method="ibp")
    out = model(x).detach()
    assert torch.allclose(lower, out, atol=1e-5) and torch.allclose(upper, out, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(sorted(OPS)), method=st.sampled_from(METHODS),
       norm=st.sampled_from([math.inf, 2.0, 1.0]), seed=st.integers(0, 10_000),
       eps=st.floats(0.0, 0.5), batch=st.integers(1, 2))
def test_bounds_contain_sampled_outputs(name, method, norm, seed, eps, batch):
    model, net = compiled(name, True)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *SHAPE, generator=g)
    lower, upper = net.bounds(x, lirpac.LpBall(eps=eps, norm=norm), method=method)
    assert torch.all(lower <= upper + 1e-5)
    assert_contains(model, sample_lp_ball(x, eps, norm, 48, generator=g), lower, upper)


@pytest.mark.parametrize("name", sorted(OPS))
def test_linear_net_is_exact(name):
    model, net = compiled(name, False)
    x = torch.randn(2, *SHAPE)
    out = model(x).detach()
    for method in METHODS:
        lower, upper = net.bounds(x, lirpac.LpBall(eps=0.0), method=method)
        assert torch.allclose(lower, out, atol=1e-5) and torch.allclose(upper, out, atol=1e-5), method
    # f(x) = A x + b: the exact bounds over the Linf ball are f(x) ± eps ||A||_1 (row-wise)
    jac = torch.autograd.functional.jacobian(lambda v: model(v.unsqueeze(0))[0], x[0])
    radius = 0.1 * jac.flatten(1).abs().sum(1)
    for method in ["crown", "forward", "crown-ibp", "forward+crown"]:
        lower, upper = net.bounds(x[:1], lirpac.LpBall(eps=0.1), method=method)
        assert torch.allclose(lower[0], out[0] - radius, atol=1e-4), method
        assert torch.allclose(upper[0], out[0] + radius, atol=1e-4), method


def test_gather_rules_match_dense_matrix():
    """gather's rules against its matrix M: IBP maps both ends, backward is M^T, forward
    mode is M."""
    op = get_op("gather")
    index = torch.tensor([[[0, 2], [1, 1], [3, 0]]])
    attrs = dict(dim=2, index=index)
    x = torch.randn(2, 3, 4)
    eye = torch.eye(12).reshape(12, 3, 4)
    matrix = op.forward(eye, **attrs).reshape(12, 6).T                  # (6, 12)
    assert torch.allclose(op.forward(x, **attrs).reshape(2, 6), x.reshape(2, 12) @ matrix.T)
    lo, hi = x - 0.3, x + 0.2
    box = op.ibp(Interval(lo, hi), **attrs)
    assert torch.equal(box.lower, op.forward(lo, **attrs)) and torch.equal(box.upper, op.forward(hi, **attrs))
    coeff = torch.randn(2, 5, 3, 2)
    (back,), lb, ub = op.backward(coeff, coeff, None, in_shapes=[(3, 4)], **attrs)
    assert torch.allclose(back[0].reshape(2, 5, 12), coeff.reshape(2, 5, 6) @ matrix)
    w = torch.randn(2, 7, 3, 4)
    lin = op.forward_mode(Linear(w, x, w, x), **attrs)
    assert torch.allclose(lin.lw.reshape(2, 7, 6), w.reshape(2, 7, 12) @ matrix.T)
