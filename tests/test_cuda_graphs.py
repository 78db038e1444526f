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
