"""Tests of the dense reference implementation (tests/reference.py) itself."""

import itertools
import math

import pytest
import torch
import torch.nn as nn

from reference import (
    REF_METHODS, dense_forward, dense_layers, dual_norm, ref_crown,
    ref_crown_ibp, ref_exact_linear, ref_forward, ref_forward_crown, ref_ibp,
    relu_relaxation,
)

INF = float("inf")
NORMS = [INF, 2.0, 1.0]
TOL = 1e-6


# --------------------------------------------------------------------------
# Models and sampling
# --------------------------------------------------------------------------

def make_mlp(seed, relu=True):
    torch.manual_seed(seed)
    act = nn.ReLU if relu else nn.Identity
    layers = [nn.Linear(4, 8), act(), nn.Linear(8, 6), act(), nn.Linear(6, 3)]
    return nn.Sequential(*[l for l in layers if not isinstance(l, nn.Identity)]).double(), (4,)


def make_cnn(seed, relu=True):
    torch.manual_seed(seed)
    layers = [
        nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(4, 3, 2, dilation=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(27, 5), nn.ReLU(), nn.Linear(5, 3),
    ]
    if not relu:
        layers = [l for l in layers if not isinstance(l, nn.ReLU)]
    return nn.Sequential(*layers).double(), (2, 6, 6)


def make_cnn_last_conv(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(),
        nn.Conv2d(3, 2, 2, stride=2), nn.Flatten())
    return model.double(), (1, 4, 4)


def sample_input_set(x, eps, norm, n, x_lower=None, x_upper=None):
    """n points (n, batch, *shape) from the Lp ball around x ∩ domain box.

    Mixes uniform interior points with extreme points (box corners for inf,
    sphere points for 2, vertices for 1).
    """
    batch, shape = x.shape[0], x.shape[1:]
    d = math.prod(shape)
    x0 = x.reshape(1, batch, d)
    if norm == INF:
        half = n // 2
        inner = (2 * torch.rand(half, batch, d, dtype=x.dtype) - 1) * eps
        corners = torch.randint(0, 2, (n - half, batch, d)).to(x.dtype) * 2 - 1
        delta = torch.cat([inner, corners * eps])
    elif norm == 2.0:
        g = torch.randn(n, batch, d, dtype=x.dtype)
        g = g / g.norm(dim=-1, keepdim=True)
        radius = torch.rand(n, batch, 1, dtype=x.dtype) ** (1.0 / d)
        radius[: n // 2] = 1.0  # half of the points on the sphere
        delta = g * radius * eps
    else:
        # Uniform in the L1 ball: signs * (E_1..E_d) / (E_1 + ... + E_{d+1}).
        e = torch.empty(n, batch, d + 1, dtype=x.dtype).exponential_()
        delta = e[..., :d] / e.sum(-1, keepdim=True)
        delta = delta * torch.sign(torch.randn_like(delta)) * eps
        # plus the 2d vertices ±eps e_k
        vertices = torch.cat([torch.eye(d), -torch.eye(d)]).to(x.dtype) * eps
        delta = torch.cat([delta, vertices.unsqueeze(1).expand(2 * d, batch, d)])
    pts = x0 + delta
    if norm == INF:
        lo, hi = x0 - eps, x0 + eps
    else:
        lo = torch.full_like(x0, -INF)
        hi = torch.full_like(x0, INF)
    if x_lower is not None:
        lo = torch.maximum(lo, x_lower.reshape(1, batch, d))
    if x_upper is not None:
        hi = torch.minimum(hi, x_upper.reshape(1, batch, d))
    # Clamping towards x (x is inside the domain box) stays inside the ball.
    pts = torch.minimum(torch.maximum(pts, lo), hi)
    return pts.reshape(pts.shape[0], batch, *shape)


def evaluate_spec(model, pts, C):
    """C @ model(p) for every sampled point: (n, batch, n_spec)."""
    n, batch = pts.shape[:2]
    with torch.no_grad():
        out = model(pts.reshape(n * batch, *pts.shape[2:])).reshape(n, batch, -1)
    if C is None:
        return out
    return torch.einsum("bso,nbo->nbs", C, out)


def assert_contains(lower, upper, values, tol=TOL):
    assert lower.shape == upper.shape == values.shape[1:]
    assert (values >= lower - tol).all(), (lower - values).max()
    assert (values <= upper + tol).all(), (values - upper).max()


# --------------------------------------------------------------------------
# Dense conversion
# --------------------------------------------------------------------------

@pytest.mark.parametrize("conv_kwargs", [
    dict(), dict(stride=2), dict(padding=1), dict(padding=2, dilation=2),
    dict(stride=2, padding=1, groups=2), dict(stride=(1, 2), padding=(0, 1)),
    dict(groups=4, bias=False), dict(padding="same"),
])
def test_conv_dense_matrix_matches_conv2d(conv_kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, **conv_kwargs), nn.ReLU(),
                          nn.Flatten()).double()
    x = torch.randn(3, 4, 7, 6, dtype=torch.float64)
    expected = model(x).detach()
    assert torch.allclose(dense_forward(model, x), expected, atol=1e-12)


@pytest.mark.parametrize("make", [make_mlp, make_cnn, make_cnn_last_conv])
def test_dense_forward_matches_model(make):
    model, shape = make(0)
    x = torch.randn(5, *shape, dtype=torch.float64)
    assert torch.allclose(dense_forward(model, x), model(x).detach().reshape(5, -1), atol=1e-12)


def test_unsupported_layer_rejected():
    with pytest.raises(TypeError):
        dense_layers(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), (2,))


