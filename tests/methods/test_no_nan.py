"""No NaN bound, at large eps, on models mixing LayerNorm, softmax, products of perturbed
tensors (x*x, x*y), exp, log and division, for every method: each bound is finite or an
honest +-inf, and contains the model's outputs at sampled points (corners included). The
fixed cases are the ones a fuzzer of random such models found NaN (or an unsound bound)
on; the property test keeps fuzzing them."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import lirpac
from lirpac.errors import UnsupportedOperationError
from models import reinit
from sampling import sample_lp_ball

METHODS = ["ibp", "crown", "forward", "crown-ibp", "forward+crown", "alpha-crown"]
LINEAR_METHODS = METHODS[1:]
ALPHA_OPTIONS = {"iterations": 3}
BLOCKS = ["linear", "layernorm", "softmax", "log_softmax", "square", "product", "exp", "log",
          "div", "tanh", "relu"]


class Blocks(nn.Module):
    """A chain of blocks on (B, d): products of perturbed tensors are x * x (a square) and
    x * W x (McCormick); log takes log(x*x + 1), division x / ((W x)^2 + 0.5), whose
    denominator's bounds may reach 0 (a reciprocal with infinite IBP bounds)."""

    def __init__(self, blocks, d: int):
        super().__init__()
        self.blocks = tuple(blocks)
        self.layers = nn.ModuleList(nn.LayerNorm(d) if b == "layernorm" else nn.Linear(d, d)
                                    if b in ("linear", "product", "div") else nn.Identity()
                                    for b in blocks)

    def forward(self, x):
        for block, layer in zip(self.blocks, self.layers):
            x = {"linear": layer, "layernorm": layer,
                 "softmax": lambda h: F.softmax(h, -1),
                 "log_softmax": lambda h: F.log_softmax(h, -1),
                 "square": lambda h: h * h, "product": lambda h: h * layer(h),
                 "exp": torch.exp, "log": lambda h: torch.log(h * h + 1.0),
                 "div": lambda h: h / (layer(h) * layer(h) + 0.5),
                 "tanh": torch.tanh, "relu": torch.relu}[block](x)
        return x


class SquaredNorms(nn.Module):
    """x*x -> LayerNorm -> Linear -> Softmax -> LayerNorm (issue 18: NaN from CROWN and
    alpha-CROWN at eps 0.15 and 0.3)."""

    def __init__(self):
        super().__init__()
        self.ln1, self.lin, self.ln2 = nn.LayerNorm(8), nn.Linear(8, 5), nn.LayerNorm(5)

    def forward(self, x):
        return self.ln2(F.softmax(self.lin(self.ln1(x * x)), -1))


_COMPILED = {}


def compiled(key, build, d):
    if key not in _COMPILED:
        model = build().eval()
        _COMPILED[key] = (model, lirpac.compile(model, torch.zeros(2, d)))
    return _COMPILED[key]


def bounds(net, x, eps, norm, method):
    options = {"options": ALPHA_OPTIONS} if method == "alpha-crown" else {}
    return net.bounds(x, lirpac.LpBall(eps=eps, norm=norm), method=method, **options)


def check(model, net, x, eps, norm, method, generator=None):
    """No NaN; lower <= upper; every finite output at sampled points inside the bounds."""
    lower, upper = bounds(net, x, eps, norm, method)
    assert not torch.isnan(lower).any() and not torch.isnan(upper).any(), (lower, upper)
    assert torch.all(lower <= upper)
    points = sample_lp_ball(x, eps, norm, 64, generator=generator)
    with torch.no_grad():
        out = model(points.reshape(-1, *x.shape[1:])).reshape(64, *lower.shape)
    finite = torch.isfinite(out)
    tol = 1e-4 * (1 + out[finite].abs().max().item() if finite.any() else 1)
    assert not (finite & (out < lower - tol)).any(), "lower bound violated"
    assert not (finite & (out > upper + tol)).any(), "upper bound violated"
    return lower, upper


def blocks_case(blocks, d, seed):
    model, net = compiled(("blocks", tuple(blocks), d), lambda: Blocks(blocks, d), d)
    torch.manual_seed(seed)
    fresh = Blocks(blocks, d)
    model.load_state_dict(fresh.state_dict())
    x = torch.randn(2, d, generator=torch.Generator().manual_seed(seed))
    return model, net, x


# (blocks, width, seed, eps, norm, methods): what the fuzzer found before the fix
FUZZ_CASES = [
    # IBP: the centre of [-inf, inf] was NaN, and the product's IBP turned NaN into 0: unsound
    (["exp", "layernorm", "div", "layernorm"], 8, 521912, 0.3, math.inf, ["ibp"]),
    (["layernorm", "div", "product", "product"], 5, 402820, 0.3, math.inf, ["ibp"]),
    # forward mode: a zero slope times an infinite bias (log1p / reciprocal after a sum of exps)
    (["layernorm", "log_softmax"], 3, 635791, 0.5, math.inf, ["forward"]),
    (["square", "tanh", "log_softmax", "layernorm", "softmax"], 3, 421335, 1.0, 1.0, ["forward"]),
    # linear IBP of [-inf, 0] with zero weights in W+ (CROWN-IBP's intermediate bounds; it
    # now stops at the reciprocal, whose IBP bounds reach 0: test_pole_gives_a_precise_error)
    (["layernorm", "log_softmax", "div", "square", "tanh"], 5, 293693, 1.0, math.inf, ["ibp"]),
    # exp's slopes times McCormick's bounds overflow the coefficients: inf - inf
    (["div", "layernorm", "product", "exp", "product"], 8, 952918, 0.15, math.inf,
     ["crown", "forward", "forward+crown", "alpha-crown"]),
]


@pytest.mark.parametrize("blocks, d, seed, eps, norm, methods", FUZZ_CASES)
def test_fuzzer_cases_have_no_nan_and_are_sound(blocks, d, seed, eps, norm, methods):
    model, net, x = blocks_case(blocks, d, seed)
    for method in methods:
        check(model, net, x, eps, norm, method, torch.Generator().manual_seed(seed))


def test_pole_gives_a_precise_error():
    """CROWN-IBP there returned NaN: the denominator's IBP bounds were NaN, now [-inf, ...],
    reaching the reciprocal's pole, where no linear bound exists."""
    model, net, x = blocks_case(["layernorm", "log_softmax", "div", "square", "tanh"], 5, 293693)
    with pytest.raises(UnsupportedOperationError, match="reciprocal"):
        bounds(net, x, 1.0, math.inf, "crown-ibp")


@pytest.mark.parametrize("eps", [0.3, 0.5, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_layer_norm_linear_softmax_forward_mode(eps, seed):
    """Issue 18: forward mode gave NaN here at eps >= 0.3 (IBP and CROWN were finite)."""
    model, net = compiled("ln_softmax", lambda: nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 5),
                                                              nn.Softmax(-1)), 8)
    reinit(model, seed)
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(seed))
    for method in ("forward", "forward+crown", "ibp", "crown"):
        lower, upper = check(model, net, x, eps, math.inf, method)
        assert torch.isfinite(lower).all() and torch.isfinite(upper).all()


@pytest.mark.parametrize("eps", [0.1, 0.15, 0.2, 0.3, 0.5])
def test_squared_layer_norms_every_method(eps):
    model, net = compiled("squared_norms", SquaredNorms, 8)
    torch.manual_seed(0)
    model.load_state_dict(SquaredNorms().state_dict())
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    for method in METHODS:
        check(model, net, x, eps, math.inf, method)


class ExpNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.b(torch.exp(self.a(x)))


@pytest.mark.parametrize("method", LINEAR_METHODS)
def test_linear_bounds_with_infinite_intermediate_bounds(method):
    """eps = 100 through exp: intermediate bounds overflow to inf, the output's bounds are
    infinite or near the largest float; linear_bounds returns them (alpha-CROWN's loop kept
    no coefficients when every objective was -inf), without NaN, and its finite linear
    functions hold at sampled points."""
    torch.manual_seed(0)
    model = ExpNet().eval()
    x = torch.randn(2, 4)
    net = lirpac.compile(model, x)
    lin = net.linear_bounds(x, lirpac.LpBall(eps=100.0), method=method)
    assert torch.isinf(lin.lower).any()
    for t in (lin.lower_coeff, lin.lower_bias, lin.upper_coeff, lin.upper_bias, lin.lower, lin.upper):
        assert not torch.isnan(t).any()
    points = sample_lp_ball(x, 100.0, math.inf, 64)
    with torch.no_grad():
        out = model(points.reshape(-1, 4)).reshape(64, 2, 3)
    lin_lo = torch.einsum("bsi,nbi->nbs", lin.lower_coeff.double(), points.double()) + lin.lower_bias.double()
    lin_up = torch.einsum("bsi,nbi->nbs", lin.upper_coeff.double(), points.double()) + lin.upper_bias.double()
    finite = torch.isfinite(out)
    assert not (finite & (lin_lo > out.double() + 1e-3 * (1 + out.abs().double()))).any()
    assert not (finite & (lin_up < out.double() - 1e-3 * (1 + out.abs().double()))).any()
    assert not (finite & (out < lin.lower)).any() and not (finite & (out > lin.upper)).any()


@settings(max_examples=40, deadline=None)
@given(blocks=st.lists(st.sampled_from(BLOCKS), min_size=2, max_size=4), d=st.sampled_from([3, 5]),
       seed=st.integers(0, 10_000), eps=st.floats(0.1, 1.0), norm=st.sampled_from([math.inf, 2.0]),
       method=st.sampled_from(METHODS))
def test_random_models_at_large_eps_have_no_nan_and_are_sound(blocks, d, seed, eps, norm, method):
    model, net, x = blocks_case(blocks, d, seed)
    try:
        check(model, net, x, eps, norm, method, torch.Generator().manual_seed(seed))
    except UnsupportedOperationError:
        pass        # log or 1/y over an interval reaching its pole: a precise error, no bound


@pytest.mark.parametrize("seed", [34, 36])
@pytest.mark.parametrize("method", METHODS)
def test_overflowing_exponentials_stay_sound(seed, method):
    """log_softmax(exp(exp(x))): the softmax's exponentials of differences overflow the float
    range (e^117) where the model, computing log_softmax stably, stays finite. An unbounded
    line end must stay infinite (the largest float would claim exp(117) <= 3.4e38: a lower
    bound 28.7 too high), and a sum whose lower bound overflowed is still >= the largest float
    (an upper bound of -inf on a finite output before)."""
    blocks = ["exp", "exp", "log_softmax"]
    model, net = compiled(("blocks", tuple(blocks), 4), lambda: Blocks(blocks, 4), 4)
    torch.manual_seed(seed)
    model.load_state_dict(Blocks(blocks, 4).state_dict())
    x = 2 * torch.randn(2, 4, generator=torch.Generator().manual_seed(seed))
    check(model, net, x, 0.2, math.inf, method, torch.Generator().manual_seed(seed))
