"""The fused relaxed backward step against the torch path (ir/ops/common.py): values and
gradients, every side layout, lines given as 0, infinite line ends (0 * inf = 0), wide rows."""
import math

import pytest
import torch

pytest.importorskip("triton")

from lirpac.codegen.triton.relaxed_step import kink_backward_alpha, relaxed  # noqa: E402
from lirpac.ir.opdef import get_op  # noqa: E402
from lirpac.ir.ops.activations import relu_relax  # noqa: E402
from lirpac.ir.ops.common import prepare_lines, relaxed_backward_lines  # noqa: E402

SIDES = ("shared", "distinct", "lower", "upper")


def _coeffs(side, shape, g, dtype=torch.float64):
    a = torch.randn(*shape, generator=g, dtype=dtype)
    a[..., 0] = 0.0     # exact zeros: the split's tie and 0 * inf
    b = torch.randn(*shape, generator=g, dtype=dtype)
    return {"shared": (a, a), "distinct": (a, b), "lower": (a, None), "upper": (None, b)}[side]


def _lines(node, g, dtype=torch.float64, infinite=False, zeros=()):
    lines = [torch.randn(*node, generator=g, dtype=dtype) for _ in range(4)]
    if infinite:
        lines[1].view(-1)[:2] = -math.inf   # lower line unbounded below at two neurons
        lines[3].view(-1)[1:3] = math.inf
    for k in zeros:
        lines[k] = 0
    return lines


def _outputs(result):
    [(new_l, new_u)], lbias, ubias = result
    return [new_l, new_u, lbias, ubias]


def _assert_same(fused, reference, tol=1e-12):
    for f, r in zip(fused, reference):
        if r is None or isinstance(r, int):
            assert f is None or isinstance(f, int) and f == r or isinstance(f, torch.Tensor) and not f.count_nonzero()
            continue
        assert f.shape == r.shape
        torch.testing.assert_close(f, r, atol=tol, rtol=tol, equal_nan=True)


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("node,infinite,zeros", [((5,), False, ()), ((2, 3, 3), True, ()), ((7,), True, (1,)),
                                                 ((4,), False, (0, 3)), ((1100,), False, ())])
def test_values_match_torch(side, node, infinite, zeros):
    g = torch.Generator().manual_seed(len(node) + 7 * len(zeros))
    rows = 1 if node == (1100,) else 3
    lA, uA = _coeffs(side, (2, rows, *node), g)
    lines = prepare_lines(_lines((2, *node), g, infinite=infinite, zeros=zeros))
    _assert_same(_outputs(relaxed(lA, uA, lines)), _outputs(relaxed_backward_lines(lA, uA, lines)))


def test_relu_lines_float32():
    g = torch.Generator().manual_seed(0)
    lower = torch.randn(3, 6, generator=g)
    lines = prepare_lines(relu_relax(lower, lower + torch.rand(3, 6, generator=g) * 2))
    a = torch.randn(3, 4, 6, generator=g)
    _assert_same(_outputs(relaxed(a, a, lines)), _outputs(relaxed_backward_lines(a, a, lines)), tol=1e-6)


def _grads(step, lA, uA, lines, weights):
    """Gradients of a weighted sum of the step's outputs in the coefficients and lines."""
    leaves = [t for t in {id(t): t for t in (lA, uA, *lines) if isinstance(t, torch.Tensor)}.values()]
    outs = _outputs(step(lA, uA, lines))
    total = sum((w * o).sum() for w, o in zip(weights, outs) if isinstance(o, torch.Tensor))
    return torch.autograd.grad(total, leaves, allow_unused=True)


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("infinite", [False, True])
def test_gradients_match_torch(side, infinite):
    g = torch.Generator().manual_seed(3)
    lA, uA = _coeffs(side, (2, 3, 4), g)
    lA = None if lA is None else lA.requires_grad_()
    uA = lA if side == "shared" else None if uA is None else uA.requires_grad_()
    lines = [t.requires_grad_() for t in _lines((2, 4), g, infinite=infinite)]
    weights = [torch.randn(2, 3, 4, generator=g, dtype=torch.float64) for _ in range(2)] + \
              [torch.randn(2, 3, generator=g, dtype=torch.float64) for _ in range(2)]
    fused = _grads(lambda a, b, ls: relaxed(a, b, prepare_lines(ls)), lA, uA, lines, weights)
    reference = _grads(lambda a, b, ls: relaxed_backward_lines(a, b, prepare_lines(ls)), lA, uA, lines, weights)
    for f, r in zip(fused, reference):
        assert (f is None) == (r is None) or (f if r is None else r).count_nonzero() == 0
        if f is not None and r is not None:
            torch.testing.assert_close(f, r, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("op,attrs", [("relu", {}), ("leaky_relu", {"negative_slope": 0.2})])
@pytest.mark.parametrize("per_row", [True, False])
def test_kink_alpha_matches_torch(op, attrs, per_row):
    """alpha-CROWN's kink rule: values and the gradients in alpha and the coefficients."""
    g = torch.Generator().manual_seed(5)
    opdef = get_op(op)
    lower = torch.randn(2, 6, generator=g, dtype=torch.float64).requires_grad_()
    width = torch.rand(2, 6, generator=g, dtype=torch.float64).requires_grad_()
    lines = opdef.alpha_lines(lower, lower + 2 * width, **attrs)     # (bounds with a gradient)
    fused_rule = kink_backward_alpha(opdef.backward_alpha, opdef.backward_alpha.bottom_slope)
    a = torch.randn(2, 3, 6, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(2, 3, 6, generator=g, dtype=torch.float64).requires_grad_()
    shape = (2, 3 if per_row else 1, 6)
    alpha_l = torch.rand(*shape, generator=g, dtype=torch.float64).requires_grad_()
    alpha_u = torch.rand(*shape, generator=g, dtype=torch.float64).requires_grad_()
    weights = [torch.randn(2, 3, 6, generator=g, dtype=torch.float64) for _ in range(2)] + \
              [torch.randn(2, 3, generator=g, dtype=torch.float64) for _ in range(2)]
    results = []
    for rule in (fused_rule, opdef.backward_alpha):
        outs = _outputs(rule(a, b, lines, alpha_l, alpha_u, **attrs))
        total = sum((w * o).sum() for w, o in zip(weights, outs) if isinstance(o, torch.Tensor))
        results.append(([o.detach() if isinstance(o, torch.Tensor) else o for o in outs],
                         torch.autograd.grad(total, (a, b, alpha_l, alpha_u, lower, width), retain_graph=True)))
    _assert_same(results[0][0], results[1][0])
    for f, r in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(f, r, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("side", ["shared", "distinct"])
def test_lines_shared_by_the_batch(side):
    """Lines of batch 1 (one relaxation for every sample) against coefficients of batch 2."""
    g = torch.Generator().manual_seed(9)
    lA, uA = _coeffs(side, (2, 3, 6), g)
    lines = prepare_lines(_lines((1, 6), g, infinite=True))
    _assert_same(_outputs(relaxed(lA, uA, lines)), _outputs(relaxed_backward_lines(lA, uA, lines)))
