"""Fused concretization of linear bounds ``A x + b`` over an input set (lirpac/perturbation.py).

Over the box mid +- rad the extremes are ``A mid +- |A| rad``; over an Lp ball of centre x0
they are ``A x0 +- eps ||A||_q`` (dual norm, 1/p + 1/q = 1: q = 2 for the L2 ball, q = inf for
the L1 ball); a ball with a domain box keeps the tighter of the two. The torch path takes one
product per term and a separate |A| (a coefficient-sized copy); here one kernel reads each row
of A once and reduces every term the set needs. Rows' results combine as in
``InputSet.concretize`` (the same epilogue, on (B, S) numbers).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from lirpac.codegen.triton import tuning
from lirpac.ir.ops.common import overflow_unbounded
from lirpac.perturbations.base import InputSet
from lirpac.perturbations.lp import LpSet

_fused_classes: dict = {}


@triton.jit
def concretize_kernel(coeff, mid, rad, centre, partial,
                      total_rows, rows_per_batch, n, n_blocks, set_batch_stride,
                      BOX: tl.constexpr, BALL: tl.constexpr, DUAL_INF: tl.constexpr,
                      ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """A tile of ROWS rows of A by BLOCK columns (program (row tile, column block)): each
    row a's partial a . mid and |a| . rad (BOX), a . x0 and sum a^2 or max |a| (BALL;
    DUAL_INF: the max) into ``partial[row, block, 0:4]``.

    Memory traffic: reads A once and the set's vectors (input-sized, shared by a batch's
    rows: cache hits); writes 4 numbers per row and column block. The torch path reads A
    twice per term and writes |A| once.
    """
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    block = tl.program_id(1)
    cols = block * BLOCK + tl.arange(0, BLOCK)
    row_in = rows < total_rows
    mask = row_in[:, None] & (cols < n)[None, :]
    a = tl.load(coeff + rows[:, None] * n + cols[None, :], mask=mask, other=0.0)
    at = ((rows // rows_per_batch) * set_batch_stride)[:, None] + cols[None, :]
    out = partial + (rows * n_blocks + block) * 4
    if BOX:
        m = tl.load(mid + at, mask=mask, other=0.0)
        r = tl.load(rad + at, mask=mask, other=0.0)
        tl.store(out, tl.sum(a * m, axis=1), mask=row_in)
        tl.store(out + 1, tl.sum(tl.abs(a) * r, axis=1), mask=row_in)
    if BALL:
        x0 = tl.load(centre + at, mask=mask, other=0.0)
        tl.store(out + 2, tl.sum(a * x0, axis=1), mask=row_in)
        if DUAL_INF:
            tl.store(out + 3, tl.max(tl.abs(a), axis=1), mask=row_in)
        else:
            tl.store(out + 3, tl.sum(a * a, axis=1), mask=row_in)


def launch_concretize(a, mid, rad, centre, box: bool, ball: bool, dual_inf: bool):
    """Per-row terms of A (B, S, n) over the set: (A mid, |A| rad, A x0, ||A||_q), each (B, S),
    a term the set does not use None. mid, rad, centre: (B or 1, n) contiguous."""
    batch, rows, n = a.shape
    total = batch * rows
    # (the tile is autotuned, tuning.py: partial terms laid out for its narrowest candidate)
    n_blocks = tuning.max_blocks(total, n)
    partial = torch.zeros(total, n_blocks, 4, dtype=a.dtype, device=a.device)
    vector = next(t for t in (mid, centre) if t is not None)
    kernel = tuning.tuned(concretize_kernel, total, ["n", "BOX", "BALL", "DUAL_INF"], ["partial"])
    kernel[tuning.tuned_grid(total, n)](
        a, a if mid is None else mid, a if rad is None else rad, a if centre is None else centre, partial,
        total, rows, n, n_blocks, 0 if vector.shape[0] == 1 else n,
        BOX=box, BALL=ball, DUAL_INF=dual_inf)
    terms = [None] * 4
    if box:
        terms[0], terms[1] = (partial[:, :, k].sum(-1).reshape(batch, rows) for k in (0, 1))
    if ball:
        terms[2] = partial[:, :, 2].sum(-1).reshape(batch, rows)
        norm = partial[:, :, 3].amax(-1) if dual_inf else partial[:, :, 3].sum(-1).sqrt()
        terms[3] = norm.reshape(batch, rows)
    return terms


class RowTerms(torch.autograd.Function):
    """``launch_concretize`` with its gradient (torch ops). d/da: mid g0 + sgn(a) rad g1 + x0 g2
    + (a / ||a||_2, or sgn(a) at the largest |a|, shared among ties) g3 (0 where the norm is 0,
    as torch's); d/dmid, d/drad, d/dx0: the rows' sums of a g0, |a| g1, a g2."""

    @staticmethod
    def forward(ctx, a, mid, rad, centre, box: bool, ball: bool, dual_inf: bool):
        terms = launch_concretize(a, mid, rad, centre, box, ball, dual_inf)
        ctx.dual_inf = dual_inf
        ctx.save_for_backward(a, mid, rad, centre, terms[3])
        return tuple(terms)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_mid, g_rad, g_centre, g_norm):
        a, mid, rad, centre, norm = ctx.saved_tensors
        grad = torch.zeros_like(a)
        vectors = [None, None, None]
        for k, (g, v) in enumerate(((g_mid, mid), (g_rad, rad), (g_centre, centre))):
            if g is None or v is None:
                continue
            column = g.unsqueeze(-1)
            along = a.sign() if k == 1 else None
            grad = grad + column * (v.unsqueeze(1) if along is None else along * v.unsqueeze(1))
            if ctx.needs_input_grad[k + 1]:
                weight = a.abs() if k == 1 else a
                vectors[k] = (weight * column).sum(1).sum_to_size(v.shape)
        if g_norm is not None and norm is not None:
            n = norm.unsqueeze(-1)
            if ctx.dual_inf:
                top = (a.abs() == n) & (n > 0)
                share = a.sign() * top / top.sum(-1, keepdim=True).clamp_min(1)
            else:
                share = torch.where(n > 0, a / n, 0.0)
            grad = grad + g_norm.unsqueeze(-1) * share
        return grad, vectors[0], vectors[1], vectors[2], None, None, None


def _flat_vector(t, batch):
    return t.reshape(t.shape[0] if t.shape[0] in (1, batch) else batch, -1).contiguous()


class TritonInputSet(InputSet):
    """A box or Lp-ball set whose concretization runs the fused kernel (dense coefficients on
    a device Triton runs on; the set's own torch path otherwise): ``wrap`` makes one from a
    bound set (a subclass of the set's own class, so its other operations, such as
    ``first_affine``, stay the set's), and the generated code's ``inp.concretize``,
    ``finish_sides`` and ``concretize_pair`` use it. Other sets (L0, products, substitutions)
    are left as they are."""

    @classmethod
    def wrap(cls, inp: InputSet) -> InputSet:
        if isinstance(inp, cls):
            return inp
        kind = type(inp)
        if kind is not InputSet and not (kind is LpSet and inp.norm in (math.inf, 2.0, 1.0)):
            return inp
        fused = _fused_classes.get(kind)
        if fused is None:
            fused = _fused_classes[kind] = type(f"Triton{kind.__name__}", (cls, kind), {})
        out = fused.__new__(fused)
        out.__dict__.update(inp.__dict__)
        if kind is InputSet:     # (the box: its centre-radius terms only)
            out.use_box, out.norm = True, math.inf
        return out

    def _fusable(self, a: torch.Tensor) -> bool:
        from lirpac.codegen.triton import runs_on
        return (isinstance(a, torch.Tensor) and a.dim() == 3 and a.shape[0] == self.batch
                and a.dtype in (torch.float32, torch.float64) and a.dtype == self.lower.dtype
                and a.numel() > 0 and runs_on(a) and a.device == self.lower.device)

    def _terms(self, a: torch.Tensor):
        mid = rad = centre = None
        if self.use_box:
            mid, rad = (_flat_vector(t, self.batch) for t in self.box_centre_radius())
        if self.norm != math.inf:
            centre = _flat_vector(self.center, self.batch)
        return RowTerms.apply(a.contiguous(), mid, rad, centre, self.use_box, self.norm != math.inf,
                              self.norm == 1.0)

    def concretize(self, coeff, bias, upper: bool, consume: bool = False):
        a = coeff.flatten(2) if isinstance(coeff, torch.Tensor) else coeff
        if not self._fusable(a):
            return super().concretize(coeff, bias, upper, consume)
        at_mid, at_rad, at_centre, norm = self._terms(a)
        sign = 1.0 if upper else -1.0
        result = None
        if self.use_box:
            result = at_mid + sign * at_rad
        if self.norm != math.inf:
            ball = at_centre + sign * self.eps_flat * norm
            result = ball if result is None else (torch.minimum(result, ball) if upper
                                                  else torch.maximum(result, ball))
        return overflow_unbounded(result + bias, upper)

    def concretize_pair(self, lower_coeff, lower_bias, upper_coeff, upper_bias, consume: bool = False):
        if lower_coeff is not upper_coeff or not self.is_box or not self._fusable(lower_coeff.flatten(2)):
            return super().concretize_pair(lower_coeff, lower_bias, upper_coeff, upper_bias, consume)
        at_mid, at_rad, _, _ = self._terms(lower_coeff.flatten(2))
        return (overflow_unbounded(at_mid - at_rad + lower_bias, False),
                overflow_unbounded(at_mid + at_rad + upper_bias, True))
