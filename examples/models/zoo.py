"""Benchmark model zoo: small, randomly initialised networks of the usual verification shapes.

Plain torch only (nn.Linear, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Flatten,
nn.AdaptiveAvgPool2d and a residual add); no torchvision.

Every factory takes ``seed=0``, builds its weights under ``torch.manual_seed(seed)``, gives each
BatchNorm layer non-trivial running statistics and affine parameters drawn from a fixed
``torch.Generator`` (so BN folding is really exercised: an identity BN would hide a wrong
fold), and returns the model in eval mode.  The same seed always gives the same model, and
building a model leaves the global RNG state as it found it.

``BENCHMARK_MODELS`` maps a name to ``(factory, per-sample input shape)``.
"""
import torch
import torch.nn as nn

__all__ = ["mlp", "cnn_2c", "cnn_4c_bn", "resnet_2b", "BasicBlock", "ResNet2B",
           "cifar_cnn_4c", "cifar_resnet", "cifar_densenet", "cnn_7layer", "BENCHMARK_MODELS",
           "CALIBRATION_MODELS"]


def _randomize_batchnorm(model: nn.Module, seed: int) -> None:
    """Give every BatchNorm layer of ``model`` random, but well-conditioned, statistics.

    running_mean ~ N(0, 0.1^2), running_var ~ U(0.5, 2), weight ~ U(0.5, 1.5), bias ~ N(0, 0.1^2),
    all drawn from a generator seeded with ``seed`` (independent of the global RNG).
    """
    g = torch.Generator().manual_seed(10_000 + seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand(n, generator=g))
                    m.bias.copy_(0.1 * torch.randn(n, generator=g))


def _build(seed: int, ctor):
    """Run ``ctor()`` under ``torch.manual_seed(seed)`` without disturbing the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ctor()
    _randomize_batchnorm(model, seed)
    return model.eval()


def _conv_bn(cin: int, cout: int, stride: int) -> list[nn.Module]:
    """conv3x3 (padding 1) - BatchNorm - ReLU."""
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


def mlp(seed: int = 0) -> nn.Module:
    """784-256-256-10 MLP with ReLU; input (B, 1, 28, 28)."""
    return _build(seed, lambda: nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 256), nn.ReLU(),
        nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 10),
    ))


def cnn_2c(seed: int = 0) -> nn.Module:
    """Two-conv CNN on 1x28x28 (the 'cnn_2layer' of the CROWN-IBP papers)."""
    return _build(seed, lambda: nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),    # 16 x 14 x 14
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),   # 32 x 7 x 7
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100), nn.ReLU(),
        nn.Linear(100, 10),
    ))


def cnn_4c_bn(seed: int = 0) -> nn.Module:
    """Four-conv CNN with BatchNorm on 3x32x32: 32-32-64-64 channels, FC 256, FC 10."""
    return _build(seed, lambda: nn.Sequential(
        *_conv_bn(3, 32, 1),      # 32 x 32 x 32
        *_conv_bn(32, 32, 2),     # 32 x 16 x 16
        *_conv_bn(32, 64, 1),     # 64 x 16 x 16
        *_conv_bn(64, 64, 2),     # 64 x 8 x 8
        nn.Flatten(),
        nn.Linear(64 * 8 * 8, 256), nn.ReLU(),
        nn.Linear(256, 10),
    ))


class BasicBlock(nn.Module):
    """conv3x3-bn-relu-conv3x3-bn + skip (identity, or 1x1 conv + bn when the shape changes), relu."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                nn.BatchNorm2d(cout),
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet2B(nn.Module):
    """Stem conv 3->16 stride 2, BasicBlock(16->16), BasicBlock(16->32, stride 2), avgpool, FC 10."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False),   # 16 x 16 x 16
            nn.BatchNorm2d(16),
            nn.ReLU(),
        )
        self.block1 = BasicBlock(16, 16, stride=1)   # identity skip, 16 x 16 x 16
        self.block2 = BasicBlock(16, 32, stride=2)   # 1x1 conv + bn skip, 32 x 8 x 8
        self.pool = nn.AdaptiveAvgPool2d(1)           # 32 x 1 x 1
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.block1(x)
        x = self.block2(x)
        return self.fc(self.flatten(self.pool(x)))


def resnet_2b(seed: int = 0) -> nn.Module:
    """Two-block ResNet with BatchNorm on 3x32x32 (identity skip, then 1x1-conv skip)."""
    return _build(seed, ResNet2B)


# -- calibration shapes: CIFAR models that keep 32x32 resolution in their first layers --------
# (shapes the cost model was not tuned on; see benchmarks/README.md)

def cifar_cnn_4c(seed: int = 0) -> nn.Module:
    """Four-conv CNN with BatchNorm on 3x32x32 whose first two convs keep 32x32: 32-32-64-64
    channels, strides 1-1-2-1, head Linear(64*16*16, 256) + BatchNorm1d + ReLU + Linear."""
    return _build(seed, lambda: nn.Sequential(
        *_conv_bn(3, 32, 1), *_conv_bn(32, 32, 1),      # 32 x 32 x 32
        *_conv_bn(32, 64, 2), *_conv_bn(64, 64, 1),     # 64 x 16 x 16
        nn.Flatten(),
        nn.Linear(64 * 16 * 16, 256), nn.BatchNorm1d(256), nn.ReLU(),
        nn.Linear(256, 10),
    ))


class CifarResNet(nn.Module):
    """Stem conv 3->16 at 32x32, BasicBlock(16->16), BasicBlock(16->32, stride 2), a Linear head
    over the flattened 32x16x16 map."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.block1 = BasicBlock(16, 16, stride=1)
        self.block2 = BasicBlock(16, 32, stride=2)
        self.fc = nn.Linear(32 * 16 * 16, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.block2(self.block1(self.stem(x))), 1))


def cifar_resnet(seed: int = 0) -> nn.Module:
    return _build(seed, CifarResNet)


class _DenseLayer(nn.Module):
    """BN-ReLU-conv3x3 whose output is concatenated to its input (DenseNet's layer)."""

    def __init__(self, channels: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(),
                                  nn.Conv2d(channels, growth, 3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


def cifar_densenet(seed: int = 0) -> nn.Module:
    """DenseNet-style on 3x32x32: stem conv 3->8 stride 2, three dense layers (growth 8),
    a transition (BN-ReLU-conv1x1 16, AvgPool 2), two dense layers, BN-ReLU, Linear head."""
    def ctor():
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),     # 8 x 16 x 16
            _DenseLayer(8, 8), _DenseLayer(16, 8), _DenseLayer(24, 8),   # 32 x 16 x 16
            nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 16, 1, bias=False), nn.AvgPool2d(2),
            _DenseLayer(16, 8), _DenseLayer(24, 8),                  # 32 x 8 x 8
            nn.BatchNorm2d(32), nn.ReLU(), nn.Flatten(),
            nn.Linear(32 * 8 * 8, 10),
        )
    return _build(seed, ctor)


def cnn_7layer(seed: int = 0) -> nn.Module:
    """The CROWN-IBP papers' CIFAR cnn_7layer: convs 64-64-128-128-128 (the third with stride
    2) with BatchNorm, Linear(128*16*16, 512) + BatchNorm1d + ReLU + Linear(512, 10)."""
    return _build(seed, lambda: nn.Sequential(
        *_conv_bn(3, 64, 1), *_conv_bn(64, 64, 1), *_conv_bn(64, 128, 2),
        *_conv_bn(128, 128, 1), *_conv_bn(128, 128, 1),
        nn.Flatten(),
        nn.Linear(128 * 16 * 16, 512), nn.BatchNorm1d(512), nn.ReLU(),
        nn.Linear(512, 10),
    ))


BENCHMARK_MODELS = {
    "mlp": (mlp, (1, 28, 28)),
    "cnn_2c": (cnn_2c, (1, 28, 28)),
    "cnn_4c_bn": (cnn_4c_bn, (3, 32, 32)),
    "resnet_2b": (resnet_2b, (3, 32, 32)),
}

# shapes the benchmarks check the cost model on (benchmarks/bounds.py --models ...)
CALIBRATION_MODELS = {
    "cifar_cnn_4c": (cifar_cnn_4c, (3, 32, 32)),
    "cifar_resnet": (cifar_resnet, (3, 32, 32)),
    "cifar_densenet": (cifar_densenet, (3, 32, 32)),
    "cnn_7layer": (cnn_7layer, (3, 32, 32)),
}
