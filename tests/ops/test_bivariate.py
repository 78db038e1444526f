"""Products of perturbed tensors (x * y, x / y, x @ y, attention) and max/min of two: every
method is sound on small nets; McCormick's planes touch x * y where the theory says; a
product with a constant is the linear map it is."""
import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

import lirpac
from bound_checks import METHODS, NORMS, check_sound
from lirpac.errors import UnsupportedOperationError
from lirpac.ir.opdef import Interval, get_op


class Products(nn.Module):
    """x * y, x ** 2, x * x and a division by a positive perturbed tensor."""
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 8)

    def forward(self, x):
        h = self.fc(x)
        a, b = h[:, :4], h[:, 4:]
        return torch.cat([a * b, a ** 2, a * a, a / (torch.sigmoid(b) + 0.5)], 1)


class Attention(nn.Module):
    """One self-attention head: q k^T (two perturbed matrices), softmax, then @ v."""
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(4, 12)

    def forward(self, x):
        h = self.qkv(x)
        q, k, v = h[..., :4], h[..., 4:8], h[..., 8:]
        scores = torch.matmul(q, k.transpose(-1, -2)) / 2
        return torch.bmm(torch.softmax(scores, -1), v).flatten(1)


class MaxMin(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 8)

    def forward(self, x):
        h = self.fc(x)
        a, b = h[:, :4], h[:, 4:]
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b),
                          torch.maximum(a, torch.full_like(a, 0.1))], 1)


SHAPES = {Products: (4,), Attention: (3, 4), MaxMin: (4,)}


@settings(max_examples=25, deadline=None)
@given(cls=st.sampled_from(sorted(SHAPES, key=lambda c: c.__name__)),
       method=st.sampled_from(METHODS), norm=st.sampled_from(NORMS),
       seed=st.integers(0, 10_000), eps=st.floats(0.0, 0.3))
def test_sound(cls, method, norm, seed, eps):
    check_sound(cls, SHAPES[cls], method, norm, seed, eps)


def _intervals(seed, shape=(2, 5)):
    g = torch.Generator().manual_seed(seed)
    lo = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    return lo, lo + torch.rand(shape, generator=g, dtype=torch.float64) * 3


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_mccormick_planes_bound_and_touch(seed):
    """Lower plane <= x y <= upper plane on the box. Every blend of McCormick's two planes of
    a side is exact at two corners: the lower at (lx, uy) and (ux, ly), the upper at (lx, ly)
    and (ux, uy). Where both operands straddle 0 the planes are the means, which miss x y by at
    most half of (ux - lx)(uy - ly); elsewhere CROWN's, exact on the edges x = lx, y = ly
    (lower) and x = lx, y = uy (upper)."""
    (lx, ux), (ly, uy) = _intervals(seed), _intervals(seed + 1)
    op = get_op("mul_bilinear")
    eye = torch.eye(5, dtype=torch.float64).expand(2, 5, 5)
    coeffs, lbias, ubias = op.backward(eye, eye, Interval(lx, ux), Interval(ly, uy),
                                       in_shapes=[(5,), (5,)])
    (ax_l, ax_u), (ay_l, ay_u) = coeffs

    def plane(ax, ay, bias, x, y):
        return torch.einsum("bsi,bi->bs", ax, x) + torch.einsum("bsi,bi->bs", ay, y) + bias

    def close(a, b, where):
        return torch.allclose(a[where], b[where])

    both = (lx < 0) & (ux > 0) & (ly < 0) & (uy > 0)
    t = torch.rand(4, 2, 5, dtype=torch.float64)
    half = (ux - lx) * (uy - ly) / 2 + 1e-12
    for x, y in [(lx + t[0] * (ux - lx), ly + t[1] * (uy - ly)), (lx, ly + t[2] * (uy - ly)),
                 (lx + t[3] * (ux - lx), ly), (lx + t[3] * (ux - lx), uy), (lx, ly), (ux, uy)]:
        low, up = plane(ax_l, ay_l, lbias, x, y), plane(ax_u, ay_u, ubias, x, y)
        assert torch.all(low <= x * y + 1e-12) and torch.all(x * y <= up + 1e-12)
        assert torch.all((x * y - low <= half)[both]) and torch.all((up - x * y <= half)[both])
    for x, y in [(lx, uy), (ux, ly)]:
        assert torch.allclose(plane(ax_l, ay_l, lbias, x, y), x * y)
    for x, y in [(lx, ly), (ux, uy)]:
        assert torch.allclose(plane(ax_u, ay_u, ubias, x, y), x * y)
    y = ly + t[2] * (uy - ly)
    assert close(plane(ax_l, ay_l, lbias, lx, y), lx * y, ~both)
    x = lx + t[3] * (ux - lx)
    assert close(plane(ax_u, ay_u, ubias, x, uy), x * uy, ~both)
    ibp = op.ibp(Interval(lx, ux), Interval(ly, uy))
    corners = torch.stack([lx * ly, lx * uy, ux * ly, ux * uy])
    assert torch.equal(ibp.lower, corners.min(0).values) and torch.equal(ibp.upper, corners.max(0).values)


