"""The torch backend: generated code is straight-line, cached, printable, and follows the
input's dtype; LIRPAC_DUMP shows each stage."""
import ast
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lirpac
from lirpac.methods import METHODS
from bound_checks import dead_neurons_dropped, whole_passes
from models import ARCHS, reinit, shared_compiled
from sampling import assert_contains, sample_lp_ball

BASE_METHODS = ["ibp", "crown", "forward", "crown-ibp", "forward+crown"]


def _net(arch="residual", dtype=torch.float32):
    cls, shape = ARCHS[arch]
    model = cls().eval().to(dtype)
    reinit(model, 0)
    return model, lirpac.compile(model, torch.zeros(1, *shape, dtype=dtype)), shape


@pytest.mark.parametrize("method", BASE_METHODS)
def test_generated_source_is_straight_line(method):
    _, net, _ = _net()
    source = net.source(method)
    tree = ast.parse(source)
    loops = [n for n in ast.walk(tree) if isinstance(n, (ast.For, ast.While, ast.ListComp, ast.GeneratorExp))]
    assert not loops, "generated code must not loop over nodes"
    # node names of the IR are the variable names of the generated code
    names = {n.name for n in net.graph.nodes if n.perturbed}
    assert any(name in source for name in names)


def test_functions_are_cached_per_plan():
    _, net, shape = _net()
    x = torch.randn(2, *shape)
    ball = lirpac.LpBall(eps=0.1)
    net.bounds(x, ball, method="crown")
    n_cached = len(net._cache)
    net.bounds(x, ball, method="crown")
    net.bounds(torch.randn(5, *shape), ball, method="crown")    # other batch, same code
    assert len(net._cache) == n_cached
    net.bounds(x, ball, method="crown", C=torch.randn(2, 3, net.output_shape[0]))
    assert len(net._cache) == n_cached + 1


@pytest.mark.parametrize("method", BASE_METHODS)
def test_dtype_follows_the_input(method):
    _, net, shape = _net(dtype=torch.float32)
    x = torch.randn(2, *shape, dtype=torch.float64)
    lower, upper = net.bounds(x, lirpac.LpBall(eps=0.05), method=method)
    assert lower.dtype == torch.float64 and upper.dtype == torch.float64


def test_float64_model_matches_float32_bounds():
    model32, net32, shape = _net(dtype=torch.float32)
    model64, net64, _ = _net(dtype=torch.float64)
    x = torch.randn(2, *shape, dtype=torch.float64)
    lo64, up64 = net64.bounds(x, lirpac.LpBall(eps=0.05), method="crown")
    lo32, up32 = net32.bounds(x.float(), lirpac.LpBall(eps=0.05), method="crown")
    assert torch.allclose(lo64.float(), lo32, rtol=1e-3, atol=1e-4)
    assert torch.allclose(up64.float(), up32, rtol=1e-3, atol=1e-4)


def test_dump_holds_ir_and_generated_source():
    _, net, shape = _net()
    net.bounds(torch.randn(1, *shape), lirpac.LpBall(eps=0.1), method="crown-ibp")
    text = net.dump()
    assert "# IR after passes" in text and "def bound(inp, C, params):" in text
    assert "crown-ibp" in text


def test_lirpac_dump_environment_variable(monkeypatch, capsys):
    monkeypatch.setenv("LIRPAC_DUMP", "all")
    cls, shape = ARCHS["mlp"]
    net = lirpac.compile(cls().eval(), torch.zeros(1, *shape))
    net.bounds(torch.randn(1, *shape), lirpac.LpBall(eps=0.1), method="ibp")
    err = capsys.readouterr().err
    assert "IR from the frontend" in err and "generated code (ibp)" in err


def test_generated_code_shows_in_tracebacks():
    """Generated lines are registered with linecache, so tracebacks quote them."""
    import linecache
    _, net, _ = _net()
    net.source("crown")
    filename = next(iter(net._cache.values()))[0].__code__.co_filename
    assert linecache.getline(filename, 1).startswith("def bound(")


def test_bounds_are_differentiable_in_parameters():
    model, net, shape = _net()
    x = torch.randn(2, *shape)
    lower, upper = net.bounds(x, lirpac.LpBall(eps=0.05), method="crown")
    (upper - lower).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_every_method_is_listed():
    assert set(BASE_METHODS) <= set(METHODS)


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("method", ["crown", "crown-ibp", "forward+crown"])
def test_folded_sides_give_the_same_bounds(arch, method, monkeypatch):
    """A pass over few rows bounds [c; -c] from below (codegen/runtime.fold_pair): negation is
    exact, so bounds and linear functions equal those of the two sides computed apart, up to
    the summation order of products over more rows (convolutions)."""
    from lirpac.codegen import runtime
    cls, shape = ARCHS[arch]
    model = reinit(cls().eval(), 5)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(5))
    ball = lirpac.LpBall(eps=0.2)
    results = {}
    for limit in (0, 1 << 40):          # never fold / always fold
        monkeypatch.setattr(runtime, "FOLD_MAX_BYTES", limit)
        net = lirpac.compile(model, x[:1])
        with torch.no_grad():
            results[limit] = (net.bounds(x, ball, method=method),
                              net.linear_bounds(x, ball, method=method))
    (never, never_lin), (always, always_lin) = results.values()
    for a, b in zip(never, always):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    for field in ("lower_coeff", "lower_bias", "upper_coeff", "upper_bias", "lower", "upper"):
        a, b = getattr(never_lin, field), getattr(always_lin, field)
        torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), rtol=1e-6, atol=1e-6, msg=field)


