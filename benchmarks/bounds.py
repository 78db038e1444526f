#!/usr/bin/env python
"""Time, memory and tightness of lirpac's bound methods on the benchmark model zoo.

For every (model, method, batch) configuration a fresh worker subprocess

1. builds the model (``examples/models/zoo.py``, fixed seed) and a fixed random input batch
   ``x`` in [0, 1] (seed 0; batch 1 is the first sample of batch 32);
2. compiles it once: ``net = lirpac.compile(model, x[:1])`` (timed, reported as "compile");
3. calls ``net.bounds(x, lirpac.LpBall(eps=eps), method=m)`` once cold, checks the result
   (shapes, no NaN, and soundness against the clean input and random corners of the ball);
4. warms up, then times repeated calls (median; at least ``--repeat`` calls and at least
   ``--min-time`` seconds of calls);
5. measures the peak memory of one more call (see benchmarks/README.md): on CPU the growth of
   the process's peak resident set size (VmHWM, reset just before the call through
   /proc/self/clear_refs) over its resident size just before the call; on CUDA
   ``torch.cuda.max_memory_allocated`` growth.

A configuration that raises prints the exception's class in its row instead of numbers; one
that runs past ``--timeout`` or is killed (e.g. out of memory) says so.  Workers run one at a
time so timings do not compete for the cores.

``--reference PYTHON`` runs every configuration a second time, right after lirpac's, with the
reference library (auto_LiRPA, installed beside torch in the environment of that interpreter:
see shared/reference/README.md) on the same model, input and set, and adds its time, the ratio
(reference time / lirpac time: above 1, lirpac is faster) and the width ratio (lirpac's mean
width / the reference's: at most 1 is as tight or tighter). ``--calibration`` adds the CIFAR
shapes the cost model is checked on (``CALIBRATION_MODELS`` in examples/models/zoo.py).

    python benchmarks/bounds.py --quick
    python benchmarks/bounds.py --models mlp cnn_2c --methods ibp crown --batch 1 32 --json out.json
    python benchmarks/bounds.py --calibration --methods crown --batch 1 2 32 --reference ../ref-venv/bin/python
"""
import argparse
import importlib.util
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

METHODS = ("ibp", "crown-ibp", "forward", "forward+crown", "crown")
BATCHES = (1, 32)
# Default eps (L-inf) per model, chosen so that CROWN is not vacuous on the random zoo models
# (inputs are uniform in [0, 1]); override with --eps.
DEFAULT_EPS = {
    "mlp": 0.01,
    "cnn_2c": 0.01,
    "cnn_4c_bn": 1 / 255,
    "resnet_2b": 1 / 255,
}
FALLBACK_EPS = 1 / 255
INPUT_SEED = 0
MAX_BATCH = max(BATCHES)


# --------------------------------------------------------------------------------------------
# memory probes (worker side)
# --------------------------------------------------------------------------------------------

def _status_kb(field):
    """A ``VmXXX`` field of /proc/self/status in KiB, or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss():
    """Reset VmHWM to the current RSS (Linux >= 4.0); True on success."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim():
    """Give free heap memory back to the OS so that it cannot hide a call's allocations."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _maxrss_kb():
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r // 1024 if sys.platform == "darwin" else r      # bytes on macOS, KiB on Linux


def _limit_address_space(extra_gb):
    """Cap the worker's virtual memory at its current size + extra_gb, so that a runaway
    configuration fails with an allocation error instead of taking the machine down."""
    if not extra_gb or extra_gb <= 0:
        return
    try:
        import resource
        cur = _status_kb("VmSize")
        if cur is None:
            return
        lim = int(cur * 1024 + extra_gb * 2**30)
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            lim = min(lim, hard)
        resource.setrlimit(resource.RLIMIT_AS, (lim, hard))
    except (ImportError, ValueError, OSError):
        pass


# --------------------------------------------------------------------------------------------
# worker: one configuration
# --------------------------------------------------------------------------------------------

def _error_name(exc):
    name = type(exc).__name__
    msg = str(exc).lower()
    if isinstance(exc, MemoryError) or "can't allocate memory" in msg or "out of memory" in msg:
        return f"OOM({name})"
    return name


def record_error(res: dict, exc: BaseException, stage: str) -> None:
    """A worker's failure, as the table reports it (its name, stage and first line)."""
    res["error"] = _error_name(exc)
    res["error_stage"] = stage
    res["error_message"] = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""


