"""backend="triton" (forced onto CPU tensors by the interpreter) gives the torch backend's
bounds and gradients on whole networks; the option's validation and the source listing."""
import pytest
import torch

pytest.importorskip("triton")

import lirpac  # noqa: E402
from lirpac.errors import InputError  # noqa: E402
from models import ARCHS, reinit  # noqa: E402

_NETS = {}


def _pair(arch):
    """(model, torch-backend net, triton-backend net, input shape), compiled once."""
    if arch not in _NETS:
        cls, shape = ARCHS[arch]
        model = reinit(cls(), seed=1)
        example = torch.zeros(2, *shape)
        net_torch = lirpac.compile(model, example, backend="torch")
        # (the same lowered graph: one torch.export per model)
        net_triton = lirpac.CompiledNet(net_torch.source_graph, module=model, backend="triton")
        _NETS[arch] = (model, net_torch, net_triton, shape)
    return _NETS[arch]


def _close(a, b):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch,method,norm", [
    ("mlp", "crown", float("inf")), ("mlp", "crown-ibp", 2.0), ("mlp", "forward+crown", 1.0),
    ("residual", "forward", float("inf")),
    ("convnet", "crown", float("inf")), ("resnet_tiny", "crown", 2.0)])
def test_bounds_equal_torch_backend(arch, method, norm):
    _, net_torch, net_triton, shape = _pair(arch)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    ball = lirpac.LpBall(eps=0.05, norm=norm)
    C = torch.randn(2, 2, net_torch.output_shape[0], generator=torch.Generator().manual_seed(1))
    _close(net_triton.bounds(x, ball, method=method, C=C), net_torch.bounds(x, ball, method=method, C=C))


def test_alpha_crown_equals_torch_backend():
    _, net_torch, net_triton, shape = _pair("mlp")
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(2))
    ball = lirpac.LpBall(eps=0.2)
    options = {"iterations": 3}
    _close(net_triton.bounds(x, ball, method="alpha-crown", options=options),
           net_torch.bounds(x, ball, method="alpha-crown", options=options))


def test_parameter_gradients_equal_torch_backend():
    """Certified training differentiates the bounds in the weights, through the kernels."""
    model, net_torch, net_triton, shape = _pair("mlp")
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(3))
    ball = lirpac.LpBall(eps=0.1)
    grads = []
    for net in (net_triton, net_torch):
        lower, upper = net.bounds(x, ball, method="crown")
        loss = (upper - lower).sum() - lower[:, 0].sum()
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    for f, r in zip(*grads):
        torch.testing.assert_close(f, r, atol=1e-5, rtol=1e-5)


def test_source_shows_kernels_and_dump(monkeypatch, capsys):
    _, net_torch, net_triton, _ = _pair("mlp")
    source = net_triton.source("crown")
    assert "def bound(" in source and "@triton.jit" in source
    assert "def relaxed_step_kernel(" in source and "def concretize_kernel(" in source
    # the kernels name the IR nodes they run for (the MLP's two ReLUs)
    assert "# relaxed -> relaxed_step_kernel, relaxed_step_grad_kernel: %relu, %relu_1" in source
    assert "@triton.jit" not in net_torch.source("crown")
    model, _, _, shape = _pair("mlp")
    monkeypatch.setenv("LIRPAC_DUMP", "code")
    net = lirpac.compile(model, torch.zeros(2, *shape), backend="triton")
    net.bounds(torch.zeros(1, *shape), lirpac.LpBall(eps=0.1), method="crown")
    assert "def relaxed_step_kernel(" in capsys.readouterr().err


def test_backend_validation(monkeypatch):
    model, _, _, shape = _pair("mlp")
    example = torch.zeros(2, *shape)
    with pytest.raises(InputError, match="backend must be one of 'torch', 'triton', 'auto'"):
        lirpac.compile(model, example, backend="cuda")
    # auto on CPU tensors is the torch backend, even where triton imports
    net = lirpac.compile(model, example, backend="AUTO")
    net.bounds(example, lirpac.LpBall(eps=0.1))
    assert all(plan.backend == "torch" for plan in net._cache)
    # triton on CPU tensors needs the interpreter
    net = lirpac.compile(model, example, backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(InputError, match="runs its kernels on CUDA tensors"):
        net.bounds(example, lirpac.LpBall(eps=0.1))


def test_without_triton(monkeypatch):
    """Where triton does not import, "auto" is torch and "triton" is a clear error."""
    from lirpac.codegen import triton as triton_backend
    monkeypatch.setattr(triton_backend, "available", lambda: False)
    model, _, _, shape = _pair("mlp")
    with pytest.raises(InputError, match=r"pip install 'lirpac\[triton\]'"):
        lirpac.compile(model, torch.zeros(2, *shape), backend="triton")
    assert triton_backend.resolve("auto", torch.zeros(1)) == "torch"


@pytest.mark.parametrize("arch,method", [("mlp", "crown"), ("convnet", "crown"), ("mlp", "forward")])
def test_kernels_run(arch, method, monkeypatch):
    """The bounds above come from the kernels, not from the torch fallbacks."""
    from lirpac.codegen.triton import concretize, forward_step, relaxed_step
    launches = []
    for module, name in ((relaxed_step, "launch_relaxed_step"), (concretize, "launch_concretize"),
                         (forward_step, "launch_forward_step")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, _n=name, **k: launches.append(_n) or _f(*a, **k))
    _, _, net_triton, shape = _pair(arch)
    net_triton.bounds(torch.zeros(1, *shape), lirpac.LpBall(eps=0.1), method=method)
    step = "launch_forward_step" if method == "forward" else "launch_relaxed_step"
    assert {step, "launch_concretize"} <= set(launches)


@pytest.mark.slow
def test_branch_and_bound_on_triton():
    """relu_split on the Triton backend proves what it proves on torch, with as many
    sub-domains (tests/methods/test_bab.py's instance; ~20 s in the interpreter)."""
    import time
    import torch.nn as nn
    from lirpac.bab import relu_split
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1)).double().eval()
    axis = torch.linspace(-1, 1, 401, dtype=torch.float64)
    with torch.no_grad():
        fmin = float(model(torch.cartesian_prod(axis, axis)).min())
    lipschitz = 1.0
    for layer in model:
        if isinstance(layer, nn.Linear):
            lipschitz *= float(torch.linalg.matrix_norm(layer.weight.detach(), 2))
    d = torch.tensor([fmin - lipschitz * 2 / 400 - 0.01], dtype=torch.float64)
    box = (-torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    one = torch.ones(1, 1, dtype=torch.float64)
    results = []
    for backend in ("torch", "triton"):
        net = lirpac.compile(model, torch.zeros(1, 2, dtype=torch.float64), backend=backend)
        results.append(relu_split(net, *box, one, d, [[0]], time.monotonic() + 300, max_domains=2000))
    assert results[0].proved is True and results[1].proved is True
    assert results[0].domains == results[1].domains