def test_dual_norm():
    assert dual_norm(INF) == 1.0 and dual_norm("inf") == 1.0
    assert dual_norm(2) == 2.0
    assert dual_norm(1) == INF


# --------------------------------------------------------------------------
# ReLU relaxation
# --------------------------------------------------------------------------

def test_relu_relaxation_cases():
    l = torch.tensor([1.0, -3.0, -1.0, -3.0, -2.0, 0.0, -1.0], dtype=torch.float64)
    u = torch.tensor([2.0, -1.0, 3.0, 1.0, 2.0, 0.0, 0.0], dtype=torch.float64)
    up_slope, up_int, low_slope = relu_relaxation(l, u)
    # active, inactive, unstable (u > -l), unstable (u < -l), tie, zero, u == 0
    assert up_slope.tolist() == [1.0, 0.0, 0.75, 0.25, 0.5, 1.0, 0.0]
    assert up_int.tolist() == [0.0, 0.0, 0.75, 0.75, 1.0, 0.0, 0.0]
    assert low_slope.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0]


def test_relu_relaxation_is_sound():
    torch.manual_seed(0)
    l = torch.randn(200, dtype=torch.float64) * 2
    u = l + torch.rand(200, dtype=torch.float64) * 3
    up_slope, up_int, low_slope = relu_relaxation(l, u)
    t = torch.linspace(0, 1, 101, dtype=torch.float64).unsqueeze(1)
    z = l + t * (u - l)
    assert (low_slope * z <= z.clamp(min=0) + 1e-12).all()
    assert (z.clamp(min=0) <= up_slope * z + up_int + 1e-12).all()


# --------------------------------------------------------------------------
# Hand-computed one-neuron examples
# --------------------------------------------------------------------------

def one_neuron(w1, b1, w2=None, b2=None):
    layers = [nn.Linear(1, 1), nn.ReLU()]
    if w2 is not None:
        layers.append(nn.Linear(1, 1))
    model = nn.Sequential(*layers).double()
    with torch.no_grad():
        model[0].weight.fill_(w1)
        model[0].bias.fill_(b1)
        if w2 is not None:
            model[2].weight.fill_(w2)
            model[2].bias.fill_(b2)
    return model


