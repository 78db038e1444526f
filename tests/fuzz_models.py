"""Random small models for the differential fuzzer (tests/test_fuzz.py): a seed picks an input
(a vector, a 1-D signal or an image) and a chain of blocks drawn from the ops lirpac bounds,
each block legal for the shape it receives; ``describe`` names the blocks so that a failure
reads as a model one can rebuild by hand."""
from __future__ import annotations

import random

import torch
from torch import nn
import torch.nn.functional as F


class Fn(nn.Module):
    """A parameter-free block: ``fn(x)`` under a readable name."""

    def __init__(self, name, fn):
        super().__init__()
        self.name, self.fn = name, fn

    def forward(self, x):
        return self.fn(x)

    def extra_repr(self):
        return self.name


class Two(nn.Module):
    """Two branches of x combined: ``combine(a(x), b(x))`` (residual adds, products, cat, max)."""

    def __init__(self, name, a, b, combine):
        super().__init__()
        self.name, self.a, self.b, self.combine = name, a, b, combine

    def forward(self, x):
        return self.combine(self.a(x), self.b(x))

    def extra_repr(self):
        return self.name


def _act(rng):
    return rng.choice([
        nn.ReLU(), nn.LeakyReLU(0.1), nn.Sigmoid(), nn.Tanh(), nn.GELU(), nn.Softplus(),
        nn.ELU(), nn.Hardtanh(-0.5, 0.7), nn.SiLU(), nn.Hardswish(), nn.Hardsigmoid(),
        Fn("abs", torch.abs), Fn("clamp(-0.3, 0.4)", lambda x: torch.clamp(x, -0.3, 0.4)),
        Fn("x*x", lambda x: x * x), Fn("sin", torch.sin), Fn("atan", torch.atan),
        Fn("relu6", F.relu6), Fn("neg", torch.neg), nn.Mish(),
    ])


# ---- vector state (B, n) ----

