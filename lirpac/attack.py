"""Falsification by projected gradient descent (PGD) with random restarts.

An unsafe output set is a union of polytopes ``C y <= d``. For one polytope the *violation* of
an output is ``max_i (C_i y - d_i)``: it is <= 0 exactly when y lies in the polytope. PGD
minimises it over the input box, for every polytope at once (each gets its own restarts in
one batch), with signed-gradient steps whose size decays from a quarter of the box width, and
projects back onto the box after every step (Madry et al. 2018, with restarts and a decaying
step as in Croce & Hein 2020). A polytope with a strict row (``C_i y < d_i``, a ``strict`` flag
as on lirpac.vnnlib.OutputPolytope) counts as reached only at a violation below 0, so the search
goes on past its boundary, which no strict row contains.

The attack only proposes candidates; whoever calls it must confirm them on the real model
(onnxruntime for ONNX files) before calling anything a counterexample.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import torch

__all__ = ["violation", "pgd_attack"]


def violation(y: torch.Tensor, C: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """max_i (C_i y - d_i) per sample: y (N, n_out), C (N or 1, k, n_out), d (N or 1, k) -> (N,).
    Rows padded with C = 0, d = +inf never count."""
    return (C.matmul(y.unsqueeze(-1)).squeeze(-1) - d).amax(-1)


def _stack_polytopes(polytopes: Sequence, dtype, device):
    """(P, k_max, n_out) and (P, k_max), rows padded with 0 <= inf."""
    k_max = max(len(p.d) for p in polytopes)
    n_out = polytopes[0].C.shape[1]
    C = torch.zeros(len(polytopes), k_max, n_out, dtype=dtype, device=device)
    d = torch.full((len(polytopes), k_max), math.inf, dtype=dtype, device=device)
    for i, p in enumerate(polytopes):
        C[i, :len(p.d)] = torch.as_tensor(p.C, dtype=dtype)
        d[i, :len(p.d)] = torch.as_tensor(p.d, dtype=dtype)
    return C, d


def pgd_attack(forward: Callable[[torch.Tensor], torch.Tensor], lower: torch.Tensor, upper: torch.Tensor,
               polytopes: Sequence, *, restarts: int = 8, steps: int = 50, seed: int = 0,
               deadline: float | None = None, start: torch.Tensor | None = None,
               first_step_seconds: float = 0.0, timing: dict | None = None):
    """Search the box [lower, upper] (each (1, *input_shape)) for inputs whose output
    ``forward(x).reshape(N, -1)`` lies in one of ``polytopes`` (objects with C (k, n_out) and
    d (k,) arrays, like lirpac.vnnlib.OutputPolytope).

    Returns ``(x, viol)``: candidate inputs (M, *input_shape) sorted by their violation (most
    negative first; <= 0 means inside a polytope by the model given as ``forward``), the best
    per polytope and every one that got inside. Stops early once some candidate is inside
    (strictly, for a polytope with strict rows), and at ``deadline`` (a time.monotonic()
    value): no step starts that would end past it, by the time the last step took (the first:
    ``first_step_seconds``, the caller's estimate), and when not even the first can, no
    candidate comes back; ``timing`` (a dict, optional) gets the longest step's seconds as
    "step_seconds" and the batch's size as "samples". ``start`` (optional, (1, *shape)) seeds
    the first restart of each polytope; otherwise the box centre does.
    """
    polytopes = [p for p in polytopes if len(p.d) > 0]
    if not polytopes:
        return lower.new_zeros((0,) + tuple(lower.shape[1:])), lower.new_zeros(0)
    dtype, device = lower.dtype, lower.device
    shape = tuple(lower.shape[1:])
    gen = torch.Generator(device="cpu").manual_seed(seed)
    P = len(polytopes)
    C, d = _stack_polytopes(polytopes, dtype, device)
    C = C.repeat_interleave(restarts, 0)            # (P*R, k, n_out)
    d = d.repeat_interleave(restarts, 0)
    strict = torch.tensor([bool(getattr(p, "strict", None) is not None and p.strict.any()) for p in polytopes],
                          device=device).repeat_interleave(restarts)

    def reached(v):   # inside the polytope by `forward`, strict rows strictly (conservatively)
        return torch.where(strict, v < 0, v <= 0)

    width = upper - lower
    x = lower + width * torch.rand((P * restarts,) + shape, generator=gen, dtype=dtype).to(device)
    first = ((lower + upper) / 2 if start is None else start).expand(P, *shape)
    x.view(P, restarts, *shape)[:, 0] = first
    best_x = x.detach().clone()
    best_v = torch.full((P * restarts,), math.inf, dtype=dtype, device=device)
    step_seconds = first_step_seconds
    for step in range(steps + 1):
        if deadline is not None and time.monotonic() + step_seconds > deadline:
            break
        started = time.monotonic()
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            v = violation(forward(x).reshape(x.shape[0], -1), C, d)
            grad, = torch.autograd.grad(v.sum(), x)
        with torch.no_grad():
            better = v < best_v
            best_v = torch.where(better, v.detach(), best_v)
            best_x[better] = x.detach()[better]
            if bool(reached(best_v).any()) or step == steps or \
                    (deadline is not None and time.monotonic() > deadline):
                break
            # step size decays geometrically from width/4 to width/200
            alpha = width * (0.25 * (0.02 ** (step / max(steps - 1, 1))))
            x = torch.minimum(torch.maximum(x - alpha * grad.sign(), lower), upper)
        step_seconds = time.monotonic() - started
        if timing is not None:
            timing["step_seconds"] = max(timing.get("step_seconds", 0.0), step_seconds)
            timing["samples"] = x.shape[0]
    if not bool(torch.isfinite(best_v).any()):   # not one step fitted before the deadline
        return lower.new_zeros((0,) + shape), lower.new_zeros(0)
    inside = reached(best_v)
    per_polytope = best_v.view(P, restarts).argmin(1) + torch.arange(P, device=device) * restarts
    keep = inside.clone()
    keep[per_polytope] = True
    order = best_v[keep].argsort()
    return best_x[keep][order], best_v[keep][order]
