"""Numbers as tensors of the operands' own dtype, for the hot elementwise rules.

On the CPU an op with a Python float operand (``x / 2``, ``x >= 0``) wraps it as a double
tensor, and type promotion then casts that to x's dtype on every call: an allocation and a
copy, about 1 us each. CROWN on the benchmark MLP did it about twenty times per call. A cached
0-dim tensor of the right dtype skips both; the values, and so the results, are the same.
"""
from __future__ import annotations

import torch

_CACHE: dict = {}


def scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    """``value`` as a 0-dim tensor of ``like``'s (floating) dtype and device, made once and
    then cached by value: for the rules' fixed constants (0.0 and -0.0 share an entry; a NaN
    would never hit). It is an ordinary tensor, not an inference-mode one, so autograd may save
    it."""
    key = (value, like.dtype, like.device)
    hit = _CACHE.get(key)
    if hit is None:
        with torch.inference_mode(False):
            hit = _CACHE[key] = torch.tensor(value, dtype=like.dtype, device=like.device)
    return hit


def centre_radius(lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The centre and radius of the box [lower, upper], as (upper + lower) / 2 and
    (upper - lower) / 2 (halving is exact, and the constant costs no cast)."""
    half = scalar(0.5, upper)
    return (upper + lower) * half, (upper - lower) * half