def test_fold_only_while_the_folded_rows_are_small():
    from lirpac.codegen.runtime import FOLD_MAX_BYTES, fold_worth
    few, many = torch.zeros(1, 10, 5), torch.zeros(1, 400, 5)
    assert fold_worth(few, 784) and not fold_worth(many, 784)
    assert 2 * 400 * 784 * 4 > FOLD_MAX_BYTES


def _plain_linear_net():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 3)).eval()
    return model, lirpac.compile(model, torch.zeros(1, 2, 3))


def test_concretization_overwrites_only_coefficients_it_owns():
    """The last concretization takes |A| in A's memory only where the code generator proved
    that A is a fresh product (then viewed): never a view of a weight (a one-layer net's
    coefficients are its weight, expanded), never coefficients returned with return_A."""
    model, net = _plain_linear_net()
    weight = model[1].weight.detach().clone()
    x = torch.randn(4, 2, 3)
    ball = lirpac.LpBall(eps=0.2)
    with torch.no_grad():
        lower, upper = net.bounds(x, ball, method="crown")
    assert "consume=True" not in net.source("crown")
    assert torch.equal(model[1].weight.detach(), weight)
    centre = model(x)
    radius = 0.2 * weight.abs().sum(1)
    torch.testing.assert_close(lower, centre - radius)
    torch.testing.assert_close(upper, centre + radius)

    model, net, shape = _net("mlp")
    x = torch.randn(3, *shape)
    assert "consume=True" in net.source("crown")
    with torch.no_grad():
        plain = net.bounds(x, ball, method="crown")
        linear = net.linear_bounds(x, ball, method="crown")
    assert torch.equal(plain[0], linear.lower) and torch.equal(plain[1], linear.upper)
    # the returned coefficients are the linear functions themselves, not their absolute values
    assert bool((linear.lower_coeff < 0).any())
    flat = x.flatten(1)
    value = torch.einsum("bsn,bn->bs", linear.lower_coeff.flatten(2), flat) + linear.lower_bias
    assert torch.all(value <= model(x) + 1e-5)


def test_pass_starts_are_functions_of_the_rows():
    """An intermediate pass's first coefficients are ``<node>_start(_rows)``; alpha-CROWN's
    steps compute them once per rows tensor (runtime.once_per_rows)."""
    from lirpac.codegen.runtime import once_per_rows
    _, net, _ = _net("mlp")
    assert "_start(_rows, _signs)" in net.source("crown")
    alpha_source = net.source("alpha-crown")
    assert "_start(_rows)" in alpha_source
    assert "once_per_rows(" in alpha_source
    calls = []
    start = once_per_rows(lambda rows: calls.append(rows) or rows * 2)
    rows, other = torch.arange(3), torch.arange(3)
    assert start(rows) is start(rows) and len(calls) == 1
    assert torch.equal(start(other), rows * 2) and len(calls) == 2     # another tensor: again


def _mostly_dead_mlp(seed: int, shift: float):
    """A ReLU MLP whose hidden layers' biases are pushed down by ``shift``: many neurons are
    0 on the whole ball (dead), some in every sample, some in a few."""
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(6, 24), torch.nn.ReLU(), torch.nn.Linear(24, 24), torch.nn.ReLU(),
              torch.nn.Linear(24, 24), torch.nn.ReLU(), torch.nn.Linear(24, 4)]
    with torch.no_grad():
        for layer in layers[:-1:2]:
            layer.bias.sub_(shift)
    return torch.nn.Sequential(*layers).eval()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), shift=st.floats(0.0, 1.5), eps=st.floats(0.01, 0.5),
       batch=st.integers(1, 3), norm=st.sampled_from([math.inf, 2.0, 1.0]))
