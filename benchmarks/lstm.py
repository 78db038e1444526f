#!/usr/bin/env python
"""Time, memory and tightness of CROWN and alpha-CROWN on an LSTM over MNIST-shaped rows.

The model is what a user writes: an ``nn.LSTMCell(112, 64)`` looped over the 7 rows of 112
pixels of a 28x28 image (input (batch, 7, 112)), hidden and cell state started with
``torch.zeros(batch, 64)``, and a ``Linear(64, 10)`` head on the last hidden state (fixed seed,
untrained). The spec is the margins of the true class (``lirpac.margin_spec``: f_y - f_j for
the 9 other classes), labels drawn at random; inputs uniform in [0, 1] (seed 0), an L-inf ball
of radius ``--eps``.

Every (method, batch) row runs in a fresh worker subprocess (one at a time) that compiles the
model, makes one untimed call (the method's code is generated then; alpha-CROWN's with one
iteration), checks a timed call's bounds against the clean input and random corners of the
ball, and reports that call's time and peak memory: the growth of the process's peak resident
set (VmHWM, reset through /proc/self/clear_refs just before the call) over its resident size
before it (benchmarks/bounds.py's probe: every temporary counts, no tracemalloc overhead).

``--reference PYTHON`` runs each row again with auto_LiRPA under that interpreter, on the same
weights written as the explicit cell (two linear maps, sigmoid, tanh and products, the form
its own LSTM example uses), with the same spec and ball.

    python benchmarks/lstm.py
    python benchmarks/lstm.py --batch 1 16 --methods crown alpha-crown --iterations 20 --threads 1
    python benchmarks/lstm.py --reference /work/ref-venv/bin/python
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bounds import (REFERENCE_METHODS, record_error, _fmt, _limit_address_space,  # noqa: E402
                    _malloc_trim, _reset_peak_rss, _status_kb, environment)

STEPS, ROW, HIDDEN, CLASSES = 7, 112, 64, 10
MODEL_SEED, INPUT_SEED = 0, 0


def build(explicit: bool):
    """The LSTM (``explicit``: the same weights as an explicit cell, for the reference)."""
    import torch
    import torch.nn as nn

    class RowLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = nn.LSTMCell(ROW, HIDDEN)
            self.head = nn.Linear(HIDDEN, CLASSES)

        def forward(self, x):
            h = torch.zeros(x.shape[0], HIDDEN, dtype=x.dtype)
            c = torch.zeros(x.shape[0], HIDDEN, dtype=x.dtype)
            for t in range(STEPS):
                h, c = self.cell(x[:, t], (h, c))
            return self.head(h)

    class ExplicitRowLSTM(nn.Module):
        """nn.LSTMCell's equations (gates i, f, g, o) with its weights."""
        def __init__(self, lstm: RowLSTM):
            super().__init__()
            self.ih, self.hh = nn.Linear(ROW, 4 * HIDDEN), nn.Linear(HIDDEN, 4 * HIDDEN)
            with torch.no_grad():
                self.ih.weight.copy_(lstm.cell.weight_ih)
                self.ih.bias.copy_(lstm.cell.bias_ih)
                self.hh.weight.copy_(lstm.cell.weight_hh)
                self.hh.bias.copy_(lstm.cell.bias_hh)
            self.head = lstm.head

        def forward(self, x):
            gates = self.ih(x[:, 0]) + self.hh.bias     # h = 0 at the first step
            c = None
            for t in range(STEPS):
                if t:
                    gates = self.ih(x[:, t]) + self.hh(h)
                i, f, g, o = (gates[:, k * HIDDEN:(k + 1) * HIDDEN] for k in range(4))
                new = torch.sigmoid(i) * torch.tanh(g)
                c = new if c is None else torch.sigmoid(f) * c + new
                h = torch.sigmoid(o) * torch.tanh(c)
            return self.head(h)

    torch.manual_seed(MODEL_SEED)
    model = RowLSTM().eval()
    return (ExplicitRowLSTM(model) if explicit else model).eval()


