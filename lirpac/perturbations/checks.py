"""Checks shared by the perturbation sets: a parameter as a tensor that broadcasts to x, and
the precise errors for NaN, overflow and unbounded sets."""
from __future__ import annotations

import torch

from lirpac.errors import InputError
from lirpac.ir.ops.common import all_finite


def per_sample(value, x: torch.Tensor, what: str) -> torch.Tensor:
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


def overflow_note(value, what: str, dtype: torch.dtype) -> str:
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


def require_bounded(lower: torch.Tensor, upper: torch.Tensor, why: str) -> None:
    """Bounds over an unbounded input set are infinite at best and NaN at worst (inf - inf):
    refuse the set instead of returning either."""
    if not (torch.isfinite(lower).all() and torch.isfinite(upper).all()):
        raise InputError(f"{why}; the input set must be bounded")


def require_finite_centre(x: torch.Tensor, kind: str) -> None:
    if not all_finite(x):
        bad = (~torch.isfinite(x)).nonzero()[0].tolist()
        raise InputError(f"x contains NaN or inf (first at index {tuple(bad)}); {kind} needs "
                         "a finite centre")
