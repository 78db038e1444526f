"""The fused IBP of linear and conv layers against their torch rules (ir/ops/linear.py):
values bit for bit and gradients, infinite ends (the torch rule runs), and whole networks'
IBP and CROWN-IBP bounds with backend="triton"."""
import math

import pytest
import torch

pytest.importorskip("triton")

import lirpac  # noqa: E402
from lirpac.codegen.triton.ibp_affine import ibp_rules  # noqa: E402
from lirpac.ir.opdef import REGISTRY, Interval  # noqa: E402
from models import ARCHS, reinit  # noqa: E402

_CONV = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
_CASES = {"linear": ((2, 5), (3, 5), (3,), {}), "conv": ((2, 2, 4, 4), (3, 2, 3, 3), (3,), _CONV),
          "matmul_const_right": ((2, 3, 4), (4, 2), None, {}), "matmul_const_left": ((2, 4, 3), (2, 4), None, {})}


def _run(op, rule, lower, upper, weight, bias, kw):
    x = Interval(lower, upper)
    if op == "matmul_const_left":
        out = rule(weight, x)
    else:
        out = rule(x, weight) if bias is None else rule(x, weight, bias, **kw)
    g = torch.Generator().manual_seed(7)
    wl, wu = torch.randn(out.lower.shape, generator=g, dtype=out.lower.dtype), \
        torch.randn(out.upper.shape, generator=g, dtype=out.upper.dtype)
    finite = torch.isfinite(out.lower) & torch.isfinite(out.upper)
    total = (wl * out.lower)[finite].sum() + (wu * out.upper)[finite].sum()
    grads = torch.autograd.grad(total, [t for t in (lower, upper, weight, bias) if t is not None])
    return [out.lower.detach(), out.upper.detach(), *grads]


@pytest.mark.parametrize("op", sorted(_CASES))
@pytest.mark.parametrize("infinite", [False, True])
def test_values_and_gradients_match_torch(op, infinite, monkeypatch):
    from lirpac.codegen.triton import ibp_affine
    launches, launch = [], ibp_affine.launch_pairwise
    monkeypatch.setattr(ibp_affine, "launch_pairwise", lambda *a: launches.append(a[0]) or launch(*a))
    x_shape, w_shape, b_shape, kw = _CASES[op]
    g = torch.Generator().manual_seed(len(op))
    d = dict(generator=g, dtype=torch.float64)
    lower = torch.randn(x_shape, **d)
    upper = lower + torch.rand(x_shape, **d)
    upper.view(-1)[1] = lower.view(-1)[1]         # a point
    if infinite:
        upper.view(-1)[0] = math.inf
    leaves = [lower, upper, torch.randn(w_shape, **d), None if b_shape is None else torch.randn(b_shape, **d)]
    fused, reference = ibp_rules()[f"ibp_{op}"], REGISTRY[op].ibp
    results = [_run(op, rule, *(None if t is None else t.clone().requires_grad_() for t in leaves), kw)
               for rule in (fused, reference)]
    assert len(launches) == (1 if infinite else 2)     # an infinite end: the torch rule after the centre
    for f, r in zip(*results):
        torch.testing.assert_close(f, r, atol=1e-12, rtol=1e-12, equal_nan=True)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("arch,method", [("mlp", "ibp"), ("convnet", "ibp"), ("convnet", "crown-ibp")])
def test_network_bounds_equal_torch_backend(arch, method):
    cls, shape = ARCHS[arch]
    model = reinit(cls(), seed=3)
    net_torch = lirpac.compile(model, torch.zeros(2, *shape), backend="torch")
    net_triton = lirpac.CompiledNet(net_torch.source_graph, module=model, backend="triton")
    assert "ibp_" in net_triton.source(method) and "centre_radius_kernel" in net_triton.source(method)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    ball = lirpac.LpBall(eps=0.05)
    for a, b in zip(net_triton.bounds(x, ball, method=method), net_torch.bounds(x, ball, method=method)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
