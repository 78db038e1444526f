"""Common output specifications, as the C matrices ``net.bounds(..., C=C)`` takes."""
from __future__ import annotations

import torch

from lirpac.errors import InputError


def margin_spec(labels: torch.Tensor, n_classes: int, dtype=torch.float32) -> torch.Tensor:
    """C of shape (batch, n_classes - 1, n_classes) with rows e_y - e_j for every j != y:
    the margins logit_y - logit_j. A sample is certified when every row's lower bound is > 0."""
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise InputError(f"labels must be a 1-d integer tensor, got shape {tuple(labels.shape)} "
                         f"and dtype {labels.dtype}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= n_classes):
        raise InputError(f"labels must lie in [0, {n_classes}), got values in "
                         f"[{labels.min().item()}, {labels.max().item()}]")
    labels = labels.long()
    eye = torch.eye(n_classes, dtype=dtype, device=labels.device)
    others = torch.arange(n_classes - 1, device=labels.device)
    # the j-th row compares y with the j-th class other than y
    others = others.unsqueeze(0) + (others.unsqueeze(0) >= labels.unsqueeze(1)).long()
    return eye[labels].unsqueeze(1) - eye[others]
