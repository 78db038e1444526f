"""Every rewrite pass leaves the bounds of every method unchanged (with and without a spec C),
really fires on a model made for it, and leaves a graph that verifies."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from hypothesis import given, settings, strategies as st

import lirpac
from lirpac.api import CompiledNet
from lirpac.ir.torch_frontend import lower_module
from lirpac.ir.verify import verify_graph
from models import ARCHS, reinit

METHODS = ["ibp", "crown", "forward", "crown-ibp", "forward+crown"]


class Canonical(nn.Module):
    """Reshape chains, x * 1, x + 0, 0 + x, x / 1, x - 0 (all no-ops)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(12, 8), nn.Linear(8, 3)

    def forward(self, x):                           # (B, 3, 4)
        h = x.view(x.shape[0], 12).view(x.shape[0], 2, 6).flatten(1)
        h = (h * 1.0 + 0.0) / 1.0 - 0.0
        return self.fc2(0.0 + F.relu(self.fc1(h)) * 1.0)


class Constants(nn.Module):
    """A subgraph of literal constants (torch.arange, arithmetic on it)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):                           # (B, 6)
        offset = torch.arange(6.0) * 0.25 - 0.5
        return self.fc(F.relu(x + offset.exp()))


class BatchNormFirst(nn.Module):
    """BN with no layer before it: folds into the conv and the linear after it."""

    def __init__(self, padding=0):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(2)
        self.conv = nn.Conv2d(2, 3, 3, padding=padding)
        self.bn1 = nn.BatchNorm1d(3 * (4 + 2 * padding) ** 2)
        self.fc = nn.Linear(3 * (4 + 2 * padding) ** 2, 3)

    def forward(self, x):                           # (B, 2, 6, 6)
        h = F.relu(self.conv(self.bn0(x))).flatten(1)
        return self.fc(self.bn1(F.relu(h)))


class LinearBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Linear(7, 2)
        self.bn_out = nn.BatchNorm1d(2)

    def forward(self, x):
        return self.bn_out(self.fc2(F.relu(self.bn(self.fc1(x)))))


class Normalized(nn.Module):
    """Input normalisation (x - mean) / std before a conv (padded or not) and an MLP."""

    def __init__(self, padding):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.4, -0.2]).reshape(1, 2, 1, 1))
        self.register_buffer("std", torch.tensor([0.5, 2.0]).reshape(2, 1, 1))
        self.conv = nn.Conv2d(2, 3, 3, padding=padding, stride=2)
        self.fc = nn.Linear(3 * ((6 + 2 * padding - 3) // 2 + 1) ** 2, 3)

    def forward(self, x):                           # (B, 2, 6, 6)
        h = F.relu(self.conv((x - self.mean) / self.std * 2.0 + 0.1))
        return self.fc(h.flatten(1))


class NormalizedMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.linspace(-1, 1, 6))
        self.fc1, self.fc2 = nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x):                           # (B, 6)
        return self.fc2(F.relu(self.fc1((x - self.mean) / 0.3)))


class LinearChain(nn.Module):
    """Consecutive linear layers: 20 -> 30 -> 3 merges (60 < 690 weights)."""

    def __init__(self):
        super().__init__()
        self.fc0, self.fc1, self.fc2 = nn.Linear(4, 20), nn.Linear(20, 30), nn.Linear(30, 3)

    def forward(self, x):
        return self.fc2(self.fc1(F.relu(self.fc0(x))))


class BiasFreeBlock(nn.Module):
    """Bias-free convs with BN (a grouped one too) and a 1x1 conv + BN shortcut, as in ResNets."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False), nn.BatchNorm2d(4)
        self.short, self.bn_s = nn.Conv2d(2, 4, 1, bias=False), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):                           # (B, 2, 4, 4)
        h = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        h = F.relu(h + self.bn_s(self.short(x)))
        return self.fc(h.mean((2, 3)))


class TrailingAffine(nn.Module):
    """Per-channel scale and shift after a conv, a temperature and an offset after the last layer."""

    def __init__(self):
        super().__init__()
        self.register_buffer("gain", torch.tensor([1.5, -0.5, 2.0]).reshape(3, 1, 1))
        self.conv, self.fc = nn.Conv2d(2, 3, 3), nn.Linear(12, 4)

    def forward(self, x):                           # (B, 2, 4, 4)
        h = F.relu(self.conv(x) * self.gain - 0.2)
        return (self.fc(h.flatten(1)) + 1.0) / 2.0