def test_hand_example_lower_slope_one():
    # y = -3 relu(2x + 1) + 0.5, x in [-1, 1]  =>  z = 2x + 1 in [-1, 3].
    # Relaxation: upper 3/4 z + 3/4, lower slope 1 (since 3 >= 1).
    #   IBP: relu(z) in [0, 3] => y in [-8.5, 0.5].
    #   CROWN lower: -3 (3/4 z + 3/4) + 0.5 = -4.5 x - 4    => min -8.5.
    #   CROWN upper: -3 z + 0.5             = -6 x - 2.5    => max  3.5.
    model = one_neuron(2.0, 1.0, -3.0, 0.5)
    x = torch.zeros(1, 1, dtype=torch.float64)
    expected = {
        "IBP": (-8.5, 0.5), "CROWN": (-8.5, 3.5), "CROWN-IBP": (-8.5, 3.5),
        "forward": (-8.5, 3.5), "forward+backward": (-8.5, 3.5),
    }
    for norm in NORMS:  # 1-d input: every Lp ball is the same interval
        for name, method in REF_METHODS.items():
            lower, upper = method(model, x, 1.0, norm)
            assert lower.shape == upper.shape == (1, 1)
            assert lower.item() == pytest.approx(expected[name][0], abs=1e-12), name
            assert upper.item() == pytest.approx(expected[name][1], abs=1e-12), name
    # With the spec C = [[-1]] (bound -y); for IBP C is folded into the last
    # Linear: -y = 3 relu(z) - 0.5 in [-0.5, 8.5].
    C = -torch.ones(1, 1, 1, dtype=torch.float64)
    assert torch.allclose(torch.stack(ref_ibp(model, x, 1.0, INF, C=C)).flatten(),
                          torch.tensor([-0.5, 8.5], dtype=torch.float64))
    for method in (ref_crown, ref_crown_ibp, ref_forward, ref_forward_crown):
        lower, upper = method(model, x, 1.0, INF, C=C)
        assert (lower.item(), upper.item()) == pytest.approx((-3.5, 8.5))


def test_hand_example_lower_slope_zero():
    # y = relu(2x - 1), x in [-1, 1]  =>  z in [-3, 1], lower slope 0 (1 < 3),
    # upper line 1/4 z + 3/4 = x/2 + 1/2  => y in [0, 1] (exact here).
    model = one_neuron(2.0, -1.0)
    x = torch.zeros(1, 1, dtype=torch.float64)
    for name, method in REF_METHODS.items():
        lower, upper = method(model, x, 1.0, INF)
        assert (lower.item(), upper.item()) == pytest.approx((0.0, 1.0)), name
    # Domain box x in [0, 0.75] (norm inf): z in [-1, 0.5], lower slope 0,
    # upper line 1/3 z + 1/3 = 2x/3  => CROWN/forward [0, 0.5];
    # IBP [0, 0.5].
    lo = torch.zeros(1, 1, dtype=torch.float64)
    hi = torch.full((1, 1), 0.75, dtype=torch.float64)
    for name, method in REF_METHODS.items():
        lower, upper = method(model, x, 1.0, INF, x_lower=lo, x_upper=hi)
        assert (lower.item(), upper.item()) == pytest.approx((0.0, 0.5)), name


def test_hand_example_two_inputs_norms():
    # y = x1 - 2 x2 around x = (1, 1) with eps = 1 (no ReLU):
    # inf: ±3; L2: ±sqrt(5); L1: ±2.
    model = nn.Sequential(nn.Linear(2, 1)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0]]))
        model[0].bias.zero_()
    x = torch.ones(1, 2, dtype=torch.float64)
    for norm, r in [(INF, 3.0), (2.0, math.sqrt(5.0)), (1.0, 2.0)]:
        lower, upper = ref_exact_linear(model, x, 1.0, norm)
        assert (lower.item(), upper.item()) == pytest.approx((-1 - r, -1 + r))


# --------------------------------------------------------------------------
# Soundness by sampling
# --------------------------------------------------------------------------