def _soundness_check(model, x, eps, lb, ub, n_corners=8):
    """Worst violation of lb <= f(x') <= ub over x' = x and random corners of the L-inf ball."""
    import torch
    g = torch.Generator(device="cpu").manual_seed(1234)
    pts = [x]
    for _ in range(n_corners):
        s = torch.randint(0, 2, x.shape, generator=g).to(x) * 2 - 1
        pts.append(x + eps * s)
    worst = 0.0
    with torch.no_grad():
        for p in pts:
            y = model(p).reshape(lb.shape)
            worst = max(worst, (lb - y).max().item(), (y - ub).max().item())
    return worst


def _zoo():
    """examples/models/zoo.py loaded from its file: the reference's environment may hold a
    package named ``examples`` that would shadow the repository's."""
    spec = importlib.util.spec_from_file_location("_bench_zoo", REPO / "examples" / "models" / "zoo.py")
    zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zoo)
    return zoo


def all_models() -> dict:
    zoo = _zoo()
    return {**zoo.BENCHMARK_MODELS, **zoo.CALIBRATION_MODELS}


# lirpac's method names as the reference library spells them
REFERENCE_METHODS = {"ibp": "IBP", "crown": "CROWN", "crown-ibp": "CROWN-IBP", "forward": "forward",
                     "forward+crown": "forward+backward", "alpha-crown": "CROWN-Optimized"}


def _lirpac_call(cfg, model, x, example, res, sync):
    """Compile with lirpac (timed) and return the bound call."""
    import lirpac
    t0 = time.perf_counter()
    net = lirpac.compile(model, example, conv_mode=cfg.get("conv_mode", "auto"),
                         max_memory=cfg.get("max_memory"))
    sync()
    res["compile_s"] = time.perf_counter() - t0
    ptb = lirpac.LpBall(eps=cfg["eps"])
    options = {"optimize_intermediate": False} if cfg["method"] == "alpha-crown" and cfg.get("alpha_fixed") else None

    def call():
        out = net.bounds(x, ptb, method=cfg["method"], options=options)
        sync()
        return out
    return call


def _reference_call(cfg, model, x, example, res, sync):
    """Wrap the model with the reference library (timed as "compile") and return its bound
    call on the same L-inf ball."""
    import torch
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm
    t0 = time.perf_counter()
    opts = {"optimize_bound_args": {"iteration": 20}} if cfg["method"] == "alpha-crown" else {}
    bounded = BoundedModule(model, torch.empty_like(x), bound_opts=opts, device=cfg["device"],
                            verbose=False)
    sync()
    res["compile_s"] = time.perf_counter() - t0
    bx = BoundedTensor(x, PerturbationLpNorm(eps=cfg["eps"], norm=float("inf")))
    method = REFERENCE_METHODS[cfg["method"]]

    def call():
        out = bounded.compute_bounds(x=(bx,), method=method)
        sync()
        return out
    return call


