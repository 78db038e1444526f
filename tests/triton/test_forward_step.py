"""The fused forward-mode step against ir/ops/common.py ``relaxed_forward``: values and
gradients, shared and distinct weights, slopes of both signs and exactly 0."""
import pytest
import torch

pytest.importorskip("triton")

from lirpac.codegen.triton.forward_step import fused_relaxed_forward  # noqa: E402
from lirpac.ir.opdef import Linear  # noqa: E402
from lirpac.ir.ops.common import relaxed_forward  # noqa: E402


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("node", [(5,), (2, 2, 3)])
def test_values_and_gradients_match_torch(shared, node):
    g = torch.Generator().manual_seed(len(node))
    d = dict(generator=g, dtype=torch.float64)
    lw = torch.randn(2, 4, *node, **d).requires_grad_()
    uw = lw if shared else torch.randn(2, 4, *node, **d).requires_grad_()
    lb, ub = torch.randn(2, *node, **d), torch.randn(2, *node, **d)
    slopes = [torch.randn(2, *node, **d) for _ in range(2)]
    for s in slopes:
        s.view(-1)[0] = 0.0
        s.requires_grad_()
    relax = (slopes[0], torch.randn(2, *node, **d), slopes[1], torch.randn(2, *node, **d))
    weights = [torch.randn(2, 4, *node, **d), torch.randn(2, *node, **d)] * 2
    leaves = [lw, *([] if shared else [uw]), *slopes]
    results = []
    for step in (fused_relaxed_forward, relaxed_forward):
        out = step(Linear(lw, lb, uw, ub), relax)
        total = sum((w * o).sum() for w, o in zip(weights, out[:4]))
        results.append([t.detach() for t in out[:4]] + list(torch.autograd.grad(total, leaves)))
    for f, r in zip(*results):
        torch.testing.assert_close(f, r, atol=1e-12, rtol=1e-12)
