"""compile(..., cuda_graphs=True) (codegen/cuda_graphs.py): a precise error without CUDA, the
option's validation, and the wrapper's CPU path (calls run as is). Capture and replay need a
GPU: not tested here."""
import pytest
import torch

import lirpac
from lirpac.codegen.cuda_graphs import GraphedBound, check
from lirpac.errors import InputError


def test_without_cuda_compile_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="cuda_graphs=True .* no CUDA device"):
        lirpac.compile(torch.nn.Linear(3, 2), torch.zeros(1, 3), cuda_graphs=True)
    with pytest.raises(InputError, match="True or False"):
        check("yes")


def test_cpu_calls_run_as_is():
    """With the option on, CPU calls give the plain bounds and capture nothing."""
    from models import compiled_arch
    model, shared, shape = compiled_arch("mlp")
    net = lirpac.CompiledNet(shared.source_graph, module=model, backend="torch")
    net.cuda_graphs = True      # (what compile(..., cuda_graphs=True) sets, where CUDA exists)
    x = torch.randn(2, *shape)
    for method in ("ibp", "crown"):
        for a, b in zip(net.bounds(x, lirpac.LpBall(eps=0.1), method=method),
                        shared.bounds(x, lirpac.LpBall(eps=0.1), method=method)):
            assert torch.equal(a, b)
    graphed = [fn for fn, _ in net._cache.values()]
    assert graphed and all(isinstance(fn, GraphedBound) and not fn.graphs for fn in graphed)
    assert "def bound(" in net.source("crown")


class _HostRead(Exception):
    pass


@pytest.mark.parametrize("arch", ["mlp", pytest.param("convnet", marks=pytest.mark.slow)])
def test_capturable_methods_read_nothing_on_the_host(arch, monkeypatch):
    """What a capture needs, checked on the CPU: with the rules' value checks off, IBP, forward
    mode and CROWN-IBP read no tensor value on the host (so a CUDA graph can hold them), with
    the bounds of the checked branches; CROWN's choice of unstable rows does read one (its
    capture fails and it runs eagerly)."""
    from lirpac.codegen.cuda_graphs import host_checks_off
    from models import compiled_arch
    _, net, shape = compiled_arch(arch)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))

    def read(*args, **kwargs):
        raise _HostRead()
    for method in ("ibp", "forward", "crown-ibp", "crown"):
        fn = net.function(net.plan(method, x))
        with torch.no_grad():
            reference = fn(lirpac.LpBall(eps=0.05).bind(x), None, net._params(x))
            inp, params = lirpac.LpBall(eps=0.05).bind(x), net._params(x)
            with host_checks_off(), monkeypatch.context() as patch:
                for name in ("__bool__", "__float__", "__int__", "item", "tolist", "nonzero"):
                    patch.setattr(torch.Tensor, name, read)
                try:
                    out = fn(inp, None, params)
                except _HostRead:
                    assert method == "crown"
                    continue
        assert method != "crown"
        for a, b in zip(out[:2], reference[:2]):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
