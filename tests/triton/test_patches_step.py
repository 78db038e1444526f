"""The fused relaxed step on Patches (codegen/triton/patches_step.py) against the torch rule
on Patches (lines read at each row's window): values and gradients, windows past the map's
edge (padding) at a stride, both coefficient layouts, a batch shared by expansion, infinite
line ends, and alpha-CROWN's kink slopes per window and shared."""
import math

import pytest
import torch

pytest.importorskip("triton")

from lirpac.codegen.patches import Patches, identity_patches  # noqa: E402
from lirpac.codegen.triton.relaxed_step import kink_backward_alpha, relaxed  # noqa: E402
from lirpac.ir.opdef import get_op  # noqa: E402
from lirpac.ir.ops.common import prepare_lines, relaxed_backward_lines  # noqa: E402

NODE = (2, 5, 5)


def _patches(g, layout="channels_last", rows=4, batch=2):
    """Patches on NODE from 3x3 windows of a stride-2, padding-1 conv (windows cross the
    map's edge), with random coefficients inside the map (zero outside: the invariant);
    "per_sample": each sample's own rows (window corners (B, k)), channels last."""
    starts = torch.tensor([0, 4, 8, 13][:rows])
    if layout == "per_sample":
        starts = torch.stack([starts, torch.tensor([26, 1, 8, 20][:rows])])
    out = identity_patches(batch, starts, (3, 3, 3), torch.zeros(1, dtype=torch.float64))
    weight = torch.randn(3, NODE[0], 3, 3, generator=g, dtype=torch.float64)
    p = out.conv_transpose(weight, (2, 2), (1, 1), (1, 1), 1, NODE)
    mask = p._inside_mask()
    coeff = torch.randn(p.coeff.shape, generator=g, dtype=torch.float64)
    coeff[..., 0, :] = 0.0      # exact zeros: the split's tie and 0 * inf
    if layout == "contiguous":
        coeff = coeff * mask
    elif layout in ("channels_last", "per_sample"):
        coeff = (coeff.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)) * mask
        assert not coeff.is_contiguous()
    else:    # the same rows for every sample: an expanded batch
        coeff = (coeff[:1] * mask).expand(batch, *coeff.shape[1:])
    return Patches(coeff, p.top, p.left, NODE)


def _lines(g, batch=2, infinite=False, zeros=()):
    lines = [torch.randn(batch, *NODE, generator=g, dtype=torch.float64) for _ in range(4)]
    if infinite:
        lines[1].view(-1)[:3] = -math.inf
        lines[3].view(-1)[2:5] = math.inf
    for k in zeros:
        lines[k] = 0
    return lines


def _flat(result):
    [(new_l, new_u)], lbias, ubias = result
    return [None if new_l is None else new_l.coeff, None if new_u is None else new_u.coeff, lbias, ubias]


def _same(fused, reference):
    for f, r in zip(fused, reference):
        if r is None or isinstance(r, int):
            assert f is None or isinstance(f, int) and f == r or not f.count_nonzero()
            continue
        torch.testing.assert_close(f, r, atol=1e-12, rtol=1e-12, equal_nan=True)


def _sides(p, q, side):
    return {"shared": (p, p), "distinct": (p, q), "lower": (p, None), "upper": (None, q)}[side]


@pytest.mark.parametrize("layout", ["channels_last", "contiguous", "expanded", "per_sample"])
@pytest.mark.parametrize("side", ["shared", "distinct", "lower", "upper"])
def test_values_match_torch(layout, side):
    g = torch.Generator().manual_seed(1)
    p, q = _patches(g, layout), _patches(g, layout)
    q = Patches(q.coeff, p.top, p.left, NODE)
    lA, uA = _sides(p, q, side)
    lines = prepare_lines(_lines(g, infinite=layout == "contiguous", zeros=(1,) if side == "upper" else ()))
    fused = relaxed(lA, uA, lines)
    some = fused[0][0][0] if fused[0][0][0] is not None else fused[0][0][1]
    assert isinstance(some, Patches) and some.top is p.top
    _same(_flat(fused), _flat(relaxed_backward_lines(lA, uA, lines)))


