"""Models with several inputs, lowered as one: the inputs travel flattened and concatenated in
one perturbed input, and the wrapper below cuts them out again (slices and reshapes, which
every method handles exactly). Each input's own set concretizes its part of a linear bound and
the parts are summed (lirpac/perturbations/joint.py), so the IR keeps one perturbed leaf."""
from __future__ import annotations

import math

import torch

from lirpac.errors import InputError


class JoinedInputs(torch.nn.Module):
    """``module(*inputs)`` as a function of one (B, sum of per-sample sizes) tensor."""

    def __init__(self, module: torch.nn.Module, shapes: list[tuple[int, ...]]):
        super().__init__()
        self.model = module
        self.shapes = [tuple(s) for s in shapes]

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        return self.model(*split(flat, self.shapes))


def split(flat: torch.Tensor, shapes) -> list[torch.Tensor]:
    """The inputs of the per-sample ``shapes`` held in the (B, N) tensor ``flat``."""
    parts, start = [], 0
    for shape in shapes:
        size = math.prod(shape)
        parts.append(flat[:, start:start + size].reshape(-1, *shape))
        start += size
    return parts


def join(tensors, what: str = "x") -> torch.Tensor:
    """(B, N): the inputs flattened per sample and concatenated (one float dtype, one batch)."""
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise InputError(f"{what}[{i}] must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() == 0:
            raise InputError(f"{what}[{i}] must have a batch dimension (dim 0)")
        if not t.is_floating_point():
            raise InputError(f"{what}[{i}] must be a floating-point tensor, got {t.dtype}; several "
                             "inputs are bounded as one float tensor (a per-sample boolean mask, such as a "
                             "key_padding_mask, goes in as a float one: mask.float() * -1e4, "
                             "which attention adds to its scores)")
    batches = {t.shape[0] for t in tensors}
    if len(batches) != 1:
        raise InputError(f"the inputs of {what} have different batch sizes {[t.shape[0] for t in tensors]}")
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.cat([t.reshape(t.shape[0], -1).to(dtype) for t in tensors], 1)
