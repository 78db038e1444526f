#!/usr/bin/env python
"""Before/after timing of one configuration: a git revision (A) against the working tree (B).

This machine's speed drifts by up to 1.3x within an hour, and a process can land in a slow
mode for its whole life, so timings taken minutes apart do not compare. This script runs A and
B in alternating worker processes (each: compile, warm up, median of ``--calls`` calls, page
faults per call) and prints every pair and the median of the pairs' ratios.

    python benchmarks/ab.py --base HEAD~3 --method crown --model mlp --pairs 4
    python benchmarks/ab.py --base 362c160 --method alpha-crown --calls 30

A is checked out with ``git worktree`` into a temporary folder (removed afterwards) and
imported from there by a small import hook; B is this checkout.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

WORKER = r'''
import importlib.util, json, os, resource, statistics, sys, time
root = sys.argv[1]
PACKAGES = {"lirpac": "lirpac", "lirpac.ir": "ir", "lirpac.passes": "passes", "lirpac.codegen": "codegen"}

class FromRoot:
    """Import lirpac and its top-level subpackages from ``root`` (not the installed copy)."""
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name not in PACKAGES:
            return None
        folder = os.path.join(root, PACKAGES[name])
        return importlib.util.spec_from_file_location(name, os.path.join(folder, "__init__.py"),
                                                      submodule_search_locations=[folder])

sys.meta_path.insert(0, FromRoot)
sys.path.insert(0, root)
import torch
import lirpac
assert lirpac.__file__.startswith(root), lirpac.__file__
cfg = json.loads(sys.argv[2])
# the models of this checkout's zoo for both sides (A's zoo may predate a model)
spec = importlib.util.spec_from_file_location("_ab_zoo", cfg["zoo"])
zoo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(zoo)
torch.set_num_threads(cfg["threads"])
factory, shape = {**zoo.BENCHMARK_MODELS, **getattr(zoo, "CALIBRATION_MODELS", {})}[cfg["model"]]
model = factory().eval()
x = torch.rand(cfg["batch"], *shape, generator=torch.Generator().manual_seed(0))
net = lirpac.compile(model, x[:1])
ball = lirpac.LpBall(eps=cfg["eps"])
with torch.no_grad():
    for _ in range(cfg["warmup"]):
        net.bounds(x, ball, method=cfg["method"])
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = []
    for _ in range(cfg["calls"]):
        start = time.perf_counter()
        net.bounds(x, ball, method=cfg["method"])
        times.append(time.perf_counter() - start)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / cfg["calls"]
print(json.dumps({"ms": statistics.median(times) * 1e3, "faults": faults}))
'''


def run_worker(root: Path, cfg: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", WORKER, str(root), json.dumps(cfg)],
                         capture_output=True, text=True, cwd=root)
    if out.returncode != 0:
        raise SystemExit(f"worker on {root} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="HEAD", help="git revision timed as A (default HEAD)")
    parser.add_argument("--method", default="crown")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--eps", type=float, default=0.01)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--calls", type=int, default=None, help="timed calls per process "
                        "(default 600, 30 for alpha-crown)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    calls = args.calls or (30 if args.method == "alpha-crown" else 600)
    cfg = {"method": args.method, "model": args.model, "batch": args.batch, "eps": args.eps,
           "zoo": str(REPO / "examples" / "models" / "zoo.py"),
           "calls": calls, "warmup": args.warmup, "threads": args.threads}
    tmp = Path(tempfile.mkdtemp(prefix="lirpac-ab-"))
    base = tmp / "base"
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base), args.base], cwd=REPO, check=True)
    try:
        print(f"# A = {args.base}, B = working tree; {args.model} {args.method} batch {args.batch}, "
              f"eps {args.eps}, median of {calls} calls per process")
        print("| pair | A (ms) | B (ms) | B/A | A faults/call | B faults/call |")
        print("|---:|---:|---:|---:|---:|---:|")
        ratios = []
        for pair in range(1, args.pairs + 1):
            # alternate which side runs first: the second process of a pair measured ~6%
            # slower in an A/A run (the same tree on both sides)
            if pair % 2:
                a, b = run_worker(base, cfg), run_worker(REPO, cfg)
            else:
                b, a = run_worker(REPO, cfg), run_worker(base, cfg)
            ratios.append(b["ms"] / a["ms"])
            print(f"| {pair} | {a['ms']:.3f} | {b['ms']:.3f} | {ratios[-1]:.3f} | {a['faults']:.0f} | {b['faults']:.0f} |",
                  flush=True)
        print(f"\nmedian B/A: {statistics.median(ratios):.3f}")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO, check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    main()