def run_worker(cfg):
    """Measure one configuration; returns a JSON-able dict (never raises)."""
    res = {"model": cfg["model"], "method": cfg["method"], "batch": cfg["batch"],
           "eps": cfg["eps"]}
    stage = "import"
    try:
        import torch
        if cfg.get("threads"):
            torch.set_num_threads(cfg["threads"])

        device = torch.device(cfg["device"])
        cuda = device.type == "cuda"

        def sync():
            if cuda:
                torch.cuda.synchronize(device)

        stage = "model"
        factory, shape = all_models()[cfg["model"]]
        model = factory(seed=cfg["seed"]).to(device)
        g = torch.Generator().manual_seed(INPUT_SEED)
        x_all = torch.rand(max(MAX_BATCH, cfg["batch"]), *shape, generator=g)
        x = x_all[: cfg["batch"]].contiguous().to(device)
        example = x_all[:1].contiguous().to(device)
        eps = cfg["eps"]

        stage = "compile"
        make_call = _reference_call if cfg.get("reference") else _lirpac_call
        call = make_call(cfg, model, x, example, res, sync)

        _limit_address_space(cfg.get("mem_limit_gb"))

        stage = "bounds"
        with torch.no_grad():
            t0 = time.perf_counter()
            lb, ub = call()
            res["first_call_ms"] = (time.perf_counter() - t0) * 1e3

            stage = "check"
            with torch.no_grad():
                n_out = model(example).shape[-1]
            if tuple(lb.shape) != (cfg["batch"], n_out) or tuple(ub.shape) != tuple(lb.shape):
                res["warning"] = f"bound shapes {tuple(lb.shape)}, {tuple(ub.shape)}; " \
                                 f"expected {(cfg['batch'], n_out)}"
            width = (ub - lb).double()
            res["mean_width"] = width.mean().item()
            res["max_width"] = width.max().item()
            if not (torch.isfinite(lb).all() and torch.isfinite(ub).all()):
                res["warning"] = "non-finite bounds"
            if (width < -1e-6).any():
                res["warning"] = "lower bound above upper bound"
            viol = _soundness_check(model, x, eps, lb, ub)
            res["max_violation"] = viol
            if viol > 1e-4 * max(1.0, width.abs().max().item()):
                res["warning"] = f"UNSOUND: a sampled output lies {viol:.3g} outside the bounds"
            del lb, ub, width

            stage = "bounds"
            for _ in range(cfg["warmup"]):
                call()

            times = []
            t_start = time.perf_counter()
            while True:
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
                spent = time.perf_counter() - t_start
                if len(times) >= cfg["max_repeat"]:
                    break
                if len(times) >= cfg["repeat"] and spent >= cfg["min_time"]:
                    break
            times.sort()
            res["time_ms"] = times[len(times) // 2] * 1e3 if len(times) % 2 else \
                0.5 * (times[len(times) // 2 - 1] + times[len(times) // 2]) * 1e3
            res["time_min_ms"] = times[0] * 1e3
            res["n_repeat"] = len(times)

            stage = "memory"
            import gc
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
                out = call()
                res["peak_mem_mb"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
                res["mem_probe"] = "cuda.max_memory_allocated"
                del out
            else:
                _malloc_trim()
                if _reset_peak_rss():
                    base = _status_kb("VmRSS")
                    out = call()
                    peak = _status_kb("VmHWM")
                    res["mem_probe"] = "VmHWM-VmRSS"
                else:   # no clear_refs: only growth of the lifetime peak can be seen
                    base = max(_maxrss_kb(), _status_kb("VmRSS") or 0)
                    out = call()
                    peak = _maxrss_kb()
                    res["mem_probe"] = "ru_maxrss (lower bound)"
                res["peak_mem_mb"] = max(0, peak - base) / 1024
                res["base_rss_mb"] = base / 1024
                del out
    except BaseException as exc:     # report, never crash the driver
        if isinstance(exc, KeyboardInterrupt):
            raise
        record_error(res, exc, stage)
    return res


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------

def run_config(cfg, timeout, python=None):
    """Run one configuration in a fresh subprocess (of ``python``, default this interpreter);
    returns its result dict."""
    base = {"model": cfg["model"], "method": cfg["method"], "batch": cfg["batch"], "eps": cfg["eps"]}
    cmd = [python or sys.executable, str(Path(__file__).resolve()), "--_worker", json.dumps(cfg)]
    env = dict(os.environ)
    # the repository root (for examples.models) after any user PYTHONPATH entries
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(REPO)]))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)   # the worker's own session only
        except ProcessLookupError:
            pass
        proc.communicate()
        return {**base, "error": f"Timeout(>{timeout:g}s)", "error_stage": "timeout"}
    for line in reversed(out.splitlines()):
        if line.startswith("@@RESULT "):
            return json.loads(line[len("@@RESULT "):])
    if proc.returncode < 0:
        sig = signal.Signals(-proc.returncode).name
        what = f"Killed({sig})" + (" (out of memory?)" if sig == "SIGKILL" else "")
    else:
        what = f"WorkerExit({proc.returncode})"
    tail = (err or "").strip().splitlines()[-1:] or [""]
    return {**base, "error": what, "error_stage": "worker", "error_message": tail[0][:300]}


def _fmt(v, spec):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


COLUMNS = [("model", "<", 14), ("method", "<", 13), ("batch", ">", 5), ("time (ms)", ">", 12),
           ("peak mem (MB)", ">", 13), ("mean width", ">", 11), ("compile (s)", ">", 11)]
REFERENCE_COLUMNS = [("ref time (ms)", ">", 13), ("ref/lirpac", ">", 10), ("ref mem (MB)", ">", 12),
                     ("width ratio", ">", 11)]


def table_header(reference=False):
    columns = COLUMNS + (REFERENCE_COLUMNS if reference else [])
    cells = [f"{name:{al}{w}}" for name, al, w in columns]
    rule = [("-" * (w + 1) + ":") if al == ">" else "-" * (w + 2) for name, al, w in columns]
    return "| " + " | ".join(cells) + " |\n|" + "|".join(rule) + "|"