def test_dead_neurons_leave_the_later_passes(seed, shift, eps, batch, norm):
    """CROWN's and alpha-CROWN's passes drop a layer's dead neurons (runtime.live_neurons)
    from its lines and the weights around it: the same bounds and linear functions as
    without, up to the summation order of the smaller products, and sound at sampled points
    (corners too)."""
    model = _mostly_dead_mlp(seed, shift)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 6, generator=g)
    ball = lirpac.LpBall(eps=eps, norm=norm)
    model, net = shared_compiled("mostly_dead_mlp", model, x[:1])
    assert "live_neurons(zero_relu(" in net.source("crown")
    assert "prune_bounds(" in net.source("alpha-crown")
    results = []
    for always in (False, True):
        with dead_neurons_dropped(always), torch.no_grad():
            results.append((net.bounds(x, ball, method="crown"), net.linear_bounds(x, ball, method="crown"),
                            net.bounds(x, ball, method="alpha-crown", options={"iterations": 5})))
    (kept, kept_lin, kept_alpha), (dropped, dropped_lin, dropped_alpha) = results
    for a, b in zip(kept + kept_alpha, dropped + dropped_alpha):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for field in ("lower_coeff", "lower_bias", "upper_coeff", "upper_bias"):
        torch.testing.assert_close(getattr(kept_lin, field), getattr(dropped_lin, field),
                                   rtol=1e-5, atol=1e-5, msg=field)
    points = sample_lp_ball(x, eps, norm, 64, generator=g)
    assert_contains(model, points, *dropped)
    assert_contains(model, points, *dropped_alpha)


def test_live_neurons_are_those_some_sample_needs():
    """The live neurons (some sample's bounds leave them nonzero), padded with dead ones to a
    multiple of 8; None when fewer than PRUNE_MIN_DEAD are dead."""
    from lirpac.codegen.runtime import PRUNE_MIN_DEAD, live_neurons, prune_columns, prune_rows
    zero = torch.rand(2, 40, generator=torch.Generator().manual_seed(0)) < 0.6
    some_live = set(torch.logical_not(zero).any(0).nonzero().flatten().tolist())
    first_live = set(torch.logical_not(zero[0]).nonzero().flatten().tolist())
    for z, live in ((zero, some_live), (zero[:1], first_live)):
        index = live_neurons(z).tolist()
        assert live <= set(index) and len(set(index)) == len(index) and len(index) % 8 == 0
        assert len(index) - len(live) < 8
    assert live_neurons(torch.zeros(1, 10, dtype=torch.bool)) is None    # none dead
    few = torch.zeros(1, 100, dtype=torch.bool)
    few[0, : int(PRUNE_MIN_DEAD * 100) - 1] = True
    assert live_neurons(few) is None                                     # too few to be worth it
    weight = torch.arange(12.0).reshape(3, 4)
    assert prune_rows(None, weight) is weight and prune_columns(None, weight) is weight
    assert torch.equal(prune_columns(torch.tensor([1, 3]), weight), weight[:, [1, 3]])


def test_dropping_dead_neurons_keeps_parameter_gradients():
    """Certified training differentiates CROWN's bounds in the parameters: the same gradients
    whether or not dead neurons leave the passes (their weight rows get none either way)."""
    model = _mostly_dead_mlp(3, 0.8)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    net = lirpac.compile(model, x[:1])
    grads = []
    for always in (False, True):
        model.zero_grad()
        with dead_neurons_dropped(always):
            lower, upper = net.bounds(x, lirpac.LpBall(eps=0.3), method="crown")
        (upper - lower).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


class _ConvTwoDenseLayers(torch.nn.Module):
    """A conv layer, then a dense head whose middle ReLU layer is crossed by a backward pass
    that reaches the conv (Patches) after the dense layers."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 24), torch.nn.ReLU(),
                                        torch.nn.Linear(24, 24), torch.nn.ReLU(), torch.nn.Linear(24, 3))

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)))


_DROP_ARCHS = {**ARCHS, "conv_two_dense": (_ConvTwoDenseLayers, (2, 8, 8))}


@pytest.mark.parametrize("arch", sorted(_DROP_ARCHS))
@pytest.mark.parametrize("method", ["crown", "alpha-crown"])
@pytest.mark.parametrize("switch", [dead_neurons_dropped, whole_passes])
def test_every_arch_keeps_its_bounds_under_the_run_time_choices(arch, method, switch):
    """Forcing the drop of every dead neuron (none need be dead: the live index then holds
    all), or intermediate passes over every neuron of their node (the rows they bound are
    then read off the whole pass), changes no bound of the test architectures beyond
    rounding, and the bounds hold."""
    cls, shape = _DROP_ARCHS[arch]
    model = reinit(cls().eval(), 7)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, *shape, generator=g)
    ball = lirpac.LpBall(eps=0.2)
    net = lirpac.compile(model, x[:1])
    options = {"iterations": 3} if method == "alpha-crown" else None
    results = []
    for always in (False, True):
        with switch(always), torch.no_grad():
            results.append(net.bounds(x, ball, method=method, options=options))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert_contains(model, sample_lp_ball(x, 0.2, math.inf, 64, generator=g), *results[1])
    if switch is dead_neurons_dropped:
        assert ("live_neurons(" in net.source(method)) == (arch in ("mlp", "conv_two_dense"))