@pytest.mark.parametrize("shapes", [((2, 3, 4), (2, 4, 5)), ((2, 2, 3, 4), (2, 1, 4, 5))])
def test_matmul_of_two_perturbed_is_mccormick_on_every_term(shapes):
    """matmul_bilinear's coefficients (matmuls of the bounds) are those of McCormick's planes
    on the materialised terms a[m, k] b[k, n] summed over k; an unbounded operand takes the
    per-term rule; IBP and forward mode bound sampled products."""
    from lirpac.ir.ops.bivariate import _matmul_backward_per_term
    g = torch.Generator().manual_seed(0)

    def interval(shape):
        centre = torch.randn(shape, generator=g, dtype=torch.float64)
        radius = torch.rand(shape, generator=g, dtype=torch.float64)
        return Interval(centre - radius, centre + radius)
    a, b = interval(shapes[0]), interval(shapes[1])
    op = get_op("matmul_bilinear")
    out = torch.matmul(a.lower, b.lower).shape
    lA = torch.randn(out[0], 6, *out[1:], generator=g, dtype=torch.float64)
    uA = torch.randn(lA.shape, generator=g, dtype=torch.float64)
    in_shapes = [s[1:] for s in shapes]
    fast = op.backward(lA, uA, a, b, in_shapes=in_shapes)
    slow = _matmul_backward_per_term(lA, uA, a, b, in_shapes=in_shapes)
    for mine, theirs in zip([*fast[0][0], *fast[0][1], *fast[1:]], [*slow[0][0], *slow[0][1], *slow[1:]]):
        torch.testing.assert_close(mine, theirs)
    t = [torch.rand((64, *s), generator=g, dtype=torch.float64) for s in shapes]
    xs, ys = a.lower + t[0] * (a.upper - a.lower), b.lower + t[1] * (b.upper - b.lower)
    products = torch.matmul(xs, ys)
    box = op.ibp(a, b)
    assert torch.all(box.lower <= products + 1e-12) and torch.all(products <= box.upper + 1e-12)
    low = torch.einsum("bs...,nb...->nbs", lA, products) - torch.einsum("bs...,nb...->nbs", fast[0][0][0], xs)
    low = (low - torch.einsum("bs...,nb...->nbs", fast[0][1][0], ys)).flatten(1)
    up = torch.einsum("bs...,nb...->nbs", uA, products) - torch.einsum("bs...,nb...->nbs", fast[0][0][1], xs)
    up = (up - torch.einsum("bs...,nb...->nbs", fast[0][1][1], ys)).flatten(1)
    assert torch.all(low >= fast[1].flatten() - 1e-9) and torch.all(up <= fast[2].flatten() + 1e-9)
    unbounded = Interval(a.lower.clone(), a.upper.clone())
    unbounded.upper[0, 0, 0] = math.inf
    coeffs, lbias, ubias = op.backward(lA, uA, unbounded, b, in_shapes=in_shapes)
    assert not torch.isnan(lbias).any() and not torch.isnan(coeffs[0][0]).any()


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_alpha_planes_bound_for_every_alpha(seed):
    """alpha-CROWN's planes (any alpha in [0, 1], corners included, per row and element of
    x, broadcast over y's dims) lie below / above x y at points of the box, corners included;
    at alpha's start they are CROWN's."""
    (lx, ux), (ly, uy) = _intervals(seed, (2, 3, 1)), _intervals(seed + 1, (2, 1, 4))
    g = torch.Generator().manual_seed(seed)
    op = get_op("mul_bilinear")
    rows = torch.eye(12, dtype=torch.float64).reshape(1, 12, 3, 4).expand(2, 12, 3, 4)
    shapes = [(3, 1), (1, 4)]
    alpha = torch.rand(2, 12, 3, 1, generator=g, dtype=torch.float64)
    alpha[:, :4], alpha[:, 4:8] = 0.0, 1.0
    box = Interval(lx, ux), Interval(ly, uy)
    coeffs, lbias, ubias = op.backward_alpha(rows, rows, *box, alpha, 1 - alpha, in_shapes=shapes)
    (ax_l, ax_u), (ay_l, ay_u) = coeffs
    u, v = torch.rand(2, 3, 1, generator=g, dtype=torch.float64), torch.rand(2, 1, 4, generator=g, dtype=torch.float64)
    points = [(a, b) for a in (lx, ux) for b in (ly, uy)] + [(lx + u * (ux - lx), ly + v * (uy - ly))]
    for x, y in points:      # the gap is bilinear in (x, y): the corners are its extremes
        prod = (x * y).reshape(2, 12)
        low = torch.einsum("bsij,bij->bs", ax_l, x) + torch.einsum("bsij,bij->bs", ay_l, y) + lbias
        up = torch.einsum("bsij,bij->bs", ax_u, x) + torch.einsum("bsij,bij->bs", ay_u, y) + ubias
        assert torch.all(low <= prod + 1e-9) and torch.all(prod <= up + 1e-9)
    start = op.alpha_init(lx, ux)
    crown = op.backward(rows, rows, *box, in_shapes=shapes)
    ours = op.backward_alpha(rows, rows, *box, start.unsqueeze(1).expand(2, 12, 3, 1),
                             start.unsqueeze(1).expand(2, 12, 3, 1), in_shapes=shapes)
    for a, b in zip(crown[0][0] + crown[0][1] + (crown[1], crown[2]),
                    ours[0][0] + ours[0][1] + (ours[1], ours[2])):
        torch.testing.assert_close(a, b)


