"""Loop-invariant code motion of alpha-CROWN's step (codegen/hoist.py): step(prepare()) computes
exactly what the whole function does, and the rules keep reads at their reaching definitions."""
import math

import pytest
import torch

import lirpac
from lirpac.alpha import AlphaOptions, AlphaState, BranchContext, StepContext
from lirpac.codegen import hoist
from lirpac.codegen.program import from_source, print_program
from models import ARCHS, compiled_arch, reinit


def _split(source: str):
    """hoist.split of the function in ``source``, as printed source (or None)."""
    parts = hoist.split(from_source(source))
    return None if parts is None else tuple(print_program(p) for p in parts)


def _run(source: str, a):
    """(whole function, step after prepare) on a, each with a fresh stand-in state."""
    namespace = {}
    parts = _split(source)
    exec(source, namespace)
    whole = namespace["bound"](a, Steps())
    if parts is None:
        return whole, None
    exec("\n".join(parts), namespace)
    ctx = Steps()
    return whole, namespace["step"](a, ctx, pre=namespace["prepare"](a, ctx))


class Steps:
    """A stand-in for the alpha state: ``slot`` gives a new value at each call."""

    def __init__(self):
        self.calls = 0

    def slot(self, value):
        self.calls += 1
        return value + self.calls

    def beta(self, value):
        return value


SOURCE = '''
def bound(a, ctx):
    """doc"""
    b = a * 2
    c = ctx.slot(b)
    b = c + 1          # redefines b after a varying statement
    d = b * 3
    e = a + 1
    def inner():
        return e + d
    f = inner()
    g = a - 1
    c = g              # invariant, but redefines a name a varying statement bound
    return b, c, d, f
'''


def test_reads_see_their_reaching_definitions():
    whole, split = _run(SOURCE, 5)
    assert whole == (5 * 2 + 1 + 1, 4, (5 * 2 + 1 + 1) * 3, 6 + (5 * 2 + 2) * 3)
    assert split == whole
    prepare, step = _split(SOURCE)
    assert "e = a + 1" in prepare and "g = a - 1" in prepare
    assert "c = g" in step and "d = b * 3" in step


def test_a_function_with_nothing_to_hoist_stays_whole():
    assert _split("def bound(a, ctx):\n    return a + 1\n") is None
    assert _split("def bound(a, ctx):\n    return ctx.slot(a)\n") is None


def test_nested_function_reading_a_reassigned_name_stays_in_step():
    source = '''
def bound(a, ctx):
    x = a
    def inner():
        return x
    x = a + 1
    y = ctx.slot(inner())
    return y
'''
    whole, split = _run(source, 1)
    assert split == whole
    assert "def inner" in _split(source)[1]


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("norm", [math.inf, 2.0])
@pytest.mark.parametrize("use_spec", [False, True])
def test_generated_step_equals_the_whole_function(arch, norm, use_spec):
    model, net, shape = compiled_arch(arch)
    reinit(model, 3)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, *shape, generator=g)
    C = torch.randn(2, 2, net.output_shape[0], generator=g) if use_spec else None
    ball = lirpac.LpBall(eps=0.3, norm=norm)
    state = net.alpha_crown(x, ball, C=C, iterations=3).state
    state = StepContext(state, net.graph.output.name, AlphaOptions(), None, state.references)
    fn = net.function(net.plan("alpha-crown", spec=use_spec))
    inp, params = ball.bind(x), net._params(x)
    assert hasattr(fn, "hoisted"), net.source("alpha-crown", spec=use_spec)
    prepare, step = fn.hoisted
    with torch.no_grad():
        expected = fn(inp, C, params, state)
        got = step(inp, C, params, state, prepare(inp, C, params, state))
    for e, r in zip(expected[:2], got[:2]):
        assert torch.equal(e, r)


def test_generated_source_shows_the_split():
    _, net, _ = compiled_arch("mlp")
    source = net.source("alpha-crown")
    assert "def prepare(inp, C, params, ctx):" in source
    assert "def step(inp, C, params, ctx, pre):" in source
    step = source[source.index("def step("):]
    assert "ibp_linear" not in step      # the IBP chain runs once per call


def test_sign_constraints_still_clip_the_hoisted_bounds():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8),
                                torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    x = torch.zeros(1, 3)
    net = lirpac.compile(model, x)
    ball = lirpac.LpBall(eps=1.0)
    crown = AlphaState()
    net.alpha_crown(x, ball, state=crown, iterations=1)
    node = next(iter(crown.references))
    ref = crown.references[node]
    floor = torch.where(torch.arange(ref.lower.numel()).reshape(ref.lower.shape) == 0, 0.0, -math.inf)
    branch = BranchContext(constraints={node: (floor, torch.full_like(floor, math.inf))})
    result = net.alpha_crown(x, ball, branch=branch, iterations=4)
    samples = torch.rand(4000, 3) * 2 - 1
    with torch.no_grad():
        hidden = model[0](samples)
        inside = samples[hidden[:, 0] >= 0]
        out = model(inside)
    assert (out >= result.lower - 1e-5).all() and (out <= result.upper + 1e-5).all()
