"""ReLU branch and bound: bounds of a sub-domain hold on it, a false property is never proved,
and splitting proves properties alpha-CROWN alone cannot."""
import time

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

import lirpac
from lirpac.alpha import AlphaOptions, AlphaState, BranchContext, StepContext
from lirpac.bab import relu_split, splittable_nodes
from bound_checks import dead_neurons_dropped
from models import shared_compiled


def mlp(seed: int, width: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 1)).double().eval()


def grid(n: int = 401) -> torch.Tensor:
    g = torch.linspace(-1, 1, n, dtype=torch.float64)
    return torch.cartesian_prod(g, g)


def compiled(model):
    """The net of ``model`` (compiled once per architecture; it reads model's weights, copied
    into the first model compiled)."""
    return shared_compiled(("bab", repr(model)), model, torch.zeros(1, 2, dtype=torch.float64))[1]


UNIT = (-torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
ONE = torch.ones(1, 1, dtype=torch.float64)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), width=st.integers(3, 8), picks=st.integers(1, 4),
       random_multipliers=st.booleans(), frozen=st.booleans(), drop_dead=st.booleans())
def test_bounds_of_a_sub_domain_hold_on_it(seed, width, picks, random_multipliers, frozen, drop_dead):
    """Bounds with some neurons' signs fixed contain f at every sampled point of the box whose
    pre-activations have those signs: after optimisation, and for random slopes in [0, 1] and
    random beta multipliers >= 0; also when the steps keep the first evaluation's intermediate
    bounds (frozen: only the final pass's slopes exist then), and whether or not the passes
    drop dead neurons (constrained ones keep their multipliers)."""
    with dead_neurons_dropped(drop_dead):
        _check_sub_domain(seed, width, picks, random_multipliers, frozen)


def _check_sub_domain(seed, width, picks, random_multipliers, frozen):
    model = mlp(seed, width)
    net = compiled(model)
    names = list(splittable_nodes(net.graph))
    assert len(names) == 2    # the two hidden layers' pre-activations, in graph order
    g = torch.Generator().manual_seed(seed)
    splits = [(int(torch.randint(2, (1,), generator=g)), int(torch.randint(width, (1,), generator=g)),
               1 if torch.rand(1, generator=g) < 0.5 else -1) for _ in range(picks)]
    floors = {n: torch.full((1, width), -torch.inf, dtype=torch.float64) for n in names}
    ceilings = {n: torch.full((1, width), torch.inf, dtype=torch.float64) for n in names}
    for layer, index, sign in splits:
        (floors if sign > 0 else ceilings)[names[layer]][0, index] = 0.0
    state = AlphaState()
    branch = BranchContext(constraints={n: (floors[n], ceilings[n]) for n in names}, frozen=frozen)
    centre, box = torch.zeros(1, 2, dtype=torch.float64), lirpac.Box(UNIT[0][None], UNIT[1][None])
    lower, upper = net.bounds(centre, box, method="alpha-crown",
                              options={"state": state, "branch": branch, "iterations": 4})
    if frozen:
        assert all(target == net.graph.output.name for target, _ in state.alphas)
    if random_multipliers:
        assert state.betas or not any(pair for pair in state.alphas.values())
        with torch.no_grad():
            for table, scale in ((state.alphas, 1.0), (state.betas, 3.0)):
                for pair in table.values():
                    for t in pair:
                        if t is not None:
                            t.copy_(scale * torch.rand(t.shape, generator=g, dtype=t.dtype))
            step = net.function(net.plan("alpha-crown"))
            ctx = StepContext(state, net.graph.output.name, AlphaOptions(), branch, state.references)
            lower, upper, _ = step(box.bind(centre), None, net._params(centre), ctx)
    x = torch.cat([grid(61), torch.rand(2000, 2, generator=g, dtype=torch.float64) * 2 - 1])
    with torch.no_grad():
        pre = [model[0](x)]
        pre.append(model[2](torch.relu(pre[0])))
        y = model(x)
    inside = torch.ones(len(x), dtype=torch.bool)
    for layer, index, sign in splits:
        inside &= pre[layer][:, index] * sign >= 0
    crossed = any(bool((b.lower > b.upper).any()) for b in state.references.values())
    if crossed:    # the bounds say the sub-domain is empty: no sample may be in it
        assert not bool(inside.any())
        return
    y = y[inside]
    tol = 1e-9
    assert bool((y >= lower - tol).all()) and bool((y <= upper + tol).all())


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), width=st.integers(3, 8), above=st.floats(1e-4, 0.05))
def test_a_false_property_is_never_proved(seed, width, above):
    model = mlp(seed, width)
    with torch.no_grad():
        fmin = float(model(grid(101)).min())
    d = torch.tensor([fmin + above], dtype=torch.float64)     # a grid point has f - d < 0
    result = relu_split(compiled(model), *UNIT, ONE, d, [[0]], time.monotonic() + 30, max_domains=400)
    assert result.proved is not True


