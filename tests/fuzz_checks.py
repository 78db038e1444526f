"""The differential fuzzer's checks on one random model (tests/fuzz_models.py): every method's
bounds contain the outputs at sampled points of the set (corners included) and at points a
projected-gradient attack finds for each output's two ends; no NaN; lower <= upper; a sample's
bounds do not depend on the batch it is in; exact variants (patches or matrix convolutions,
no passes) agree. Run as a script to fuzz many seeds: ``python tests/fuzz_checks.py 0 500``."""
from __future__ import annotations

import math
import random
import sys
import traceback

import torch

import lirpac
from lirpac.errors import UnsupportedOperationError
from lirpac.testing import sample_lp_ball

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from fuzz_models import describe, random_model  # noqa: E402

METHODS = ("ibp", "crown", "forward", "crown-ibp", "forward+crown", "alpha-crown")
ALPHA = {"iterations": 3}
TOL = 1e-6          # relative, in float64


def _project(points, x, eps, norm, lower, upper):
    """Points moved back into the ball (inf, 2: projection; 1: scaling into it) ∩ the box."""
    delta = points - x
    if norm == math.inf:
        delta = delta.clamp(-eps, eps)
    else:
        size = delta.flatten(2).norm(p=norm, dim=-1).clamp_min(1e-30)
        size = size.reshape(*size.shape, *([1] * (x.dim() - 1)))
        delta = delta * torch.clamp(eps / size, max=1.0)
    points = x + delta
    if lower is not None:
        points = torch.maximum(torch.minimum(points, upper), lower)
    return points


def attack(model, x, eps, norm, n_out, C=None, lower=None, upper=None, steps=20, seed=0):
    """(2 * n_spec, B, *shape) points: for each spec row and sign, a PGD ascent of
    sign * (C f)_j over the set, from a random start."""
    g = torch.Generator().manual_seed(seed)
    start = sample_lp_ball(x, eps, norm, 2 * (n_out if C is None else C.shape[1]), lower, upper,
                           generator=g)
    if isinstance(eps, torch.Tensor) and eps.dim() == 1:     # one per sample: (B, 1, ...)
        eps = eps.reshape(-1, *([1] * (x.dim() - 1)))
    n_spec = n_out if C is None else C.shape[1]
    k = 2 * n_spec
    points = start.clone().requires_grad_(True)
    signs = torch.tensor([1.0] * n_spec + [-1.0] * n_spec, dtype=x.dtype)
    pick = torch.cat([torch.eye(n_spec, dtype=x.dtype)] * 2) * signs[:, None]     # (k, n_spec)
    step = (eps if norm == math.inf else eps) / 4
    for _ in range(steps):
        out = model(points.reshape(-1, *x.shape[1:])).reshape(k, x.shape[0], -1)
        if C is not None:
            out = torch.einsum("bso,kbo->kbs", C, out)
        obj = (out * pick[:, None, :]).sum()
        try:
            grad, = torch.autograd.grad(obj, points)
        except RuntimeError:        # an op without a derivative (heaviside): no attack
            return start
        with torch.no_grad():
            if norm == math.inf:
                direction = grad.sign()
            else:
                direction = grad / grad.flatten(2).norm(dim=-1).clamp_min(1e-30).reshape(
                    k, x.shape[0], *([1] * (x.dim() - 1)))
            points = _project(points + step * direction, x, eps, norm, lower, upper)
        points.requires_grad_(True)
    return points.detach()


def _outputs(model, points, C=None):
    n, b = points.shape[:2]
    with torch.no_grad():
        out = model(points.reshape(n * b, *points.shape[2:])).reshape(n, b, -1)
    return out if C is None else torch.einsum("bso,nbo->nbs", C, out)


def check_contains(what, out, lower, upper, tol=TOL):
    """out (n, B, S) within [lower, upper] (B, S), relative tolerance; NaN-free bounds."""
    for name, bound in (("lower", lower), ("upper", upper)):
        assert not torch.isnan(bound).any(), f"{what}: NaN in the {name} bound: {bound}"
    assert (lower <= upper + tol * (1 + upper.abs())).all(), f"{what}: lower > upper"
    scale = 1.0 + out.abs().max().item()
    gap_l = (lower.unsqueeze(0) - out).max().item()
    gap_u = (out - upper.unsqueeze(0)).max().item()
    assert gap_l <= tol * scale, f"{what}: lower bound violated by {gap_l:.3g}"
    assert gap_u <= tol * scale, f"{what}: upper bound violated by {gap_u:.3g}"


def _close(what, a, b, rtol=1e-7):
    same_inf = (a == b)
    ok = same_inf | ((a - b).abs() <= rtol * (1 + a.abs().nan_to_num(0, 0, 0)))
    assert ok.all(), f"{what}: {a} vs {b}"


