"""The pass manager: named passes in order, errors for unknown names, the LIRPAC_DUMP=passes
dump, the frontend graph left untouched, and bounds that stay live functions of the model's
parameters (gradients and weight updates are the same with and without the folds)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import lirpac
from lirpac.errors import InputError
from lirpac.passes import DEFAULT_PASSES, PASSES, run_passes
from models import ARCHS, reinit


class NormBN(nn.Module):
    """Normalisation into a padded conv, BN after it, BN before a linear: every fold fires."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.3, -0.1]).reshape(2, 1, 1))
        self.conv, self.bn = nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.bn1, self.fc = nn.BatchNorm1d(48), nn.Linear(48, 3)

    def forward(self, x):                           # (B, 2, 4, 4)
        h = F.relu(self.bn(self.conv((x - self.mean) / 0.7)))
        return self.fc(self.bn1(h.flatten(1)))


def _model(seed=0, dtype=torch.float32):
    x = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return reinit(NormBN(), seed).to(dtype), x


def test_unknown_pass_lists_the_available_ones():
    model, x = _model()
    with pytest.raises(InputError) as err:
        lirpac.compile(model, x, passes=["canonicalize", "no_such_pass"])
    assert "no_such_pass" in str(err.value)
    for name in PASSES:
        assert name in str(err.value)


def test_every_pass_has_a_docstring_saying_why():
    import importlib
    for name, run in PASSES.items():
        doc = importlib.import_module(run.__module__).__doc__
        assert doc and len(doc) > 80, name


def test_default_passes_are_registered_and_end_with_the_analysis():
    assert all(name in PASSES for name in DEFAULT_PASSES)
    assert DEFAULT_PASSES[-1] == "annotate_bounds"


def test_frontend_graph_is_not_mutated():
    from lirpac.ir.torch_frontend import lower_module
    model, x = _model()
    graph = lower_module(model, x)
    text = str(graph)
    folded, records = run_passes(graph)
    assert str(graph) == text
    assert len(folded.nodes) != len(graph.nodes) or str(folded) != text
    assert [r.name for r in records] == DEFAULT_PASSES


def test_dump_prints_each_pass_with_time_and_changes(monkeypatch, capsys):
    monkeypatch.setenv("LIRPAC_DUMP", "passes")
    model, x = _model()
    net = lirpac.compile(model, x)
    err = capsys.readouterr().err
    for name in DEFAULT_PASSES:
        assert f"after pass {name} (" in err
    assert " ms; nodes " in err and "removed" in err and "%batch_norm" in err
    text = net.dump()
    for name in DEFAULT_PASSES:
        assert f"#   {name}: " in text


def _bounds_and_grads(model, net, x, method):
    model.zero_grad()
    lower, upper = net.bounds(x, lirpac.LpBall(eps=0.05), method=method)
    (upper - lower).sum().add(lower.square().sum()).backward()
    return lower.detach(), upper.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown", "forward"])
def test_gradients_and_weight_updates_match_without_passes(method):
    model, x = _model(3, torch.float64)   # float64: float32 rounding differs in the gradients
    plain, folded = lirpac.compile(model, x, passes=[]), lirpac.compile(model, x)
    assert not any(n.op == "batch_norm" for n in folded.graph.nodes)
    for step in range(2):
        lo0, up0, g0 = _bounds_and_grads(model, plain, x, method)
        lo1, up1, g1 = _bounds_and_grads(model, folded, x, method)
        torch.testing.assert_close(lo1, lo0, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(up1, up0, rtol=1e-5, atol=1e-6)
        for k in g0:
            torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=1e-6, msg=k)
        with torch.no_grad():   # a training step after compile: both nets must see it
            for p in model.parameters():
                p.sub_(0.1 * p.grad)
            model.bn.running_var.mul_(1.5)


def test_weight_update_after_compile_changes_bounds():
    model, x = _model(4)
    net = lirpac.compile(model, x)
    before = net.bounds(x, lirpac.LpBall(eps=0.05), method="crown")[0].clone()
    with torch.no_grad():
        model.conv.weight.mul_(2.0)
        model.bn.weight.add_(0.5)
    after = net.bounds(x, lirpac.LpBall(eps=0.05), method="crown")[0]
    expected = lirpac.compile(model, x, passes=[]).bounds(x, lirpac.LpBall(eps=0.05), method="crown")[0]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_passes_keep_the_function(arch):
    from lirpac.ir.interpret import evaluate
    from lirpac.ir.torch_frontend import lower_module
    cls, shape = ARCHS[arch]
    model = reinit(cls(), 2)
    x = torch.randn(3, *shape)
    graph = lower_module(model, x)
    folded, _ = run_passes(graph)
    torch.testing.assert_close(evaluate(folded, x), model(x), rtol=1e-5, atol=1e-5)


class ParamExpression(nn.Module):
    """A constant subgraph that reads a parameter (w.t() * 2) next to a literal one."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 4))

    def forward(self, x):                           # (B, 4)
        return F.relu(x @ (self.w.t() * 2.0)) + torch.ones(3).cumsum(0)


def test_fold_constants_keeps_parameter_expressions_live():
    torch.manual_seed(0)
    model = ParamExpression().eval()
    x = torch.randn(2, 4)
    net = lirpac.compile(model, x)
    ops = [n.op for n in net.graph.nodes if not n.perturbed]
    assert "param" in ops and "const_fn" in ops         # w.t() * 2 is still computed per call
    assert sum(n.op == "constant" for n in net.graph.nodes) >= 1    # the cumsum is folded
    lower, upper = net.bounds(x, lirpac.LpBall(eps=0.1), method="crown")
    upper.sum().backward()
    assert model.w.grad is not None and model.w.grad.abs().sum() > 0
    with torch.no_grad():
        model.w.mul_(3.0)
    expected = lirpac.compile(model, x, passes=[]).bounds(x, lirpac.LpBall(eps=0.1), method="crown")
    torch.testing.assert_close(net.bounds(x, lirpac.LpBall(eps=0.1), method="crown"), expected)


def test_dump_warns_about_an_unknown_stage(monkeypatch, capsys):
    """LIRPAC_DUMP=cdoe (a typo of code) printed nothing and said nothing."""
    monkeypatch.setenv("LIRPAC_DUMP", "ir,cdoe")
    model, x = _model()
    with pytest.warns(UserWarning, match="LIRPAC_DUMP: unknown stage.*'cdoe'"):
        lirpac.compile(model, x)
    assert "IR from the frontend" in capsys.readouterr().err