def test_the_kernel_runs(monkeypatch):
    """Patches no longer fall back to the torch rule."""
    from lirpac.codegen.triton import patches_step
    calls = []
    real = patches_step.launch_patches_step
    monkeypatch.setattr(patches_step, "launch_patches_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    g = torch.Generator().manual_seed(2)
    p = _patches(g)
    relaxed(p, p, prepare_lines(_lines(g)))
    start = identity_patches(2, None, NODE, torch.zeros(1, dtype=torch.float64))
    relaxed(start, start, prepare_lines(_lines(g, batch=1)))
    assert len(calls) == 2


def _grads(rule, leaves, weights):
    outs = [o for o in _flat(rule()) if isinstance(o, torch.Tensor)]
    total = sum((w * o).sum() for w, o in zip(weights, outs))
    return torch.autograd.grad(total, leaves, allow_unused=True)


@pytest.mark.parametrize("side,infinite,layout", [("shared", True, "channels_last"), ("distinct", False, "channels_last"),
                                                  ("distinct", False, "per_sample")])
def test_gradients_match_torch(side, infinite, layout):
    g = torch.Generator().manual_seed(3)
    p = _patches(g, layout)
    a = p.coeff.detach().clone().requires_grad_()
    b = _patches(g, layout).coeff.detach().clone().requires_grad_()
    lA = Patches(a, p.top, p.left, NODE)
    uA = lA if side == "shared" else Patches(b, p.top, p.left, NODE)
    lines = [t.requires_grad_() for t in _lines(g, batch=1, infinite=infinite)]
    weights = [torch.randn(a.shape, generator=g, dtype=torch.float64) for _ in range(2)] + \
              [torch.randn(2, 4, generator=g, dtype=torch.float64) for _ in range(2)]
    leaves = [a, *lines] + ([] if side == "shared" else [b])
    fused = _grads(lambda: relaxed(lA, uA, prepare_lines(lines)), leaves, weights)
    reference = _grads(lambda: relaxed_backward_lines(lA, uA, prepare_lines(lines)), leaves, weights)
    for f, r in zip(fused, reference):
        torch.testing.assert_close(f, r, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("op,attrs", [("relu", {}), ("leaky_relu", {"negative_slope": 0.2})])
@pytest.mark.parametrize("per_window", [True, False])
def test_kink_alpha_matches_torch(op, attrs, per_window):
    """alpha-CROWN's kink rule on Patches: slopes per row and window position (the slot's
    shape there) or shared; values and the gradients in alpha, the coefficients and the
    bounds the lines come from."""
    g = torch.Generator().manual_seed(5)
    opdef = get_op(op)
    lower = torch.randn(2, *NODE, generator=g, dtype=torch.float64).requires_grad_()
    width = torch.rand(2, *NODE, generator=g, dtype=torch.float64).requires_grad_()
    lines = opdef.alpha_lines(lower, lower + 2 * width, **attrs)
    fused_rule = kink_backward_alpha(opdef.backward_alpha, opdef.backward_alpha.bottom_slope)
    p, q = _patches(g), _patches(g)
    a = p.coeff.detach().clone().requires_grad_()
    b = q.coeff.detach().clone().requires_grad_()
    lA, uA = Patches(a, p.top, p.left, NODE), Patches(b, p.top, p.left, NODE)
    shape = a.shape if per_window else (2, 1, *NODE)
    alpha_l = torch.rand(*shape, generator=g, dtype=torch.float64).requires_grad_()
    alpha_u = torch.rand(*shape, generator=g, dtype=torch.float64).requires_grad_()
    weights = [torch.randn(a.shape, generator=g, dtype=torch.float64) for _ in range(2)] + \
              [torch.randn(2, 4, generator=g, dtype=torch.float64) for _ in range(2)]
    results = []
    for rule in (fused_rule, opdef.backward_alpha):
        outs = _flat(rule(lA, uA, lines, alpha_l, alpha_u, **attrs))
        total = sum((w * o).sum() for w, o in zip(weights, outs) if isinstance(o, torch.Tensor))
        results.append(([o.detach() if isinstance(o, torch.Tensor) else o for o in outs],
                         torch.autograd.grad(total, (a, b, alpha_l, alpha_u, lower, width), retain_graph=True)))
    _same(results[0][0], results[1][0])
    for f, r in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(f, r, atol=1e-12, rtol=1e-12)


# -- whole networks whose backward passes hold Patches --------------------------------------

_NETS = {}


def _nets(arch):
    """(model, torch-backend net, triton-backend net, input shape) in float64, patches mode."""
    import lirpac
    from models import ARCHS, reinit
    if arch not in _NETS:
        cls, shape = ARCHS[arch]
        model = reinit(cls(), seed=4).double().eval()
        net_torch = lirpac.compile(model, torch.zeros(2, *shape, dtype=torch.float64), backend="torch",
                                   conv_mode="patches")
        net_triton = lirpac.CompiledNet(net_torch.source_graph, module=model, backend="triton", conv_mode="patches")
        _NETS[arch] = (model, net_torch, net_triton, shape)
    return _NETS[arch]


@pytest.mark.slow
@pytest.mark.parametrize("arch,method", [("convnet", "crown"), ("convnet", "alpha-crown"), ("resnet_tiny", "crown"),
                                         ("resnet_tiny", "alpha-crown")])
def test_networks_in_patches_mode(arch, method, monkeypatch):
    """Bounds equal the torch backend's (float64), so do their gradients in the weights
    (CROWN; alpha-CROWN's own optimisation differentiates through the kernels), and the
    Patches kernel ran."""
    import lirpac
    from lirpac.codegen.triton import patches_step
    model, net_torch, net_triton, shape = _nets(arch)
    assert "patches" in net_torch.source(method)
    calls = []
    real = patches_step.launch_patches_step
    monkeypatch.setattr(patches_step, "launch_patches_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ball = lirpac.LpBall(eps=0.05)
    options = {"iterations": 2} if method == "alpha-crown" else None
    results = []
    for net in (net_triton, net_torch):
        lower, upper = net.bounds(x, ball, method=method, options=options)
        grads = () if method == "alpha-crown" else \
            torch.autograd.grad((upper - lower).sum() - lower[:, 0].sum(), list(model.parameters()))
        results.append((lower, upper, *grads))
    assert calls
    for f, r in zip(*results):
        torch.testing.assert_close(f, r, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("method", ["crown", "alpha-crown"])
def test_shared_convnet_in_patches_mode(method, monkeypatch):
    """The suite's shared convnet (float32) in patches mode on backend='triton': the torch
    backend's bounds, through the Patches kernel (the float64 comparisons above are slow)."""
    import lirpac
    from lirpac.codegen.triton import patches_step
    from models import compiled_arch
    model, shared, shape = compiled_arch("convnet")
    nets = [lirpac.CompiledNet(shared.source_graph, module=model, backend=backend, conv_mode="patches")
            for backend in ("triton", "torch")]
    calls = []
    real = patches_step.launch_patches_step
    monkeypatch.setattr(patches_step, "launch_patches_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    options = {"iterations": 1} if method == "alpha-crown" else None
    fused, reference = (net.bounds(x, lirpac.LpBall(eps=0.05), method=method, options=options) for net in nets)
    assert calls
    for f, r in zip(fused, reference):
        torch.testing.assert_close(f, r, atol=1e-5, rtol=1e-5)
