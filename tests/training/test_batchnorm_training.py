"""BatchNorm in training mode is bounded with the clean batch's statistics (held fixed over the
set, as auto_LiRPA does), in eval mode with the running statistics; bounding changes nothing in
the module (flags, running statistics)."""
import copy
import math

import pytest
import torch
from torch import nn

import lirpac
from sampling import assert_contains, sample_lp_ball

METHODS = ["ibp", "crown", "crown-ibp", "forward", "forward+crown"]


def _model(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(64, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():     # running statistics far from any batch's, so the modes differ
        for bn in (model[1], model[5]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return model


def _with_batch_statistics(model, x):
    """An eval-mode copy whose running statistics are x's batch statistics at each BatchNorm,
    found by hooks on a clean training-mode pass (independent of lirpac's graph evaluation)."""
    probe = copy.deepcopy(model)
    stats = {}

    def hook(module, inputs):
        inp = inputs[0]
        dims = [0] + list(range(2, inp.dim()))
        stats[module] = (inp.mean(dims), inp.var(dims, unbiased=False))
    bns = [m for m in probe.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for bn in bns:
        bn.register_forward_pre_hook(hook)
    with torch.no_grad():
        probe(x)
    fixed = copy.deepcopy(model).eval()
    for (name, m), bn in zip([(n, m) for n, m in fixed.named_modules()
                              if isinstance(m, nn.modules.batchnorm._BatchNorm)
                              and model.get_submodule(n).training], bns):
        m.running_mean.copy_(stats[bn][0])
        m.running_var.copy_(stats[bn][1])
    return fixed


@pytest.fixture(scope="module")
def compiled():
    model = _model()
    return model, lirpac.compile(model, torch.zeros(2, 1, 6, 6))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("norm", [math.inf, 2.0])
def test_training_mode_bounds_contain_the_batch_statistics_function(compiled, method, norm):
    model, net = compiled
    model.train()
    x = torch.randn(5, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    eps = 0.1 if norm == math.inf else 0.5
    lower, upper = net.bounds(x, lirpac.LpBall(eps=eps, norm=norm), method=method)
    fixed = _with_batch_statistics(model, x)
    points = sample_lp_ball(x, eps, norm, 200, generator=torch.Generator().manual_seed(2))
    assert_contains(fixed, points, lower, upper)
    with torch.no_grad():
        torch.testing.assert_close(net(x), fixed(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_eval_mode_bounds_use_the_running_statistics(compiled, method):
    model, net = compiled
    model.eval()
    x = torch.randn(5, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    lower, upper = net.bounds(x, lirpac.LpBall(eps=0.1), method=method)
    points = sample_lp_ball(x, 0.1, math.inf, 200, generator=torch.Generator().manual_seed(4))
    assert_contains(model, points, lower, upper)
    model.train()
    train_lower, _ = net.bounds(x, lirpac.LpBall(eps=0.1), method=method)
    assert not torch.allclose(lower, train_lower)      # the modes do differ here


def test_a_frozen_batchnorm_inside_a_training_model_keeps_running_statistics(compiled):
    model, net = compiled
    model.train()
    model[5].eval()
    try:
        x = torch.randn(5, 1, 6, 6, generator=torch.Generator().manual_seed(5))
        lower, upper = net.bounds(x, lirpac.LpBall(eps=0.05), method="crown")
        fixed = _with_batch_statistics(model, x)     # only model[1] gets batch statistics
        points = sample_lp_ball(x, 0.05, math.inf, 200, generator=torch.Generator().manual_seed(6))
        assert_contains(fixed, points, lower, upper)
    finally:
        model[5].train()


def test_bounding_changes_nothing_in_the_module(compiled):
    model, net = compiled
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    x = torch.randn(5, 1, 6, 6)
    net.bounds(x, lirpac.LpBall(eps=0.1), method="crown-ibp")
    net(x)
    assert [m.training for m in model.modules()] == flags
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_gradients_flow_through_the_batch_statistics(compiled):
    """The bound depends on the first layer's weights also through the statistics, as
    PyTorch's training step does: the gradient matches the one through the fixed-statistic
    model only when the statistics are held constant (they are not)."""
    model, net = compiled
    model.train()
    x = torch.randn(8, 1, 6, 6, generator=torch.Generator().manual_seed(7))
    model.zero_grad()
    lower, _ = net.bounds(x, lirpac.LpBall(eps=0.0), method="ibp")
    lower.sum().backward()
    grad = model[0].weight.grad.clone()
    model.zero_grad()
    model(x).sum().backward()                      # PyTorch's own training-mode forward
    torch.testing.assert_close(grad, model[0].weight.grad, rtol=1e-4, atol=1e-5)
    model.zero_grad()


def test_matches_the_reference_semantics_closed_form():
    """One BatchNorm1d after the input, in training mode: the output is the exact affine map
    (x' - mean(x)) / sqrt(var(x) + eps) * gamma + beta, so IBP is exact at the box's corners."""
    bn = nn.BatchNorm1d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(8))
    net = lirpac.compile(bn, x[:2])
    lower, upper = net.bounds(x, lirpac.LpBall(eps=0.2), method="ibp")
    scale = bn.weight / torch.sqrt(x.var(0, unbiased=False) + bn.eps)
    centre = (x - x.mean(0)) * scale + bn.bias
    torch.testing.assert_close(lower, centre - 0.2 * scale.abs())
    torch.testing.assert_close(upper, centre + 0.2 * scale.abs())