def reference_cells(r, ref) -> str:
    """The reference's columns of a row: its time, the speed ratio, its memory, the width ratio."""
    if "error" in ref:
        cells = [ref["error"], "", "", ""]
    else:
        ok = "error" not in r
        width = ref.get("mean_width")
        cells = [_fmt(ref.get("time_ms"), ".2f"),
                 _fmt(ref["time_ms"] / r["time_ms"], ".2f") if ok else "-",
                 _fmt(ref.get("peak_mem_mb"), ".1f"),
                 _fmt(r["mean_width"] / width, ".4f") if ok and width else "-"]
    return " " + " | ".join(f"{c:{al}{w}}" for c, (_, al, w) in zip(cells, REFERENCE_COLUMNS)) + " |"


def table_row(r, ref=None):
    if "error" in r:
        cells = [r["model"], r["method"], str(r["batch"]), r["error"], "", "",
                 _fmt(r.get("compile_s"), ".2f")]
    else:
        w = r.get("mean_width")
        cells = [r["model"], r["method"], str(r["batch"]), _fmt(r.get("time_ms"), ".2f"),
                 _fmt(r.get("peak_mem_mb"), ".1f"),
                 _fmt(w, ".4g") if w is not None and math.isfinite(w) else str(w),
                 _fmt(r.get("compile_s"), ".2f")]
    out = []
    for (name, al, w), c in zip(COLUMNS, cells):
        if name == "time (ms)" and "error" in r:
            out.append(f"{c:<{w}}")     # the error name may be wider than the column
        else:
            out.append(f"{c:{al}{w}}")
    line = "| " + " | ".join(out) + " |"
    if ref is not None:
        line += reference_cells(r, ref)
    if r.get("warning"):
        line += f"  <- {r['warning']}"
    return line


