#!/usr/bin/env python
"""Mean output widths of IBP and backward-mode bounds under the perturbation sets beyond the
L-inf ball (L0 sets, Lp balls for other p) on the benchmark model zoo.

    python benchmarks/perturbation_widths.py
    python benchmarks/perturbation_widths.py --models mlp cnn_2c --k 1 4 --methods ibp crown
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
import lirpac                                             # noqa: E402
from models.zoo import BENCHMARK_MODELS                   # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(BENCHMARK_MODELS))
    parser.add_argument("--methods", nargs="+", default=["ibp", "crown-ibp", "crown"])
    parser.add_argument("--k", nargs="+", type=int, default=[1, 4], help="L0 budgets")
    parser.add_argument("--p", nargs="+", type=float, default=[3.0], help="Lp norms (eps --eps)")
    parser.add_argument("--eps", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    print(f"{'model':<10} {'set':<14} " + " ".join(f"{m:>12}" for m in args.methods) + "   seconds")
    for name in args.models:
        factory, shape = BENCHMARK_MODELS[name]
        model = factory()
        x = torch.rand(args.batch, *shape, generator=torch.Generator().manual_seed(0))
        net = lirpac.compile(model, x[:1])
        sets = [(f"L0 k={k}", lirpac.L0Ball(k, 0.0, 1.0)) for k in args.k]
        sets += [(f"L{p:g} eps={args.eps:g}", lirpac.LpBall(eps=args.eps, norm=p)) for p in args.p]
        for label, ball in sets:
            widths, start = [], time.perf_counter()
            for method in args.methods:
                lower, upper = net.bounds(x, ball, method=method)
                widths.append((upper - lower).mean().item())
            print(f"{name:<10} {label:<14} " + " ".join(f"{w:12.4g}" for w in widths)
                  + f"   {time.perf_counter() - start:.1f}", flush=True)


if __name__ == "__main__":
    main()
