"""lirpac.compile and CompiledNet: the dtype bounds are computed in, the user's module left as
it was."""
import copy
import warnings

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

import lirpac
from lirpac.methods import METHODS
from lirpac.errors import InputError
from sampling import assert_contains, sample_lp_ball

HALF = (torch.float16, torch.bfloat16)


def small_net(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    return model.to(dtype).eval()


_NETS: dict = {}


def compiled(dtype):
    """One compiled small net per dtype (compiling costs about a second)."""
    if dtype not in _NETS:
        model = small_net(dtype)
        _NETS[dtype] = model, lirpac.compile(model, torch.zeros(1, 6, dtype=dtype))
    return _NETS[dtype]


# -- half precision: refused at compile time, upcast at bound time -----------------------------

@pytest.mark.parametrize("half", HALF)
@pytest.mark.parametrize("model_half, example_half", [(True, True), (True, False), (False, True)])
def test_half_precision_model_or_example_is_refused(half, model_half, example_half):
    """A half-precision forward pass rounds every op (about 1e-3 on this net, where bounds in
    float32 then miss it), so lirpac refuses it and names the conversion."""
    model = small_net(half if model_half else torch.float32)
    example = torch.zeros(1, 6, dtype=half if example_half else torch.float32)
    name = str(half).removeprefix("torch.")
    with pytest.raises(InputError, match=f"in {name}; lirpac bounds float32 and float64 models only.*"
                                         r"model.float\(\), example.float\(\)"):
        lirpac.compile(model, example)


@pytest.mark.parametrize("half", HALF)
def test_half_precision_forward_misses_float32_bounds_by_more_than_rounding(half):
    """Why half models are refused: on this net the half model's own output at eps=0 lies
    outside the (float32, tight) bounds of its weights by far more than float32 rounding."""
    model = small_net(half)
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(1)).to(half)
    model32 = copy.deepcopy(model).float()
    lower, upper = lirpac.compile(model32, x.float()).bounds(x.float(), lirpac.LpBall(eps=0.0))
    with torch.no_grad():
        out = model(x).float()
    miss = torch.maximum(lower - out, out - upper).max().item()
    assert miss > 1e-4


@pytest.mark.parametrize("half", HALF)
@pytest.mark.parametrize("method", METHODS)
def test_half_input_on_a_float32_net_is_upcast(half, method):
    """x in half precision is upcast (exactly) to the net's float32: float32 bounds that contain
    the float32 model's output at eps=0."""
    model, net = compiled(torch.float32)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(2)).to(half)
    lower, upper = net.bounds(x, lirpac.LpBall(eps=0.0), method=method)
    assert lower.dtype == upper.dtype == torch.float32
    assert_contains(model, x.float().unsqueeze(0), lower, upper)


@settings(max_examples=30, deadline=None)
@given(x_dtype=st.sampled_from([*HALF, torch.float32, torch.float64]),
       net_dtype=st.sampled_from([torch.float32, torch.float64]),
       method=st.sampled_from(METHODS), eps=st.sampled_from([0.0, 1e-3, 0.05, 0.3]),
       seed=st.integers(0, 2 ** 16))
def test_bounds_hold_in_the_wider_dtype(x_dtype, net_dtype, method, eps, seed):
    """Soundness whatever the dtypes: bounds come in the wider of x's and the net's dtypes (at
    least float32), so neither the input nor the weights are rounded, and every sampled point,
    evaluated by the model in that dtype, lies inside."""
    model, net = compiled(net_dtype)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 6, generator=gen).to(x_dtype)
    options = {"iterations": 3} if method == "alpha-crown" else None
    lower, upper = net.bounds(x, lirpac.LpBall(eps=eps), method=method, options=options)
    wide = torch.promote_types(torch.promote_types(x_dtype, net_dtype), torch.float32)
    assert lower.dtype == upper.dtype == wide
    centre = x.to(wide)
    model_wide = model if net_dtype == wide else copy.deepcopy(model).to(wide)
    points = torch.cat([centre.unsqueeze(0), sample_lp_ball(centre, eps, float("inf"), 32, generator=gen)])
    assert_contains(model_wide, points, lower, upper)


def test_float32_input_on_a_float64_net_keeps_the_weights():
    """Before: the float64 weights were rounded to x's float32."""
    _, net = compiled(torch.float64)
    x = torch.randn(3, 6)
    ball = lirpac.LpBall(eps=0.01)
    lower, upper = net.bounds(x, ball)
    wide = net.bounds(x.double(), ball)
    assert lower.dtype == torch.float64
    assert torch.equal(lower, wide[0]) and torch.equal(upper, wide[1])


@pytest.mark.parametrize("method", METHODS)
def test_autocast_does_not_lower_the_bounds_precision(method):
    """Under torch.autocast the bound program's matmuls would run in bfloat16 (IBP's bounds
    then missed the model's output by 2e-3, alpha-CROWN crashed): autocast is off inside."""
    model, net = compiled(torch.float32)
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(3))
    ball = lirpac.LpBall(eps=0.02)
    options = {"iterations": 3} if method == "alpha-crown" else None
    plain = net.bounds(x, ball, method=method, options=options)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lower, upper = net.bounds(x, ball, method=method, options=options)
    assert lower.dtype == torch.float32
    assert torch.equal(lower, plain[0]) and torch.equal(upper, plain[1])


# -- the user's module: its training flags as they were -----------------------------------------

class WithDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.body(x))


def training_flags(module):
    return {name: m.training for name, m in module.named_modules()}


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_compile_restores_each_submodule_training_flag(mode):
    model = WithDropout()
    if mode == "eval":
        model.eval()
    elif mode == "mixed":   # a frozen BatchNorm inside a training model
        model.body[1].eval()
    before = training_flags(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = lirpac.compile(model, torch.randn(2, 4))
    assert any("training mode" in str(w.message) for w in caught) == model.training
    assert training_flags(model) == before
    x = torch.randn(5, 4)
    assert training_flags(model) == before
    with torch.no_grad():
        out = net(x)                         # the model as bounded: dropout off, and the
        reference = copy.deepcopy(model)     # BatchNorm on the batch's statistics when training
        for m in reference.modules():
            if isinstance(m, nn.Dropout):
                m.eval()
        expected = reference(x)
    assert torch.allclose(out, expected, atol=1e-6)
    assert training_flags(model) == before
    lower, upper = net.bounds(x, lirpac.LpBall(eps=0.0))
    assert_contains(net, x.unsqueeze(0), lower, upper)


def test_compile_restores_flags_when_export_fails():
    class Fails(nn.Module):
        def forward(self, x):
            return torch.linalg.qr(x.reshape(x.shape[0], 2, 2)).Q.flatten(1)
    model = nn.Sequential(nn.Dropout(0.1), Fails())
    with pytest.warns(UserWarning, match="training mode"), pytest.raises(lirpac.errors.LirpacError):
        lirpac.compile(model, torch.randn(1, 4))
    assert model.training and model[0].training and model[1].training