CASES = list(itertools.product(
    ["mlp", "cnn", "cnn_last_conv"], NORMS, [False, True], [False, True]))


@pytest.mark.parametrize("arch,norm,use_c,use_box", CASES)
def test_sampled_soundness(arch, norm, use_c, use_box):
    make = {"mlp": make_mlp, "cnn": make_cnn, "cnn_last_conv": make_cnn_last_conv}[arch]
    seed = CASES.index((arch, norm, use_c, use_box))
    model, shape = make(seed)
    torch.manual_seed(seed)
    batch = 2
    x = torch.randn(batch, *shape, dtype=torch.float64)
    eps = {INF: 0.1, 2.0: 0.3, 1.0: 0.5}[norm]
    n_out = model(x).shape[1]
    C = torch.randn(batch, 4, n_out, dtype=torch.float64) if use_c else None
    x_lower = x - 0.5 * eps * torch.rand_like(x) if use_box else None
    x_upper = x + 0.5 * eps * torch.rand_like(x) if use_box else None
    pts = sample_input_set(x, eps, norm, 400, x_lower, x_upper)
    values = evaluate_spec(model, pts, C)
    variants = [(name, m, {}) for name, m in REF_METHODS.items()]
    variants += [("IBP-dual", ref_ibp, {"lp_dual_first_layer": True}),
                 ("CROWN-IBP-dual", ref_crown_ibp, {"lp_dual_first_layer": True}),
                 ("CROWN-sparse", ref_crown, {"sparse_ibp": True}),
                 ("forward-fold", ref_forward, {"fold_c": True})]
    for name, method, kwargs in variants:
        lower, upper = method(model, x, eps, norm, C=C, x_lower=x_lower,
                              x_upper=x_upper, **kwargs)
        assert lower.dtype == torch.float64
        assert lower.shape == (batch, C.shape[1] if use_c else n_out), name
        assert (lower <= upper + 1e-12).all(), name
        assert_contains(lower, upper, values)


# --------------------------------------------------------------------------
# Relations between methods
# --------------------------------------------------------------------------

def test_crown_no_looser_than_ibp_on_average():
    crown_w, ibp_w = [], []
    for seed in range(5):
        for make in (make_mlp, make_cnn):
            model, shape = make(seed)
            x = torch.randn(4, *shape, dtype=torch.float64)
            for norm, eps in [(INF, 0.05), (2.0, 0.2)]:
                lc, uc = ref_crown(model, x, eps, norm)
                li, ui = ref_ibp(model, x, eps, norm)
                crown_w.append((uc - lc).mean())
                ibp_w.append((ui - li).mean())
    assert torch.stack(crown_w).mean() <= torch.stack(ibp_w).mean()


def test_single_affine_layer_every_method_is_exact():
    # With a single affine layer and norm inf, IBP is exact as well.
    model, shape = make_mlp(0, relu=False)
    model = model[:1]
    x = torch.randn(3, *shape, dtype=torch.float64)
    for method in REF_METHODS.values():
        lower, upper = method(model, x, 0.1, INF)
        el, eu = ref_exact_linear(model, x, 0.1, INF)
        assert torch.allclose(lower, el) and torch.allclose(upper, eu)


@pytest.mark.parametrize("make", [make_mlp, make_cnn])
@pytest.mark.parametrize("norm", NORMS)
def test_exact_linear_equals_linear_relaxation_methods(make, norm):
    model, shape = make(1, relu=False)
    x = torch.randn(3, *shape, dtype=torch.float64)
    n_out = model(x).shape[1]
    C = torch.randn(3, 2, n_out, dtype=torch.float64)
    for c in (None, C):
        exact = ref_exact_linear(model, x, 0.2, norm, C=c)
        for method in (ref_crown, ref_crown_ibp, ref_forward, ref_forward_crown):
            lower, upper = method(model, x, 0.2, norm, C=c)
            assert torch.allclose(lower, exact[0], atol=1e-10)
            assert torch.allclose(upper, exact[1], atol=1e-10)
        lower, upper = ref_ibp(model, x, 0.2, norm, C=c)  # IBP: sound, looser
        assert (lower <= exact[0] + 1e-10).all() and (upper >= exact[1] - 1e-10).all()


