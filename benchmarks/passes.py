#!/usr/bin/env python
"""Per-pass timing table on the benchmark zoo, and bound time before/after the default passes.

For each model of ``examples/models/zoo.py`` (fixed seed): lower it once, run DEFAULT_PASSES
and print each pass's time and node counts (all nodes, and perturbed ones: the nodes the bound
computation propagates through); then time ``net.bounds`` (median of ``--repeat`` calls after a
warm-up) for each method with no passes and with the default passes, and check both give the
same bounds. Last, CROWN's choice of forward mode for intermediate bounds (passes/bound_needs.py)
on MLPs with a 5-dimensional input (ACAS Xu-like; 2 and 4 hidden layers of widths --widths): time with the choice and
with backward passes only, and the largest bound difference.

    python benchmarks/passes.py
    python benchmarks/passes.py --models cnn_4c_bn --methods ibp crown-ibp --batch 8 --repeat 5
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

import torch  # noqa: E402

import lirpac  # noqa: E402
from examples.models.zoo import BENCHMARK_MODELS  # noqa: E402
from lirpac.api import CompiledNet  # noqa: E402
from lirpac.ir.torch_frontend import lower_module  # noqa: E402
from lirpac.passes import run_passes  # noqa: E402


def _perturbed(graph) -> int:
    return sum(n.perturbed for n in graph.nodes)


def pass_table(name, graph) -> None:
    folded, records = run_passes(graph)
    print(f"\n{name}: {len(graph.nodes)} nodes ({_perturbed(graph)} perturbed) -> "
          f"{len(folded.nodes)} ({_perturbed(folded)} perturbed)")
    print(f"  {'pass':<20} {'ms':>8} {'nodes':>11}")
    for r in records:
        print(f"  {r.name:<20} {r.seconds * 1e3:8.3f} {r.nodes_before:>5}->{r.nodes_after:<5}")
    print(f"  {'total':<20} {sum(r.seconds for r in records) * 1e3:8.3f}")


def _median_time(net, x, ball, method, repeat) -> float:
    net.bounds(x, ball, method=method)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        net.bounds(x, ball, method=method)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bound_times(name, model, graph, shape, methods, batch, repeat, eps) -> None:
    x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(0))
    ball = lirpac.LpBall(eps=eps)
    plain, folded = CompiledNet(graph, [], module=model), CompiledNet(graph, None, module=model)
    with torch.no_grad():
        for method in methods:
            lo0, up0 = plain.bounds(x, ball, method=method)
            lo1, up1 = folded.bounds(x, ball, method=method)
            diff = max((lo0 - lo1).abs().max().item(), (up0 - up1).abs().max().item())
            t0 = _median_time(plain, x, ball, method, repeat)
            t1 = _median_time(folded, x, ball, method, repeat)
            print(f"  {method:<10} batch {batch:>3}: no passes {t0 * 1e3:9.2f} ms, default passes "
                  f"{t1 * 1e3:9.2f} ms ({t0 / t1:4.2f}x), max |bound diff| {diff:.1e}")


def low_dim_mlp(width: int, depth: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(5, width)]
    for _ in range(depth - 1):
        layers += [torch.nn.ReLU(), torch.nn.Linear(width, width)]
    return torch.nn.Sequential(*layers, torch.nn.ReLU(), torch.nn.Linear(width, 5)).eval()


def mode_choice_times(widths, batch, repeat) -> None:
    from lirpac.passes import bound_needs
    print(f"\nCROWN's mode choice: 5 inputs, batch {batch}, Box of radius 0.2")
    x = torch.rand(batch, 5, generator=torch.Generator().manual_seed(0))
    box = lirpac.Box(x - 0.2, x + 0.2)
    for width, depth in [(w, d) for w in widths for d in (2, 4)]:
        model = low_dim_mlp(width, depth)
        share = bound_needs.FORWARD_SHARE
        chosen = lirpac.compile(model, x[:1])
        bound_needs.FORWARD_SHARE = 0.0
        try:
            backward = lirpac.compile(model, x[:1])
        finally:
            bound_needs.FORWARD_SHARE = share
        modes = [n.notes["crown"].split()[0] for n in chosen.graph.nodes if "crown" in n.notes]
        with torch.no_grad():
            lo0, up0 = backward.bounds(x, box)
            lo1, up1 = chosen.bounds(x, box)
            t0 = _median_time(backward, x, box, "crown", repeat)
            t1 = _median_time(chosen, x, box, "crown", repeat)
        diff = max((lo0 - lo1).abs().max().item(), (up0 - up1).abs().max().item())
        print(f"  {depth} x {width:>4} ({' '.join(modes):<33}): backward only {t0 * 1e3:8.2f} ms, "
              f"with the choice {t1 * 1e3:8.2f} ms ({t0 / t1:4.2f}x), max |bound diff| {diff:.1e}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(BENCHMARK_MODELS))
    parser.add_argument("--methods", nargs="+", default=["ibp", "crown-ibp"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--eps", type=float, default=1 / 255)
    parser.add_argument("--widths", nargs="*", type=int, default=[50, 256, 1024],
                        help="hidden widths of the mode-choice MLPs (none: skip that part)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lowered = {}
    for name in args.models:
        factory, shape = BENCHMARK_MODELS[name]
        model = factory()
        graph = lower_module(model, torch.zeros(2, *shape))
        lowered[name] = (model, graph, shape)
        pass_table(name, graph)
    print("\nbound time (median; the CPU may be shared, so treat as rough)")
    for name, (model, graph, shape) in lowered.items():
        print(name)
        bound_times(name, model, graph, shape, args.methods, args.batch, args.repeat, args.eps)
    if args.widths:
        mode_choice_times(args.widths, args.batch, args.repeat)


if __name__ == "__main__":
    main()
