"""Weight perturbation beyond nn.Linear: conv weights and biases, eval-mode batch norm's and
layer norm's affine parameters. Exact cases against closed forms (a moving bias is linear; a
moving weight over a fixed input is linear in the weight), soundness by sampling parameters and
inputs together (corners of L-inf balls included), and the refusals for every other use of a
parameter."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import lirpac
from lirpac.testing import sample_lp_ball

METHODS = ["ibp", "crown", "crown-ibp"]


def cnn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                          nn.Conv2d(3, 4, 2), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3)).eval()
    model[1].running_mean.uniform_(-0.2, 0.2)
    model[1].running_var.uniform_(0.5, 2.0)
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.3, 0.3)
    return model


_NETS = {}


def compiled(names, conv_mode="auto"):
    key = (names, conv_mode)
    if key not in _NETS:
        model = cnn()
        wm = lirpac.PerturbedParameters(model, list(names))
        _NETS[key] = (model, wm, lirpac.compile(wm, wm.inputs(torch.zeros(1, 1, 6, 6)),
                                                conv_mode=conv_mode))
    return _NETS[key]


@pytest.mark.parametrize("layer,shape", [
    (nn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 2, 7, 6)),
    (nn.Conv2d(2, 4, (2, 3), dilation=(2, 1), padding="same"), (2, 2, 5, 6)),
    (nn.Conv2d(4, 6, 3, groups=2, padding="valid", bias=False), (2, 4, 5, 5)),
    (nn.Conv1d(2, 3, 3, stride=2, padding=2), (2, 2, 9)),
    (nn.Conv3d(1, 2, 2, padding=1), (2, 1, 3, 3, 3)),
    (nn.BatchNorm1d(3).eval(), (2, 3, 4)),
    (nn.Linear(3, 2), (2, 4, 3)),
    (nn.LayerNorm((3, 2)), (2, 4, 3, 2)),
])
def test_moving_layers_compute_the_layer(layer, shape):
    torch.manual_seed(1)
    if isinstance(layer, nn.LayerNorm):
        nn.init.normal_(layer.weight)
    if isinstance(layer, nn.BatchNorm1d):
        layer.running_var.uniform_(0.5, 2.0)
        layer.running_mean.uniform_(-1, 1)
    model = nn.Sequential(layer).eval()
    x = torch.randn(shape)
    names = [n for n, _ in model.named_parameters()]
    wm = lirpac.PerturbedParameters(model, names)
    with torch.no_grad():
        torch.testing.assert_close(wm(*wm.inputs(x)), model(x))
        moved = [v + 0.1 * torch.randn_like(v) for v in wm.inputs(x)[1:]]
        for i in range(shape[0]):        # each sample computes with its own parameters
            for (name, p), v in zip(model.named_parameters(), moved):
                p.copy_(v[i])
            torch.testing.assert_close(wm(x, *moved)[i], model(x[i:i + 1])[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["crown", "crown-ibp"])
def test_conv_with_a_moving_bias_is_exact(method):
    torch.manual_seed(3)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    wm = lirpac.PerturbedParameters(nn.Sequential(conv), ["0.bias"])
    x = torch.randn(2, 2, 5, 5)
    net = lirpac.compile(wm, wm.inputs(x[:1]))
    lower, upper = net.bounds(wm.inputs(x), (lirpac.LpBall(eps=0.1), lirpac.LpBall(eps=0.3, norm=2)),
                              method=method)
    with torch.no_grad():
        centre = conv(x)
        radius = (F.conv2d(torch.full_like(x, 0.1), conv.weight.abs(), padding=1) + 0.3).flatten(1)
        centre = centre.flatten(1)
    torch.testing.assert_close(lower, centre - radius, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(upper, centre + radius, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("p,method", [(2.0, "crown"), (math.inf, "crown-ibp"), (1.0, "crown")])
def test_conv_weight_over_a_fixed_input_is_exact(p, method):
    """max over ||dW||_p <= eps of dW[o] . column_l is eps ||column_l||_q, per output."""
    torch.manual_seed(4)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False)
    wm = lirpac.PerturbedParameters(nn.Sequential(conv), ["0.weight"])
    x = torch.randn(2, 2, 6, 5)
    net = lirpac.compile(wm, wm.inputs(x[:1]))
    lower, upper = net.bounds(wm.inputs(x), (None, lirpac.LpBall(eps=0.2, norm=p)), method=method)
    q = {2.0: 2.0, math.inf: 1.0, 1.0: math.inf}[p]
    with torch.no_grad():
        centre = conv(x)
        columns = F.unfold(x, 3, padding=1, stride=2)             # (B, C*K, L)
        radius = 0.2 * torch.linalg.vector_norm(columns, ord=q, dim=1).repeat(1, 3)
        centre = centre.flatten(1)
    torch.testing.assert_close(lower, centre - radius, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(upper, centre + radius, rtol=1e-5, atol=1e-5)


def check_sampled(names, method, p, eps, input_moves, seed, conv_mode="auto", n=32):
    """Bounds contain the model's outputs at sampled parameters and inputs (L-inf corners
    included), drawn together."""
    model, wm, net = compiled(names, conv_mode)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 1, 6, 6, generator=g)
    inputs = wm.inputs(x)
    sets = (lirpac.LpBall(eps=0.05) if input_moves else None,
            *[lirpac.LpBall(eps=eps, norm=p) for _ in names])
    lower, upper = net.bounds(inputs, sets, method=method)
    xs = sample_lp_ball(x, 0.05, n=n, generator=g) if input_moves else x.expand(n, *x.shape)
    params = [sample_lp_ball(v, eps, norm=p, n=n, generator=g) for v in inputs[1:]]
    with torch.no_grad():
        out = torch.stack([wm(xs[i], *[v[i] for v in params]) for i in range(n)])
    assert (out >= lower - 1e-5).all() and (out <= upper + 1e-5).all()


@settings(max_examples=4, deadline=None)
@given(method=st.sampled_from(METHODS),
       which=st.sampled_from([("0.weight",), ("3.weight", "3.bias"), ("1.weight", "1.bias", "0.bias")]),
       p=st.sampled_from([2.0, math.inf]), eps=st.floats(0.01, 0.2), input_moves=st.booleans(),
       seed=st.integers(0, 10**6))
def test_sound_by_sampling_conv_and_norm_parameters(method, which, p, eps, input_moves, seed):
    check_sampled(which, method, p, eps, input_moves, seed)


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(method=st.sampled_from(METHODS + ["forward", "alpha-crown"]),
       which=st.sampled_from([("0.weight",), ("3.weight", "3.bias"), ("1.weight", "1.bias", "0.bias"),
                              ("0.weight", "3.weight"), ("0.weight", "0.bias", "1.weight", "6.weight")]),
       p=st.sampled_from([2.0, math.inf, 1.0]), eps=st.floats(0.01, 0.3), input_moves=st.booleans(),
       conv_mode=st.sampled_from(["auto", "patches", "matrix"]), seed=st.integers(0, 10**6))
def test_sound_by_sampling_many(method, which, p, eps, input_moves, conv_mode, seed):
    check_sampled(which, method, p, eps, input_moves, seed, conv_mode, n=64)


class _Scaled(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op = op
        self.p = nn.Parameter(torch.ones(4))

    def forward(self, x):
        if self.op == "mul":
            return x * self.p
        if self.op == "add":
            return x + self.p
        return x @ torch.diag(self.p)


@pytest.mark.parametrize("op,named", [("mul", "mul"), ("add", "add"), ("matmul", "diag")])
def test_parameters_of_other_ops_are_refused(op, named):
    model = nn.Sequential(nn.Linear(4, 4), _Scaled(op))
    with pytest.raises(lirpac.InputError, match=rf"1\.p is used by {named}.*_Scaled\.forward.*nn\.Conv"):
        lirpac.PerturbedParameters(model, ["1.p"])


def test_other_refusals():
    class MyLinear(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2
    with pytest.raises(lirpac.InputError, match="0.weight is used by linear in MyLinear.forward"):
        lirpac.PerturbedParameters(nn.Sequential(MyLinear(2, 2)), ["0.weight"])
    with pytest.raises(lirpac.InputError, match="padding_mode='reflect'"):
        lirpac.PerturbedParameters(nn.Sequential(nn.Conv2d(1, 1, 3, padding_mode="reflect",
                                                           padding=1)), ["0.bias"])
    hooked = nn.Linear(2, 2)
    hooked.register_forward_hook(lambda module, args, out: out * 2)
    with pytest.raises(lirpac.InputError, match="forward hooks"):
        lirpac.PerturbedParameters(nn.Sequential(hooked), ["0.bias"])
    with pytest.raises(lirpac.InputError, match="group_norm in GroupNorm.forward"):
        lirpac.PerturbedParameters(nn.Sequential(nn.GroupNorm(1, 3)), ["0.weight"])
    bn = nn.Sequential(nn.BatchNorm1d(3))
    wm = lirpac.PerturbedParameters(bn.train(), ["0.weight"])
    with pytest.raises(lirpac.InputError, match=r"0 \(BatchNorm1d\).*batch statistics.*eval"):
        wm(*wm.inputs(torch.randn(2, 3)))

    class ReadsWeight(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(x) + x @ self.fc.weight
    wm = lirpac.PerturbedParameters(ReadsWeight(), ["fc.weight"])
    with pytest.raises(lirpac.InputError, match="reads fc.weight outside Linear.forward"):
        wm(*wm.inputs(torch.randn(2, 3)))


def test_a_shared_parameter_moves_everywhere():
    """Tied weights: the one perturbed parameter is an input of both layers that use it."""
    torch.manual_seed(5)
    first, second = nn.Linear(3, 3), nn.Linear(3, 3)
    second.weight = first.weight
    model = nn.Sequential(first, nn.ReLU(), second)
    wm = lirpac.PerturbedParameters(model, ["0.weight"])
    x = torch.randn(2, 3)
    moved = wm.inputs(x)[1] + 1.0
    with torch.no_grad():
        w = moved[0]
        expected = F.linear(torch.relu(F.linear(x[:1], w, first.bias)), w, second.bias)
        torch.testing.assert_close(wm(x, moved)[:1], expected)
    net = lirpac.compile(wm, wm.inputs(x[:1]))
    lower, upper = net.bounds(wm.inputs(x), (None, lirpac.LpBall(eps=0.1, norm=2)), method="crown")
    g = torch.Generator().manual_seed(0)
    points = sample_lp_ball(wm.inputs(x)[1], 0.1, norm=2.0, n=32, generator=g)
    with torch.no_grad():
        out = torch.stack([wm(x, w) for w in points])
    assert (out >= lower - 1e-5).all() and (out <= upper + 1e-5).all()


def test_linear_over_rows_with_a_moving_weight_is_exact():
    """nn.Linear on (B, T, in): each row meets the same moving matrix; with the input fixed,
    row t's output o moves by eps ||x_t||_2 at most."""
    torch.manual_seed(6)
    layer = nn.Linear(3, 2)
    wm = lirpac.PerturbedParameters(nn.Sequential(layer), ["0.weight", "0.bias"])
    x = torch.randn(2, 4, 3)
    net = lirpac.compile(wm, wm.inputs(x[:1]))
    lower, upper = net.bounds(wm.inputs(x), (None, lirpac.LpBall(eps=0.2, norm=2), lirpac.LpBall(eps=0.1)),
                              method="crown")
    with torch.no_grad():
        centre = layer(x).flatten(1)
        radius = (0.2 * x.norm(dim=-1, keepdim=True) + 0.1).expand(2, 4, 2).flatten(1)
    torch.testing.assert_close(lower, centre - radius, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(upper, centre + radius, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_layer_norm_parameters_sound_by_sampling(method):
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.ReLU(), nn.Linear(5, 3))
    wm = lirpac.PerturbedParameters(model, ["1.weight", "1.bias"])
    x = torch.randn(2, 4)
    net = lirpac.compile(wm, wm.inputs(x[:1]))
    inputs = wm.inputs(x)
    sets = (lirpac.LpBall(eps=0.05), lirpac.LpBall(eps=0.1, norm=2), lirpac.LpBall(eps=0.1))
    lower, upper = net.bounds(inputs, sets, method=method)
    g = torch.Generator().manual_seed(1)
    xs = sample_lp_ball(x, 0.05, n=32, generator=g)
    ws = sample_lp_ball(inputs[1], 0.1, norm=2.0, n=32, generator=g)
    bs = sample_lp_ball(inputs[2], 0.1, n=32, generator=g)
    with torch.no_grad():
        out = torch.stack([wm(xs[i], ws[i], bs[i]) for i in range(32)])
    assert (out >= lower - 1e-5).all() and (out <= upper + 1e-5).all()
