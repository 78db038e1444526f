#!/usr/bin/env python
"""Certified-training speed: loss fusion, and one CROWN-IBP epoch beside auto_LiRPA.

1. Time per training step (clean forward, robust loss, backward, Adam step) at batch 64 on a
   CIFAR CNN (cnn_4layer: conv 3-16 4x4/2, conv 16-32 4x4/2, fc 2048-100, fc 100-n), CROWN-IBP
   at beta 0.5 (both bounds, as during the ramp), fused (one backward row per sample) vs
   unfused (n - 1 rows), for n = 10 and 200 classes. Median of --repeat steps after warm-up.
2. One epoch of CROWN-IBP (the mixed IBP / CROWN-IBP margin loss of auto_LiRPA's
   simple_training.py, unfused, beta 0.5) on --epoch-samples random 32x32 images, batch 64,
   the same model and data, with lirpac and with the reference library (--reference PYTHON,
   auto_LiRPA 0.7.1 in its own environment, run in a subprocess), plus lirpac fused.

    python benchmarks/training.py --reference /work/ref-venv/bin/python
    python benchmarks/training.py --classes 10 --repeat 5 --epoch-samples 640

Torch runs on --threads threads (default 1: on a shared machine more threads are noisier).
This file must import without lirpac: the reference run executes it with --reference-worker.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F
from torch import nn


def cnn_4layer(n_classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 4, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32 * 8 * 8, 100), nn.ReLU(), nn.Linear(100, n_classes))


def data(n: int, n_classes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, n_classes, (n,), generator=g)


def margin_c(y, n):
    eye = torch.eye(n)
    c = eye[y].unsqueeze(1) - eye.unsqueeze(0)
    keep = y.unsqueeze(1) != torch.arange(n).unsqueeze(0)
    return c[keep].view(len(y), n - 1, n)


def worst_ce(lb):
    logits = torch.cat([torch.zeros_like(lb[:, :1]), -lb], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(lb), dtype=torch.long))


# -- lirpac -----------------------------------------------------------------------------------

def lirpac_step_fn(model, n_classes, eps, fused, beta=0.5):
    import lirpac
    from lirpac import training
    x0, _ = data(2, n_classes)
    net = lirpac.compile(model, x0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    ball = lirpac.LpBall(eps=eps, lower=0.0, upper=1.0)

    def step(x, y):
        clean = F.cross_entropy(model(x), y)
        robust = training.robust_loss(net, x, y, ball, "crown-ibp", beta=beta, fused=fused)
        loss = robust + 0.0 * clean
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()
    return step


# -- auto_LiRPA (run by the reference interpreter) ----------------------------------------------

def reference_step_fn(model, n_classes, eps, beta=0.5):
    from auto_LiRPA import BoundedModule, BoundedTensor
    from auto_LiRPA.perturbations import PerturbationLpNorm
    x0, _ = data(2, n_classes)
    bounded = BoundedModule(model, x0, device="cpu")
    opt = torch.optim.Adam(bounded.parameters(), lr=1e-4)

    def step(x, y):
        c = margin_c(y, n_classes)
        ptb = PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=(x - eps).clamp(min=0),
                                 x_U=(x + eps).clamp(max=1))
        bx = BoundedTensor(x, ptb)
        clean = F.cross_entropy(bounded(bx), y)
        ilb, _ = bounded.compute_bounds(IBP=True, C=c, method=None)
        clb, _ = bounded.compute_bounds(IBP=False, C=c, method="backward", bound_upper=False)
        loss = worst_ce(beta * clb + (1 - beta) * ilb) + 0.0 * clean
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()
    return step


def time_epoch(step, x, y, batch):
    step(x[:batch], y[:batch])                              # warm-up (code generation, caches)
    start = time.perf_counter()
    for i in range(0, len(x) - batch + 1, batch):
        step(x[i:i + batch], y[i:i + batch])
    return time.perf_counter() - start


def time_steps(step, x, y, batch, repeat):
    step(x[:batch], y[:batch])
    times = []
    for r in range(repeat):
        i = (r * batch) % (len(x) - batch + 1)
        start = time.perf_counter()
        step(x[i:i + batch], y[i:i + batch])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def reference_worker(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = cnn_4layer(10)
    x, y = data(args.epoch_samples, 10)
    seconds = time_epoch(reference_step_fn(model, 10, args.eps), x, y, args.batch)
    print(json.dumps({"epoch_s": seconds}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, nargs="+", default=[10, 200])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--eps", type=float, default=2 / 255)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--epoch-samples", type=int, default=1280)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reference", default=None, help="python of an environment with auto_LiRPA")
    p.add_argument("--reference-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.reference_worker:
        return reference_worker(args)
    torch.set_num_threads(args.threads)
    print(f"# training benchmark: {platform.processor() or platform.machine()}, torch "
          f"{torch.__version__}, {args.threads} thread(s), batch {args.batch}, eps {args.eps:.4f}")
    print("\n| classes | unfused step (ms) | fused step (ms) | speed-up |")
    print("|--------:|------------------:|----------------:|---------:|")
    for n in args.classes:
        x, y = data(args.batch * 4, n)
        row = []
        for fused in (False, True):
            torch.manual_seed(0)
            row.append(time_steps(lirpac_step_fn(cnn_4layer(n), n, args.eps, fused), x, y,
                                  args.batch, args.repeat))
        print(f"| {n} | {row[0] * 1e3:.1f} | {row[1] * 1e3:.1f} | {row[0] / row[1]:.2f}x |")
    x, y = data(args.epoch_samples, 10)
    print(f"\nOne CROWN-IBP epoch: {args.epoch_samples} samples, batch {args.batch}, 10 classes")
    print("\n| library | epoch (s) | reference / this |")
    print("|---|---:|---:|")
    results = {}
    for name, fused in (("lirpac (unfused)", False), ("lirpac (fused)", True)):
        torch.manual_seed(0)
        results[name] = time_epoch(lirpac_step_fn(cnn_4layer(10), 10, args.eps, fused), x, y, args.batch)
    if args.reference:
        out = subprocess.run([args.reference, __file__, "--reference-worker", "--threads",
                              str(args.threads), "--batch", str(args.batch), "--eps", str(args.eps),
                              "--epoch-samples", str(args.epoch_samples)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(f"reference failed: {out.stderr[-1500:]}")
        else:
            results["auto_LiRPA 0.7.1"] = json.loads(out.stdout.strip().splitlines()[-1])["epoch_s"]
    ref = results.get("auto_LiRPA 0.7.1")
    for name, seconds in results.items():
        ratio = f"{ref / seconds:.2f}x" if ref else "-"
        print(f"| {name} | {seconds:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
