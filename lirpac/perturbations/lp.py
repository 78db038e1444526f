"""Lp balls for any p >= 1: {x' : ||x' - x||_p <= eps} ∩ [lower, upper].

The max of a . x' over the ball is a . x + eps ||a||_q with 1/p + 1/q = 1 (Hoelder, attained).
With a domain box (pixels in [0, 1], say) the inf-ball is a box; for finite p the tighter of
the ball's and the containing box's answers is kept (both are sound over the intersection).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lirpac.errors import InputError
from lirpac.ir.ops.common import dual_exponent, lp_norm, overflow_unbounded
from lirpac.ir.opdef import REGISTRY
from lirpac.perturbations.base import InputSet, Perturbation
from lirpac.perturbations.checks import (overflow_note, per_sample, require_bounded,
                                         require_finite_centre)

_NAMES = {"inf": math.inf, "linf": math.inf, "l2": 2.0, "l1": 1.0}


def as_norm(norm) -> float:
    """p as a float >= 1 (inf included); names "inf", "linf", "l1", "l2" too."""
    if isinstance(norm, str):
        norm = _NAMES.get(norm.lower(), norm)
    try:
        value = float(norm)
    except (TypeError, ValueError):
        value = None
    if value is None or math.isnan(value) or value < 1:
        raise InputError(f"norm must be a number p >= 1 (or inf), got {norm!r}; an L0 set (at most "
                         "k elements change) is lirpac.L0Ball(k, lower, upper)")
    return value


def norm_name(p: float) -> str:
    return "Linf" if p == math.inf else f"L{p:g}"


@dataclass
class LpBall(Perturbation):
    """{x' : ||x' - x||_p <= eps} ∩ [lower, upper] (the box is optional); any p >= 1."""
    eps: float | torch.Tensor
    norm: float | str = math.inf
    lower: float | torch.Tensor | None = None
    upper: float | torch.Tensor | None = None

    def __post_init__(self):
        self.norm = as_norm(self.norm)
        if not isinstance(self.eps, torch.Tensor):
            if isinstance(self.eps, (str, bytes, bool)):
                raise InputError(f"eps must be a number or a tensor, got {self.eps!r}")
            try:
                eps = float(self.eps)
            except (TypeError, ValueError):
                raise InputError(f"eps must be a number or a tensor, got {self.eps!r}") from None
            if math.isnan(eps) or eps < 0:
                raise InputError(f"eps must be a nonnegative number, got {self.eps!r}")

    def bind(self, x: torch.Tensor) -> InputSet:
        require_finite_centre(x, "a ball")
        if (self.norm == math.inf and self.lower is None and self.upper is None
                and not isinstance(self.eps, torch.Tensor) and float(self.eps) < 1e30
                and x.dtype in (torch.float32, torch.float64)):
            # the common case, in two ops: a number checked at construction, no domain box
            # (a finite x moved by less than half an ulp of the largest float cannot overflow)
            return InputSet(x - float(self.eps), x + float(self.eps))
        eps = per_sample(self.eps, x, "eps")
        if (eps < 0).any():
            raise InputError(f"eps must be nonnegative, got a minimum of {eps.min().item():g}")
        lower, upper = x - eps, x + eps
        low = None if self.lower is None else per_sample(self.lower, x, "lower")
        high = None if self.upper is None else per_sample(self.upper, x, "upper")
        if low is not None and high is not None:
            empty = torch.gt(*torch.broadcast_tensors(low, high))
            if empty.any():
                raise InputError(f"LpBall: lower > upper at {int(empty.sum())} element(s): "
                                 "the domain box [lower, upper] is empty")
        if low is not None:
            lower = torch.maximum(lower, low)
        if high is not None:
            upper = torch.minimum(upper, high)
        if self.lower is not None or self.upper is not None:
            if (lower > upper).any():
                raise InputError("the eps-ball around x does not meet the domain box [lower, upper] "
                                 "(x lies outside it by more than eps)")
        require_bounded(lower, upper, "LpBall: eps is infinite" + overflow_note(self.eps, "eps", x.dtype)
                        + " and no finite domain box (lower=, upper=) bounds the set")
        if self.norm == math.inf:
            return InputSet(lower, upper)
        if not torch.isfinite(eps).all():
            raise InputError(f"LpBall: eps must be finite for the {norm_name(self.norm)} norm"
                             f"{overflow_note(self.eps, 'eps', x.dtype)} (an infinite ball is "
                             "its domain box: use lirpac.Box(lower, upper))")
        has_box = self.lower is not None or self.upper is not None
        return LpSet(lower, upper, center=x, eps=eps, norm=self.norm, use_box=has_box)


class LpSet(InputSet):
    """An Lp ball (finite p >= 1), possibly cut by a domain box."""

    is_box = False

    def __init__(self, lower, upper, center, eps, norm: float, use_box: bool):
        super().__init__(lower, upper)
        self.center, self.eps, self.norm, self.use_box = center, eps, norm, use_box
        self.dual = dual_exponent(norm)
        flat = eps.reshape(eps.shape[0], -1) if eps.dim() > 0 else eps.reshape(1, 1)
        self.eps_flat = flat[:, :1]
        if flat.shape[1] > 1 and not bool((flat == self.eps_flat).all()):
            raise InputError(f"an {norm_name(norm)} ball needs one eps per sample, not per element")

    def concretize(self, coeff: torch.Tensor, bias, upper: bool, consume: bool = False) -> torch.Tensor:
        a = coeff.flatten(2)
        sign = 1.0 if upper else -1.0
        x0 = self.center.reshape(self.batch, -1, 1)
        result = a.matmul(x0).squeeze(-1) + sign * self.eps_flat * lp_norm(a, self.dual, dim=-1)
        if self.use_box:
            box = self.box_extreme(a, upper)
            result = torch.minimum(result, box) if upper else torch.maximum(result, box)
        return overflow_unbounded(result + bias, upper)

    def first_affine(self, op: str, select, *args, **attrs):
        """The op's ``ibp_ball`` rule: its value at the centre +- eps times each row's dual
        norm (exact for the ball; the box's IBP is intersected by the caller)."""
        rule = REGISTRY[op].ibp_ball
        if rule is None:
            return None
        centre = self.center if select is None else select(self.center)
        return rule(centre, self.eps_flat, self.dual, *args, **attrs)