def data(batch: int):
    import torch
    g = torch.Generator().manual_seed(INPUT_SEED)
    x = torch.rand(max(batch, 16), STEPS, ROW, generator=g)[:batch].contiguous()
    labels = torch.randint(0, CLASSES, (max(batch, 16),), generator=g)[:batch]
    return x, labels


def margins(labels):
    """(B, 9, 10) spec: f_y - f_j for every j != y."""
    import torch
    eye = torch.eye(CLASSES)
    rows = [eye[y].unsqueeze(0) - eye[[j for j in range(CLASSES) if j != y]] for y in labels.tolist()]
    return torch.stack(rows)


def _lirpac_calls(cfg, model, x, C):
    import lirpac
    net = lirpac.compile(model, x[:1])
    ball = lirpac.LpBall(eps=cfg["eps"])
    options = {"iterations": cfg["iterations"]} if cfg["method"] == "alpha-crown" else None

    def call(warm=False):
        opts = {"iterations": 1} if warm and options else options
        return net.bounds(x, ball, method=cfg["method"], C=C, **({"options": opts} if opts else {}))
    return call


def _reference_calls(cfg, model, x, C):
    import torch
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm
    opts = {"optimize_bound_args": {"iteration": cfg["iterations"]}}
    bounded = BoundedModule(model, torch.empty_like(x), bound_opts=opts, verbose=False)
    bx = BoundedTensor(x, PerturbationLpNorm(eps=cfg["eps"], norm=float("inf")))
    method = REFERENCE_METHODS[cfg["method"]]

    def call(warm=False):
        if warm:
            bounded.set_bound_opts({"optimize_bound_args": {"iteration": 1}})
        out = bounded.compute_bounds(x=(bx,), C=C, method=method)
        if warm:
            bounded.set_bound_opts(opts)
        return out
    return call


def run_worker(cfg):
    """One row, measured in this process; a JSON-able dict (never raises)."""
    res = {"method": cfg["method"], "batch": cfg["batch"]}
    stage = "model"
    try:
        import gc
        import torch
        if cfg.get("threads"):
            torch.set_num_threads(cfg["threads"])
        model = build(explicit=bool(cfg.get("reference")))
        x, labels = data(cfg["batch"])
        C = margins(labels)
        stage = "compile"
        t0 = time.perf_counter()
        call = (_reference_calls if cfg.get("reference") else _lirpac_calls)(cfg, model, x, C)
        res["compile_s"] = time.perf_counter() - t0
        _limit_address_space(cfg.get("mem_limit_gb"))
        with torch.no_grad():
            stage = "warm-up"
            call(warm=True)
            stage = "bounds"
            gc.collect()
            _malloc_trim()
            probe = _reset_peak_rss()
            base = _status_kb("VmRSS")
            t0 = time.perf_counter()
            lb, ub = call()
            res["time_s"] = time.perf_counter() - t0
            if probe:
                res["peak_mem_mb"] = max(0, _status_kb("VmHWM") - base) / 1024
                res["peak_rss_mb"] = _status_kb("VmHWM") / 1024
            stage = "check"
            width = (ub - lb).double()
            res["mean_width"] = width.mean().item()
            g = torch.Generator().manual_seed(1234)
            worst = 0.0
            for k in range(9):
                sign = torch.randint(0, 2, x.shape, generator=g).to(x) * 2 - 1
                point = x if k == 0 else x + cfg["eps"] * sign
                y = torch.einsum("bso,bo->bs", C, model(point))
                worst = max(worst, (lb - y).max().item(), (y - ub).max().item())
            if worst > 1e-4 * max(1.0, width.abs().max().item()):
                res["warning"] = f"UNSOUND: a sampled output lies {worst:.3g} outside the bounds"
    except BaseException as exc:     # report, never crash the driver
        if isinstance(exc, KeyboardInterrupt):
            raise
        record_error(res, exc, stage)
    return res