@pytest.mark.parametrize("seed", [4, 5, 8, 9])
def test_proves_what_alpha_crown_cannot(seed):
    """f >= d on [-1, 1]^2 with d just below the true minimum (a fine grid's minimum less a
    Lipschitz bound on the gap): alpha-CROWN's bound is below d, splitting proves it."""
    model = mlp(seed)
    with torch.no_grad():
        fmin = float(model(grid()).min())
    lipschitz = 1.0
    for layer in model:
        if isinstance(layer, nn.Linear):
            lipschitz *= float(torch.linalg.matrix_norm(layer.weight.detach(), 2))
    d = fmin - lipschitz * 2 / 400 - 0.01
    net = compiled(model)
    alpha, _ = net.bounds(torch.zeros(1, 2, dtype=torch.float64), lirpac.Box(UNIT[0][None], UNIT[1][None]),
                          method="alpha-crown", C=ONE[None], bound_upper=False)
    assert float(alpha) < d
    result = relu_split(net, *UNIT, ONE, torch.tensor([d], dtype=torch.float64), [[0]],
                        time.monotonic() + 120, max_domains=2000)
    assert result.proved is True, result.message
    assert result.domains > 1


def test_groups_need_one_row_each():
    """A group (an unsafe polytope) is excluded by any one of its rows; every group must be."""
    model = mlp(4)
    net = compiled(model)
    with torch.no_grad():
        fmin, fmax = float(model(grid()).min()), float(model(grid()).max())
    C = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)      # rows: f - d0, -f - d1
    d = torch.tensor([fmin - 1.0, -fmax - 1.0], dtype=torch.float64)
    assert relu_split(net, *UNIT, C, d, [[0], [1]], time.monotonic() + 60).proved is True
    # one group whose second row can be met, first cannot: still excluded
    d_bad = torch.tensor([fmin - 1.0, -fmin], dtype=torch.float64)
    assert relu_split(net, *UNIT, C, d_bad, [[0, 1]], time.monotonic() + 60).proved is True
    # each row its own group: the second group can be met, never proved
    assert relu_split(net, *UNIT, C, d_bad, [[0], [1]], time.monotonic() + 30,
                      max_domains=200).proved is not True


@pytest.mark.parametrize("seed", range(4))
def test_dropping_dead_neurons_keeps_sub_domain_bounds(seed):
    """Under sign constraints (a constrained neuron stays in the passes with its multiplier),
    alpha-CROWN with beta multipliers gives the same bounds whether or not dead neurons leave
    the passes."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 1)).double().eval()
    with torch.no_grad():
        model[0].bias.sub_(0.8)          # about half the first layer dead on the box
    net = compiled(model)
    names = list(splittable_nodes(net.graph))
    centre, box = torch.zeros(1, 2, dtype=torch.float64), lirpac.Box(UNIT[0][None], UNIT[1][None])
    results = []
    for always in (False, True):
        floors = {n: torch.full((1, 16), -torch.inf, dtype=torch.float64) for n in names}
        ceilings = {n: torch.full((1, 16), torch.inf, dtype=torch.float64) for n in names}
        with torch.no_grad():      # signs the centre has: the sub-domain holds the centre
            pre = [model[0](centre)]
            pre.append(model[2](torch.relu(pre[0])))
        for layer, index in ((0, 5), (0, 7), (1, 2)):
            table = floors if pre[layer][0, index] >= 0 else ceilings
            table[names[layer]][0, index] = 0.0
        branch = BranchContext(constraints={n: (floors[n], ceilings[n]) for n in names})
        with dead_neurons_dropped(always):
            results.append(net.bounds(centre, box, method="alpha-crown",
                                      options={"branch": branch, "iterations": 6}))
        if always:
            assert "keep_constrained(" in net.source("alpha-crown")
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