@pytest.mark.parametrize("norm", NORMS)
def test_exact_linear_is_attained(norm):
    """The closed form is attained by the dual-norm maximiser of each row."""
    model, shape = make_mlp(2, relu=False)
    x = torch.randn(2, *shape, dtype=torch.float64)
    eps = 0.3
    lower, upper = ref_exact_linear(model, x, eps, norm)
    layers, _ = dense_layers(model, shape)
    W = torch.eye(4, dtype=torch.float64)
    for _, Wi, _ in layers:
        W = Wi @ W
    for j in range(W.shape[0]):
        a = W[j]
        if norm == INF:
            delta = eps * torch.sign(a)
        elif norm == 2.0:
            delta = eps * a / a.norm()
        else:
            k = a.abs().argmax()
            delta = torch.zeros_like(a)
            delta[k] = eps * torch.sign(a[k])
        with torch.no_grad():
            hi = model(x + delta)[:, j]
            lo = model(x - delta)[:, j]
        assert torch.allclose(hi, upper[:, j], atol=1e-10)
        assert torch.allclose(lo, lower[:, j], atol=1e-10)


def test_identity_spec_equals_no_spec_and_batch_independence():
    model, shape = make_cnn(3)
    x = torch.randn(3, *shape, dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64).expand(3, 3, 3)
    for name, method in REF_METHODS.items():
        lower, upper = method(model, x, 0.05, INF)
        lower_c, upper_c = method(model, x, 0.05, INF, C=eye)
        assert torch.allclose(lower, lower_c) and torch.allclose(upper, upper_c), name
        for i in range(3):
            li, ui = method(model, x[i:i + 1], 0.05, INF)
            assert torch.allclose(li, lower[i:i + 1]) and torch.allclose(ui, upper[i:i + 1]), name


def test_ibp_c_folding_only_into_last_linear():
    # Last module Linear: folding C gives |C W| r <= |C| |W| r.
    model, shape = make_mlp(4)
    x = torch.randn(2, *shape, dtype=torch.float64)
    C = torch.randn(2, 3, 3, dtype=torch.float64)
    lf, uf = ref_ibp(model, x, 0.1, INF, C=C)
    lo, hi = ref_ibp(model, x, 0.1, INF)
    c = torch.einsum("bso,bo->bs", C, (lo + hi) / 2)
    r = torch.einsum("bso,bo->bs", C.abs(), (hi - lo) / 2)
    assert (lf >= c - r - 1e-12).all() and (uf <= c + r + 1e-12).all()
    assert ((uf - lf) < (2 * r) - 1e-9).any()
    # Last module Conv2d + Flatten: no folding, C applied to the interval.
    model, shape = make_cnn_last_conv(4)
    x = torch.randn(2, *shape, dtype=torch.float64)
    C = torch.randn(2, 3, model(x).shape[1], dtype=torch.float64)
    lf, uf = ref_ibp(model, x, 0.1, INF, C=C)
    lo, hi = ref_ibp(model, x, 0.1, INF)
    c = torch.einsum("bso,bo->bs", C, (lo + hi) / 2)
    r = torch.einsum("bso,bo->bs", C.abs(), (hi - lo) / 2)
    assert torch.allclose(lf, c - r) and torch.allclose(uf, c + r)


def test_domain_box_tightens_inf_bounds():
    model, shape = make_mlp(5)
    x = torch.randn(2, *shape, dtype=torch.float64)
    x_lower, x_upper = x - 0.02, x + 0.01
    for name, method in REF_METHODS.items():
        lb, ub = method(model, x, 0.1, INF, x_lower=x_lower, x_upper=x_upper)
        l, u = method(model, x, 0.1, INF)
        assert (lb >= l - 1e-9).all() and (ub <= u + 1e-9).all(), name
        # The box [x - 0.02, x + 0.01] is a box of its own: same as giving it directly.
        centre = x - 0.005
        lc, uc = method(model, centre, 0.015, INF)
        assert torch.allclose(lb, lc) and torch.allclose(ub, uc), name