def _vec_blocks(rng, n):
    """(block, new width) choices for a (B, n) state."""
    m = rng.randint(2, 6)
    choices = [
        lambda: (nn.Linear(n, m), m),
        lambda: (_act(rng), n),
        lambda: (Two("x + act(linear(x))", nn.Identity(), nn.Sequential(nn.Linear(n, n), _act(rng)),
                     torch.add), n),
        lambda: (Two("linear(x) * linear(x)", nn.Linear(n, m), nn.Linear(n, m), torch.mul), m),
        lambda: (Two("cat(linear, act)", nn.Linear(n, m), _act(rng),
                     lambda a, b: torch.cat([a, b], 1)), m + n),
        lambda: (Two("maximum(linear, linear)", nn.Linear(n, m), nn.Linear(n, m), torch.maximum), m),
        lambda: (Two("minimum(linear, linear)", nn.Linear(n, m), nn.Linear(n, m), torch.minimum), m),
        lambda: (Two("linear - linear", nn.Linear(n, m), nn.Linear(n, m), torch.sub), m),
        lambda: (Fn("x / 3 - 0.5", lambda x: x / 3.0 - 0.5), n),
        lambda: (Fn("x * 2 + 1", lambda x: x * 2.0 + 1.0), n),
        lambda: (Fn("softmax", lambda x: torch.softmax(x, -1)), n),
        lambda: (Fn("log_softmax", lambda x: torch.log_softmax(x, -1)), n),
        lambda: (nn.LayerNorm(n), n),
        lambda: (nn.BatchNorm1d(n), n),
        lambda: (Fn("x[:, 1:]", lambda x: x[:, 1:]), n - 1) if n > 2 else (nn.Identity(), n),
        lambda: (Fn("x[:, ::2]", lambda x: x[:, ::2]), (n + 1) // 2) if n > 3 else (nn.Identity(), n),
        lambda: (Fn("x.flip(1)", lambda x: x.flip(1)), n),
        lambda: (Fn("cat(x.sum, x.mean, x.amax, x.amin)", lambda x: torch.cat(
            [x.sum(1, keepdim=True), x.mean(1, keepdim=True), x.amax(1, keepdim=True),
             x.amin(1, keepdim=True)], 1)), 4),
        lambda: (Two("x[:, :1] * x", nn.Identity(), nn.Identity(), lambda a, b: a[:, :1] * b), n),
        lambda: (_Matmul(n), 4),
        lambda: (Fn("cumsum", lambda x: x.cumsum(1)), n),
        lambda: (Fn("x.pow(3)", lambda x: x.pow(3)), n),
        lambda: (Fn("exp(x / 4)", lambda x: torch.exp(x / 4)), n),
        lambda: (Fn("log(x*x + 1)", lambda x: torch.log(x * x + 1)), n),
        lambda: (Fn("sqrt(softplus(x))", lambda x: torch.sqrt(F.softplus(x))), n),
        lambda: (Fn("1 / (x*x + 1)", lambda x: 1 / (x * x + 1)), n),
        lambda: (Two("a / (b*b + 1)", nn.Linear(n, m), nn.Linear(n, m),
                     lambda a, b: a / (b * b + 1)), m),
        lambda: (Fn("x - x.max(1).values", lambda x: x - x.max(1, keepdim=True).values), n),
        lambda: (Fn("x.min(1).values", lambda x: x.min(1, keepdim=True).values), 1),
        lambda: (Fn("F.normalize", lambda x: F.normalize(x, dim=1)), n),
        lambda: (Fn("logsumexp", lambda x: torch.logsumexp(x, 1, keepdim=True)), 1),
        lambda: (Fn("x.reshape(-1, 1, n) mean", lambda x: x.unsqueeze(1).mean(1)), n),
        lambda: (Fn("x.repeat(1, 2)", lambda x: x.repeat(1, 2)), 2 * n),
        lambda: (Fn("x.roll(1, 1)", lambda x: x.roll(1, 1)), n),
        lambda: (Fn("x[:, [2, 0]]", lambda x: x[:, [min(2, n - 1), 0]]), 2),
        lambda: (Fn("sign", torch.sign), n),
        lambda: (Fn("floor", torch.floor), n),
        lambda: (Fn("erf", torch.erf), n),
        lambda: (Fn("cos", torch.cos), n),
        lambda: (nn.PReLU(n), n),
        lambda: (nn.SELU(), n),
        lambda: (nn.LogSigmoid(), n),
        lambda: (Fn("x.clamp(min=0.2)", lambda x: x.clamp(min=0.2)), n),
        lambda: (Fn("heaviside", lambda x: torch.heaviside(x, torch.tensor(0.5, dtype=x.dtype))), n),
        lambda: (Fn("x * x.sum(1)", lambda x: x * x.sum(1, keepdim=True)), n),
    ]
    return rng.choice(choices)()


class _Matmul(nn.Module):
    """(B, n) -> two (B, 2, 2) factors from linear maps, their product flattened: attention's
    product of two perturbed tensors."""

    def __init__(self, n):
        super().__init__()
        self.a, self.b = nn.Linear(n, 4), nn.Linear(n, 4)

    def forward(self, x):
        return (self.a(x).reshape(-1, 2, 2) @ self.b(x).reshape(-1, 2, 2)).flatten(1)


# ---- image state (B, C, H, W) ----

def _img_blocks(rng, c, h, w):
    """(block, new (C, H, W)) choices for a (B, C, H, W) state."""
    k = rng.randint(2, 4)
    choices = [
        lambda: (nn.Conv2d(c, k, 3, padding=1), (k, h, w)),
        lambda: (nn.Conv2d(c, k, 2, stride=2), (k, h // 2, w // 2)) if h >= 4 and w >= 4 else None,
        lambda: (nn.Conv2d(c, k, 3, padding=1, dilation=1, groups=1, bias=False), (k, h, w)),
        lambda: (nn.ConvTranspose2d(c, k, 2, stride=2), (k, 2 * h, 2 * w)) if h <= 4 else None,
        lambda: (nn.ConvTranspose2d(c, k, 3, padding=1), (k, h, w)),
        lambda: (nn.BatchNorm2d(c), (c, h, w)),
        lambda: (_act(rng), (c, h, w)),
        lambda: (nn.MaxPool2d(2), (c, h // 2, w // 2)) if h >= 4 and w >= 4 else None,
        lambda: (nn.MaxPool2d(3, stride=1, padding=1), (c, h, w)),
        lambda: (nn.AvgPool2d(2), (c, h // 2, w // 2)) if h >= 4 and w >= 4 else None,
        lambda: (nn.AdaptiveAvgPool2d(2), (c, 2, 2)),
        lambda: (Two("x + relu(conv(x))", nn.Identity(),
                     nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU()), torch.add), (c, h, w)),
        lambda: (Two("cat(conv(x), x)", nn.Conv2d(c, k, 1), nn.Identity(),
                     lambda a, b: torch.cat([a, b], 1)), (c + k, h, w)),
        lambda: (Two("conv(x) * conv(x)", nn.Conv2d(c, k, 1), nn.Conv2d(c, k, 1), torch.mul),
                 (k, h, w)),
        lambda: (Fn("x.transpose(2, 3)", lambda x: x.transpose(2, 3)), (c, w, h)),
        lambda: (Fn("x[:, :, 1:, :]", lambda x: x[:, :, 1:, :]), (c, h - 1, w)) if h > 2 else None,
        lambda: (Fn("F.pad(x, (1, 0, 0, 1))", lambda x: F.pad(x, (1, 0, 0, 1))), (c, h + 1, w + 1)),
        lambda: (Fn("x.mean(1, keepdim)", lambda x: x.mean(1, keepdim=True)), (1, h, w)),
        lambda: (nn.Conv2d(c, k, 3, stride=2, padding=1), (k, (h + 1) // 2, (w + 1) // 2)),
        lambda: (nn.Conv2d(c, 2 * c, 3, padding=2, dilation=2, groups=c), (2 * c, h, w)),
        lambda: (nn.MaxPool2d(2, ceil_mode=True), (c, (h + 1) // 2, (w + 1) // 2)),
        lambda: (nn.AvgPool2d(3, stride=2, padding=1), (c, (h + 1) // 2, (w + 1) // 2)),
        lambda: (nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
                 (c, (h + 1) // 2, (w + 1) // 2)),
        lambda: (nn.AdaptiveAvgPool2d((3, 2)), (c, 3, 2)),
        lambda: (nn.ConvTranspose2d(c, k, 3, stride=2, padding=1, output_padding=1),
                 (k, 2 * h, 2 * w)) if h <= 4 else None,
        lambda: (Fn("softmax over channels", lambda x: torch.softmax(x, 1)), (c, h, w)),
        lambda: (nn.LayerNorm([h, w]), (c, h, w)),
        lambda: (nn.GroupNorm(1, c), (c, h, w)),
        lambda: (Fn("x.amax(1, keepdim)", lambda x: x.amax(1, keepdim=True)), (1, h, w)),
        lambda: (Fn("x.permute(0, 2, 3, 1).permute(0, 3, 1, 2) * 2",
                    lambda x: x.permute(0, 2, 3, 1).permute(0, 3, 1, 2) * 2), (c, h, w)),
        lambda: (Two("conv(x) - x.mean", nn.Conv2d(c, c, 1), nn.Identity(),
                     lambda a, b: a - b.mean((2, 3), keepdim=True)), (c, h, w)),
        lambda: (Fn("upsample x2", lambda x: F.interpolate(x, scale_factor=2.0, mode="nearest")),
                 (c, 2 * h, 2 * w)) if h <= 3 else None,
    ]
    while True:
        got = rng.choice(choices)()
        if got is not None:
            return got


# ---- 1-D signal state (B, C, L) ----

def _seq_blocks(rng, c, length):
    k = rng.randint(2, 4)
    choices = [
        lambda: (nn.Conv1d(c, k, 3, padding=1), (k, length)),
        lambda: (nn.Conv1d(c, k, 2), (k, length - 1)) if length > 2 else None,
        lambda: (_act(rng), (c, length)),
        lambda: (nn.BatchNorm1d(c), (c, length)),
        lambda: (nn.AvgPool1d(2), (c, length // 2)) if length >= 4 else None,
        lambda: (nn.MaxPool1d(2), (c, length // 2)) if length >= 4 else None,
        lambda: (Fn("x.permute(0, 2, 1) softmax", lambda x: torch.softmax(x.permute(0, 2, 1), -1)
                    .permute(0, 2, 1)), (c, length)),
        lambda: (nn.Conv1d(c, k, 3, stride=2, padding=1), (k, (length + 1) // 2)),
        lambda: (nn.AdaptiveAvgPool1d(3), (c, 3)),
        lambda: (nn.ConvTranspose1d(c, k, 2, stride=2), (k, 2 * length)) if length <= 6 else None,
        lambda: (Fn("x.flip(2)", lambda x: x.flip(2)), (c, length)),
        lambda: (Fn("x.transpose(1, 2) @ x", lambda x: (x.transpose(1, 2) @ x)[:, :c, :]),
                 (min(c, length), length)),
    ]
    while True:
        got = rng.choice(choices)()
        if got is not None:
            return got


def random_model(seed: int, depth: int | None = None):
    """(model in eval mode, per-sample input shape) for ``seed``: a chain of 1-``depth``
    blocks ending in a linear layer to a few outputs."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    depth = depth if depth is not None else rng.randint(1, 6)
    kind = rng.choice(["vec", "vec", "img", "seq"])
    layers = []
    if kind == "img":
        shape = (rng.randint(1, 2), rng.randint(3, 5), rng.randint(3, 5))
        state = shape
        for _ in range(depth):
            block, state = _img_blocks(rng, *state)
            layers.append(block)
        layers.append(nn.Flatten())
        width = state[0] * state[1] * state[2]
    elif kind == "seq":
        shape = (rng.randint(1, 3), rng.randint(3, 6))
        state = shape
        for _ in range(depth):
            block, state = _seq_blocks(rng, *state)
            layers.append(block)
        layers.append(nn.Flatten())
        width = state[0] * state[1]
    else:
        shape = (rng.randint(2, 6),)
        width = shape[0]
        for _ in range(depth):
            block, width = _vec_blocks(rng, width)
            layers.append(block)
    layers.append(nn.Linear(width, rng.randint(1, 4)))
    model = nn.Sequential(*layers)
    scale = rng.choice([1.0, 1.0, 3.0])
    for mod in model.modules():     # larger weights: more unstable neurons, wider ranges
        if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)):
            mod.weight.data.mul_(scale)
    for mod in model.modules():     # BatchNorm with non-trivial statistics
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(-1.5, 1.5)
            mod.bias.data.uniform_(-0.5, 0.5)
    return model.eval(), shape


def describe(model) -> str:
    return " -> ".join(repr(m) if not isinstance(m, (Fn, Two)) else m.name for m in model)
