"""Perturbation sets and their run-time form.

A perturbation describes a set around the input; ``bind(x)`` checks it against the input and
returns an ``InputSet``: the box that contains the set (used by IBP and as the bounds of the
input node) and ``concretize``, which turns linear bounds ``A x + b`` into numbers. For an Lp ball
that is ``A x0 ± eps ||A||_q`` (1/p + 1/q = 1); with a domain box (pixels in [0, 1], say) the
inf-ball becomes a box, and for p in {1, 2} the tighter of the ball and box answers is kept
(both are sound over the intersection).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lirpac.errors import InputError
from lirpac.ir.ops.common import all_finite, overflow_unbounded
from lirpac.ir.scalar import centre_radius

_NORMS = {float("inf"): float("inf"), 2.0: 2.0, 1.0: 1.0}


def _as_norm(norm) -> float:
    if isinstance(norm, str):
        norm = {"inf": math.inf, "linf": math.inf, "l2": 2, "l1": 1}.get(norm.lower(), norm)
    try:
        value = float(norm)
    except (TypeError, ValueError):
        value = None
    if value not in _NORMS:
        raise InputError(f"norm must be inf, 2 or 1, got {norm!r}")
    return value


def _per_sample(value, x: torch.Tensor, what: str) -> torch.Tensor:
    """A float, a (B,) tensor or a tensor broadcastable to x, as a tensor that broadcasts to x."""
    if isinstance(value, torch.Tensor) and value.device.type == "meta":
        raise InputError(f"{what} is on the meta device, which holds shapes but no values; give "
                         "a number or a tensor on the cpu or a gpu")
    t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if t.dim() == 1 and t.shape[0] == x.shape[0] and x.dim() > 1:
        t = t.reshape(-1, *([1] * (x.dim() - 1)))
    try:
        torch.broadcast_shapes(t.shape, x.shape)
    except RuntimeError:
        raise InputError(f"{what} of shape {tuple(t.shape)} does not broadcast to the input "
                         f"{tuple(x.shape)}; give a float, a (batch,) tensor or one of x's shape") from None
    if torch.isnan(t).any():
        raise InputError(f"{what} contains NaN")
    return t


def _overflow_note(value, what: str, dtype: torch.dtype) -> str:
    """Why a value the user gave as finite is infinite here (eps=1e300 in float32), or ""."""
    if value is None:
        return ""
    given = value if isinstance(value, torch.Tensor) else torch.as_tensor(value, dtype=torch.float64)
    if not bool(torch.isfinite(given).all()) or bool(torch.isfinite(given.to(dtype)).all()):
        return ""
    shown = (f"{float(given):g}" if given.numel() == 1
             else f"a tensor of magnitude up to {given.abs().max().item():g}")
    return (f" ({what}={shown} is infinite in {str(dtype).removeprefix('torch.')}, the input's "
            f"dtype, whose largest number is {torch.finfo(dtype).max:.4g})")


def _require_bounded(lower: torch.Tensor, upper: torch.Tensor, why: str) -> None:
    """Bounds over an unbounded input set are infinite at best and NaN at worst (inf - inf):
    refuse the set instead of returning either."""
    if not (torch.isfinite(lower).all() and torch.isfinite(upper).all()):
        raise InputError(f"{why}; the input set must be bounded")


class Perturbation:
    """Base class: a set of inputs around x."""

    def bind(self, x: torch.Tensor) -> "InputSet":
        raise NotImplementedError


@dataclass
class LpBall(Perturbation):
    """{x' : ||x' - x||_p <= eps} ∩ [lower, upper] (the box is optional)."""
    eps: float | torch.Tensor
    norm: float | str = math.inf
    lower: float | torch.Tensor | None = None
    upper: float | torch.Tensor | None = None

    def __post_init__(self):
        self.norm = _as_norm(self.norm)
        if not isinstance(self.eps, torch.Tensor):
            try:
                eps = float(self.eps)
            except (TypeError, ValueError):
                raise InputError(f"eps must be a number or a tensor, got {self.eps!r}") from None
            if math.isnan(eps) or eps < 0:
                raise InputError(f"eps must be a nonnegative number, got {self.eps!r}")

    def bind(self, x: torch.Tensor) -> "InputSet":
        if not all_finite(x):
            bad = (~torch.isfinite(x)).nonzero()[0].tolist()
            raise InputError(f"x contains NaN or inf (first at index {tuple(bad)}); a ball needs "
                             "a finite centre")
        if (self.norm == math.inf and self.lower is None and self.upper is None
                and not isinstance(self.eps, torch.Tensor) and float(self.eps) < 1e30
                and x.dtype in (torch.float32, torch.float64)):
            # the common case, in two ops: a number checked at construction, no domain box
            # (a finite x moved by less than half an ulp of the largest float cannot overflow)
            return InputSet(x - float(self.eps), x + float(self.eps))
        eps = _per_sample(self.eps, x, "eps")
        if (eps < 0).any():
            raise InputError(f"eps must be nonnegative, got a minimum of {eps.min().item():g}")
        lower, upper = x - eps, x + eps
        if self.lower is not None:
            lower = torch.maximum(lower, _per_sample(self.lower, x, "lower"))
        if self.upper is not None:
            upper = torch.minimum(upper, _per_sample(self.upper, x, "upper"))
        if self.lower is not None or self.upper is not None:
            if (lower > upper).any():
                raise InputError("the eps-ball around x does not meet the domain box [lower, upper] "
                                 "(x lies outside it by more than eps)")
        _require_bounded(lower, upper, "LpBall: eps is infinite" + _overflow_note(self.eps, "eps", x.dtype)
                         + " and no finite domain box (lower=, upper=) bounds the set")
        if self.norm == math.inf:
            return InputSet(lower, upper)
        if not torch.isfinite(eps).all():
            raise InputError(f"LpBall: eps must be finite for the L{int(self.norm)} norm"
                             f"{_overflow_note(self.eps, 'eps', x.dtype)} (an infinite ball is "
                             "its domain box: use lirpac.Box(lower, upper))")
        has_box = self.lower is not None or self.upper is not None
        return InputSet(lower, upper, center=x, eps=eps, norm=self.norm, use_box=has_box)


@dataclass
class Box(Perturbation):
    """The box [lower, upper] (elementwise); x is only used for its shape."""
    lower: float | torch.Tensor
    upper: float | torch.Tensor

    def bind(self, x: torch.Tensor) -> "InputSet":
        lower = _per_sample(self.lower, x, "lower").expand_as(x)
        upper = _per_sample(self.upper, x, "upper").expand_as(x)
        crossed = int((lower > upper).sum())
        if crossed:
            raise InputError(f"Box: lower > upper at {crossed} element(s): the box is empty")
        _require_bounded(lower, upper, "Box: some bounds are infinite"
                         + _overflow_note(self.lower, "lower", x.dtype)
                         + _overflow_note(self.upper, "upper", x.dtype))
        return InputSet(lower.to(x.dtype), upper.to(x.dtype))


def _dot_rows(a: torch.Tensor, column: torch.Tensor, scale: float = 1.0, plus=None) -> torch.Tensor:
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
        return _dot_rows(a.abs(), rad, sign, plus=_dot_rows(a, mid).unsqueeze(-1))

    @staticmethod
    def backward(ctx, grad):
        a, mid, rad = ctx.saved_tensors
        direction = torch.addcmul(mid.transpose(1, 2), a.sign(), rad.transpose(1, 2), value=ctx.sign)
        return grad.unsqueeze(-1) * direction, None, None, None


class InputSet:
    """The run-time form of a perturbation: a containing box and a concretization rule."""

    def __init__(self, lower, upper, center=None, eps=None, norm=math.inf, use_box=True):
        self.lower, self.upper = lower, upper
        self.norm = norm
        self.center = center
        self.eps = eps
        self.use_box = use_box or norm == math.inf
        self.batch = lower.shape[0]
        self._centre_radius = None
        if norm != math.inf:
            self.dual = {2.0: 2.0, 1.0: math.inf}[norm]
            self.eps_flat = eps.reshape(eps.shape[0], -1)[:, :1] if eps.dim() > 0 else eps.reshape(1, 1)
            if eps.dim() > 0 and eps.reshape(eps.shape[0], -1).shape[1] > 1 and \
                    not bool((eps.reshape(eps.shape[0], -1) == self.eps_flat).all()):
                raise InputError(f"an L{int(norm)} ball needs one eps per sample, not per element")

    @property
    def is_box(self) -> bool:
        """The set is exactly the box [lower, upper] (an L-inf ball or a Box)."""
        return self.norm == math.inf

    def box_centre_radius(self):
        """(B, n, 1) centre and radius of the containing box, as bmm operands (computed once
        per set: every backward pass of a call concretizes against them)."""
        if self._centre_radius is None:
            self._centre_radius = tuple(t.reshape(self.batch, -1, 1)
                                        for t in centre_radius(self.lower, self.upper))
        return self._centre_radius

    def concretize_pair(self, lower_coeff, lower_bias, upper_coeff, upper_bias, consume: bool = False):
        """Both sides at once; when the two coefficient tensors are the same object (an
        identity start, before any relaxation), the centre and radius terms are shared.
        ``consume``: as in ``concretize``, for both (distinct tensors of distinct memory, or one
        tensor)."""
        if lower_coeff is not upper_coeff or not self.is_box:
            return (self.concretize(lower_coeff, lower_bias, upper=False, consume=consume),
                    self.concretize(upper_coeff, upper_bias, upper=True, consume=consume))
        a = lower_coeff.flatten(2)
        mid, rad = self.box_centre_radius()
        centre = _dot_rows(a, mid)
        radius = _dot_rows(self._absolute(a, consume), rad)
        return (overflow_unbounded(centre - radius + lower_bias, False),
                overflow_unbounded(centre + radius + upper_bias, True))

    def _absolute(self, a: torch.Tensor, consume: bool) -> torch.Tensor:
        """|a|, in a's own memory when the caller gives it up (``consume``: the code generator
        proved that no other tensor shares it) and autograd does not need it: on the benchmark
        MLP the 254x784 products' copies were 3% of CROWN's time."""
        return a.abs_() if consume and not a.requires_grad and self.norm == math.inf else a.abs()

    def concretize(self, coeff: torch.Tensor, bias, upper: bool, consume: bool = False) -> torch.Tensor:
        """max (upper) or min (lower) of coeff . x + bias over the set; coeff (B, S, *in).
        ``consume``: coeff shares memory with no other tensor and may be overwritten."""
        a = coeff.flatten(2)
        sign = 1.0 if upper else -1.0
        result = None
        if self.use_box:
            mid, rad = self.box_centre_radius()
            if a.requires_grad and a.shape[0] == self.batch and not (mid.requires_grad or rad.requires_grad):
                result = _BoxExtreme.apply(a, mid, rad, sign)
            else:
                centre = _dot_rows(a, mid).unsqueeze(-1)
                result = _dot_rows(self._absolute(a, consume), rad, sign, plus=centre)
        if self.norm != math.inf:
            x0 = self.center.reshape(self.batch, -1, 1)
            ball = a.matmul(x0).squeeze(-1) + sign * self.eps_flat * a.norm(p=self.dual, dim=-1)
            result = ball if result is None else (torch.minimum(result, ball) if upper
                                                  else torch.maximum(result, ball))
        return overflow_unbounded(result + bias, upper)

    def concretize_linear(self, lin) -> tuple[torch.Tensor, torch.Tensor]:
        """Bounds of a node from its forward-mode linear functions (lw: (B, N, *shape))."""
        shape = lin.lb.shape
        lw = lin.lw.flatten(2).transpose(1, 2)
        uw = lin.uw.flatten(2).transpose(1, 2)
        lower = self.concretize(lw, lin.lb.reshape(shape[0], -1), upper=False).reshape(shape)
        upper = self.concretize(uw, lin.ub.reshape(shape[0], -1), upper=True).reshape(shape)
        return lower, upper