def test_zero_eps_gives_point_value():
    model, shape = make_cnn(6)
    x = torch.randn(2, *shape, dtype=torch.float64)
    y = model(x).detach()
    for norm in NORMS:
        for name, method in REF_METHODS.items():
            lower, upper = method(model, x, 0.0, norm)
            assert torch.allclose(lower, y) and torch.allclose(upper, y), name


def test_against_auto_lirpa_if_installed():
    """Optional parity check with the real auto_LiRPA (skipped if absent).

    Options mimic auto_LiRPA's defaults: dual norm on the first Linear for
    Lp IBP, IBP-based sparse intermediate bounds for CROWN, C folded into the
    last Linear in forward mode.
    """
    auto_lirpa = pytest.importorskip("auto_LiRPA")
    model, shape = make_mlp(7)
    x = torch.randn(3, *shape, dtype=torch.float64)
    C = torch.randn(3, 2, 3, dtype=torch.float64)
    bounded = auto_lirpa.BoundedModule(model, torch.zeros_like(x))
    for norm in NORMS:
        ptb = auto_lirpa.PerturbationLpNorm(norm=norm, eps=0.2)
        bx = auto_lirpa.BoundedTensor(x, ptb)
        for name, method in REF_METHODS.items():
            lower, upper = bounded.compute_bounds(x=(bx,), method=name, C=C)
            rl, ru = method(model, x, 0.2, norm, C=C, **AUTO_LIRPA_OPTIONS.get(name, {}))
            assert torch.allclose(lower.double(), rl, atol=1e-8), (norm, name)
            assert torch.allclose(upper.double(), ru, atol=1e-8), (norm, name)


# --------------------------------------------------------------------------
# Frozen auto_LiRPA results
# --------------------------------------------------------------------------
# Bounds computed once with auto_LiRPA 0.3 (float64, default bound_opts, run
# against torch 2.13 with small import fixes) on the fixed network below.
# The input is offset by 0.0137 so that no ReLU has u == -l exactly (auto_LiRPA
# breaks that tie with u > -l, the reference with u >= -l).
FIXED_PARAMS = [
    [[0.3, -0.2, -0.3], [-1.0, 0.8, -0.5], [0.5, 0.4, -0.3], [-0.8, 1.1, 0.6], [-1.1, -1.0, -0.1]],
    [-0.8, 0.5, -0.2, 0.0, -0.4],
    [[0.5, -1.2, 1.4, 0.6, -0.8], [-0.2, -0.3, -0.1, 1.2, -1.1], [0.8, -0.2, 0.3, -0.6, -0.8],
     [0.0, 0.6, -0.3, 0.3, -0.8], [1.8, 0.0, 0.5, -0.4, -0.3]],
    [-1.1, -0.2, -0.3, -0.2, -0.2],
    [[0.7, -0.9, -0.3, 0.4, -0.3], [-1.5, -1.3, -1.3, 1.7, 0.7]],
    [-0.9, -0.2],
]
FIXED_X = [[-0.3, -0.2, -0.7], [-0.2, 0.5, -0.1], [-0.1, -0.2, -1.1]]
FIXED_C = [[1.0, -1.0], [0.5, 2.0], [-1.0, 0.0]]
FIXED_EPS = {"inf": 0.4937, "2.0": 0.8111, "1.0": 1.0231}

