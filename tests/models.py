"""Small architectures that together use every op of the core set; weights are re-drawn
from a seed so one compiled graph serves many hypothesis examples (params are live)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.conv2(h))
        return self.fc(torch.flatten(self.pool(h), 1))


class Residual(nn.Module):
    """Skip connections, sub/mul/div by constants, cat, permute, slicing, pad, mean, conv1d."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 3, 3, padding=1, dilation=1)
        self.bn = nn.BatchNorm1d(3)
        self.fc = nn.Linear(9, 4)
        self.register_buffer("mu", torch.tensor([0.1, -0.2, 0.3]).reshape(3, 1))

    def forward(self, x):                           # x: (B, 3, 6)
        h = (x - self.mu) / 0.5
        h = F.relu(self.bn(self.conv(h))) + h
        h = torch.cat([h, -h[:, :1]], dim=1)        # (B, 4, 6)
        h = F.pad(h, (1, 1))[:, :, ::2]             # (B, 4, 4)
        h = h.permute(0, 2, 1).relu()               # (B, 4, 4)
        m = h.mean(dim=2)                           # (B, 4)
        s = h.sum(dim=1)                            # (B, 4)
        z = torch.cat([m, s * 2.0, torch.ones_like(m[:, :1])], dim=1)  # (B, 9)
        return self.fc(z) + 1.0


class ResNetTiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.c1, self.b1 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):                           # x: (B, 1, 5, 5)
        h = F.relu(self.stem(x))
        h = F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(h))))) + h)
        return self.head(F.adaptive_avg_pool2d(h, 1).flatten(1))


ARCHS = {
    "mlp": (MLP, (6,)),
    "convnet": (ConvNet, (2, 8, 8)),
    "residual": (Residual, (3, 6)),
    "resnet_tiny": (ResNetTiny, (1, 5, 5)),
}


def reinit(model: nn.Module, seed: int, scale: float = 1.0) -> nn.Module:
    """Draw new weights in place (keeps the Parameter objects the compiled graph refers to)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale / max(1, p[0].numel()) ** 0.5)
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


_COMPILED = {}


def compiled_arch(arch):
    """(model, compiled net, input shape) of an ARCHS entry, compiled once per test session
    (parameters are live, so reinit(model, seed) changes the bounds without recompiling)."""
    import lirpac   # here, so the golden IR dumps' source lines of this file stay put
    if arch not in _COMPILED:
        cls, shape = ARCHS[arch]
        model = cls().eval()
        _COMPILED[arch] = (model, lirpac.compile(model, torch.zeros(1, *shape)), shape)
    return _COMPILED[arch]


_OWN = {}


def own_compiled(arch: str, owner: str = ""):
    """(model, net, shape) of an ARCHS model compiled apart from ``compiled_arch``'s shared ones
    (``owner`` names the module that keeps it): another test may have converted those
    (model.double() then .float() makes new buffer tensors; the compiled net re-reads them,
    lirpac/live_tensors.py, but a test that needs its own state should not share)."""
    import lirpac
    if (owner, arch) not in _OWN:
        cls, shape = ARCHS[arch]
        model = cls().eval()
        _OWN[(owner, arch)] = (model, lirpac.compile(model, torch.zeros(1, *shape)), shape)
    return _OWN[(owner, arch)]


_SHARED = {}


def shared_compiled(key, model: nn.Module, example, **options):
    """(model', net) where net is compiled once per ``key`` (one architecture): the first model
    given is compiled; a later one's parameters and buffers are copied into that first model in
    place (the net reads them live), so a hypothesis example skips torch.export (~0.1 s each).
    Bound and sample model', which then equals ``model``. ``options``: lirpac.compile's."""
    import lirpac
    if key not in _SHARED:
        _SHARED[key] = (model, lirpac.compile(model, example, **options))
        return _SHARED[key]
    shared, net = _SHARED[key]
    shared.load_state_dict(model.state_dict())
    shared.train(model.training)
    return shared, net
