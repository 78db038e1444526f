"""Soundness checks for users' ops and models: the checks lirpac's own tests run.

    lirpac.testing.check_op("my_act")                       # every rule of one op
    lirpac.testing.check_model(model, x, eps=0.1)           # every method on a model

Both sample the set (corners of the box included) and raise AssertionError naming the rule
and the worst violation when an output lies outside the bounds. Sampling can miss a violation,
never invent one: run them on the inputs your bounds will see (tiny, huge, one-point and
straddling intervals are tried by default).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from lirpac.ir.opdef import Interval, Linear, get_op

KINDS = ("tiny", "unit", "wide", "point", "negative", "positive", "straddle")


def sample_lp_ball(x: torch.Tensor, eps, norm: float = math.inf, n: int = 64, lower=None,
                   upper=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, B, *shape) points of {x' : ||x' - x||_p <= eps} (∩ [lower, upper]); eps a number
    or one per sample. For inf half are random corners of the box, half uniform inside; for
    other p half lie on the sphere (for p = 1 on its vertices +-eps e_i), half inside.
    Clamping into the domain box keeps a point in the ball (x lies in the box)."""
    g = generator
    shape = (n, *x.shape)
    eps = torch.as_tensor(eps, dtype=x.dtype)
    if eps.dim() == 1:
        eps = eps.reshape(-1, *([1] * (x.dim() - 1)))
    if norm == math.inf:
        half = n // 2
        corners = torch.randint(0, 2, (half, *x.shape), generator=g).to(x.dtype) * 2 - 1
        inner = torch.rand((n - half, *x.shape), generator=g, dtype=x.dtype) * 2 - 1
        delta = torch.cat([corners, inner]) * eps
    else:
        if norm == 1:   # vertices +-e_i, then random points of the sphere
            d = torch.zeros(shape, dtype=x.dtype).flatten(2)
            idx = torch.randint(0, x[0].numel(), (n, x.shape[0]), generator=g)
            signs = torch.randint(0, 2, (n, x.shape[0], 1), generator=g) * 2 - 1
            d.scatter_(2, idx.unsqueeze(-1), signs.to(x.dtype))
            e = torch.distributions.Exponential(1.0).sample(d.shape).to(x.dtype)
            e = e * (torch.randint(0, 2, d.shape, generator=g) * 2 - 1).to(x.dtype)
            e = e / e.abs().sum(-1, keepdim=True)
            d[n // 2:] = e[n // 2:]
            d = d.reshape(shape)
        else:
            d = torch.randn(shape, generator=g, dtype=x.dtype)
            d = d / d.flatten(2).norm(p=norm, dim=-1).reshape(n, x.shape[0], *([1] * (x.dim() - 1)))
        scale = torch.rand((n,) + (1,) * x.dim(), generator=g, dtype=x.dtype)
        scale[: n // 2] = 1.0
        delta = d * scale * eps
    points = x.unsqueeze(0) + delta
    if lower is not None:
        points = torch.maximum(points, torch.as_tensor(lower, dtype=x.dtype))
    if upper is not None:
        points = torch.minimum(points, torch.as_tensor(upper, dtype=x.dtype))
    return points


def assert_contains(model: Callable, points: torch.Tensor, lower, upper, C=None,
                    tol: float = 1e-5, what: str = "") -> None:
    """Every model(point) (or C model(point)) lies in [lower - tol, upper + tol], tol relative
    to the outputs' magnitude."""
    n, batch = points.shape[:2]
    with torch.no_grad():
        out = model(points.reshape(n * batch, *points.shape[2:])).reshape(n, batch, -1)
    if C is not None:
        out = torch.einsum("bso,nbo->nbs", C.to(out.dtype), out)
    scale = 1.0 + out.abs().max().item()
    prefix = f"{what}: " if what else ""
    if lower is not None:
        gap = (lower.reshape(lower.shape[0], -1).unsqueeze(0) - out).max().item()
        assert gap <= tol * scale, f"{prefix}lower bound violated by {gap:.3g}"
    if upper is not None:
        gap = (out - upper.reshape(upper.shape[0], -1).unsqueeze(0)).max().item()
        assert gap <= tol * scale, f"{prefix}upper bound violated by {gap:.3g}"


def random_box(kind: str, shape, dtype, generator) -> Interval:
    """A box [lower, upper] of the given kind: tiny/unit/wide widths, one point, all negative,
    all positive, or straddling 0."""
    g = generator
    scale = {"tiny": 1e-5, "wide": 100.0}.get(kind, 3.0)
    centre = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    radius = torch.rand(shape, generator=g, dtype=torch.float64) * scale
    if kind == "point":
        radius.zero_()
    elif kind == "negative":
        centre = -centre.abs() - radius
    elif kind == "positive":
        centre = centre.abs() + radius
    elif kind == "straddle":
        radius = centre.abs() + radius
    return Interval((centre - radius).to(dtype), (centre + radius).to(dtype))


def _points_in(box: Interval, n: int, generator) -> torch.Tensor:
    """(n, *shape) points of the box: both ends of every coordinate, then uniform ones."""
    t = torch.rand((n, *box.lower.shape), generator=generator, dtype=torch.float64)
    t[0], t[1] = 0.0, 1.0
    t[2: n // 3] = (t[2: n // 3] > 0.5).double()         # corners
    lo, hi = box.lower.double(), box.upper.double()
    points = (lo + (hi - lo) * t).to(box.lower.dtype)
    return torch.minimum(torch.maximum(points, box.lower), box.upper)


def check_op(name: str, *, shape: Sequence[int] = (8,), attrs: dict | None = None,
             consts: Sequence[torch.Tensor] = (), kinds: Sequence[str] = KINDS,
             dtypes=(torch.float32, torch.float64), points: int = 64, specs: int = 4,
             seed: int = 0, tol: float = 1e-5) -> None:
    """Check the rules of op ``name`` whose first input is perturbed (shape ``shape`` per
    sample; ``consts``: its other inputs) on random boxes of every kind: IBP contains f at
    sampled points, the backward rule's linear bounds hold for random coefficient rows, and the
    forward-mode rule's linear functions hold. A rule the op does not have is skipped."""
    op = get_op(name)
    attrs = attrs or {}
    g = torch.Generator().manual_seed(seed)
    for dtype in dtypes:
        cs = [c.to(dtype) if c.is_floating_point() else c for c in consts]
        for kind in kinds:
            box = random_box(kind, (1, *shape), dtype, g)
            xs = _points_in(Interval(box.lower[0], box.upper[0]), points, g)
            fx = op.forward(xs, *cs, **attrs)
            where = f"op {name!r} ({kind} box, {str(dtype).removeprefix('torch.')})"
            if op.ibp is not None:
                out = op.ibp(box, *cs, **attrs)
                _within(fx, out.lower, out.upper, tol, f"{where}: IBP")
            if op.backward is not None:
                _check_backward(op, box, xs, fx, cs, attrs, specs, g, tol, where)
            if op.forward_mode is not None:
                _check_forward_mode(op, box, xs, fx, cs, attrs, tol, where)


def _within(fx, lower, upper, tol, what):
    scale = 1.0 + fx.abs().nan_to_num(0, 0, 0).max().item()
    ok = torch.isfinite(fx)
    low = (lower.expand_as(fx) - fx)[ok]
    high = (fx - upper.expand_as(fx))[ok]
    assert low.numel() == 0 or low.max().item() <= tol * scale, \
        f"{what} lower bound violated by {low.max().item():.3g}"
    assert high.numel() == 0 or high.max().item() <= tol * scale, \
        f"{what} upper bound violated by {high.max().item():.3g}"


def _check_backward(op, box, xs, fx, cs, attrs, specs, g, tol, where):
    out_shape = fx.shape[1:]
    rows = torch.randn((1, specs, *out_shape), generator=g, dtype=fx.dtype)
    eye = torch.eye(min(fx[0].numel(), 16), fx[0].numel(), dtype=fx.dtype)
    rows = torch.cat([rows, eye.reshape(1, -1, *out_shape)], 1)
    arg = box if op.nonlinear else None
    extra = {"in_shapes": [tuple(box.lower.shape[1:])] + [None] * len(cs)} \
        if op.backward_needs_shapes else {}
    coeffs, lbias, ubias = op.backward(rows, rows, arg, *cs, **attrs, **extra)
    l_in, u_in = coeffs[0]
    n = xs.shape[0]
    value = (rows.flatten(2) @ fx.reshape(n, -1, 1)).squeeze(-1)            # (n, S)
    lin_l = (l_in.flatten(2) @ xs.reshape(n, -1, 1)).squeeze(-1) + lbias
    lin_u = (u_in.flatten(2) @ xs.reshape(n, -1, 1)).squeeze(-1) + ubias
    _within(value, lin_l, lin_u, tol, f"{where}: backward rule")


def _check_forward_mode(op, box, xs, fx, cs, attrs, tol, where):
    size = box.lower[0].numel()
    eye = torch.eye(size, dtype=box.lower.dtype).reshape(1, size, *box.lower.shape[1:])
    zero = torch.zeros_like(box.lower)
    x = Linear(eye, zero, eye, zero, box if op.nonlinear else None)
    out = op.forward_mode(x, *cs, **attrs)
    n = xs.shape[0]
    flat = xs.reshape(n, -1)

    def apply(w, b):
        return torch.einsum("ki,nk->ni", w.reshape(size, -1), flat) + b.reshape(1, -1)
    _within(fx.reshape(n, -1), apply(out.lw[0], out.lb[0]), apply(out.uw[0], out.ub[0]), tol,
            f"{where}: forward-mode rule")


def check_model(model: torch.nn.Module, x: torch.Tensor, eps: float = 0.1, norm=math.inf,
                methods: Sequence[str] = ("ibp", "crown", "forward", "crown-ibp",
                                          "alpha-crown"),
                points: int = 64, seed: int = 0, tol: float = 1e-5, net=None) -> None:
    """Compile ``model`` (or use ``net``) and check that each method's bounds on the Lp ball
    around ``x`` contain the model's outputs at sampled points."""
    import lirpac
    net = net or lirpac.compile(model, x)
    samples = sample_lp_ball(x, eps, norm, points, generator=torch.Generator().manual_seed(seed))
    for method in methods:
        lower, upper = net.bounds(x, lirpac.LpBall(eps=eps, norm=norm), method=method)
        assert_contains(model, samples, lower, upper, tol=tol, what=f"method {method!r}")
