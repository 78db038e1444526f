"""Infinite intermediate bounds (1/y across 0, an overflowing exp) give infinite or finite
bounds, never NaN: affine IBP and forward mode follow 0 * inf = 0, McCormick's planes and
relaxations fall back to constant lines only where a bound is infinite, and a linear bound
whose coefficients overflowed concretizes to -inf / +inf. Each case is one the fuzzer of
tests/methods/test_no_nan.py found NaN (or a NaN turned into 0, an unsound bound) on."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from lirpac.ir.opdef import Interval, Linear, get_op
from lirpac.ir.ops.common import map_unbounded, overflow_unbounded, relaxed_forward, times

INF = math.inf


def exact_affine_interval(weight, lower, upper):
    """sum_j min / max of (W_ij l_j, W_ij u_j), with 0 * inf = 0, term by term in float64."""
    w = weight.double().unsqueeze(0)                        # (1, out, in)
    lo, hi = lower.double().unsqueeze(1), upper.double().unsqueeze(1)
    a, b = times(w, lo), times(w, hi)
    return torch.minimum(a, b).sum(-1), torch.maximum(a, b).sum(-1)


ends = st.sampled_from([-INF, -3.0, -0.5, 0.0, 1.0, 2.5, INF])
# an interval of real numbers: never [inf, inf] or [-inf, -inf]
intervals = st.tuples(ends, ends).filter(lambda p: not (p[0] == p[1] and math.isinf(p[0])))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 1000), picks=st.lists(intervals, min_size=4, max_size=4))
def test_linear_ibp_of_unbounded_box_is_exact(seed, picks):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(3, 4, generator=g, dtype=torch.float64)
    weight[0, 1] = 0.0                                      # a zero weight meets every end
    bias = torch.randn(3, generator=g, dtype=torch.float64)
    lower = torch.tensor([[min(a, b) for a, b in picks]], dtype=torch.float64)
    upper = torch.tensor([[max(a, b) for a, b in picks]], dtype=torch.float64)
    box = get_op("linear").ibp(Interval(lower, upper), weight, bias)
    lo, hi = exact_affine_interval(weight, lower, upper)
    assert not torch.isnan(box.lower).any() and not torch.isnan(box.upper).any()
    torch.testing.assert_close(box.lower, lo + bias)
    torch.testing.assert_close(box.upper, hi + bias)


def test_center_ibp_of_unbounded_box_is_exact():
    """x - mean(x): the matrix I - J/n, every entry nonzero, so one infinite end reaches every
    output, on the side its sign gives."""
    lower = torch.tensor([[-INF, 0.0, 1.0], [0.0, 1.0, 2.0]])
    upper = torch.tensor([[1.0, 2.0, 3.0], [1.0, INF, 2.0]])
    box = get_op("center").ibp(Interval(lower, upper), dims=(1,))
    m = torch.eye(3) - 1 / 3
    lo, hi = exact_affine_interval(m, lower, upper)
    torch.testing.assert_close(box.lower, lo.float())
    torch.testing.assert_close(box.upper, hi.float())
    assert box.lower[0, 0] == -INF and torch.isfinite(box.lower[0, 1:]).all()
    assert torch.equal(box.upper[0, 1:], torch.full((2,), INF)) and torch.isfinite(box.upper[0, 0])
    assert box.upper[1, 1] == INF and torch.equal(box.lower[1, [0, 2]], torch.full((2,), -INF))


def test_map_unbounded_zero_weight_ignores_infinity():
    v = torch.tensor([[INF, 1.0, -INF]])
    w = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    out = map_unbounded(lambda t: t @ w.T, v, 1)
    assert torch.equal(out, torch.tensor([[2.0, INF, -INF]]))


def test_bilinear_ibp_zero_times_infinity_is_zero_and_nan_stays_nan():
    """The old rule replaced every NaN corner by 0: a NaN operand bound became a finite,
    unsound interval."""
    mul = get_op("mul_bilinear").ibp
    box = mul(Interval(torch.tensor([0.0]), torch.tensor([1.0])),
              Interval(torch.tensor([1.0]), torch.tensor([INF])))
    assert box.lower.item() == 0.0 and box.upper.item() == INF
    nan = torch.tensor([math.nan])
    box = mul(Interval(torch.tensor([-1.0]), torch.tensor([1.0])), Interval(nan, nan))
    assert torch.isnan(box.lower).all() and torch.isnan(box.upper).all()


@pytest.mark.parametrize("mode", ["backward", "forward_mode"])
def test_mccormick_falls_back_to_constants_only_where_unbounded(mode):
    """Neuron 0 has finite operand bounds (McCormick's planes), neuron 1 an infinite one (the
    constant planes at the product's interval bounds, the largest float for an unbounded
    side): no NaN, and neuron 0 keeps its planes."""
    op = get_op("mul_bilinear")
    x = Interval(torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 2.0]]))
    y = Interval(torch.tensor([[-1.0, -1.0]]), torch.tensor([[3.0, INF]]))
    if mode == "backward":
        eye = torch.eye(2).unsqueeze(0)
        coeffs, lbias, ubias = op.backward(eye, eye, x, y, in_shapes=((2,), (2,)))
        (lx, ux), (ly, uy) = coeffs
        for t in (lx, ux, ly, uy, lbias, ubias):
            assert not torch.isnan(t).any()
        assert torch.equal(lx[0, 0], torch.tensor([-1.0, 0.0])) and ly[0, 0, 0] == 1.0
        assert lx[0, 1].abs().sum() == 0 and ly[0, 1].abs().sum() == 0
        assert lbias[0, 1] == -2.0 and ubias[0, 1] == torch.finfo(torch.float32).max
    else:
        def ident(box):
            eye = torch.eye(2).unsqueeze(0)
            return Linear(eye, torch.zeros(1, 2), eye, torch.zeros(1, 2), box)
        out = op.forward_mode(ident(x), ident(y))
        for t in out[:4]:
            assert not torch.isnan(t).any()
        assert out.ub[0, 1] == torch.finfo(torch.float32).max and out.uw[0, :, 1].abs().sum() == 0


def test_relaxed_forward_zero_slope_meets_infinite_bias():
    """Forward mode through a constant (slope-0) line of an input whose upper function is +inf
    (LayerNorm -> Linear -> Softmax at eps 0.3: the reciprocal after the sum of exps)."""
    x = Linear(torch.ones(1, 2, 3), torch.zeros(1, 3), torch.zeros(1, 2, 3),
               torch.tensor([[1.0, INF, INF]]))
    relax = (torch.tensor([[1.0, 0.0, 0.5]]), torch.zeros(1, 3),
             torch.tensor([[1.0, 0.0, -0.5]]), torch.ones(1, 3))
    out = relaxed_forward(x, relax)
    assert torch.equal(out.ub, torch.tensor([[2.0, 1.0, 1.0]]))
    assert torch.equal(out.lb, torch.tensor([[0.0, 0.0, 0.0]]))
    # the lower slope 0.5 > 0 meets the finite lower function; upper slope -0.5 the lower one
    assert not torch.isnan(out.lw).any() and not torch.isnan(out.uw).any()


def test_overflowed_rows_are_unbounded_and_others_untouched():
    lower = torch.tensor([1.0, math.nan, INF, -INF])
    upper = torch.tensor([1.0, math.nan, -INF, INF])
    assert torch.equal(overflow_unbounded(lower, False), torch.tensor([1.0, -INF, -INF, -INF]))
    assert torch.equal(overflow_unbounded(upper, True), torch.tensor([1.0, INF, INF, INF]))


def test_spec_of_unbounded_output():
    from lirpac.codegen.runtime import ibp_spec, ibp_spec_linear
    C = torch.tensor([[[1.0, 0.0], [0.0, -1.0]]])
    out = Interval(torch.tensor([[0.0, -INF]]), torch.tensor([[1.0, INF]]))
    box = ibp_spec(C, out)
    assert torch.equal(box.lower, torch.tensor([[0.0, -INF]]))
    assert torch.equal(box.upper, torch.tensor([[1.0, INF]]))
    weight, bias = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([1.0, 1.0])
    box = ibp_spec_linear(C, out, weight, bias)
    assert torch.equal(box.lower, torch.tensor([[1.0, -INF]]))
    assert torch.equal(box.upper, torch.tensor([[2.0, INF]]))
