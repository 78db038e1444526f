"""Several perturbed inputs: each input has its own set (or none: it stays fixed), and the
model sees them joined into one flat input (ir/joint_inputs.py). A linear bound is a sum over
the inputs, so its extreme over the product of the sets is the sum of each part's extreme
under that part's own set."""
from __future__ import annotations

import torch

from lirpac.errors import InputError
from lirpac.ir.joint_inputs import join, split
from lirpac.ir.ops.common import overflow_unbounded
from lirpac.perturbations.base import InputSet, Perturbation


class JointPerturbation(Perturbation):
    """One set per input (None: the input is fixed), for the joined input of the per-sample
    ``shapes``."""

    def __init__(self, sets, shapes):
        self.sets, self.shapes = list(sets), [tuple(s) for s in shapes]
        for i, s in enumerate(self.sets):
            if s is not None and not isinstance(s, Perturbation):
                raise InputError(f"perturbation[{i}] must be a lirpac perturbation (lirpac.LpBall, "
                                 f"lirpac.Box, ...) or None for a fixed input, got {type(s).__name__}")
        if all(s is None for s in self.sets):
            raise InputError("every perturbation is None: give a set for at least one input")

    def bind(self, flat: torch.Tensor) -> InputSet:
        parts = []
        for i, (x, s) in enumerate(zip(split(flat, self.shapes), self.sets)):
            try:
                parts.append(InputSet(x, x) if s is None else s.bind(x))
            except InputError as err:
                raise InputError(f"input {i}: {err}") from None
        return ProductSet(parts)


def joint_arguments(xs, perturbations, shapes):
    """(joined x, JointPerturbation) from a tuple of inputs and a tuple of sets."""
    if not isinstance(xs, (tuple, list)) or len(xs) != len(shapes):
        raise InputError(f"the model was compiled with {len(shapes)} inputs: give x as a tuple of "
                         f"{len(shapes)} tensors, got {type(xs).__name__}")
    if isinstance(perturbations, Perturbation):
        perturbations = [perturbations] * len(shapes)
    if not isinstance(perturbations, (tuple, list)) or len(perturbations) != len(shapes):
        raise InputError(f"give one perturbation per input (a tuple of {len(shapes)}, None for a "
                         "fixed input) or one for all")
    for i, (x, shape) in enumerate(zip(xs, shapes)):
        if isinstance(x, torch.Tensor) and tuple(x.shape[1:]) != shape:
            raise InputError(f"x[{i}] has shape {tuple(x.shape)}; the compiled model's input {i} is "
                             f"(batch, {', '.join(map(str, shape))})")
    return join(xs), JointPerturbation(perturbations, shapes)


class ProductSet(InputSet):
    """The product of the inputs' sets, over the joined input."""

    def __init__(self, parts: list[InputSet]):
        batch = parts[0].batch
        super().__init__(torch.cat([p.lower.reshape(batch, -1) for p in parts], 1),
                         torch.cat([p.upper.reshape(batch, -1) for p in parts], 1))
        self.parts = parts
        self.sizes = [p.lower[0].numel() for p in parts]
        self.is_box = all(p.is_box for p in parts)

    def concretize(self, coeff: torch.Tensor, bias, upper: bool, consume: bool = False) -> torch.Tensor:
        if self.is_box:
            return super().concretize(coeff, bias, upper, consume)
        a = coeff.flatten(2)
        total, start = bias, 0
        for part, size in zip(self.parts, self.sizes):
            total = total + part.concretize(a[:, :, start:start + size], 0, upper)
            start += size
        return overflow_unbounded(total, upper)