AUTO_LIRPA_0_3 = {
    ('inf', 'IBP'): (
        [[-2.4205838, -3.3384828, 0.3705896], [-3.0202138, -9.2307281, -0.3363048], [-2.3649138, -1.8979936, 0.4123792]],
        [[-0.3736416, 3.9146936, 1.6343064], [1.8347528, 5.4759561, 2.7865824], [-0.5461232, 3.6081061, 1.2324054]]),
    ('inf', 'CROWN'): (
        [[-2.52278271966, -5.24921232785, 0.386658628174], [-2.51123925691, -4.16363537872, -0.278068363412], [-2.24303528289, -3.58389481818, 0.444286304]],
        [[0.527333902417, 3.96310142296, 1.78358393886], [0.0114669543305, 4.1841021015, 1.86286289212], [0.287239795455, 3.32888047761, 1.2241814494]]),
    ('inf', 'CROWN-IBP'): (
        [[-2.39442688567, -4.90150737269, 0.378637881334], [-2.53521339298, -6.00924504063, -0.620476435683], [-2.27591808541, -1.74361906061, 0.429568579264]],
        [[0.491462827939, 3.842259068, 1.60136233423], [1.21326362177, 4.56191180928, 2.01252257098], [-0.569791228843, 3.43439516836, 1.17591457657]]),
    ('inf', 'forward'): (
        [[-2.60395145843, -6.88898169671, 0.386658628174], [-2.6851711053, -5.10711063972, -0.41431923009], [-2.26885201009, -3.58389481818, 0.444286304]],
        [[0.923961731004, 4.06456234643, 2.2262480333], [0.214456768265, 5.48939448785, 1.91766412469], [0.287239795455, 3.36115138661, 1.22859514011]]),
    ('inf', 'forward+backward'): (
        [[-2.52278271966, -5.72513841361, 0.386658628174], [-2.51123925691, -4.25234984072, -0.278068363412], [-2.24303528289, -3.58389481818, 0.444286304]],
        [[0.72276387519, 3.96310142296, 1.85750983712], [0.0501951102533, 4.1841021015, 1.86907902915], [0.287239795455, 3.32888047761, 1.2241814494]]),
    ('2.0', 'IBP'): (
        [[-2.39354631828, -3.23430762011, 0.378908825144], [-2.98372347339, -8.9274879295, -0.280340710869], [-2.32842347339, -1.77030762011, 0.426908825144]],
        [[-0.387303918674, 3.83982057371, 1.60356618298], [1.66889765749, 5.38926701759, 2.74748972836], [-0.579303918674, 3.52141701759, 1.19882932952]]),
    ('2.0', 'CROWN'): (
        [[-2.86083520111, -5.44698175825, 0.282774494398], [-2.50788562547, -4.15556606366, -0.430290495144], [-2.29243688488, -4.07219149065, 0.424004039115]],
        [[0.692997789068, 4.89603744225, 1.82667673594], [0.0995015485346, 4.85443070937, 1.88917870846], [0.459114860683, 3.49036352139, 1.27669543666]]),
    ('2.0', 'CROWN-IBP'): (
        [[-2.54351945945, -3.62370632079, 0.332763243247], [-2.51402865326, -5.95319908221, -0.6791865299], [-2.27697283982, -1.66526804453, 0.425543309404]],
        [[-0.336235236617, 4.25513081078, 1.71847071761], [1.16210273424, 5.09965127624, 2.05915759144], [-0.593079600718, 3.46306167843, 1.15564904589]]),
    ('2.0', 'forward'): (
        [[-2.96666058553, -7.26013263807, 0.282774494398], [-2.74360018066, -5.18124293672, -0.586211215101], [-2.32124764631, -4.09709019778, 0.424004039115]],
        [[1.0521319255, 5.02918233805, 2.3040888645], [0.338217469251, 6.15119938208, 1.98930518203], [0.462385346861, 3.52668571539, 1.29058827832]]),
    ('2.0', 'forward+backward'): (
        [[-2.86083520111, -6.04221003071, 0.282774494398], [-2.50788562547, -4.25189006789, -0.430290495144], [-2.29243688488, -4.07219149065, 0.424004039115]],
        [[0.891575283944, 4.89603744225, 1.94862395934], [0.144700817592, 4.85443070937, 1.89640475912], [0.459114860683, 3.49036352139, 1.27669543666]]),
    ('1.0', 'IBP'): (
        [[-2.2904564, -2.9401284, 0.4106288], [-2.8496414, -7.89889725, -0.0768562], [-2.1943414, -1.4761284, 0.4586288]],
        [[-0.4258848, 3.5543408, 1.5167592], [1.079448, 5.06504705, 2.626551], [-0.6178848, 3.19719705, 1.1027247]]),
    ('1.0', 'CROWN'): (
        [[-3.15391511165, -5.6787983864, 0.116201099153], [-2.35264353577, -3.58643645658, -0.273047660693], [-2.33360390368, -4.34451025206, 0.403755854545]],
        [[1.0207071041, 5.74436745456, 1.71427335367], [-0.0707860427273, 4.97608032, 1.85718941976], [0.561408545799, 3.64221034778, 1.2963190112]]),
    ('1.0', 'CROWN-IBP'): (
        [[-2.64127686885, -3.22360794717, 0.302684040354], [-2.37205120871, -4.95709303734, -0.452641437638], [-2.22645558037, -1.42053376114, 0.432880803675]],
        [[-0.38870715447, 4.52584363682, 1.60040890244], [0.676009380271, 5.11304592514, 2.05399745418], [-0.625175900179, 3.36447050731, 1.07537363956]]),
    ('1.0', 'forward'): (
        [[-3.24809657876, -7.25989480675, 0.105127501848], [-2.55856181498, -4.15903531066, -0.418675255836], [-2.35651401973, -4.34887761637, 0.403755854545]],
        [[1.20711605713, 5.86209428845, 2.21247525415], [0.134669256913, 5.91718159861, 1.93687527272], [0.561981314889, 3.67084799285, 1.30356709233]]),
    ('1.0', 'forward+backward'): (
        [[-3.15391511165, -6.14438733948, 0.116201099153], [-2.35264353577, -3.58643645658, -0.273047660693], [-2.33360390368, -4.34451025206, 0.403755854545]],
        [[1.19001217795, 5.74436745456, 1.87934559562], [-0.0707860427273, 4.97608032, 1.85718941976], [0.561408545799, 3.64221034778, 1.2963190112]]),
}


