"""The fused cross-entropy bound against training.worst_case_ce: values and gradients, large
margins of both signs (no overflow), one class; and robust_loss on backend="triton" equal to
backend="torch" in value and parameter gradients."""
import math

import pytest
import torch

pytest.importorskip("triton")

import lirpac  # noqa: E402
from lirpac.codegen.triton.ce_bound import ce_bound, fusable  # noqa: E402
from lirpac.training import robust_loss, worst_case_ce  # noqa: E402
from models import ARCHS, reinit  # noqa: E402


@pytest.mark.parametrize("rows,n,scale", [(3, 9, 1.0), (5, 1, 3.0), (2, 20, 800.0)])
def test_values_and_gradients_match_torch(rows, n, scale):
    g = torch.Generator().manual_seed(n)
    margins = (torch.randn(rows, n, generator=g, dtype=torch.float64) * scale).requires_grad_()
    weights = torch.rand(rows, generator=g, dtype=torch.float64)
    results = []
    for loss in (ce_bound, lambda m: worst_case_ce(m, reduction="none")):
        out = loss(margins)
        results.append([out.detach(), *torch.autograd.grad((weights * out).sum(), margins)])
    assert torch.isfinite(results[0][0]).all()
    for f, r in zip(*results):
        torch.testing.assert_close(f, r, atol=1e-12, rtol=1e-12)


def test_infinite_margins_are_left_to_torch():
    assert not fusable(torch.tensor([[1.0, -math.inf]]))
    assert fusable(torch.tensor([[1.0, -2.0]]))


@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
def test_robust_loss_equals_torch_backend(method, monkeypatch):
    from lirpac.codegen.triton import ce_bound as module
    calls = []
    monkeypatch.setattr(module, "ce_bound", lambda m: calls.append(1) or ce_bound(m))
    cls, shape = ARCHS["mlp"]
    model = reinit(cls(), seed=5)
    net_torch = lirpac.compile(model, torch.zeros(2, *shape), backend="torch")
    net_triton = lirpac.CompiledNet(net_torch.source_graph, module=model, backend="triton")
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([0, 1, 2]) % net_torch.output_shape[0]
    ball = lirpac.LpBall(eps=0.1)
    results = []
    for net in (net_triton, net_torch):
        loss = robust_loss(net, x, y, ball, method=method)
        results.append([loss.detach(), *torch.autograd.grad(loss, list(model.parameters()))])
    assert len(calls) == 1        # the triton net's loss ran the kernel, the torch net's did not
    for f, r in zip(*results):
        torch.testing.assert_close(f, r, atol=1e-5, rtol=1e-5)
