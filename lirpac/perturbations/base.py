"""The perturbation-set protocol.

A ``Perturbation`` is what the user gives; ``bind(x)`` checks it against the input and returns
an ``InputSet``, the run-time form that generated code talks to through these operations only:

- ``lower``, ``upper``, ``batch``: the box that contains the set (IBP's input, and the bounds
  of the input node);
- ``concretize(coeff, bias, upper, consume)`` and ``concretize_pair(...)``: the max or min of
  a linear function over the set (one side, or both at once);
- ``concretize_linear(lin)``: the same for forward mode's linear functions;
- ``first_affine(op, select, *args, **attrs)``: an exact bound of one affine op of the input
  (reached through coordinate selections ``select``), or None when the set has none better
  than IBP over its box;
- ``product_anchor(left, right, ...)``: for a product ``left(x) @ right(x)``, the factors at
  the set's centre and a range of the product of their deviations from it, or None (every set
  but word substitution's);
- ``is_box`` and ``box_centre_radius()``: the set is its box, whose window (patches) forms can
  be concretized without a dense matrix.

``InputSet`` itself is the box: every other set subclasses it and overrides what its shape
makes tighter.
"""
from __future__ import annotations

import torch

from lirpac.ir.opdef import Interval
from lirpac.ir.ops.common import overflow_unbounded
from lirpac.ir.scalar import centre_radius


class Perturbation:
    """Base class: a set of inputs around x."""

    def bind(self, x: torch.Tensor) -> "InputSet":
        raise NotImplementedError


def dot_rows(a: torch.Tensor, column: torch.Tensor, scale: float = 1.0, plus=None) -> torch.Tensor:
    """(B, S): each row of a (B, S, n) against the column (B, n, 1), times ``scale``, plus
    ``plus`` (B, S, 1) when given; one bmm (a batch-1 ``a`` broadcasts through matmul)."""
    same_batch = a.shape[0] == column.shape[0]
    if plus is not None and same_batch:
        return torch.baddbmm(plus, a, column, alpha=scale).squeeze(-1)
    product = torch.bmm(a, column) if same_batch else a.matmul(column)
    if scale != 1.0:
        product = scale * product
    return (product if plus is None else plus + product).squeeze(-1)


class _BoxExtreme(torch.autograd.Function):
    """min (sign -1) or max (sign 1) of each row of a (B, S, n) against x over the box
    mid +- rad ((B, n, 1) each), computed as the untracked form does (centre and |a| terms:
    the same rounding). Its gradient in a is mid + sign sgn(a) rad (a subgradient where
    a_j = 0, as autograd's for |a|): three products in the backward pass instead of the
    five of autograd's (alpha-CROWN's steps differentiate it every time)."""

    @staticmethod
    def forward(ctx, a, mid, rad, sign):
        ctx.save_for_backward(a, mid, rad)
        ctx.sign = sign
        return dot_rows(a.abs(), rad, sign, plus=dot_rows(a, mid).unsqueeze(-1))

    @staticmethod
    def backward(ctx, grad):
        a, mid, rad = ctx.saved_tensors
        direction = torch.addcmul(mid.transpose(1, 2), a.sign(), rad.transpose(1, 2), value=ctx.sign)
        return grad.unsqueeze(-1) * direction, None, None, None


