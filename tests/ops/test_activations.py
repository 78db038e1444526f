"""Soundness of every elementwise activation: the relaxation lines bound f on dense samples of
random intervals (tiny, huge, one-point, negative, positive, straddling; float32 and float64),
IBP contains f, and a Linear -> act -> Linear net is bounded soundly by every method."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import example, given, settings, strategies as st

import lirpac
from lirpac.errors import UnsupportedOperationError
from lirpac.ir.opdef import Interval, get_op
from models import shared_compiled
from sampling import assert_contains, sample_lp_ball


def _gelu_erf(x):
    return x * 0.5 * torch.erfc(-x / math.sqrt(2))


def _gelu_tanh(x):
    return x * torch.sigmoid(2 * math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))


# (op, attrs, domain, accurate float64 reference or None for the op's forward)
CASES = [
    ("relu", {}, "any", None), ("sigmoid", {}, "any", None), ("tanh", {}, "any", None),
    ("atan", {}, "any", None), ("gelu", {}, "any", _gelu_erf),
    ("gelu", {"approximate": "tanh"}, "any", _gelu_tanh), ("silu", {}, "any", None),
    ("softplus", {}, "any", None), ("softplus", {"beta": 2.0, "threshold": 5.0}, "any", None),
    ("log_sigmoid", {}, "any", None),
    ("elu", {}, "any", None),
    ("elu", {"alpha": 1.6732632423543772, "scale": 1.0507009873554805}, "any", None),
    ("elu", {"alpha": 0.5, "input_scale": 2.0}, "any", None),
    ("leaky_relu", {"negative_slope": 0.125}, "any", None),
    ("leaky_relu", {"negative_slope": 2.0}, "any", None), ("abs", {}, "any", None),
    ("clamp", {"min": -1.0, "max": 2.0}, "any", None), ("clamp", {"min": 0.5}, "any", None),
    ("clamp", {"max": 0.25}, "any", None), ("exp", {}, "any", None), ("expm1", {}, "any", None),
    ("log", {}, "pos", None), ("log2", {}, "pos", None), ("log10", {}, "pos", None),
    ("log1p", {}, "gt_m1", None), ("sqrt", {}, "nonneg", None), ("rsqrt", {}, "pos", None),
    ("reciprocal", {}, "nonzero", None), ("erf", {}, "any", None), ("sinh", {}, "any", None),
    ("cosh", {}, "any", None), ("sin", {}, "any", None), ("cos", {}, "any", None),
    ("sign", {}, "any", None), ("floor", {}, "any", None), ("ceil", {}, "any", None),
    ("round", {}, "any", None), ("trunc", {}, "any", None),
] + [("pow", {"exponent": p}, "any", None) for p in (0, 1, 2, 3, 4, 5)] + [
    ("pow", {"exponent": p}, "nonzero", None) for p in (-1, -2, -3)] + [
    ("pow", {"exponent": p}, "nonneg", None) for p in (0.5, 1.5)] + [
    ("pow", {"exponent": -0.5}, "pos", None)]
IDS = [f"{n}{a}" for n, a, _, _ in CASES]
KINDS = ["tiny", "huge", "point", "negative", "positive", "straddle", "mixed"]


def intervals(kind: str, domain: str, seed: int, dtype, n: int = 32):
    g = torch.Generator().manual_seed(seed)
    scale = {"tiny": 1e-6, "huge": 1e4}.get(kind, 4.0)
    centre = torch.randn(n, generator=g, dtype=torch.float64) * scale
    radius = torch.rand(n, generator=g, dtype=torch.float64) * scale
    if kind == "mixed":
        centre = centre * 10 ** torch.randint(-8, 9, (n,), generator=g)
        radius = radius * 10 ** torch.randint(-8, 9, (n,), generator=g)
    if kind == "point":
        radius.zero_()
    if kind == "negative":
        centre = -centre.abs() - radius
    if kind in ("positive",):
        centre = centre.abs() + radius
    if kind == "straddle":
        radius = centre.abs() + radius
    lower, upper = centre - radius, centre + radius
    if domain != "any":
        mag_lo = torch.minimum(lower.abs(), upper.abs())
        mag_hi = torch.maximum(lower.abs(), upper.abs())
        floor = {"pos": 1e-3, "nonneg": 0.0, "gt_m1": 1e-3, "nonzero": 1e-3}[domain]
        lower, upper = mag_lo + floor, mag_hi + floor
        if domain == "gt_m1":
            lower, upper = lower - 1, upper - 1
        if domain == "nonzero":
            neg = torch.rand(n, generator=g) < 0.5
            lower, upper = torch.where(neg, -upper, lower), torch.where(neg, -lower, upper)
    lower, upper = lower.to(dtype), upper.to(dtype)
    return lower, torch.maximum(upper, lower)


def lines_of(op, lower, upper, attrs):
    """The relaxation lines, read through the op's backward rule: one element per batch row
    with coefficient 1, so the new coefficients are the slopes and the biases the biases."""
    n = lower.shape[0]
    one = torch.ones(n, 1, 1, dtype=lower.dtype)
    box = Interval(lower.reshape(n, 1), upper.reshape(n, 1))
    coeffs, lbias, ubias = op.backward(one, one, box, **attrs)
    l_coeff, u_coeff = coeffs[0]
    zero = torch.zeros(n, 1, dtype=lower.dtype)   # a bias may come back as the int 0
    parts = (l_coeff.reshape(n, 1), lbias, u_coeff.reshape(n, 1), ubias)
    return tuple((zero + t).reshape(n) for t in parts)


def dense(lower, upper, m=41):
    t = torch.linspace(0, 1, m, dtype=torch.float64).unsqueeze(1)
    lo, hi = lower.double(), upper.double()
    xs = (lo + (hi - lo) * t).to(lower.dtype)
    return torch.minimum(torch.maximum(xs, lower), upper)   # (m, n), endpoints included


@pytest.mark.parametrize("case", CASES, ids=IDS)
@settings(max_examples=6, deadline=None)
@given(kind=st.sampled_from(KINDS), seed=st.integers(0, 10_000),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_lines_and_ibp_bound_f(case, kind, seed, dtype):
    name, attrs, domain, ref = case
    op = get_op(name)
    lower, upper = intervals(kind, domain, seed, dtype)
    ls, lb, us, ub = lines_of(op, lower, upper, attrs)
    for t in (ls, lb, us, ub):
        assert not torch.isnan(t).any()
    xs = dense(lower, upper)
    x64 = xs.double()
    f = (ref or (lambda x: op.forward(x, **attrs)))(x64)
    # where f overflows the dtype, torch's own output is inf: nothing to bound
    finite = torch.isfinite(f) & (f.abs() <= torch.finfo(dtype).max)
    low = ls.double() * x64 + lb.double()
    up = us.double() * x64 + ub.double()
    tol = 64 * torch.finfo(torch.float64).eps * (1 + f.abs() + (ls.double() * x64).abs()
                                                  + (us.double() * x64).abs())
    tol = torch.where(torch.isfinite(tol), tol, torch.zeros_like(tol))
    assert (low[finite] <= f[finite] + tol[finite]).all(), "lower line above f"
    assert (up[finite] >= f[finite] - tol[finite]).all(), "upper line below f"
    # IBP bounds f as torch computes it in the same dtype
    box = op.ibp(Interval(lower, upper), **attrs)
    fx = op.forward(xs, **attrs)
    ok = ~torch.isnan(fx)
    assert (box.lower.expand_as(fx)[ok] <= fx[ok]).all() and (fx[ok] <= box.upper.expand_as(fx)[ok]).all()


@pytest.mark.parametrize("name", ["log", "reciprocal", "rsqrt", "sqrt"])
def test_no_linear_bound_across_a_pole_or_domain_edge(name):
    op = get_op(name)
    lower, upper = torch.tensor([[-1.0]]), torch.tensor([[2.0]])
    box = op.ibp(Interval(lower, upper))
    assert not torch.isnan(box.lower).any() and not torch.isnan(box.upper).any()
    with pytest.raises(UnsupportedOperationError, match=name):
        op.backward(torch.ones(1, 1, 1), None, Interval(lower, upper))


def test_clamp_and_leaky_relu_are_exact_when_sign_known():
    for name, attrs in (("leaky_relu", {"negative_slope": 0.1}), ("abs", {}),
                        ("clamp", {"min": -1.0, "max": 1.0})):
        op = get_op(name)
        lower, upper = torch.tensor([2.0, -3.0, 0.1]), torch.tensor([3.0, -2.0, 0.5])
        ls, lb, us, ub = lines_of(op, lower, upper, attrs)
        assert torch.equal(ls, us) and torch.equal(lb, ub), name


# -- end to end: Linear -> act -> Linear -----------------------------------------------------

class Net(nn.Module):
    def __init__(self, act, domain="any"):
        super().__init__()
        self.fc1, self.fc2, self.act, self.domain = nn.Linear(4, 5), nn.Linear(5, 3), act, domain
        self.register_buffer("lo", torch.tensor([-0.5, -1.0, 0.0, -0.2, -2.0]))
        self.register_buffer("hi", torch.tensor([0.5, 1.0, 2.0, 0.3, 0.0]))

    def forward(self, x):
        h = self.fc1(x)
        if self.domain != "any":      # keep the activation's input in its domain
            h = F.softplus(h) + (0.5 if self.domain != "gt_m1" else -0.5)
        return self.fc2(self.act(h, self))


NETS = {
    "relu": (lambda h, m: F.relu(h), "any"), "sigmoid": (lambda h, m: torch.sigmoid(h), "any"),
    "tanh": (lambda h, m: torch.tanh(h), "any"), "atan": (lambda h, m: torch.atan(h), "any"),
    "gelu": (lambda h, m: F.gelu(h), "any"),
    "gelu_tanh": (lambda h, m: F.gelu(h, approximate="tanh"), "any"),
    "silu": (lambda h, m: F.silu(h), "any"), "softplus": (lambda h, m: F.softplus(h, 2.0), "any"),
    "log_sigmoid": (lambda h, m: F.logsigmoid(h), "any"),
    "elu": (lambda h, m: F.elu(h), "any"), "selu": (lambda h, m: F.selu(h), "any"),
    "celu": (lambda h, m: F.celu(h, 0.7), "any"),
    "leaky_relu": (lambda h, m: F.leaky_relu(h, 0.2), "any"),
    "hardtanh": (lambda h, m: F.hardtanh(h, -0.5, 0.5), "any"), "relu6": (lambda h, m: F.relu6(h), "any"),
    "clamp": (lambda h, m: torch.clamp(h, min=-0.3), "any"),
    "clamp_tensor": (lambda h, m: torch.clamp(h, m.lo, m.hi), "any"),
    "clamp_max_tensor": (lambda h, m: torch.clamp(h, max=m.hi), "any"),
    "clip": (lambda h, m: torch.clip(h, -1, 1), "any"), "abs": (lambda h, m: torch.abs(h), "any"),
    "sign": (lambda h, m: torch.sign(h), "any"),
    "heaviside": (lambda h, m: torch.heaviside(h, m.hi), "any"),
    "floor": (lambda h, m: torch.floor(h), "any"), "round": (lambda h, m: torch.round(h), "any"),
    "exp": (lambda h, m: torch.exp(h), "any"), "log": (lambda h, m: torch.log(h), "pos"),
    "log1p": (lambda h, m: torch.log1p(h), "gt_m1"),
    "sqrt": (lambda h, m: torch.sqrt(h), "pos"), "rsqrt": (lambda h, m: torch.rsqrt(h), "pos"),
    "reciprocal": (lambda h, m: 1 / h, "pos"), "square": (lambda h, m: h ** 2, "any"),
    "cube": (lambda h, m: h ** 3, "any"), "pow_half": (lambda h, m: h ** 1.5, "pos"),
    "sin": (lambda h, m: torch.sin(h), "any"), "cos": (lambda h, m: torch.cos(h), "any"),
    "erf": (lambda h, m: torch.erf(h), "any"), "sinh": (lambda h, m: torch.sinh(h), "any"),
    "cosh": (lambda h, m: torch.cosh(h), "any"), "expm1": (lambda h, m: torch.expm1(h), "any"),
}
METHODS = ["ibp", "crown", "forward", "crown-ibp", "forward+crown"]


@pytest.mark.parametrize("arch", sorted(NETS))
@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.sampled_from([0.0, 0.05, 0.3, 1.0]))
def test_net_bounds_contain_outputs(arch, seed, eps):
    fn, domain = NETS[arch]
    torch.manual_seed(seed)
    model = Net(lambda h, m: fn(h, m), domain).eval()
    model, net = shared_compiled(("activation_net", arch), model, torch.zeros(1, 4))
    x = torch.randn(2, 4)
    points = sample_lp_ball(x, eps, math.inf, 64, generator=torch.Generator().manual_seed(seed))
    for method in METHODS:
        lower, upper = net.bounds(x, lirpac.LpBall(eps=eps), method=method)
        assert not torch.isnan(lower).any() and not torch.isnan(upper).any(), method
        assert_contains(model, points, lower, upper, tol=1e-5)


@pytest.mark.parametrize("arch", ["sigmoid", "gelu", "silu", "sin", "log", "clamp"])
def test_bounds_have_finite_gradients(arch):
    """Certified training differentiates bounds: no NaN from branches a where() discards."""
    fn, domain = NETS[arch]
    torch.manual_seed(0)
    model = Net(lambda h, m: fn(h, m), domain).eval()
    net = lirpac.compile(model, torch.zeros(1, 4))
    for method in ("crown", "forward"):
        model.zero_grad()
        lower, upper = net.bounds(torch.randn(3, 4), lirpac.LpBall(eps=0.3), method=method)
        (upper - lower).sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("op, attrs", [("relu", {}), ("leaky_relu", {"negative_slope": 0.1})])
@pytest.mark.parametrize("sides", ["both", "lower", "same"])
def test_kink_step_with_fixed_coefficients_is_the_full_step(op, attrs, sides):
    """alpha-CROWN's kink step keeps, for coefficients no slope reaches, the parts of the step
    that do not depend on alpha (computed once per call): the result is bit for bit the full
    step's, for fresh slopes every time, and so is alpha's gradient."""
    g = torch.Generator().manual_seed(1)
    lower = torch.randn(2, 7, generator=g)
    upper = lower + 2 * torch.rand(2, 7, generator=g)
    opdef = get_op(op)
    lines = opdef.alpha_lines(lower, upper, **attrs)
    lA = torch.randn(2, 5, 7, generator=g)
    uA = {"both": torch.randn(2, 5, 7, generator=g), "lower": None, "same": lA}[sides]
    for _ in range(2):     # the second call reads the kept parts
        alphas = [None if c is None else torch.rand(2, 5, 7, generator=g).requires_grad_() for c in (lA, uA)]
        kept = opdef.backward_alpha(lA, uA, lines, *alphas, **attrs)
        full = opdef.backward_alpha(lA, uA, tuple(lines), *alphas, **attrs)   # (a plain tuple: no memory)
        for a, b in zip(kept[0][0] + kept[1:], full[0][0] + full[1:]):
            assert (a is None and b is None) or (isinstance(a, int) and a == b) or torch.equal(a, b)
        live = [a for a in alphas if a is not None]
        objective = lambda out: sum(t.sum() for t in out[0][0] if t is not None)
        for ga, gb in zip(torch.autograd.grad(objective(kept), live), torch.autograd.grad(objective(full), live)):
            assert torch.equal(ga, gb)
    assert lines.__dict__["fixed_parts"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relu_lines_on_every_kind_of_interval(dtype):
    """CROWN's ReLU lines case by case: exact where the sign is known (slope 1, bias 0 when
    active; slope 0, bias 0 when dead, l = u = 0 included), the chord above and the adaptive
    lower slope (1 when u >= -l) where unstable."""
    from lirpac.ir.ops.activations import relu_relax
    lower = torch.tensor([[0.5, 0.0, -2.0, -1.0, 0.0, -1.0, -3.0, -1.0]], dtype=dtype)
    upper = torch.tensor([[2.0, 1.0, -1.0, 0.0, 0.0, 3.0, 1.0, 1.0]], dtype=dtype)
    l_slope, l_bias, u_slope, u_bias = relu_relax(lower, upper)
    assert l_bias == 0
    assert l_slope.tolist() == [[1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0]]
    chord = upper.clamp(min=0) / (upper.clamp(min=0) - lower.clamp(max=0)).clamp(min=1e-30)
    assert torch.equal(u_slope[:, :5], chord[:, :5])
    assert torch.equal(u_bias[:, :5], torch.zeros(1, 5, dtype=dtype))
    # unstable: the chord through (l, 0) and (u, u), lifted by a few ulps, never below
    torch.testing.assert_close(u_slope[:, 5:], chord[:, 5:])
    exact_bias = -chord[:, 5:] * lower[:, 5:]
    assert (u_bias[:, 5:] >= exact_bias).all()
    torch.testing.assert_close(u_bias[:, 5:], exact_bias)
    assert l_slope.dtype == u_slope.dtype == u_bias.dtype == dtype


@settings(max_examples=40, deadline=None)
@given(beta=st.floats(0.25, 4.0), threshold=st.floats(0.25, 20.0), left=st.floats(0.0, 2.0),
       right=st.floats(0.0, 2.0), dtype=st.sampled_from([torch.float32, torch.float64]))
# (the point threshold/beta, where float32's beta*x rounds past torch's own test)
@example(beta=0.7853467264344589, threshold=5.722730860326698, left=0.0, right=0.0, dtype=torch.float32)
def test_softplus_ibp_around_its_threshold(beta, threshold, left, right, dtype):
    """torch's softplus drops from the curve to x at beta*x = threshold (it is not monotone
    there): IBP and the lines bound it on intervals that straddle that point."""
    op, attrs = get_op("softplus"), {"beta": beta, "threshold": threshold}
    kink = threshold / beta
    lower = torch.tensor([kink - left, kink - left, kink], dtype=dtype)
    upper = torch.tensor([kink + right, kink, kink + right], dtype=dtype)
    xs = dense(lower, upper, m=201)
    fx = op.forward(xs, **attrs)
    box = op.ibp(Interval(lower, upper), **attrs)
    assert (box.lower <= fx).all() and (fx <= box.upper).all()
    # and the exact curve, which an ONNX Softplus (no threshold) means
    bx = beta * xs.double()
    exact = (torch.relu(bx) + torch.log1p(torch.exp(-bx.abs()))) / beta
    assert (exact <= box.upper.double()).all()
    ls, lb, us, ub = lines_of(op, lower, upper, attrs)
    x64, f64 = xs.double(), fx.double()
    tol = 1e-12 + 4 * torch.finfo(dtype).eps * (1 + f64.abs())
    assert (ls.double() * x64 + lb.double() <= f64 + tol).all()
    assert (us.double() * x64 + ub.double() >= f64 - tol).all()


@pytest.mark.parametrize("act, words", [
    (nn.ELU(alpha=-0.5), "elu/celu/selu with alpha=-0.5"),
    (nn.CELU(alpha=-1.0), "elu/celu/selu with alpha=-1.0"),
    (nn.Softplus(beta=-1.0), "softplus with beta=-1.0")])
def test_non_monotone_elu_and_concave_softplus_are_refused_at_compile_time(act, words):
    """ELU with alpha < 0 decreases below 0: its IBP rule (f(l), f(u)) was unsound. Such
    attributes are refused when the model is lowered, naming the node, and the rules refuse
    them too."""
    model = nn.Sequential(nn.Linear(3, 4), act, nn.Linear(4, 2))
    with pytest.raises(UnsupportedOperationError, match=words) as info:
        lirpac.compile(model, torch.randn(2, 3))
    assert "at node %" in str(info.value)
    name = "softplus" if isinstance(act, nn.Softplus) else "elu"
    attrs = {"beta": -1.0} if name == "softplus" else {"alpha": -0.5}
    with pytest.raises(UnsupportedOperationError, match=name):
        get_op(name).ibp(Interval(-torch.ones(2), torch.ones(2)), **attrs)


def test_onnx_elu_with_negative_alpha_is_refused():
    from onnx import TensorProto, helper
    node = helper.make_node("Elu", ["X"], ["Y"], alpha=-0.5, name="bad_elu")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    with pytest.raises(UnsupportedOperationError, match="bad_elu.*alpha=-0.5"):
        lirpac.compile(model)


def test_sqrt_of_softplus_reads_nonnegative_bounds():
    """softplus >= 0 (threshold >= 0): its IBP lower bound stays >= 0 even when the interval
    reaches past the threshold, so sqrt after it has a relaxation (fuzzer seed 6209)."""
    torch.manual_seed(0)
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc2(torch.sqrt(F.softplus(self.fc1(x))))

    model = Model().double()
    x = torch.randn(2, 3, dtype=torch.float64) * 10
    net = lirpac.compile(model, x)
    points = sample_lp_ball(x, 30.0, math.inf, 64, generator=torch.Generator().manual_seed(0))
    for method in ("ibp", "crown", "forward", "crown-ibp"):
        lower, upper = net.bounds(x, lirpac.LpBall(eps=30.0), method=method)
        assert_contains(model, points, lower, upper, what=method)
