#!/usr/bin/env python
"""Bound width / exact range width under word substitution, on short random sentences where
every substitution can be enumerated (the models of tests/word_models.py,
random weights), compiled on token ids.

    python benchmarks/word_substitution.py
    python benchmarks/word_substitution.py --k 1 2 3 --methods ibp crown alpha-crown --sentences 8
    python benchmarks/word_substitution.py --archs attention --methods alpha-crown --iterations 50
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import lirpac                                                       # noqa: E402
from word_models import (T, V, Attention, Bag, Recurrent, exact_range,  # noqa: E402
                         random_substitutes)

ARCHS = {"bag": Bag, "attention": Attention, "lstm": Recurrent}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS))
    parser.add_argument("--methods", nargs="+", default=["ibp", "crown-ibp", "crown", "alpha-crown"])
    parser.add_argument("--k", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--sentences", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=20, help="alpha-CROWN's iterations")
    args = parser.parse_args(argv)
    print(f"{'model':<10} {'k':>2} " + " ".join(f"{m:>12}" for m in args.methods) + "   (mean width ratio; seconds)")
    for name in args.archs:
        torch.manual_seed(0)
        model = ARCHS[name]().eval()
        net = lirpac.compile(model, torch.zeros(1, T, dtype=torch.long))      # on token ids
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, V, (args.sentences, T), generator=g)
        subs = random_substitutes(g, batch=args.sentences, most=3)
        for k in args.k:
            with torch.no_grad():
                lo, hi = exact_range(model, ids, subs, k)
            ratios, start = [], time.perf_counter()
            for method in args.methods:
                options = {"iterations": args.iterations} if method == "alpha-crown" else None
                with torch.set_grad_enabled(method == "alpha-crown"):
                    lower, upper = net.bounds(ids, lirpac.WordSubstitution(subs, k), method=method,
                                              options=options)
                assert (lower <= lo + 1e-5).all() and (upper >= hi - 1e-5).all(), "unsound"
                exact = (hi - lo).clamp(min=1e-6)
                ratios.append(((upper - lower) / exact).mean().item())
            print(f"{name:<10} {k:>2} " + " ".join(f"{r:12.3f}" for r in ratios)
                  + f"   {time.perf_counter() - start:.1f}", flush=True)


if __name__ == "__main__":
    main()