CUSTOM = {
    "bias_free_block": (BiasFreeBlock, (2, 4, 4)),
    "trailing_affine": (TrailingAffine, (2, 4, 4)),
    "canonical": (Canonical, (3, 4)),
    "constants": (Constants, (6,)),
    "bn_first": (BatchNormFirst, (2, 6, 6)),
    "bn_first_padded": (lambda: BatchNormFirst(padding=1), (2, 6, 6)),
    "linear_bn": (LinearBN, (5,)),
    "normalized": (lambda: Normalized(0), (2, 6, 6)),
    "normalized_padded": (lambda: Normalized(1), (2, 6, 6)),
    "normalized_mlp": (NormalizedMLP, (6,)),
    "linear_chain": (LinearChain, (4,)),
}
MODELS = {**ARCHS, **CUSTOM}
_LOWERED = {}


def lowered(name):
    if name not in _LOWERED:
        cls, shape = MODELS[name]
        model = reinit(cls(), 0)
        _LOWERED[name] = (model, lower_module(model, torch.zeros(2, *shape)), shape)
    return _LOWERED[name]


def count(graph, op, perturbed_only=False):
    return sum(n.op == op and (n.perturbed or not perturbed_only) for n in graph.nodes)


def assert_same_bounds(name, passes, methods=METHODS, seed=1, tighter_ok=()):
    model, graph, shape = lowered(name)
    reinit(model, seed)
    before, after = CompiledNet(graph, []), CompiledNet(graph, passes)
    verify_graph(after.graph, torch.zeros(2, *shape))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, *shape, generator=g, dtype=torch.float64)
    C = torch.randn(2, 2, before.output_shape[0], generator=g, dtype=torch.float64)
    for method in methods:
        for spec in (None, C):
            ball = lirpac.LpBall(eps=0.1)
            lo0, up0 = before.bounds(x, ball, method=method, C=spec)
            lo1, up1 = after.bounds(x, ball, method=method, C=spec)
            # a fold that makes the output a linear layer lets IBP fold C into it (tighter)
            spec_folds = method == "ibp" and spec is not None and after.graph.output.op == "linear" \
                and before.graph.output.op != "linear"
            if method in tighter_ok or spec_folds:
                assert torch.all(lo1 >= lo0 - 1e-9) and torch.all(up1 <= up0 + 1e-9), (name, method)
            else:
                torch.testing.assert_close(lo1, lo0, rtol=1e-5, atol=1e-7, msg=f"{name} {method} {spec is not None}")
                torch.testing.assert_close(up1, up0, rtol=1e-5, atol=1e-7, msg=f"{name} {method} {spec is not None}")
    return after.graph


@pytest.mark.parametrize("name", sorted(MODELS))
def test_default_passes_keep_bounds(name):
    assert_same_bounds(name, None)


_NETS = {}


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(sorted(MODELS)), seed=st.integers(0, 10_000), eps=st.floats(0.0, 0.3),
       norm=st.sampled_from([math.inf, 2.0, 1.0]), method=st.sampled_from(METHODS),
       use_spec=st.booleans())
