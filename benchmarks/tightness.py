#!/usr/bin/env python
"""Tightness of lirpac's CROWN against auto_LiRPA's, activation by activation.

For each elementwise function both support, two small nets on the same weights: one layer
(Linear(8, 16) -> f -> Linear(16, 4)) and two (Linear -> f -> Linear(16, 16) -> f -> Linear);
products x*y of two linear branches, softmax and a 3-step LSTM cell (the explicit form) too.
Inputs uniform in [-1, 1]^8 (batch 8, seed 0), L-inf balls of several radii, wide ones
included (the pre-activations then straddle inflection points). Functions defined only for
positive inputs (log, reciprocal, sqrt) get a first-layer bias that keeps their interval
inputs above 0.05 (IBP, so for any method).

The reference runs in a separate process under ``--reference PYTHON`` (auto_LiRPA's
interpreter): this file, in worker mode, rebuilds the same nets from the case names, loads
the weights and inputs written with torch.save, and writes its bounds back.

Per case: mean of lirpac width / reference width over all rows (sample x output), the number
of bound sides where lirpac is looser than the reference by more than 1e-6 relative (of the
reference width), and where it is tighter by as much; and for each library the number of
sides that exclude an output sampled in the ball (random points and corners): a "tighter"
bound that excludes a real output is unsound, not tight.

    python benchmarks/tightness.py --reference ../ref-venv/bin/python
    python benchmarks/tightness.py --reference ../ref-venv/bin/python --cases tanh --eps 0.5
"""
import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

IN, HID, OUT, BATCH = 8, 16, 4, 8
FLOOR = 0.05           # the least input of log, reciprocal, sqrt
RTOL = 1e-6

FUNCS = {
    "sigmoid": torch.sigmoid, "tanh": torch.tanh, "exp": torch.exp,
    "log": torch.log, "reciprocal": torch.reciprocal, "sqrt": torch.sqrt,
    "sin": torch.sin, "cos": torch.cos, "gelu": nn.functional.gelu,
    "softplus": nn.functional.softplus, "pow2": lambda x: x ** 2, "pow3": lambda x: x ** 3,
    "atan": torch.atan,
}
POSITIVE = {"log", "reciprocal", "sqrt"}
INCREASING = {"sigmoid", "tanh", "exp", "log", "sqrt", "softplus", "pow3", "atan"}


class Act(nn.Module):
    def __init__(self, name, layers):
        super().__init__()
        self.name = name
        self.hidden = nn.ModuleList([nn.Linear(IN, HID)] + [nn.Linear(HID, HID)
                                                            for _ in range(layers - 1)])
        self.head = nn.Linear(HID, OUT)

    def forward(self, x):
        for layer in self.hidden:
            x = FUNCS[self.name](layer(x))
        return self.head(x)


class Product(nn.Module):
    """x * y of two linear branches (per layer)."""
    def __init__(self, layers):
        super().__init__()
        dims = [IN] + [HID] * layers
        self.a = nn.ModuleList([nn.Linear(d, HID) for d in dims[:-1]])
        self.b = nn.ModuleList([nn.Linear(d, HID) for d in dims[:-1]])
        self.head = nn.Linear(HID, OUT)

    def forward(self, x):
        for a, b in zip(self.a, self.b):
            x = a(x) * b(x)
        return self.head(x)


