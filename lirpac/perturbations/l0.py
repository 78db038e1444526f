"""L0 sets: at most k elements of x change, each changed element x_i anywhere in [l_i, u_i].

For a linear function a . x' the exact max over the set is a . x + the sum of the k largest
gains g_i = max(a_i (u_i - x_i), a_i (l_i - x_i), 0) (changing element i alone gains g_i, and
the gains of distinct elements add); the min takes the k most negative losses the same way.
The set is not convex, but a linear bound's concretization only needs these extremes, so
backward and forward mode are as sound as over a box, and exact on the first affine layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lirpac.errors import InputError
from lirpac.ir.ops.common import overflow_unbounded
from lirpac.ir.opdef import Interval
from lirpac.perturbations.base import InputSet, Perturbation
from lirpac.perturbations.checks import (overflow_note, per_sample, require_bounded,
                                         require_finite_centre)


@dataclass
class L0Ball(Perturbation):
    """{x' : x' differs from x in at most k elements, each x'_i in [lower_i, upper_i]}.
    ``lower``, ``upper``: floats, (batch,) tensors or tensors broadcastable to x (pixels that
    may be set to anything in [0, 1]: ``L0Ball(k, 0.0, 1.0)``)."""
    k: int
    lower: float | torch.Tensor
    upper: float | torch.Tensor

    def __post_init__(self):
        if isinstance(self.k, bool) or not isinstance(self.k, int) and not (
                isinstance(self.k, float) and self.k.is_integer()):
            raise InputError(f"L0Ball: k must be a nonnegative integer (how many elements may "
                             f"change), got {self.k!r}")
        self.k = int(self.k)
        if self.k < 0:
            raise InputError(f"L0Ball: k must be nonnegative, got {self.k}")

    def bind(self, x: torch.Tensor) -> InputSet:
        require_finite_centre(x, "an L0 set")
        lower = per_sample(self.lower, x, "lower").expand_as(x).to(x.dtype)
        upper = per_sample(self.upper, x, "upper").expand_as(x).to(x.dtype)
        crossed = int((lower > upper).sum())
        if crossed:
            raise InputError(f"L0Ball: lower > upper at {crossed} element(s): an element's range "
                             "is empty")
        require_bounded(lower, upper, "L0Ball: some bounds are infinite"
                        + overflow_note(self.lower, "lower", x.dtype)
                        + overflow_note(self.upper, "upper", x.dtype))
        return L0Set(x, self.k, lower, upper)


def top_k_sum(values: torch.Tensor, k: int) -> torch.Tensor:
    """Sum of the k largest entries along the last dim (all of them when k >= its size)."""
    n = values.shape[-1]
    if k >= n:
        return values.sum(-1)
    if k == 0:
        return values.new_zeros(values.shape[:-1])
    return values.topk(k, dim=-1, sorted=False).values.sum(-1)


def l0_extreme(a: torch.Tensor, centre: torch.Tensor, to_lower: torch.Tensor, to_upper: torch.Tensor,
               k: int, upper: bool) -> torch.Tensor:
    """max (upper) or min of a . x' over the set, rows a (..., S, n) against centre (..., 1, n)
    and the moves to each end, to_lower = l - x and to_upper = u - x (..., 1, n)."""
    at_centre = (a * centre).sum(-1)
    up, down = a * to_upper, a * to_lower
    if upper:
        gains = torch.maximum(torch.maximum(up, down), up.new_zeros(()))
        return at_centre + top_k_sum(gains, k)
    losses = torch.minimum(torch.minimum(up, down), up.new_zeros(()))
    return at_centre - top_k_sum(-losses, k)


class L0Set(InputSet):
    """The run-time L0 set; its containing box is [min(l, x), max(u, x)] (an unchanged
    element stays at x_i, which need not lie in [l_i, u_i])."""

    is_box = False

    def __init__(self, center, k: int, lower, upper):
        super().__init__(torch.minimum(lower, center), torch.maximum(upper, center))
        self.center, self.k = center, k
        self.to_lower, self.to_upper = lower - center, upper - center

    def _rows(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(self.batch, 1, -1)

    def concretize(self, coeff: torch.Tensor, bias, upper: bool, consume: bool = False) -> torch.Tensor:
        a = coeff.flatten(2)
        n = a.shape[-1]
        if self.k >= n:       # every element may change: the set is its box
            return super().concretize(coeff, bias, upper, consume)
        result = l0_extreme(a, self._rows(self.center), self._rows(self.to_lower),
                            self._rows(self.to_upper), self.k, upper)
        return overflow_unbounded(result + bias, upper)

    def first_affine(self, op: str, select, *args, **attrs):
        """A linear or 2-d conv layer's exact range: each output's k largest gains over the
        (distinct) input elements it reads (a conv's window; padding reads no element).
        Other ops: None (a backward pass bounds them exactly)."""
        pick = (lambda t: t) if select is None else select
        weight, bias = args[0], (args[1] if len(args) > 1 else None)
        if op == "linear":
            parts = [pick(t).unsqueeze(-2) for t in (self.center, self.to_lower, self.to_upper)]
            if parts[0].shape[-1] != weight.shape[-1]:
                return None
            rows = weight                                          # (O, d) against (B, *lead, 1, d)
            shape = None
        elif op == "conv" and weight.dim() == 4 and isinstance(attrs.get("padding"), (tuple, list)):
            parts, rows, shape = self._conv_windows(pick, weight, **attrs)
        else:
            return None
        lower = l0_extreme(rows, *parts, self.k, upper=False)
        upper = l0_extreme(rows, *parts, self.k, upper=True)
        if shape is not None:
            lower, upper = lower.reshape(shape), upper.reshape(shape)
            if bias is not None:
                bias = bias.reshape(-1, 1, 1)
        if bias is not None:
            lower, upper = lower + bias, upper + bias
        return Interval(lower, upper)

    def _conv_windows(self, pick, weight, *, stride, padding, dilation, groups):
        """Each output's window of the centre and the moves, (B, g, 1, L, K), the kernel rows
        (g, O/g, 1, K), and the output's shape (B, O, H', W')."""
        groups = groups or 1
        kernel = tuple(weight.shape[2:])
        parts = []
        for t in (self.center, self.to_lower, self.to_upper):
            cols = F.unfold(pick(t), kernel, dilation=dilation, padding=padding, stride=stride)
            batch, width, positions = cols.shape
            parts.append(cols.reshape(batch, groups, 1, width // groups, positions).transpose(-1, -2))
        out_channels = weight.shape[0]
        rows = weight.reshape(groups, out_channels // groups, 1, -1)
        size = [(n + 2 * p - d * (w - 1) - 1) // s + 1 for n, p, d, w, s in
                zip(pick(self.center).shape[2:], padding, dilation, kernel, stride)]
        return parts, rows, (parts[0].shape[0], out_channels, *size)
