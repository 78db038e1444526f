"""The ``lirpac`` command line: verify VNN-COMP instances, dump a model's IR.

    lirpac verify MODEL.onnx SPEC.vnnlib [--timeout S] [--method M] [--out result.txt]
    lirpac verify --instances instances.csv [--root DIR] [--expected expected.csv] [--results results.csv]
    lirpac dump MODEL.onnx [--method M]
    lirpac --version

Exit codes, the same for every command:

    0    done: every instance answered (holds, violated, unknown or timeout), or dump printed
    1    a wrong answer: a definite answer contradicts --expected (wins over every other code)
    2    an error: bad arguments or input files, or an instance that ended in "error"
    130  interrupted (Ctrl-C): --out says "unknown", a batch prints the summary of the finished
         instances and its --results file keeps their rows
    141  standard output closed early (``lirpac dump m.onnx | head``), without a traceback
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from lirpac.deadline import validate_timeout
from lirpac.errors import InputError, LirpacError
from lirpac.verify import STATUSES, VerificationResult, check_method, verify

EXIT_OK, EXIT_WRONG, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_PIPE = 0, 1, 2, 130, 141

# words of expected.csv files, as lirpac statuses
_EXPECTED_WORDS = {"holds": "holds", "unsat": "holds", "violated": "violated", "sat": "violated"}
# columns of the per-instance results file of a batch (--results)
RESULT_COLUMNS = ("onnx", "vnnlib", "status", "time", "expected", "message")
# a vector with more entries than this is summarised on the terminal, not listed
_SHOWN_VALUES = 10


def _seconds(text: str) -> float:
    """argparse type of --timeout: finite and > 0."""
    try:
        return validate_timeout(text, "the value")
    except InputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _scale(text: str) -> float:
    """argparse type of --timeout-scale: a finite factor > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"the scale must be a finite number > 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    from lirpac.methods import METHODS
    from lirpac import __version__
    methods = ", ".join(METHODS)
    parser = argparse.ArgumentParser(prog="lirpac", description="Neural-network bound propagation and verification.",
                                     epilog="exit codes: 0 done, 1 wrong answer against --expected, 2 error, "
                                            "130 interrupted, 141 output closed early")
    parser.add_argument("--version", action="version", version=f"lirpac {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    v = commands.add_parser("verify", help="decide VNN-COMP instances (ONNX model + VNNLIB property)")
    v.add_argument("model", nargs="?", help="ONNX model")
    v.add_argument("spec", nargs="?", help="VNNLIB property")
    v.add_argument("--timeout", type=_seconds, default=None,
                   help="seconds per instance, finite and > 0 (default 60; in batch mode the csv's timeout)")
    v.add_argument("--timeout-scale", type=_scale, default=1.0, help="multiply every timeout by this")
    v.add_argument("--method", default=None,
                   help=f"bound method, one of {methods} (default: alpha-crown if available, else crown)")
    v.add_argument("--out", help="write the VNN-COMP result (unsat/sat + counterexample/...) here")
    v.add_argument("--instances", help="batch mode: csv of onnx,vnnlib,timeout rows")
    v.add_argument("--root", help="batch mode: directory the csv's paths are relative to "
                                  "(default: the csv's directory)")
    v.add_argument("--expected", help="batch mode: csv of onnx,vnnlib,expected; any contradiction fails")
    v.add_argument("--results", help="batch mode: write one csv row per instance here "
                                     f"({','.join(RESULT_COLUMNS)}), each as soon as it is done")
    v.add_argument("--limit", type=_positive_int, default=None, help="batch mode: run the first N instances only")
    d = commands.add_parser("dump", help="print a model's IR and the compiled bound code")
    d.add_argument("model", help="ONNX model")
    d.add_argument("--method", default="crown", help=f"method whose generated code to print ({methods})")
    return parser


# -- input files ------------------------------------------------------------------------------

def _csv_rows(path: str, what: str):
    """(line number, row) of a csv file; a missing file, one that is not UTF-8 text or not csv
    is an InputError naming the file (and line)."""
    if not os.path.isfile(path):
        raise InputError(f"{what} file {path!r} does not exist")
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            for row in reader:
                yield reader.line_num, row
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: byte {err.start} is not UTF-8 text: expected a csv file "
                         f"of {what} rows") from None
    except csv.Error as err:
        raise InputError(f"{path}: malformed csv: {err}") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read it: {err.strerror or err}") from None


def read_instances(path: str, root: str | None = None) -> list[tuple[str, str, float]]:
    """(onnx path, vnnlib path, timeout) rows of an instances.csv, paths joined to root; a
    malformed row (too few columns, a timeout that is not a finite number > 0) is an
    InputError naming its line."""
    root = root or os.path.dirname(os.path.abspath(path))
    rows = []
    for line, row in _csv_rows(path, "instances"):
        if not row or not row[0].strip() or row[0].strip() == "onnx":
            continue
        if len(row) < 3:
            raise InputError(f"{path}: line {line}: expected 'onnx,vnnlib,timeout', got {','.join(row)!r}")
        try:
            timeout = validate_timeout(row[2].strip(), "the timeout")
        except InputError as err:
            raise InputError(f"{path}: line {line}: {err}") from None
        rows.append((os.path.join(root, row[0].strip()), os.path.join(root, row[1].strip()), timeout))
    return rows