class Softmax(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.hidden = nn.ModuleList([nn.Linear(IN, HID)] + [nn.Linear(HID, HID)
                                                            for _ in range(layers - 1)])
        self.head = nn.Linear(HID, OUT)

    def forward(self, x):
        for layer in self.hidden:
            x = torch.softmax(layer(x), dim=-1)
        return self.head(x)


class LSTM(nn.Module):
    """An LSTM cell's equations (gates i, f, g, o) over ``layers`` + 1 steps of the input."""
    def __init__(self, layers):
        super().__init__()
        self.steps = layers + 1
        self.ih, self.hh = nn.Linear(IN, 4 * HID), nn.Linear(HID, 4 * HID)
        self.head = nn.Linear(HID, OUT)

    def forward(self, x):
        gates = self.ih(x) + self.hh.bias
        c = None
        for t in range(self.steps):
            if t:
                gates = self.ih(x) + self.hh(h)
            i, f, g, o = (gates[:, k * HID:(k + 1) * HID] for k in range(4))
            new = torch.sigmoid(i) * torch.tanh(g)
            c = new if c is None else torch.sigmoid(f) * c + new
            h = torch.sigmoid(o) * torch.tanh(c)
        return self.head(h)


def build(case):
    name, layers = case.rsplit("-", 1)
    layers = int(layers)
    if name == "mul":
        return Product(layers)
    if name == "softmax":
        return Softmax(layers)
    if name == "lstm":
        return LSTM(layers)
    return Act(name, layers)


def _lift(model: Act, x, eps):
    """Shift each hidden layer's bias so its IBP lower bound is at least FLOOR."""
    lo, hi = x - eps, x + eps
    with torch.no_grad():
        for layer in model.hidden:
            w = layer.weight
            mid, rad = (lo + hi) / 2, (hi - lo) / 2
            low = mid @ w.T + layer.bias - rad @ w.abs().T
            up = mid @ w.T + layer.bias + rad @ w.abs().T
            shift = (FLOOR - low.min(0).values).clamp(min=0)
            layer.bias += shift
            low, up = low + shift, up + shift
            f = FUNCS[model.name]
            a, b = f(low), f(up)
            lo, hi = torch.minimum(a, b), torch.maximum(a, b)


def make(case, eps, seed=0):
    torch.manual_seed(seed)
    model = build(case).eval()
    x = torch.rand(BATCH, IN, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    if isinstance(model, Act) and model.name in POSITIVE:
        _lift(model, x, eps)
    return model, x


# -- the two sides -----------------------------------------------------------------------------

def lirpac_bounds(model, x, eps):
    import lirpac
    net = lirpac.compile(model, x[:1])
    lb, ub = net.bounds(x, lirpac.LpBall(eps=eps), method="crown")
    return lb.double(), ub.double()


def reference_worker(src, dst):
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm
    jobs = torch.load(src)
    out = {}
    for key, (case, eps, state, x) in jobs.items():
        model = build(case).eval()
        model.load_state_dict(state)
        try:
            bounded = BoundedModule(model, torch.empty_like(x), verbose=False)
            bx = BoundedTensor(x, PerturbationLpNorm(eps=eps, norm=float("inf")))
            with torch.no_grad():
                lb, ub = bounded.compute_bounds(x=(bx,), method="CROWN")
            out[key] = (lb.double(), ub.double())
        except Exception as exc:        # report, never crash the driver
            out[key] = f"{type(exc).__name__}: {str(exc)[:120]}"
    torch.save(out, dst)


def sampled_range(model, x, eps, n=4000, seed=1):
    """Min and max of the outputs over random points and corners of the ball."""
    g = torch.Generator().manual_seed(seed)
    inside = 2 * torch.rand(n, *x.shape, generator=g) - 1
    corners = torch.sign(torch.randn(n // 4, *x.shape, generator=g))
    pts = x + eps * torch.cat([inside, corners])
    with torch.no_grad():
        ys = model(pts.reshape(-1, x.shape[-1])).reshape(pts.shape[0], x.shape[0], -1).double()
    return ys.amin(0), ys.amax(0)


def violations(bounds, seen):
    """Sides whose bound excludes a sampled output (beyond 1e-6 of its scale)."""
    (lb, ub), (lo, hi) = bounds, seen
    tol = 1e-6 * (1 + lo.abs() + hi.abs())
    return int((lb > lo + tol).sum() + (ub < hi - tol).sum())


def compare(ours, ref):
    (la, ua), (lr, ur) = ours, ref
    width = (ur - lr).clamp(min=1e-12)
    tol = RTOL * torch.maximum(width, torch.ones_like(width) * 1e-6)
    looser = int(((lr - la) > tol).sum() + ((ua - ur) > tol).sum())
    tighter = int(((la - lr) > tol).sum() + ((ur - ua) > tol).sum())
    ratio = ((ua - la) / width).mean().item()
    return ratio, looser, tighter


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", metavar="PYTHON", required=True,
                   help="an interpreter with auto_LiRPA installed")
    p.add_argument("--cases", nargs="+", default=list(FUNCS) + ["mul", "softmax", "lstm"])
    p.add_argument("--layers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--eps", nargs="+", type=float, default=[0.05, 0.3, 1.0, 3.0])
    args = p.parse_args(argv)

    keys = [(c, L, e) for c in args.cases for L in args.layers for e in args.eps]
    jobs, ours, seen = {}, {}, {}
    for name, layers, eps in keys:
        case = f"{name}-{layers}"
        model, x = make(case, eps)
        key = f"{case}@{eps}"
        jobs[key] = (case, eps, model.state_dict(), x)
        seen[key] = sampled_range(model, x, eps)
        try:
            ours[key] = lirpac_bounds(model, x, eps)
        except Exception as exc:
            ours[key] = f"{type(exc).__name__}: {str(exc)[:120]}"
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "jobs.pt", Path(tmp) / "ref.pt"
        torch.save(jobs, src)
        subprocess.run([args.reference, str(Path(__file__).resolve()), "--_reference", str(src),
                        str(dst)], check=True)
        refs = torch.load(dst)
    rows = BATCH * OUT
    print(f"# lirpac CROWN vs auto_LiRPA CROWN; batch {BATCH}, {rows} rows (x2 sides) per case; "
          f"looser/tighter: sides beyond {RTOL:g} of the reference width")
    print("# unsound: sides whose bound excludes a sampled output (random points and corners)")
    print("| case | eps | width ratio lirpac/ref | lirpac looser | lirpac tighter | ref mean width "
          "| lirpac unsound | ref unsound |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, layers, eps in keys:
        key = f"{name}-{layers}@{eps}"
        a, r = ours[key], refs[key]
        if isinstance(a, str) or isinstance(r, str):
            print(f"| {name}-{layers} | {eps:g} | lirpac: {a if isinstance(a, str) else 'ok'}; "
                  f"ref: {r if isinstance(r, str) else 'ok'} | | | |")
            continue
        if not (torch.isfinite(r[0]).all() and torch.isfinite(r[1]).all()):
            print(f"| {name}-{layers} | {eps:g} | ref not finite | | | |")
            continue
        ratio, looser, tighter = compare(a, r)
        print(f"| {name}-{layers} | {eps:g} | {ratio:.6f} | {looser} | {tighter} | "
              f"{(r[1] - r[0]).mean().item():.4g} | {violations(a, seen[key])} | "
              f"{violations(r, seen[key])} |", flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--_reference":
        reference_worker(sys.argv[2], sys.argv[3])
        sys.exit(0)
    sys.exit(main())