def run_row(cfg, timeout, python=None):
    base = {"method": cfg["method"], "batch": cfg["batch"]}
    cmd = [python or sys.executable, str(Path(__file__).resolve()), "--_worker", json.dumps(cfg)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**base, "error": f"Timeout(>{timeout:g}s)"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("@@RESULT "):
            return json.loads(line[len("@@RESULT "):])
    tail = (proc.stderr or "").strip().splitlines()[-1:] or [""]
    return {**base, "error": f"WorkerExit({proc.returncode})", "error_message": tail[0][:300]}


def cells(r):
    if "error" in r:
        return [r["error"], "", "", ""]
    return [_fmt(r.get("time_s"), ".2f"), _fmt(r.get("peak_mem_mb"), ".0f"),
            _fmt(r.get("peak_rss_mb"), ".0f"), _fmt(r.get("mean_width"), ".5g")]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["crown", "alpha-crown"], choices=["crown", "alpha-crown", "ibp", "crown-ibp"])
    p.add_argument("--batch", nargs="+", type=int, default=[1, 16])
    p.add_argument("--eps", type=float, default=0.01, help="L-inf radius (default 0.01)")
    p.add_argument("--iterations", type=int, default=20, help="alpha-CROWN iterations (default 20)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in the workers")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds per row (default 1200)")
    p.add_argument("--mem-limit-gb", type=float, default=16.0,
                   help="extra virtual memory a worker may take after compiling (default 16; 0: none)")
    p.add_argument("--reference", metavar="PYTHON", help="also run auto_LiRPA under this interpreter")
    p.add_argument("--json", metavar="OUT", help="also write the rows to this JSON file")
    args = p.parse_args(argv)

    env = environment()
    print(f"# lirpac LSTM benchmark  {env['date']}")
    print(f"# torch {env['torch']}, lirpac {env['lirpac']}, threads {args.threads or env['threads']} "
          f"(of {env['os_cpus']} CPUs); cpu: {env['cpu']}")
    print(f"# LSTMCell({ROW}, {HIDDEN}) x {STEPS} steps + Linear({HIDDEN}, {CLASSES}); margins spec; "
          f"L-inf eps {args.eps:g}; alpha-crown {args.iterations} iterations")
    print("# time: one call after a warm-up call; mem: peak RSS growth during that call; "
          "rss: the process's peak RSS then (MB)")
    head = ["method", "batch", "time (s)", "mem (MB)", "rss (MB)", "mean width"]
    if args.reference:
        head += ["ref time (s)", "ref mem (MB)", "ref rss (MB)", "ref width"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" if k < 1 else "---:" for k in range(len(head))) + "|")
    rows = []
    for method in args.methods:
        for batch in args.batch:
            cfg = {"method": method, "batch": batch, "eps": args.eps, "iterations": args.iterations,
                   "threads": args.threads, "mem_limit_gb": args.mem_limit_gb}
            r = run_row(cfg, args.timeout)
            line = [method, str(batch)] + cells(r)
            if args.reference:
                r["reference"] = run_row({**cfg, "reference": True}, args.timeout, args.reference)
                line += cells(r["reference"])
            rows.append(r)
            print("| " + " | ".join(line) + " |" + (f"  <- {r['warning']}" if r.get("warning") else ""),
                  flush=True)
    for r in rows:
        for who, row in (("lirpac", r), ("reference", r.get("reference", {}))):
            if "error" in row:
                print(f"# {who} {r['method']} batch {r['batch']}: {row['error']} at "
                      f"{row.get('error_stage', '?')}: {row.get('error_message', '')}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "settings": vars(args), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--_worker":
        print("@@RESULT " + json.dumps(run_worker(json.loads(sys.argv[2]))), flush=True)
        sys.exit(0)
    sys.exit(main())
