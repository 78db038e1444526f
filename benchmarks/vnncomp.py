#!/usr/bin/env python
"""Run lirpac.verify on VNN-COMP 2021 benchmarks and count answers against expected.csv.

Each benchmark directory holds ``*instances.csv`` (onnx, vnnlib, timeout rows) and
``expected.csv`` (onnx, vnnlib, holds/violated). Per benchmark this prints how many instances
were proved (holds), falsified (violated, counterexample confirmed by onnxruntime), unknown,
timed out or failed, and the WRONG answers: a definite answer contradicting expected.csv. Any
wrong answer makes the exit code 1.

    python benchmarks/vnncomp.py                                  # every benchmark, full timeouts
    python benchmarks/vnncomp.py --benchmarks test mnistfc --limit 10 --timeout 10
    python benchmarks/vnncomp.py --benchmarks acasxu --limit 10 --spread --timeout 20

The root is --root, else $LIRPAC_VNNCOMP, else /work/shared/vnncomp2021, else
<repo>/../shared/vnncomp2021. Timings on a shared CPU are noisy.
"""
import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = ("test", "acasxu", "mnistfc", "cifar10_resnet")


def find_root(root: str | None) -> Path | None:
    for path in (root, os.environ.get("LIRPAC_VNNCOMP"), "/work/shared/vnncomp2021",
                 REPO.parent / "shared" / "vnncomp2021"):
        if path and Path(path).is_dir():
            return Path(path)
    return None


def main(argv=None) -> int:
    from lirpac.cli import read_expected, read_instances, report_wrong, run_batch
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="directory holding the benchmark directories")
    parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS))
    parser.add_argument("--limit", type=int, default=None, help="first N instances of each benchmark")
    parser.add_argument("--spread", action="store_true",
                        help="with --limit: N instances evenly spaced over the list, not the first N")
    parser.add_argument("--timeout", type=float, default=None, help="cap on each instance's timeout (s)")
    parser.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every timeout by this")
    parser.add_argument("--method", default=None, help="bound method (default: lirpac.verify's)")
    args = parser.parse_args(argv)
    root = find_root(args.root)
    if root is None:
        print("VNN-COMP 2021 benchmarks not found: pass --root or set LIRPAC_VNNCOMP", file=sys.stderr)
        return 2
    table = [f"{'benchmark':<16}{'n':>4}{'proved':>8}{'falsified':>10}{'unknown':>9}{'timeout':>9}"
             f"{'error':>7}{'WRONG':>7}{'time_s':>9}"]
    all_wrong = []
    for name in args.benchmarks:
        folder = root / name
        csvs = sorted(folder.glob("*instances.csv"))
        if not csvs:
            print(f"{name}: no instances.csv in {folder}, skipped", file=sys.stderr)
            continue
        rows = read_instances(str(csvs[0]), str(folder))
        if args.limit and args.spread:
            rows = rows[::max(1, len(rows) // args.limit)]
        rows = rows[:args.limit]
        if args.timeout is not None:
            rows = [(m, s, min(t, args.timeout)) for m, s, t in rows]
        expected = read_expected(str(folder / "expected.csv"), str(folder)) if (folder / "expected.csv").is_file() else {}
        counts, wrong, seconds = run_batch(rows, expected, args.method, None, args.timeout_scale,
                                           title=f"{name}: ")
        all_wrong += wrong
        table.append(f"{name:<16}{len(rows):>4}{counts['holds']:>8}{counts['violated']:>10}{counts['unknown']:>9}"
                     f"{counts['timeout']:>9}{counts['error']:>7}{len(wrong):>7}{seconds:>9.1f}")
    print("\n".join(table))
    return report_wrong(all_wrong)


if __name__ == "__main__":
    sys.exit(main())
