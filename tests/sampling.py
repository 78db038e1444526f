"""Points of a perturbation set, corners included, and a containment check."""
from __future__ import annotations

import math

import torch


def sample_lp_ball(x: torch.Tensor, eps, norm: float, n: int, lower=None, upper=None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, B, *shape) points of {x' : ||x' - x||_p <= eps} ∩ [lower, upper].

    For inf the points are a mix of random corners of the box and uniform interior points; for
    2 and 1 points on the sphere (and its vertices for 1) and inside. Clamping into the domain
    box keeps a point in the ball (x lies in the box)."""
    g = generator
    shape = (n,) + tuple(x.shape)
    eps = torch.as_tensor(eps, dtype=x.dtype)
    if eps.dim() == 1:
        eps = eps.reshape(-1, *([1] * (x.dim() - 1)))
    if norm == math.inf:
        half = n // 2
        corners = torch.randint(0, 2, (half,) + tuple(x.shape), generator=g).to(x.dtype) * 2 - 1
        inner = torch.rand((n - half,) + tuple(x.shape), generator=g, dtype=x.dtype) * 2 - 1
        delta = torch.cat([corners, inner]) * eps
    else:
        flat = x[0].numel()
        if norm == 2:
            d = torch.randn(shape, generator=g, dtype=x.dtype)
            d = d / d.flatten(2).norm(dim=-1).reshape(n, x.shape[0], *([1] * (x.dim() - 1)))
        else:  # L1: vertices ±e_i and random points of the sphere
            d = torch.zeros(shape, dtype=x.dtype).flatten(2)
            idx = torch.randint(0, flat, (n, x.shape[0]), generator=g)
            d.scatter_(2, idx.unsqueeze(-1), (torch.randint(0, 2, (n, x.shape[0], 1), generator=g) * 2 - 1).to(x.dtype))
            e = torch.distributions.Exponential(1.0).sample(d.shape).to(x.dtype)
            e = e * (torch.randint(0, 2, d.shape, generator=g) * 2 - 1).to(x.dtype)
            e = e / e.abs().sum(-1, keepdim=True)
            d[n // 2:] = e[n // 2:]
            d = d.reshape(shape)
        scale = torch.rand((n,) + (1,) * x.dim(), generator=g, dtype=x.dtype)
        scale[: n // 2] = 1.0
        delta = d * scale * eps
    points = x.unsqueeze(0) + delta
    if lower is not None:
        points = torch.maximum(points, torch.as_tensor(lower, dtype=x.dtype))
    if upper is not None:
        points = torch.minimum(points, torch.as_tensor(upper, dtype=x.dtype))
    return points


def assert_contains(model, points: torch.Tensor, lower, upper, C=None, tol: float = 1e-5):
    """Every f(point) (or C f(point)) lies in [lower - tol, upper + tol]."""
    n, batch = points.shape[:2]
    with torch.no_grad():
        out = model(points.reshape(n * batch, *points.shape[2:])).reshape(n, batch, -1)
    if C is not None:
        out = torch.einsum("bso,nbo->nbs", C.to(out.dtype), out)
    scale = 1.0 + out.abs().max().item()
    if lower is not None:
        gap = (lower.unsqueeze(0) - out).max().item()
        assert gap <= tol * scale, f"lower bound violated by {gap:.3g}"
    if upper is not None:
        gap = (out - upper.unsqueeze(0)).max().item()
        assert gap <= tol * scale, f"upper bound violated by {gap:.3g}"