def fixed_network():
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(),
                          nn.Linear(5, 2)).double()
    with torch.no_grad():
        for k, linear in enumerate([model[0], model[2], model[4]]):
            linear.weight.copy_(torch.tensor(FIXED_PARAMS[2 * k], dtype=torch.float64))
            linear.bias.copy_(torch.tensor(FIXED_PARAMS[2 * k + 1], dtype=torch.float64))
    x = torch.tensor(FIXED_X, dtype=torch.float64) + 0.0137
    C = torch.tensor(FIXED_C, dtype=torch.float64).expand(3, 3, 2)
    return model, x, C


# Options that reproduce auto_LiRPA's defaults (see reference.py docstrings).
AUTO_LIRPA_OPTIONS = {"IBP": {"lp_dual_first_layer": True},
                      "CROWN-IBP": {"lp_dual_first_layer": True},
                      "CROWN": {"sparse_ibp": True},
                      "forward": {"fold_c": True}}


@pytest.mark.parametrize("norm,name", list(AUTO_LIRPA_0_3))
def test_matches_frozen_auto_lirpa_results(norm, name):
    model, x, C = fixed_network()
    lower, upper = REF_METHODS[name](model, x, FIXED_EPS[norm], float(norm), C=C,
                                     **AUTO_LIRPA_OPTIONS.get(name, {}))
    expected_lower, expected_upper = AUTO_LIRPA_0_3[(norm, name)]
    assert torch.allclose(lower, torch.tensor(expected_lower, dtype=torch.float64), atol=1e-9, rtol=0)
    assert torch.allclose(upper, torch.tensor(expected_upper, dtype=torch.float64), atol=1e-9, rtol=0)
