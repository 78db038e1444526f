"""Fused IBP of per-channel affine maps (codegen/triton/ibp_scale.py: batch norm, a constant
scale) against the torch rules: values bit for bit, gradients in the ends and the constants,
zero scales (times: 0 * x = 0), and the cases that take the torch rule."""
import math

import pytest
import torch

pytest.importorskip("triton")

from lirpac.codegen.triton.ibp_scale import ibp_rules  # noqa: E402
from lirpac.ir.opdef import REGISTRY, Interval  # noqa: E402

RULES = ibp_rules()


def _interval(shape, g):
    lower = torch.randn(*shape, generator=g, dtype=torch.float64)
    upper = lower + torch.rand(*shape, generator=g, dtype=torch.float64)
    upper.view(-1)[:2] = lower.view(-1)[:2]      # degenerate ends: min/max ties
    lower.view(-1)[2] = 0.0
    return lower.requires_grad_(), upper.requires_grad_()


def _check(fused, reference, leaves):
    for f, r in zip(fused, reference):
        assert torch.equal(f, r)
    weights = [torch.randn(fused.lower.shape, generator=torch.Generator().manual_seed(9), dtype=f.dtype)
               for f in fused]
    grads = [torch.autograd.grad(sum((w * o).sum() for w, o in zip(weights, out)), leaves, allow_unused=True)
             for out in (fused, reference)]
    for f, r in zip(*grads):
        assert (f is None) == (r is None)
        if f is not None:
            torch.testing.assert_close(f, r, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 6)])
def test_batch_norm(shape):
    g = torch.Generator().manual_seed(len(shape))
    lower, upper = _interval(shape, g)
    channels = shape[1]
    weight = torch.randn(channels, generator=g, dtype=torch.float64)
    weight[0] = 0.0     # a zero scale
    params = [weight, torch.randn(channels, generator=g, dtype=torch.float64),
              torch.randn(channels, generator=g, dtype=torch.float64),
              torch.rand(channels, generator=g, dtype=torch.float64) + 0.5]
    params = [p.requires_grad_() for p in params]
    x = Interval(lower, upper)
    _check(RULES["ibp_batch_norm"](x, *params, eps=1e-5), REGISTRY["batch_norm"].ibp(x, *params, eps=1e-5),
           [lower, upper, *params])


@pytest.mark.parametrize("scale_shape", [(), (1,), (3, 1, 1), (1, 3, 1, 1)])
def test_mul_and_div_by_a_constant(scale_shape):
    g = torch.Generator().manual_seed(2)
    lower, upper = _interval((2, 3, 2, 2), g)
    scale = torch.randn(scale_shape, generator=g, dtype=torch.float64).requires_grad_()
    x = Interval(lower, upper)
    _check(RULES["ibp_mul"](x, scale), REGISTRY["mul"].ibp(x, scale), [lower, upper, scale])
    _check(RULES["ibp_mul"](scale, x), REGISTRY["mul"].ibp(scale, x), [lower, upper, scale])
    _check(RULES["ibp_div"](x, scale), REGISTRY["div"].ibp(x, scale), [lower, upper, scale])


def test_the_kernel_runs_and_falls_back(monkeypatch):
    from lirpac.codegen.triton import ibp_scale
    calls = []
    real = ibp_scale.launch_scale_shift_ibp
    monkeypatch.setattr(ibp_scale, "launch_scale_shift_ibp", lambda *a, **k: calls.append(1) or real(*a, **k))
    g = torch.Generator().manual_seed(3)
    lower, upper = (t.detach() for t in _interval((2, 3, 4), g))
    x = Interval(lower, upper)
    RULES["ibp_mul"](x, torch.randn(3, 1, generator=g, dtype=torch.float64))
    assert len(calls) == 1
    # a scale along the last dim, an infinite end: the torch rule
    for y, scale in ((x, torch.randn(4, generator=g, dtype=torch.float64)),
                     (Interval(lower, torch.where(upper > 0.5, math.inf, upper)), torch.ones(3, 1, dtype=torch.float64))):
        out = RULES["ibp_mul"](y, scale)
        ref = REGISTRY["mul"].ibp(y, scale)
        assert torch.equal(out.lower, ref.lower) and torch.equal(out.upper, ref.upper)
    assert len(calls) == 1


def test_network_with_an_unfolded_batch_norm():
    """A batch norm between ReLUs (no layer to fold it into) runs the kernel in IBP and
    CROWN-IBP on backend='triton', with the torch backend's bounds."""
    import lirpac
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.BatchNorm1d(6),
                                torch.nn.ReLU(), torch.nn.Linear(6, 2)).double().eval()
    with torch.no_grad():
        model[2].running_mean.uniform_(-1, 1)
        model[2].running_var.uniform_(0.5, 2)
        model[2].weight.uniform_(-2, 2)
    net_torch = lirpac.compile(model, torch.zeros(2, 4, dtype=torch.float64), backend="torch")
    net_triton = lirpac.CompiledNet(net_torch.source_graph, module=model, backend="triton")
    assert "# ibp_batch_norm -> scale_shift_ibp_kernel" in net_triton.source("ibp")
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for method in ("ibp", "crown-ibp"):
        for f, r in zip(net_triton.bounds(x, lirpac.LpBall(eps=0.1), method=method),
                        net_torch.bounds(x, lirpac.LpBall(eps=0.1), method=method)):
            torch.testing.assert_close(f, r, atol=1e-12, rtol=1e-12)