def check_seed(seed: int, *, methods=METHODS, batch: int = 3, variants: bool = True,
               dtype=torch.float64) -> str:
    """Every check on the model of ``seed``; returns its description (or raises)."""
    rng = random.Random(seed * 7919 + 1)
    tol = TOL if dtype == torch.float64 else 1e-4      # float32: the model's own rounding
    model, shape = random_model(seed)
    model = model.to(dtype)
    name = describe(model)
    x = torch.randn(batch, *shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    try:
        net = lirpac.compile(model, x)
    except UnsupportedOperationError:
        return name + " (unsupported)"
    n_out = model(x).shape[1]
    norm = rng.choice([math.inf, math.inf, 2.0, 1.0, "box"])
    eps = rng.choice([0.01, 0.1, 0.5, 1.5])
    lower = upper = None
    if norm == "box":
        lo = x - eps * torch.rand(x.shape, dtype=dtype)
        hi = x + eps * torch.rand(x.shape, dtype=dtype)
        pert, norm = lirpac.Box(lo, hi), math.inf
        centre, radius = (lo + hi) / 2, (hi - lo) / 2
    else:
        if rng.random() < 0.3:
            lower, upper = x - eps / 2, x + eps         # a domain box that cuts the ball
        if rng.random() < 0.3:      # one eps per sample
            eps = torch.tensor([eps, eps / 3, 0.0][:batch] + [eps] * max(0, batch - 3), dtype=dtype)
        pert = lirpac.LpBall(eps=eps, norm=norm, lower=lower, upper=upper)
        centre, radius = x, eps
    C = torch.randn(batch, 2, n_out, dtype=dtype) if rng.random() < 0.4 else None
    samples = sample_lp_ball(centre, radius, norm, 64, lower, upper,
                             generator=torch.Generator().manual_seed(seed))
    samples = torch.cat([samples, attack(model, centre, radius, norm, n_out, C, lower, upper,
                                         seed=seed)])
    if isinstance(pert, lirpac.Box):
        samples = torch.minimum(torch.maximum(samples, lo), hi)
    out = _outputs(model, samples, C)
    where = f"seed {seed}: {name}; {pert!r}"[:400]
    results = {}
    for method in methods:
        opts = ALPHA if method == "alpha-crown" else None
        lb, ub = net.bounds(x, pert, method=method, C=C, options=opts)
        check_contains(f"{where}; {method}", out, lb, ub, tol)
        results[method] = (lb, ub)
    if not variants:
        return name
    onnx_net = _onnx_compiled(model, x)
    if onnx_net is not None:
        for method in ("ibp", "crown"):
            lb, ub = onnx_net.bounds(x, pert, method=method, C=C)
            check_contains(f"{where}; {method} [onnx]", out, lb, ub, tol)
    # batch independence: sample 1 alone
    one = _one(pert, 1)
    for method in ("ibp", "crown", "forward"):
        if method not in results:
            continue
        lb, ub = net.bounds(x[1:2], one, method=method, C=None if C is None else C[1:2])
        rtol = 1e-7 if dtype == torch.float64 else 1e-4
        _close(f"{where}; {method} alone vs in batch (lower)", lb[0], results[method][0][1], rtol)
        _close(f"{where}; {method} alone vs in batch (upper)", ub[0], results[method][1][1], rtol)
    # exact variants: conv modes, no passes
    others = [("patches", dict(conv_mode="patches")), ("matrix", dict(conv_mode="matrix")),
              ("no passes", dict(passes=[]))]
    for label, kwargs in others:
        try:
            other = lirpac.compile(model, x, **kwargs)
        except UnsupportedOperationError:
            continue
        for method in ("ibp", "crown"):
            if method not in results:
                continue
            lb, ub = other.bounds(x, pert, method=method, C=C)
            check_contains(f"{where}; {method} [{label}]", out, lb, ub, tol)
            if label == "no passes" and not isinstance(pert, lirpac.Box) and pert.norm != math.inf:
                continue    # the folded first layer meets the ball's exact dual-norm bound
            rtol = (1e-7 if label != "no passes" else 1e-5) if dtype == torch.float64 else 1e-3
            _close(f"{where}; {method} [{label}] lower", lb, results[method][0], rtol)
            _close(f"{where}; {method} [{label}] upper", ub, results[method][1], rtol)
    return name


def _onnx_compiled(model, x):
    """The model exported to ONNX (torch's TorchScript exporter) and compiled by the ONNX
    frontend, or None where the export or an op is not supported."""
    import io
    import warnings
    from lirpac.errors import ModelFormatError
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, x[:1], buffer, dynamo=False, input_names=["x"],
                              dynamic_axes={"x": {0: "batch"}})
    except Exception:       # noqa: BLE001 - an export torch cannot do is not lirpac's
        return None
    import onnx
    try:
        return lirpac.compile(onnx.load_from_string(buffer.getvalue()))
    except (UnsupportedOperationError, ModelFormatError):
        return None


def _one(pert, i):
    """The perturbation of sample i alone."""
    if isinstance(pert, lirpac.Box):
        return lirpac.Box(pert.lower[i:i + 1], pert.upper[i:i + 1])
    cut = (lambda t: t[i:i + 1] if isinstance(t, torch.Tensor) else t)
    return lirpac.LpBall(eps=cut(pert.eps), norm=pert.norm, lower=cut(pert.lower), upper=cut(pert.upper))


if __name__ == "__main__":
    torch.set_num_threads(1)
    first, last = int(sys.argv[1]), int(sys.argv[2])
    dtype = torch.float32 if sys.argv[3:] == ["float32"] else torch.float64
    failed = 0
    for s in range(first, last):
        try:
            check_seed(s, dtype=dtype)
        except Exception as e:      # noqa: BLE001 - a fuzzer reports every failure
            failed += 1
            print(f"FAIL seed {s}: {type(e).__name__}: {str(e)[:600]}", flush=True)
            if not isinstance(e, AssertionError):
                traceback.print_exc(limit=-3)
    print(f"{failed} failures in {last - first} seeds")