def read_expected(path: str, root: str) -> dict[tuple[str, str], str]:
    """(onnx, vnnlib) absolute paths -> "holds"/"violated" from an expected.csv."""
    expected = {}
    for _, row in _csv_rows(path, "expected"):
        if len(row) < 3 or row[0].strip() == "onnx":
            continue
        word = _EXPECTED_WORDS.get(row[2].strip().lower())
        if word:
            expected[(os.path.normpath(os.path.join(root, row[0].strip())),
                      os.path.normpath(os.path.join(root, row[1].strip())))] = word
    return expected


def check_writable(path: str, option: str) -> None:
    """Refuse, before any work, an output path that cannot be written."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise InputError(f"{option} {path!r} is a directory: expected a file name")
    if not os.path.isdir(folder):
        raise InputError(f"{option} {path!r}: the directory {folder!r} does not exist")
    if not os.access(path if os.path.exists(path) else folder, os.W_OK):
        raise InputError(f"{option} {path!r} is not writable")


# -- one instance -----------------------------------------------------------------------------

def is_wrong(status: str, expected: str | None) -> bool:
    """A definite answer contradicting the expected one."""
    return expected is not None and status in ("holds", "violated") and status != expected


def _values(v) -> str:
    """A vector for the terminal: its values when few, else its size and range."""
    if len(v) <= _SHOWN_VALUES:
        return "[" + ", ".join(f"{float(x):.6g}" for x in v) + "]"
    return f"{len(v)} values in [{float(min(v)):.6g}, {float(max(v)):.6g}]"


def _write_result(path: str, text: str) -> None:
    with open(path, "w") as file:
        file.write(text)


def _looks_like(path: str, suffix: str) -> bool:
    """The file name ends in ``suffix`` (gzip-compressed too, as VNN-COMP ships them)."""
    name = str(path).lower()
    return name.endswith(suffix) or name.endswith(suffix + ".gz")


def _verify_one(args) -> int:
    if not args.model or not args.spec:
        raise InputError("give MODEL.onnx SPEC.vnnlib, or --instances CSV")
    if _looks_like(args.model, ".vnnlib") and _looks_like(args.spec, ".onnx"):
        raise InputError(f"the model comes first: lirpac verify {args.spec} {args.model}")
    for path, what in ((args.model, "model"), (args.spec, "spec")):
        if not os.path.isfile(path):
            raise InputError(f"{path}: no such file (the {what})")
    for option in ("results", "expected", "limit", "root"):
        if getattr(args, option) is not None:
            raise InputError(f"--{option} is for batch mode (--instances)")
    if args.out:
        check_writable(args.out, "--out")
    timeout = (args.timeout if args.timeout is not None else 60.0) * args.timeout_scale
    started = time.monotonic()
    try:
        result = verify(args.model, args.spec, method=args.method, timeout=timeout)
    except KeyboardInterrupt:
        if args.out:
            _write_result(args.out, "unknown\n")
        print(f"unknown (interrupted) after {time.monotonic() - started:.2f} s", flush=True)
        return EXIT_INTERRUPTED
    print(result)
    if result.status == "violated":
        x, y = result.counterexample
        where = f"the full assignment is in {args.out}" if args.out else "--out FILE writes the full assignment"
        print(f"counterexample: x = {_values(x)}, output = {_values(y)} ({where})")
    if args.out:
        _write_result(args.out, result.vnncomp_text())
    return EXIT_ERROR if result.status == "error" else EXIT_OK


# -- a batch ----------------------------------------------------------------------------------

@dataclass
class BatchResults:
    """What a batch has done so far (filled by `run_batch` as it goes, so that an interrupted
    batch still has the finished instances)."""
    counts: Counter = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)   # one per instance, RESULT_COLUMNS keys
    interrupted: bool = False
    seconds: float = 0.0


def run_batch(rows, expected=None, method=None, timeout=None, timeout_scale=1.0, out=None,
              title="", results: BatchResults | None = None,
              on_record=None) -> tuple[Counter, list[str], float]:
    """Verify each (onnx, vnnlib, timeout) row, with a plain-text progress line per instance on
    ``out`` (default stderr); compiled models are reused across rows (their compile time is
    not part of an instance's time). Returns the status counts, the wrong answers (as printable
    lines) and the total time; ``results`` (optional) is filled as the batch goes and
    ``on_record(record)`` is called after each instance. Ctrl-C (KeyboardInterrupt) records
    the instance it stopped as "unknown" and propagates."""
    from lirpac.api import compile
    results = results if results is not None else BatchResults()
    nets: dict[str, object] = {}   # compiled net, or the message of why it failed
    out = out or sys.stderr
    start = time.monotonic()
    for i, (model, spec, row_timeout) in enumerate(rows, 1):
        budget = (timeout if timeout is not None else row_timeout) * timeout_scale
        key = os.path.normpath(model)
        instance_start = time.monotonic()
        try:
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
        except KeyboardInterrupt:
            results.interrupted = True
            result = VerificationResult("unknown", time.monotonic() - instance_start, message="interrupted")
        want = (expected or {}).get((key, os.path.normpath(spec)))
        _record(results, i, len(rows), title, model, spec, result, want, out)
        if on_record is not None:
            on_record(results.records[-1])
        results.seconds = time.monotonic() - start
        if results.interrupted:
            raise KeyboardInterrupt
    return results.counts, results.wrong, results.seconds


def _record(results: BatchResults, i: int, n: int, title: str, model: str, spec: str,
            result: VerificationResult, want: str | None, out) -> None:
    """Count one instance's result, print its progress line, keep its record."""
    results.counts[result.status] += 1
    line = (f"[{i}/{n}] {title}{os.path.basename(model)} {os.path.basename(spec)}: "
            f"{result.status} {result.time:.2f}s" + (f" (expected {want})" if want else "")
            + (f" {result.message}" if result.status == "error" or result.message == "interrupted" else ""))
    if is_wrong(result.status, want):
        line = f"!!! WRONG ANSWER !!! {line}"
        results.wrong.append(line)
    print(line, file=out, flush=True)
    results.records.append({"onnx": model, "vnnlib": spec, "status": result.status, "time": f"{result.time:.3f}",
                            "expected": want or "", "message": result.message})


