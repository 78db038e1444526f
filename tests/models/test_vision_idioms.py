"""Small models written the way the reference's vision model files write theirs (a residual
added in place to an empty-Sequential shortcut, grouped convolutions, BatchNorm, dropout,
``out.view(out.size(0), -1)``, dense concatenation, a DenseSequential whose layers read every
earlier output, a Flatten module): each compiles and its bounds contain sampled outputs for
every method. Widths and inputs are tiny; the structure is what matters."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import lirpac
from sampling import assert_contains, sample_lp_ball

class Flatten(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1)


def _randomize_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return model


class PlainBlock(nn.Module):
    """conv-bn-relu, conv-bn, ``out += shortcut(x)``, relu (ResNet18's basic block)."""
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class SmallResNet18(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.layer1 = nn.Sequential(PlainBlock(4, 4, 1))
        self.layer2 = nn.Sequential(PlainBlock(4, 8, 2))
        self.linear = nn.Linear(8, 3)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer2(self.layer1(out))
        out = F.avg_pool2d(out, 4)
        out = out.view(out.size(0), -1)
        return self.linear(out)


class GroupedBlock(nn.Module):
    """ResNeXt's block: 1x1 conv, grouped 3x3 conv, 1x1 conv, in-place shortcut add."""
    def __init__(self, cin, groups, width, stride):
        super().__init__()
        inner = groups * width
        self.conv1 = nn.Conv2d(cin, inner, 1)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride, 1, groups=groups)
        self.conv3 = nn.Conv2d(inner, 2 * inner, 1)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != 2 * inner:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, 2 * inner, 1, stride))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        out += self.shortcut(x)
        return F.relu(out)


class SmallResNeXt(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.layer1 = GroupedBlock(4, 2, 2, 1)
        self.layer2 = GroupedBlock(8, 2, 2, 2)
        self.linear1 = nn.Linear(8 * 4 * 4, 8)
        self.linear2 = nn.Linear(8, 3)

    def forward(self, x):
        out = F.relu(self.conv1(x))
        out = self.layer2(self.layer1(out))
        out = out.view(out.size(0), -1)
        return self.linear2(F.relu(self.linear1(out)))


class WideBlock(nn.Module):
    """Wide ResNet's pre-activation block with BN and dropout, shortcut added in place."""
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.dropout = nn.Dropout(p=0.3)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride, 1)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride))

    def forward(self, x):
        out = self.dropout(self.conv1(F.relu(self.bn1(x))))
        out = self.conv2(F.relu(out))
        out += self.shortcut(x)
        return out


class SmallWideResNetBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.layer1 = nn.Sequential(WideBlock(4, 6, 1))
        self.layer2 = nn.Sequential(WideBlock(6, 8, 2))
        self.linear1 = nn.Linear(8, 8)
        self.linear2 = nn.Linear(8, 3)

    def forward(self, x):
        out = F.relu(self.layer2(self.layer1(self.conv1(x))))
        out = F.avg_pool2d(out, 4)
        out = out.view(out.size(0), -1)
        return self.linear2(F.relu(self.linear1(out)))


class DenseBottleneck(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 2 * growth, 1)
        self.bn2 = nn.BatchNorm2d(2 * growth)
        self.conv2 = nn.Conv2d(2 * growth, growth, 3, padding=1)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class SmallDenseNet(nn.Module):
    """Densenet_cifar_32's shape: dense layers, a BN-relu-conv-avgpool transition, BN, linears."""
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.dense1 = nn.Sequential(DenseBottleneck(4, 2), DenseBottleneck(6, 2))
        self.trans_bn, self.trans_conv = nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)
        self.dense2 = nn.Sequential(DenseBottleneck(4, 2))
        self.bn = nn.BatchNorm2d(6)
        self.linear1 = nn.Linear(6 * 4 * 4, 8)
        self.linear2 = nn.Linear(8, 3)

    def forward(self, x):
        out = self.dense1(self.conv1(x))
        out = F.avg_pool2d(self.trans_conv(F.relu(self.trans_bn(out))), 2)
        out = F.relu(self.bn(self.dense2(out)))
        out = out.view(out.size(0), -1)
        return self.linear2(F.relu(self.linear1(out)))


def small_cnn_7layer_bn():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, 1, 1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, 1, 1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU(),
        Flatten(), nn.Linear(8 * 4 * 4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


class Dense(nn.Module):
    """A layer that sums maps of several earlier outputs (None skips one)."""
    def __init__(self, *layers):
        super().__init__()
        self.layers = nn.ModuleList([m for m in layers if m is not None])
        self.used = [m is not None for m in layers]

    def forward(self, *xs):
        xs = xs[-len(self.used):]
        layers = iter(self.layers)
        return sum(next(layers)(x) for x, used in zip(xs, self.used) if used)


class DenseSequential(nn.Sequential):
    def forward(self, x):
        outputs = [x]
        for module in self:
            outputs.append(module(*outputs) if isinstance(module, Dense) else module(outputs[-1]))
        return outputs[-1]


def small_model_resnet():
    """model_resnet's shape: Dense skip blocks inside a DenseSequential."""
    def block(cin, cout, down):
        k, s = (4, 2) if down else (3, 1)
        return [Dense(nn.Conv2d(cin, cout, k, s, 1)), nn.ReLU(),
                Dense(nn.Conv2d(cin, cout, s, s, 0), None, nn.Conv2d(cout, cout, 3, 1, 1)),
                nn.ReLU()]
    return DenseSequential(nn.Conv2d(3, 4, 3, 1, 1), nn.ReLU(), *block(4, 4, False),
                           *block(4, 8, True), nn.Flatten(), nn.Linear(8 * 4 * 4, 8), nn.ReLU(),
                           nn.Linear(8, 3))


MODELS = {"ResNet18": SmallResNet18, "ResNeXt_cifar": SmallResNeXt,
          "wide_resnet_cifar_bn": SmallWideResNetBN, "Densenet_cifar_32": SmallDenseNet,
          "cnn_7layer_bn": small_cnn_7layer_bn, "model_resnet": small_model_resnet}


def _check(name, methods):
    torch.manual_seed(0)
    model = _randomize_bn(MODELS[name]()).eval()
    x = torch.rand(2, 3, 8, 8)
    net = lirpac.compile(model, x)
    points = sample_lp_ball(x, 0.02, math.inf, 48, generator=torch.Generator().manual_seed(1))
    for method in methods:
        lower, upper = net.bounds(x, lirpac.LpBall(eps=0.02), method=method)
        assert torch.all(lower <= upper), (name, method)
        assert_contains(model, points, lower, upper)


FAST = ["ResNet18", "model_resnet"]   # the in-place and Dense idioms (the others: slow)


@pytest.mark.parametrize("name", FAST)
def test_vision_model_idioms_bound_soundly(name):
    _check(name, ["ibp", "crown"])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_vision_model_idioms_bound_soundly_every_method(name):
    _check(name, ["ibp", "crown", "crown-ibp", "forward+crown", "alpha-crown"])
