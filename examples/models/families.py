"""Small members of the common architecture families, plain torch, sized to bound on a CPU in
well under a second: DenseNet (concatenating dense blocks), ResNeXt (grouped-conv bottlenecks),
WideResNet (wide pre-activation blocks), MobileNet (depthwise-separable inverted residuals), an
Inception-style concat CNN, a Transformer encoder block over token embeddings, and LSTM / GRU
classifiers unrolled over a fixed sequence length.

``FAMILIES`` maps a name to ``(factory, per-sample input shape)``; every factory takes
``seed=0``, gives BatchNorm layers non-trivial statistics and returns the model in eval mode.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DenseNet", "ResNeXt", "WideResNet", "MobileNet", "ConcatCNN", "TransformerEncoder",
           "RecurrentClassifier", "FAMILIES"]


def _bn_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU())


# -- DenseNet: every layer sees the concatenation of all earlier feature maps -----------------

class DenseLayer(nn.Module):
    def __init__(self, channels: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(_bn_relu(channels), nn.Conv2d(channels, growth, 3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


class DenseNet(nn.Module):
    def __init__(self, in_channels=3, stem=4, growth=2, layers=2, classes=3):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, stem, 3, padding=1, bias=False)
        channels = stem + growth * layers
        self.block = nn.Sequential(*[DenseLayer(stem + growth * i, growth) for i in range(layers)])
        self.transition = nn.Sequential(_bn_relu(channels), nn.Conv2d(channels, channels // 2, 1),
                                        nn.AvgPool2d(2))
        self.head = nn.Sequential(_bn_relu(channels // 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(channels // 2, classes))

    def forward(self, x):
        return self.head(self.transition(self.block(self.stem(x))))


# -- ResNeXt: bottleneck with a grouped 3x3 convolution (cardinality = groups) ---------------

class ResNeXtBlock(nn.Module):
    def __init__(self, channels: int, width: int, cardinality: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 1, bias=False), _bn_relu(width),
            nn.Conv2d(width, width, 3, padding=1, groups=cardinality, bias=False), _bn_relu(width),
            nn.Conv2d(width, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x):
        return F.relu(x + self.body(x))


class ResNeXt(nn.Module):
    def __init__(self, in_channels=3, channels=4, width=8, cardinality=4, classes=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, stride=2, padding=1, bias=False),
                                  _bn_relu(channels))
        self.block = ResNeXtBlock(channels, width, cardinality)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


# -- WideResNet: pre-activation basic blocks, widened, with a strided 1x1 shortcut -----------

class WideBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.pre = _bn_relu(in_channels)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            _bn_relu(out_channels), nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False))
        self.shortcut = (nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
                         if stride != 1 or in_channels != out_channels else None)

    def forward(self, x):
        h = self.pre(x)
        return (self.shortcut(h) if self.shortcut is not None else x) + self.body(h)


class WideResNet(nn.Module):
    def __init__(self, in_channels=3, base=2, widen=4, classes=3):
        super().__init__()
        width = base * widen
        self.stem = nn.Conv2d(in_channels, base, 3, padding=1, bias=False)
        self.blocks = nn.Sequential(WideBlock(base, width, 1), WideBlock(width, width, 2))
        self.head = nn.Sequential(_bn_relu(width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(width, classes))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


# -- MobileNet: inverted residual (1x1 expand, depthwise 3x3, 1x1 project) -------------------

class InvertedResidual(nn.Module):
    def __init__(self, channels: int, expansion: int):
        super().__init__()
        hidden = channels * expansion
        self.body = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x):
        return x + self.body(x)


class MobileNet(nn.Module):
    def __init__(self, in_channels=3, channels=4, expansion=2, classes=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU6())
        self.block = InvertedResidual(channels, expansion)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


# -- Inception-style CNN: parallel branches concatenated along channels ----------------------

class ConcatCNN(nn.Module):
    def __init__(self, in_channels=3, classes=3):
        super().__init__()
        self.branch3 = nn.Conv2d(in_channels, 3, 3, padding=1)
        self.branch1 = nn.Conv2d(in_channels, 2, 1)
        self.pool_branch = nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), nn.Conv2d(in_channels, 1, 1))
        self.merge = nn.Conv2d(6, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, classes)

    def forward(self, x):
        h = torch.cat([self.branch3(x), self.branch1(x), self.pool_branch(x)], 1)
        h = F.relu(self.merge(F.relu(h)))
        return self.fc(h.flatten(1))


# -- Transformer encoder block: the perturbed input is the token embeddings -------------------

class TransformerEncoder(nn.Module):
    """Post-norm encoder block (multi-head softmax attention, GELU MLP), mean-pooled classifier."""

    def __init__(self, dim=8, heads=2, hidden=16, classes=3):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):                                   # x: (B, tokens, dim)
        batch, tokens, dim = x.shape
        q, k, v = (t.reshape(batch, tokens, self.heads, dim // self.heads).transpose(1, 2)
                   for t in self.qkv(x).chunk(3, -1))       # each (B, heads, tokens, head_dim)
        scores = q @ k.transpose(-1, -2) / math.sqrt(dim // self.heads)
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, tokens, dim)
        h = self.norm1(x + self.proj(attended))
        h = self.norm2(h + self.mlp(h))
        return self.head(h.mean(1))


# -- recurrent classifiers: nn.LSTM / nn.GRU over a fixed-length sequence ---------------------

class RecurrentClassifier(nn.Module):
    def __init__(self, cell=nn.LSTM, features=3, hidden=4, layers=1, classes=3):
        super().__init__()
        self.rnn = cell(features, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):                                   # x: (B, steps, features)
        out = self.rnn(x)[0]
        return self.head(out[:, -1])


def _randomize_batchnorm(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(10_000 + seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def _factory(ctor, **kwargs):
    def build(seed: int = 0) -> nn.Module:
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            model = ctor(**kwargs)
        finally:
            torch.random.set_rng_state(state)
        _randomize_batchnorm(model, seed)
        return model.eval()
    build.__name__ = ctor.__name__
    return build


IMAGE = (3, 8, 8)
FAMILIES = {
    "densenet": (_factory(DenseNet), IMAGE),
    "resnext": (_factory(ResNeXt), IMAGE),
    "wide_resnet": (_factory(WideResNet), IMAGE),
    "mobilenet": (_factory(MobileNet), IMAGE),
    "concat_cnn": (_factory(ConcatCNN), IMAGE),
    "transformer": (_factory(TransformerEncoder), (4, 8)),
    "lstm": (_factory(RecurrentClassifier, cell=nn.LSTM), (3, 3)),
    "gru": (_factory(RecurrentClassifier, cell=nn.GRU, layers=2), (3, 3)),
}
