"""The box [lower, upper]: the set is its own containing box (InputSet)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lirpac.errors import InputError
from lirpac.perturbations.base import InputSet, Perturbation
from lirpac.perturbations.checks import overflow_note, per_sample, require_bounded


@dataclass
class Box(Perturbation):
    """The box [lower, upper] (elementwise); x is only used for its shape."""
    lower: float | torch.Tensor
    upper: float | torch.Tensor

    def bind(self, x: torch.Tensor) -> InputSet:
        lower = per_sample(self.lower, x, "lower").expand_as(x)
        upper = per_sample(self.upper, x, "upper").expand_as(x)
        crossed = int((lower > upper).sum())
        if crossed:
            raise InputError(f"Box: lower > upper at {crossed} element(s): the box is empty")
        require_bounded(lower, upper, "Box: some bounds are infinite"
                        + overflow_note(self.lower, "lower", x.dtype)
                        + overflow_note(self.upper, "upper", x.dtype))
        return InputSet(lower.to(x.dtype), upper.to(x.dtype))