def environment():
    import torch
    try:
        import lirpac
        lv = getattr(lirpac, "__version__", None)
        if lv is None:
            from importlib.metadata import version
            lv = version("lirpac")
    except Exception as exc:    # noqa: BLE001 - header only
        lv = f"unavailable ({type(exc).__name__})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "lirpac": lv,
            "python": platform.python_version(), "cpu": cpu, "os_cpus": os.cpu_count(),
            "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def main(argv=None):
    zoo = _zoo()
    models = all_models()

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(zoo.BENCHMARK_MODELS),
                   choices=list(models), metavar="MODEL",
                   help=f"models to run (default: {', '.join(zoo.BENCHMARK_MODELS)}; "
                        f"also: {', '.join(zoo.CALIBRATION_MODELS)})")
    p.add_argument("--calibration", action="store_true",
                   help="add the calibration models (CIFAR shapes: "
                        f"{', '.join(zoo.CALIBRATION_MODELS)})")
    p.add_argument("--reference", metavar="PYTHON",
                   help="also run each configuration with the reference library (auto_LiRPA) "
                        "under this interpreter, and print both side by side")
    p.add_argument("--methods", nargs="+", default=list(METHODS), metavar="METHOD",
                   help=f"bound methods (default: {' '.join(METHODS)})")
    p.add_argument("--batch", nargs="+", type=int, default=None, metavar="B",
                   help="batch sizes (default: 1 32; --quick: 1)")
    p.add_argument("--eps", type=float, default=None,
                   help="L-inf radius for every model (default: per model, "
                        + ", ".join(f"{k}={v:.4g}" for k, v in DEFAULT_EPS.items()) + ")")
    p.add_argument("--repeat", type=int, default=None,
                   help="minimum number of timed calls (default 5; --quick: 2)")
    p.add_argument("--min-time", type=float, default=None,
                   help="keep timing until this many seconds were spent (default 0.5; --quick 0.2)")
    p.add_argument("--max-repeat", type=int, default=200, help="maximum number of timed calls")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed calls after the first (checked) call (default 2; --quick: 1)")
    p.add_argument("--timeout", type=float, default=180.0,
                   help="seconds per configuration, compile included (default 180)")
    p.add_argument("--mem-limit-gb", type=float, default=8.0,
                   help="extra virtual memory a worker may take after compiling (default 8; "
                        "0 = no limit)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads in the workers (default: torch's default)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="model seed (default 0)")
    p.add_argument("--quick", action="store_true",
                   help="batch 1 only, fewer warm-up and timed calls")
    p.add_argument("--conv-mode", default="auto", choices=("auto", "patches", "matrix"),
                   help="how CROWN's backward passes hold coefficients of conv layers (default auto)")
    p.add_argument("--max-memory", type=int, default=None, metavar="BYTES",
                   help="coefficient memory of one backward pass before rows are chunked")
    p.add_argument("--alpha-fixed-intermediate", action="store_true",
                   help="alpha-crown keeps its first evaluation's intermediate bounds "
                        "(optimize_intermediate=False: what auto_LiRPA's alpha-CROWN does by default)")
    p.add_argument("--json", metavar="OUT", help="also write header and rows to this JSON file")
    args = p.parse_args(argv)
    if args.calibration:
        args.models += [m for m in zoo.CALIBRATION_MODELS if m not in args.models]
    unknown = [m for m in args.methods if args.reference and m not in REFERENCE_METHODS]
    if unknown:
        p.error(f"no reference spelling for method(s) {unknown}")

    batches = args.batch or ([1] if args.quick else list(BATCHES))
    repeat = args.repeat if args.repeat is not None else (2 if args.quick else 5)
    min_time = args.min_time if args.min_time is not None else (0.2 if args.quick else 0.5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)

    env = environment()
    if args.threads:
        env["threads"] = args.threads
    print(f"# lirpac bounds benchmark  {env['date']}")
    print(f"# torch {env['torch']}, lirpac {env['lirpac']}, python {env['python']}, "
          f"threads {env['threads']} (of {env['os_cpus']} CPUs), device {args.device}, "
          f"conv_mode {args.conv_mode}")
    print(f"# cpu: {env['cpu']}")
    eps_of = {m: (args.eps if args.eps is not None else DEFAULT_EPS.get(m, FALLBACK_EPS))
              for m in args.models}
    print("# L-inf eps: " + ", ".join(f"{m}={e:.4g}" for m, e in eps_of.items())
          + f"; inputs uniform in [0, 1] (seed {INPUT_SEED}), models seed {args.seed}")
    print(f"# time: median of >= {repeat} calls and >= {min_time:g} s after {warmup} warm-up "
          f"call(s); peak mem: resident-set growth during one call (see benchmarks/README.md)")
    if args.reference:
        print(f"# reference: auto_LiRPA under {args.reference}, run right after each lirpac row")
    if args.alpha_fixed_intermediate:
        print("# alpha-crown: optimize_intermediate=False (intermediate bounds of the first evaluation)")
    print(table_header(args.reference is not None), flush=True)

    rows = []
    failed = {}     # (model, method) -> error at a smaller batch: skip larger batches
    t_all = time.perf_counter()
    for model in args.models:
        for method in args.methods:
            for b in sorted(batches):
                key = (model, method)
                if key in failed:
                    r = {"model": model, "method": method, "batch": b, "eps": eps_of[model],
                         "error": f"skipped({failed[key]})", "error_stage": "skipped"}
                else:
                    cfg = {"model": model, "method": method, "batch": b, "eps": eps_of[model],
                           "seed": args.seed, "device": args.device, "repeat": repeat,
                           "min_time": min_time, "max_repeat": args.max_repeat,
                           "warmup": warmup, "threads": args.threads,
                           "mem_limit_gb": args.mem_limit_gb, "conv_mode": args.conv_mode,
                           "max_memory": args.max_memory, "alpha_fixed": args.alpha_fixed_intermediate}
                    r = run_config(cfg, args.timeout)
                    err = r.get("error", "")
                    if err.startswith(("Timeout", "Killed", "OOM")):
                        failed[key] = err.split("(")[0]
                    if args.reference:
                        r["reference"] = run_config({**cfg, "reference": True}, args.timeout, args.reference)
                rows.append(r)
                print(table_row(r, r.get("reference", {}) if args.reference else None), flush=True)
    total = time.perf_counter() - t_all

    errors = [r for r in rows if "error" in r and r.get("error_stage") != "skipped"]
    if errors:
        print("\n# errors:")
        for r in errors:
            print(f"#   {r['model']} / {r['method']} / batch {r['batch']}: {r['error']} "
                  f"at {r.get('error_stage')}: {r.get('error_message', '')}")
    warned = [r for r in rows if r.get("warning")]
    if warned:
        print("\n# warnings:")
        for r in warned:
            print(f"#   {r['model']} / {r['method']} / batch {r['batch']}: {r['warning']}")
    print(f"\n# total {total:.1f} s")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "settings": {
                "eps": eps_of, "batches": batches, "repeat": repeat, "min_time": min_time,
                "warmup": warmup, "timeout": args.timeout, "device": args.device,
                "seed": args.seed, "mem_limit_gb": args.mem_limit_gb,
                "conv_mode": args.conv_mode, "max_memory": args.max_memory},
                "rows": rows, "total_s": total}, f, indent=2)
        print(f"# wrote {args.json}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--_worker":
        result = run_worker(json.loads(sys.argv[2]))
        print("@@RESULT " + json.dumps(result), flush=True)
        sys.exit(0)
    sys.exit(main())