def summary_table(counts: Counter, total_time: float, wrong: int) -> str:
    head = " ".join(f"{s:>9}" for s in STATUSES) + f" {'wrong':>6} {'time_s':>8}"
    body = " ".join(f"{counts.get(s, 0):>9}" for s in STATUSES) + f" {wrong:>6} {total_time:>8.1f}"
    return f"{head}\n{body}"


def _verify_batch(args) -> int:
    if args.model or args.spec:
        raise InputError("give MODEL.onnx SPEC.vnnlib or --instances CSV, not both")
    if args.out:
        raise InputError("--out is for one instance: in batch mode, --results FILE writes a row per instance")
    root = args.root or os.path.dirname(os.path.abspath(args.instances))
    rows = read_instances(args.instances, root)[:args.limit]
    expected = read_expected(args.expected, root) if args.expected else None
    if args.results:
        check_writable(args.results, "--results")
    results = BatchResults()
    with open(args.results, "w", newline="") if args.results else contextlib.nullcontext() as file:
        writer = csv.DictWriter(file, RESULT_COLUMNS) if args.results else None
        if writer:
            writer.writeheader()

        def keep(record):
            if writer:
                writer.writerow(record)
                file.flush()
        try:
            run_batch(rows, expected, args.method, args.timeout, args.timeout_scale, results=results,
                      on_record=keep)
        except KeyboardInterrupt:
            results.interrupted = True
            print(f"interrupted after {len(results.records)} of {len(rows)} instance(s)", file=sys.stderr)
    print(summary_table(results.counts, results.seconds, len(results.wrong)), flush=True)
    code = report_wrong(results.wrong, f" against {args.expected}")
    if code:
        return code
    if results.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_ERROR if results.counts["error"] else EXIT_OK


def report_wrong(wrong: list[str], against: str = "") -> int:
    """Print wrong answers loudly on stderr; the exit code: 1 if there are any."""
    if not wrong:
        return EXIT_OK
    print(f"\n!!! {len(wrong)} WRONG ANSWER(S){against} !!!", file=sys.stderr)
    for line in wrong:
        print(line, file=sys.stderr)
    return EXIT_WRONG


def _dump(args) -> int:
    from lirpac.api import compile
    from lirpac.ir.onnx_frontend import lower_onnx
    method = check_method(args.method)
    graph, runner = lower_onnx(args.model)
    print("# IR from the ONNX frontend")
    print(graph)
    if runner is not None:
        print(f"# max relative error against onnxruntime: {runner.max_error:.3g}")
    print()
    print(compile(args.model).dump(method))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lirpac`` script and ``python -m lirpac``; returns the exit code
    (the module docstring's table)."""
    try:
        args = _parser().parse_args(argv)
        if args.command == "verify" and args.method is not None:
            args.method = check_method(args.method)
        if args.command == "dump":
            code = _dump(args)
        elif args.instances:
            code = _verify_batch(args)
        else:
            code = _verify_one(args)
        sys.stdout.flush()   # here, so that a closed pipe is caught below, not at exit
        return code
    except LirpacError as err:
        print(f"lirpac: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("lirpac: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (``| head``): what is still buffered can never be written, and
        # Python would report that at exit; point stdout at /dev/null instead
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE
