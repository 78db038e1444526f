"""ATen ops of common PyTorch models that the torch frontend lowers onto registered ops
(ir/ops/aten_composites.py): each model's lowered forward is the module's, and the bounds of
IBP, CROWN, forward mode and alpha-CROWN contain its outputs at sampled points of the ball,
corners included. Unsupported forms are refused naming the op and the node."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import lirpac
from lirpac.errors import UnsupportedOperationError
from sampling import assert_contains, sample_lp_ball


class Fn(nn.Module):
    """``fn(self, x)`` after a linear layer (so CROWN's coefficients mix the inputs), with
    ``modules`` as submodules."""

    def __init__(self, fn, shape, **modules):
        super().__init__()
        self.fn, self.shape = fn, shape
        self.mix = nn.Linear(math.prod(shape), math.prod(shape))
        for name, m in modules.items():
            setattr(self, name, m)
        g = torch.Generator().manual_seed(0)
        self.register_buffer("mask", torch.rand(shape, generator=g) > 0.5)
        self.register_buffer("weight", torch.randn(5, shape[0], generator=g))

    def forward(self, x):
        h = self.mix(x.flatten(1)).view(x.shape[0], *self.shape)
        return self.fn(self, h)


CASES = {
    "where": (lambda s, x: torch.where(s.mask, x, -2 * x), (3, 4, 4)),
    "where_constant_side": (lambda s, x: torch.where(s.mask, 0.7, x), (3, 4)),
    "masked_fill": (lambda s, x: x.masked_fill(s.mask, -1e4), (3, 4, 4)),
    "einsum": (lambda s, x: torch.einsum("bchw,dc->bdhw", x, s.weight), (3, 2, 2)),
    "einsum_ellipsis_const_first": (lambda s, x: torch.einsum("dc,...cw->...dw", s.weight, x),
                                    (3, 4)),
    "einsum_implicit": (lambda s, x: torch.einsum("bc,dc", x, s.weight), (3,)),
    "group_norm": (lambda s, x: s.m(x), (4, 3, 3), dict(m=nn.GroupNorm(2, 4))),
    "group_norm_plain": (lambda s, x: s.m(x), (4, 5), dict(m=nn.GroupNorm(4, 4, affine=False))),
    "instance_norm": (lambda s, x: s.m(x), (2, 3, 3), dict(m=nn.InstanceNorm2d(2, affine=True))),
    "instance_norm_1d": (lambda s, x: s.m(x), (2, 5), dict(m=nn.InstanceNorm1d(2))),
    "instance_norm_running": (lambda s, x: s.m(x), (2, 3, 3),
                              dict(m=nn.InstanceNorm2d(2, track_running_stats=True))),
    "rms_norm": (lambda s, x: s.m(x), (3, 4), dict(m=nn.RMSNorm(4))),
    "rms_norm_plain": (lambda s, x: s.m(x), (2, 3, 2),
                       dict(m=nn.RMSNorm([3, 2], eps=1e-3, elementwise_affine=False))),
    "std": (lambda s, x: x.std(dim=-1), (3, 4)),
    "var": (lambda s, x: x.var(dim=(1, 2), unbiased=False, keepdim=True), (2, 3, 3)),
    "var_flat": (lambda s, x: x.flatten(1).var(1, keepdim=True), (2, 3)),
    "std_correction": (lambda s, x: torch.std(x, dim=1, correction=2), (5, 2)),
    "reflect_pad": (lambda s, x: F.pad(x, (1, 2, 2, 1), mode="reflect"), (2, 3, 4)),
    "replicate_pad": (lambda s, x: F.pad(x, (2, 1), mode="replicate"), (2, 3)),
    "circular_pad": (lambda s, x: F.pad(x, (1, 1, 0, 2), mode="circular"), (2, 3, 3)),
    "reflection_pad_module": (lambda s, x: s.m(x), (2, 3, 3), dict(m=nn.ReflectionPad2d((2, 0, 1, 1)))),
    "replication_pad_module": (lambda s, x: s.m(x), (2, 3), dict(m=nn.ReplicationPad1d(2))),
    "circular_pad_module": (lambda s, x: s.m(x), (2, 3, 3), dict(m=nn.CircularPad2d(1))),
    "conv_same_even": (lambda s, x: s.m(x), (2, 4, 4), dict(m=nn.Conv2d(2, 3, 2, padding="same"))),
    "conv1d_same": (lambda s, x: s.m(x), (2, 5), dict(m=nn.Conv1d(2, 2, 3, padding="same",
                                                                   dilation=2))),
    "conv_valid": (lambda s, x: s.m(x), (2, 4, 4), dict(m=nn.Conv2d(2, 3, 3, padding="valid"))),
    "conv_reflect": (lambda s, x: s.m(x), (2, 4, 4),
                     dict(m=nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"))),
    "conv_circular": (lambda s, x: s.m(x), (2, 4, 4),
                      dict(m=nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"))),
    "conv_replicate": (lambda s, x: s.m(x), (2, 4, 4),
                       dict(m=nn.Conv2d(2, 3, 3, padding=(1, 2), padding_mode="replicate"))),
    "threshold": (lambda s, x: s.m(x), (6,), dict(m=nn.Threshold(0.1, 2.0))),
    "threshold_relu": (lambda s, x: F.threshold(x, 0.3, 0.3), (6,)),
    "hardshrink": (lambda s, x: s.m(x), (6,), dict(m=nn.Hardshrink(0.3))),
    "hardshrink_zero": (lambda s, x: F.hardshrink(x, 0.0), (6,)),
    "softshrink": (lambda s, x: s.m(x), (6,), dict(m=nn.Softshrink(0.3))),
    "exp2": (lambda s, x: torch.exp2(x), (6,)),
    "pixel_shuffle": (lambda s, x: s.m(x), (8, 2, 2), dict(m=nn.PixelShuffle(2))),
    "pixel_unshuffle": (lambda s, x: s.m(x), (2, 4, 4), dict(m=nn.PixelUnshuffle(2))),
    "adaptive_max_pool": (lambda s, x: s.m(x), (2, 4, 6), dict(m=nn.AdaptiveMaxPool2d((2, 3)))),
}
_COMPILED = {}


def _compiled(name):
    if name not in _COMPILED:
        fn, shape, *modules = CASES[name]
        model = Fn(fn, shape, **(modules[0] if modules else {})).double().eval()
        _COMPILED[name] = model, lirpac.compile(model, torch.randn(2, *shape, dtype=torch.float64))
    return _COMPILED[name]


# cases with a nonlinear op, where alpha-CROWN's optimised relaxations differ from CROWN's
NONLINEAR = ("group_norm", "instance_norm", "instance_norm_1d", "rms_norm", "std", "var",
             "threshold", "hardshrink", "softshrink", "exp2", "adaptive_max_pool")


def _check(name, seed, eps, methods=("ibp", "crown", "forward", "alpha-crown")):
    model, net = _compiled(name)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, *model.shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x).flatten(1)
    lower, upper = net.bounds(x, lirpac.LpBall(eps=0.0), method="ibp")
    assert torch.allclose(lower, expected, atol=1e-6) and torch.allclose(upper, expected, atol=1e-6)
    points = sample_lp_ball(x, eps, math.inf, 32, generator=g)
    for method in methods:
        lower, upper = net.bounds(x, lirpac.LpBall(eps=eps), method=method)
        assert_contains(model, points, lower, upper, what=f"{name} {method}")


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("name", sorted(CASES))
def test_lowered_op_is_exact_and_sound(name):
    _check(name, seed=0, eps=0.3, methods=("ibp", "crown", "forward")
           + (("alpha-crown",) if name in NONLINEAR else ()))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.sampled_from([0.0, 0.02, 0.3, 1.0]))
def test_lowered_op_is_sound_over_seeds_and_radii(name, seed, eps):
    _check(name, seed, eps)


def _refusal(fn, shape, match, **modules):
    with pytest.raises(UnsupportedOperationError, match=match):
        lirpac.compile(Fn(fn, shape, **modules).eval(), torch.randn(2, *shape))


def test_masked_fill_with_infinity_is_refused():
    _refusal(lambda s, x: torch.softmax(x.masked_fill(s.mask, float("-inf")), -1), (3, 4),
             r"fills with an infinite value at node %masked_fill.*-1e4")


def test_einsum_of_two_perturbed_operands_is_refused():
    _refusal(lambda s, x: torch.einsum("bi,bi->b", x, x * 2), (3,),
             r"einsum of 2 operands, 2 of them perturbed at node %einsum")


def test_einsum_that_moves_the_batch_is_refused():
    _refusal(lambda s, x: torch.einsum("bc,dc->db", x, s.weight).sum(0, keepdim=True).T, (3,),
             r"first subscript.*at node %einsum")


def test_adaptive_max_pool_with_uneven_windows_is_refused():
    _refusal(lambda s, x: s.m(x), (2, 5, 5), r"windows differ in size.*at node %adaptive",
             m=nn.AdaptiveMaxPool2d(2))


def test_variance_of_too_few_entries_is_refused():
    _refusal(lambda s, x: x.var(dim=1), (1, 3), r"correction 1.*division by 0.*at node %var")


class Tan(nn.Module):
    def forward(self, x):
        return torch.tan(x)


@pytest.mark.parametrize("eps", [0.01, 0.2])
def test_tan_is_sound_on_each_branch_and_unbounded_across_a_pole(eps):
    """Points in the principal branch, in the next ones (concave then convex around k pi), and
    one whose ball reaches pi/2, where the bounds are infinite."""
    model = Tan()
    x = torch.tensor([[0.1, -1.0, 3.0, 2.0, -3.5, 1.5]], dtype=torch.float64).repeat(2, 1)
    x[1] += 0.05
    net = lirpac.compile(model, x)
    points = sample_lp_ball(x, eps, math.inf, 64, generator=torch.Generator().manual_seed(0))
    across = (x - eps < math.pi / 2) & (x + eps > math.pi / 2)
    for method in ("ibp", "crown", "forward", "alpha-crown"):
        lower, upper = net.bounds(x, lirpac.LpBall(eps=eps), method=method)
        assert_contains(model, points, lower, upper, what=method)
        assert torch.equal(torch.isinf(lower) & torch.isinf(upper), across), method
        assert torch.isfinite(lower[~across]).all() and torch.isfinite(upper[~across]).all()
