"""The ``lirpac`` command line: verify VNN-COMP instances, dump a model's IR.

    lirpac verify MODEL.onnx SPEC.vnnlib [--timeout S] [--method M] [--out result.txt]
    lirpac verify --instances instances.csv --root DIR [--expected expected.csv]
    lirpac dump MODEL.onnx

Exit codes: 0 on success, 1 when a batch run disagrees with --expected (a wrong answer),
2 for usage errors and instances that could not be run.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections import Counter

from lirpac.verify import STATUSES, VerificationResult, verify

# words of expected.csv files, as lirpac statuses
_EXPECTED_WORDS = {"holds": "holds", "unsat": "holds", "violated": "violated", "sat": "violated"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lirpac", description="Neural-network bound propagation and verification.")
    commands = parser.add_subparsers(dest="command", required=True)
    v = commands.add_parser("verify", help="decide VNN-COMP instances (ONNX model + VNNLIB property)")
    v.add_argument("model", nargs="?", help="ONNX model")
    v.add_argument("spec", nargs="?", help="VNNLIB property")
    v.add_argument("--timeout", type=float, default=None,
                   help="seconds per instance (default 60; in batch mode the csv's timeout)")
    v.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every timeout by this")
    v.add_argument("--method", default=None, help="bound method (default: alpha-crown if available, else crown)")
    v.add_argument("--out", help="write the VNN-COMP result (unsat/sat + counterexample/...) here")
    v.add_argument("--instances", help="batch mode: csv of onnx,vnnlib,timeout rows")
    v.add_argument("--root", help="batch mode: directory the csv's paths are relative to "
                                  "(default: the csv's directory)")
    v.add_argument("--expected", help="batch mode: csv of onnx,vnnlib,expected; any contradiction fails")
    v.add_argument("--limit", type=int, default=None, help="batch mode: run the first N instances only")
    d = commands.add_parser("dump", help="print a model's IR and the compiled bound code")
    d.add_argument("model", help="ONNX model")
    d.add_argument("--method", default="crown", help="method whose generated code to print")
    return parser


def read_instances(path: str, root: str | None = None) -> list[tuple[str, str, float]]:
    """(onnx path, vnnlib path, timeout) rows of an instances.csv, paths joined to root."""
    root = root or os.path.dirname(os.path.abspath(path))
    rows = []
    with open(path, newline="") as file:
        for row in csv.reader(file):
            if not row or not row[0].strip() or row[0].strip() == "onnx":
                continue
            if len(row) < 3:
                raise SystemExit(f"lirpac: {path}: expected rows 'onnx,vnnlib,timeout', got {row}")
            rows.append((os.path.join(root, row[0].strip()), os.path.join(root, row[1].strip()),
                         float(row[2])))
    return rows


def read_expected(path: str, root: str) -> dict[tuple[str, str], str]:
    """(onnx, vnnlib) absolute paths -> "holds"/"violated" from an expected.csv."""
    expected = {}
    with open(path, newline="") as file:
        for row in csv.reader(file):
            if len(row) < 3 or row[0].strip() == "onnx":
                continue
            word = _EXPECTED_WORDS.get(row[2].strip().lower())
            if word:
                expected[(os.path.normpath(os.path.join(root, row[0].strip())),
                          os.path.normpath(os.path.join(root, row[1].strip())))] = word
    return expected


def is_wrong(status: str, expected: str | None) -> bool:
    """A definite answer contradicting the expected one."""
    return expected is not None and status in ("holds", "violated") and status != expected


def _verify_one(args) -> int:
    if not args.model or not args.spec:
        print("lirpac verify: give MODEL.onnx SPEC.vnnlib, or --instances CSV", file=sys.stderr)
        return 2
    timeout = (args.timeout if args.timeout is not None else 60.0) * args.timeout_scale
    result = verify(args.model, args.spec, method=args.method, timeout=timeout)
    print(result)
    if result.status == "violated":
        x, y = result.counterexample
        print(f"counterexample: x = {x.tolist()}\n                output = {y.tolist()}")
    if args.out:
        with open(args.out, "w") as file:
            file.write(result.vnncomp_text())
    return 2 if result.status == "error" else 0


def run_batch(rows, expected=None, method=None, timeout=None, timeout_scale=1.0, out=None,
              title="") -> tuple[Counter, list[str], float]:
    """Verify each (onnx, vnnlib, timeout) row, with a plain-text progress line per instance on
    ``out`` (default stderr); compiled models are reused across rows. Returns the status counts, the wrong
    answers (as printable lines) and the total time."""
    from lirpac.api import compile
    counts: Counter = Counter()
    wrong: list[str] = []
    nets: dict[str, object] = {}   # compiled net, or the message of why it failed
    out = out or sys.stderr
    start = time.monotonic()
    for i, (model, spec, row_timeout) in enumerate(rows, 1):
        budget = (timeout if timeout is not None else row_timeout) * timeout_scale
        key = os.path.normpath(model)
        if key not in nets:
            try:
                nets[key] = compile(model)
            except Exception as err:   # reported as an "error" result for each of its rows
                nets[key] = f"{type(err).__name__}: {err}"
        net = nets[key]
        if isinstance(net, str):
            result = VerificationResult("error", 0.0, message=net)
        else:
            result = verify(net, spec, method=method, timeout=budget)
        counts[result.status] += 1
        want = (expected or {}).get((key, os.path.normpath(spec)))
        line = (f"[{i}/{len(rows)}] {title}{os.path.basename(model)} {os.path.basename(spec)}: "
                f"{result.status} {result.time:.2f}s" + (f" (expected {want})" if want else "")
                + (f" {result.message}" if result.status == "error" else ""))
        if is_wrong(result.status, want):
            line = f"!!! WRONG ANSWER !!! {line}"
            wrong.append(line)
        print(line, file=out, flush=True)
    return counts, wrong, time.monotonic() - start


def summary_table(counts: Counter, total_time: float, wrong: int) -> str:
    head = " ".join(f"{s:>9}" for s in STATUSES) + f" {'wrong':>6} {'time_s':>8}"
    body = " ".join(f"{counts.get(s, 0):>9}" for s in STATUSES) + f" {wrong:>6} {total_time:>8.1f}"
    return f"{head}\n{body}"


def _verify_batch(args) -> int:
    if not os.path.isfile(args.instances):
        print(f"lirpac verify: instances file {args.instances!r} does not exist", file=sys.stderr)
        return 2
    root = args.root or os.path.dirname(os.path.abspath(args.instances))
    rows = read_instances(args.instances, root)[:args.limit]
    expected = read_expected(args.expected, root) if args.expected else None
    counts, wrong, total = run_batch(rows, expected, args.method, args.timeout, args.timeout_scale)
    print(summary_table(counts, total, len(wrong)))
    return report_wrong(wrong, f" against {args.expected}")


def report_wrong(wrong: list[str], against: str = "") -> int:
    """Print wrong answers loudly on stderr; the exit code: 1 if there are any."""
    if not wrong:
        return 0
    print(f"\n!!! {len(wrong)} WRONG ANSWER(S){against} !!!", file=sys.stderr)
    for line in wrong:
        print(line, file=sys.stderr)
    return 1


def _dump(args) -> int:
    from lirpac.api import compile
    from lirpac.ir.onnx_frontend import lower_onnx
    graph, runner = lower_onnx(args.model)
    print("# IR from the ONNX frontend")
    print(graph)
    if runner is not None:
        print(f"# max relative error against onnxruntime: {runner.max_error:.3g}")
    print()
    print(compile(args.model).dump(args.method))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lirpac`` script and ``python -m lirpac``."""
    from lirpac.errors import LirpacError
    args = _parser().parse_args(argv)
    try:
        if args.command == "dump":
            return _dump(args)
        if args.instances:
            return _verify_batch(args)
        return _verify_one(args)
    except LirpacError as err:
        print(f"lirpac: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