def test_default_passes_keep_bounds_on_random_weights(name, seed, eps, norm, method, use_spec):
    model, graph, shape = lowered(name)
    if name not in _NETS:
        _NETS[name] = (CompiledNet(graph, []), CompiledNet(graph, None))
    before, after = _NETS[name]
    reinit(model, seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, *shape, generator=g, dtype=torch.float64)
    C = torch.randn(1, 3, before.output_shape[0], generator=g, dtype=torch.float64) if use_spec else None
    ball = lirpac.LpBall(eps=eps, norm=norm)
    lo0, up0 = before.bounds(x, ball, method=method, C=C)
    lo1, up1 = after.bounds(x, ball, method=method, C=C)
    spec_folds = after.graph.output.op == "linear" and before.graph.output.op != "linear"
    # on an Lp ball IBP bounds the input's first affine layer by its dual norm (exact); a fold
    # that makes the input feed a layer directly (BN or normalisation folded) lets it do so
    ball_first_layer = norm != math.inf and method in ("ibp", "crown-ibp")
    if (method == "ibp" and use_spec and spec_folds) or ball_first_layer:
        slack = 1e-9 + 1e-7 * torch.maximum(lo0.abs(), up0.abs())   # the folds round differently
        assert torch.all(lo1 >= lo0 - slack) and torch.all(up1 <= up0 + slack)
    else:
        torch.testing.assert_close(lo1, lo0, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(up1, up0, rtol=1e-5, atol=1e-7)


def test_canonicalize_fires():
    graph = assert_same_bounds("canonical", ["canonicalize"])
    _, original, _ = lowered("canonical")
    assert count(graph, "reshape") == 1 < count(original, "reshape")
    assert count(graph, "mul") == count(graph, "add") == count(graph, "div") == count(graph, "sub") == 0


def test_fold_constants_fires():
    graph = assert_same_bounds("constants", ["fold_constants"])
    assert count(graph, "const_fn") == 0 < count(lowered("constants")[1], "const_fn")


@pytest.mark.parametrize("name", ["convnet", "resnet_tiny", "residual", "linear_bn", "bias_free_block", "bn_first",
                                  "bn_first_padded"])
def test_fold_batchnorm_fires(name):
    graph = assert_same_bounds(name, ["fold_batchnorm"])
    assert count(graph, "batch_norm") == 0 < count(lowered(name)[1], "batch_norm")


@pytest.mark.parametrize("name", ["normalized", "normalized_padded", "normalized_mlp"])
def test_fold_normalization_fires(name):
    graph = assert_same_bounds(name, ["fold_normalization"])
    perturbed_arith = [n for n in graph.nodes if n.perturbed and n.op in ("sub", "div", "mul")]
    assert not perturbed_arith
    # a zero-padded conv keeps the shift as a bias map (one add after the conv)
    adds = [n for n in graph.nodes if n.perturbed and n.op == "add"]
    assert len(adds) == (1 if name == "normalized_padded" else 0)


def test_fold_into_padded_conv_bias_would_be_wrong():
    """The reason for the bias map: with padding, W t in the bias differs at the borders."""
    model = Normalized(1).eval()
    x = torch.randn(1, 2, 6, 6)
    shifted = model.conv((x - model.mean) / model.std)
    w = model.conv.weight / model.std.reshape(1, 2, 1, 1)
    naive_bias = model.conv.bias - (w * model.mean.reshape(1, 2, 1, 1)).sum((1, 2, 3))
    naive = F.conv2d(x, w, naive_bias, stride=2, padding=1)
    assert not torch.allclose(naive, shifted, atol=1e-4)


@pytest.mark.parametrize("name", ["trailing_affine", "residual"])
def test_fold_trailing_affine_fires(name):
    graph = assert_same_bounds(name, ["fold_trailing_affine"])
    assert graph.output.op == "linear"
    assert not [n for n in graph.nodes if n.perturbed and n.op in ("add", "sub", "mul", "div")
                and any(i.op in ("linear", "conv") for i in n.inputs)]


def test_merge_linear_fires_and_only_tightens_interval_rules():
    graph = assert_same_bounds("linear_chain", ["merge_linear"],
                               tighter_ok=("ibp", "forward", "crown-ibp", "forward+crown"))
    assert count(graph, "linear", perturbed_only=True) == 2


def test_merge_linear_skips_when_not_cheaper():
    graph = assert_same_bounds("mlp", ["merge_linear"])
    assert count(graph, "linear", perturbed_only=True) == 3


def test_dead_code_removes_dead_nonlinear_nodes():
    _, graph, shape = lowered("mlp")
    graph = graph.copy()
    hidden = next(n for n in graph.nodes if n.op == "linear")
    graph.add("relu", [hidden], name="dead_relu", shape=hidden.shape, batched=True, perturbed=True)
    net = CompiledNet(graph, ["dead_code"])
    assert "dead_relu" not in {n.name for n in net.graph.nodes}
    assert "dead_relu" in {n.name for n in graph.nodes}     # the given graph is untouched