class ScaledByConstant(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.register_buffer("scale", torch.tensor([2.0, -1.0, 0.5, -3.0]))

    def forward(self, x):
        return torch.relu(self.fc(x)) * self.scale


@pytest.mark.parametrize("method", METHODS)
def test_product_with_constant_is_linear(method):
    """relu(W x) * c (the arith 'mul' op, not McCormick) equals relu(W x) @ diag(c)."""
    model = ScaledByConstant().eval()
    diag = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4, bias=False)).eval()
    with torch.no_grad():
        diag[0].load_state_dict(model.fc.state_dict())
        diag[2].weight.copy_(torch.diag(model.scale))
    x = torch.randn(2, 3)
    ball = lirpac.LpBall(eps=0.2)
    got = lirpac.compile(model, x).bounds(x, ball, method=method)
    want = lirpac.compile(diag, x).bounds(x, ball, method=method)
    assert "mul_bilinear" not in lirpac.compile(model, x).dump()
    assert torch.allclose(got[0], want[0], atol=1e-5) and torch.allclose(got[1], want[1], atol=1e-5)


def test_square_of_one_tensor_lowers_to_pow():
    net = lirpac.compile(Products().eval(), torch.zeros(2, 4))
    assert "pow(" in net.dump() and "mul_bilinear(" in net.dump()


class DivideByAnything(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 4)

    def forward(self, x):
        h = self.fc(x)
        return h[:, :2] / h[:, 2:]


def test_division_by_interval_containing_zero_is_a_clear_error():
    model = DivideByAnything().eval()
    with torch.no_grad():
        model.fc.bias.zero_()
    x = torch.zeros(2, 2)
    net = lirpac.compile(model, x)
    with pytest.raises(UnsupportedOperationError, match="reciprocal"):
        net.bounds(x, lirpac.LpBall(eps=0.1), method="crown")
    lower, upper = net.bounds(x, lirpac.LpBall(eps=0.1), method="ibp")   # unbounded, not NaN
    assert torch.all(lower == -math.inf) and torch.all(upper == math.inf)


def test_max_min_with_separated_operands_are_exact():
    """When a > b on the whole ball, max(a, b) = a and min(a, b) = b exactly (ReLU stable)."""
    class Sep(nn.Module):
        def forward(self, x):
            return torch.cat([torch.maximum(x, x - 5), torch.minimum(x, x - 5)], 1)
    x = torch.randn(2, 3)
    lower, upper = lirpac.compile(Sep().eval(), x).bounds(x, lirpac.LpBall(eps=0.5), method="crown")
    want = torch.cat([x, x - 5], 1)
    assert torch.allclose(lower, want - 0.5, atol=1e-5) and torch.allclose(upper, want + 0.5, atol=1e-5)