class InputSet:
    """The run-time form of a perturbation; this base class is the box [lower, upper]."""

    is_box = True      # the set is exactly its containing box

    def __init__(self, lower: torch.Tensor, upper: torch.Tensor):
        self.lower, self.upper = lower, upper
        self.batch = lower.shape[0]
        self._centre_radius = None

    # -- the containing box -----------------------------------------------------------------
    def box_centre_radius(self):
        """(B, n, 1) centre and radius of the containing box, as bmm operands (computed once
        per set: every backward pass of a call concretizes against them)."""
        if self._centre_radius is None:
            self._centre_radius = tuple(t.reshape(self.batch, -1, 1)
                                        for t in centre_radius(self.lower, self.upper))
        return self._centre_radius

    def _absolute(self, a: torch.Tensor, consume: bool) -> torch.Tensor:
        """|a|, in a's own memory when the caller gives it up (``consume``: the code generator
        proved that no other tensor shares it) and autograd does not need it: on the benchmark
        MLP the 254x784 products' copies were 3% of CROWN's time."""
        return a.abs_() if consume and not a.requires_grad else a.abs()

    def box_extreme(self, a: torch.Tensor, upper: bool, consume: bool = False) -> torch.Tensor:
        """(B, S): max (upper) or min of the rows of a (B, S, n) against x over the box."""
        sign = 1.0 if upper else -1.0
        mid, rad = self.box_centre_radius()
        if a.requires_grad and a.shape[0] == self.batch and not (mid.requires_grad or rad.requires_grad):
            return _BoxExtreme.apply(a, mid, rad, sign)
        centre = dot_rows(a, mid).unsqueeze(-1)
        return dot_rows(self._absolute(a, consume), rad, sign, plus=centre)

    # -- the protocol -------------------------------------------------------------------------
    def concretize(self, coeff: torch.Tensor, bias, upper: bool, consume: bool = False) -> torch.Tensor:
        """max (upper) or min (lower) of coeff . x + bias over the set; coeff (B, S, *in).
        ``consume``: coeff shares memory with no other tensor and may be overwritten."""
        return overflow_unbounded(self.box_extreme(coeff.flatten(2), upper, consume) + bias, upper)

    def concretize_pair(self, lower_coeff, lower_bias, upper_coeff, upper_bias, consume: bool = False):
        """Both sides at once; when the two coefficient tensors are the same object (an
        identity start, before any relaxation), the box's centre and radius terms are shared.
        ``consume``: as in ``concretize``, for both (distinct tensors of distinct memory, or one
        tensor)."""
        if lower_coeff is not upper_coeff or not self.is_box:
            return (self.concretize(lower_coeff, lower_bias, upper=False, consume=consume),
                    self.concretize(upper_coeff, upper_bias, upper=True, consume=consume))
        a = lower_coeff.flatten(2)
        mid, rad = self.box_centre_radius()
        centre = dot_rows(a, mid)
        radius = dot_rows(self._absolute(a, consume), rad)
        return (overflow_unbounded(centre - radius + lower_bias, False),
                overflow_unbounded(centre + radius + upper_bias, True))

    def concretize_linear(self, lin) -> tuple[torch.Tensor, torch.Tensor]:
        """Bounds of a node from its forward-mode linear functions (lw: (B, N, *shape))."""
        shape = lin.lb.shape
        lw = lin.lw.flatten(2).transpose(1, 2)
        uw = lin.uw.flatten(2).transpose(1, 2)
        lower = self.concretize(lw, lin.lb.reshape(shape[0], -1), upper=False).reshape(shape)
        upper = self.concretize(uw, lin.ub.reshape(shape[0], -1), upper=True).reshape(shape)
        return lower, upper

    def first_affine(self, op: str, select, *args, **attrs):
        """An exact Interval of the affine op ``op`` (linear, conv: its rule's arguments
        ``args``, ``attrs``) applied to ``select(x)`` over the set (``select``: coordinate
        selections, or None), or None where IBP over the box is already exact (here). Other
        sets get ``linear_by_concretizing`` unless they know better."""
        return None if self.is_box else self.linear_by_concretizing(op, select, *args)

    def product_anchor(self, left, right):
        """For ``left(x) @ right(x)``, two affine maps of the input (callables on a batch of
        points): a ``perturbations.anchor.ProductAnchor`` (the factors at a centre c and what
        bounds (left(x) - left(c)) @ (right(x) - right(c)) over the set), or None where the set
        knows nothing tighter than its box (McCormick's planes are then the tightest)."""
        return None

    def linear_by_concretizing(self, op: str, select, *args):
        """A linear layer on a flat selection of the input, bounded exactly by concretizing its
        rows: each row's weights are placed on the input elements the selection reads (found by
        selecting the elements' own indices; selections read distinct elements)."""
        if op != "linear":
            return None
        weight, bias = args[0], (args[1] if len(args) > 1 else None)
        size = self.lower[0].numel()
        if size > 1 << 24:        # indices beyond 2^24 are not exact in float32
            return None
        index = torch.arange(size, dtype=self.lower.dtype, device=self.lower.device)
        index = index.reshape(1, *self.lower.shape[1:])
        picked = index if select is None else select(index)
        if picked.dim() != 2 or picked.shape[1] != weight.shape[1]:
            return None          # (a linear layer over each row of a matrix: not one row each)
        rows = weight.new_zeros(weight.shape[0], size).index_copy_(1, picked[0].long(), weight)
        rows = rows.unsqueeze(0)
        offset = 0 if bias is None else bias
        return Interval(self.concretize(rows, offset, upper=False), self.concretize(rows, offset, upper=True))
