#!/usr/bin/env python
"""GPU benchmark: lirpac's torch and Triton backends (and auto_LiRPA when it imports) side by
side, in one run, on one GPU.

For every model (MNIST MLP, the CIFAR CNNs and ResNets of examples/models/zoo.py, a Transformer
encoder block of examples/models/families.py), method (ibp, crown, crown-ibp, alpha-crown with
20 iterations) and batch (1, 32, 256): the median time of a bound call after warm-up and its
peak GPU memory (``torch.cuda.max_memory_allocated`` growth), per backend, plus the largest
relative difference between the two backends' bounds (the target is 1e-5 in float32). Then a
micro-benchmark of the fused steps against the eager torch chains on a coefficient tensor of
64 MB (target: the fused step 3x faster): the relaxed step (dense and on Patches, with and
without its gradient), concretization, IBP of a linear layer and of a batch norm, and the
cross-entropy bound.

Without a CUDA device it says so and exits 0 (nothing to measure). ``--smoke`` instead runs
every code path on tiny models on the CPU, the kernels through Triton's interpreter: a check
that the script works, not a measurement.

    python benchmarks/gpu.py
    python benchmarks/gpu.py --models mlp cifar_resnet --methods crown --batch 32
    python benchmarks/gpu.py --smoke
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
METHODS = ("ibp", "crown", "crown-ibp", "alpha-crown")
BATCHES = (1, 32, 256)
MODELS = ("mlp", "cnn_4c_bn", "resnet_2b", "cifar_cnn_4c", "cifar_resnet", "transformer")
EPS = {"mlp": 0.01, "transformer": 0.01}
ALPHA_ITERATIONS = 20
REFERENCE_METHODS = {"ibp": "IBP", "crown": "CROWN", "crown-ibp": "CROWN-IBP", "alpha-crown": "CROWN-Optimized"}


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def all_models() -> dict:
    """name -> (factory, per-sample input shape)."""
    zoo = _load("_gpu_zoo", REPO / "examples" / "models" / "zoo.py")
    families = _load("_gpu_families", REPO / "examples" / "models" / "families.py")
    return {**zoo.BENCHMARK_MODELS, **zoo.CALIBRATION_MODELS, "transformer": families.FAMILIES["transformer"]}


def smoke_models() -> dict:
    """Tiny stand-ins for --smoke (the interpreter runs kernels a few programs a second)."""
    import torch.nn as nn

    def mlp(seed=0):
        import torch
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)).eval()

    def cnn(seed=0):
        import torch
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).eval()
    return {"mlp": (mlp, (1, 3, 4)), "cnn": (cnn, (1, 4, 4))}


class Timer:
    """Median wall time of ``fn`` (synchronised) after a warm-up, and its peak memory."""

    def __init__(self, device, repeat: int, min_time: float):
        self.device, self.repeat, self.min_time = device, repeat, min_time

    def sync(self):
        import torch
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def measure(self, fn):
        import torch
        out = fn()
        self.sync()
        times = []
        start = time.perf_counter()
        while len(times) < self.repeat or time.perf_counter() - start < self.min_time:
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
            if len(times) >= 100:
                break
        peak = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn()
            self.sync()
            peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
        return statistics.median(times) * 1e3, peak, out


def _cell_error(exc) -> str:
    name = type(exc).__name__
    return "OOM" if "OutOfMemory" in name or "out of memory" in str(exc) else name


def lirpac_call(model, example, x, eps, method, backend):
    import lirpac
    net = lirpac.compile(model, example, backend=backend)
    ball = lirpac.LpBall(eps=eps)
    options = {"iterations": ALPHA_ITERATIONS} if method == "alpha-crown" else None
    return lambda: net.bounds(x, ball, method=method, options=options)


def reference_call(model, x, eps, method):
    """auto_LiRPA's bound call, or None when it does not import in this environment."""
    try:
        from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm
    except Exception:
        return None
    opts = {"optimize_bound_args": {"iteration": ALPHA_ITERATIONS}} if method == "alpha-crown" else {}
    bounded = BoundedModule(model, x[:1], bound_opts=opts, device=str(x.device), verbose=False)
    bx = BoundedTensor(x, PerturbationLpNorm(eps=eps, norm=float("inf")))
    return lambda: bounded.compute_bounds(x=(bx,), method=REFERENCE_METHODS[method])


def relative_difference(a, b) -> float:
    import torch
    worst = 0.0
    for s, t in zip(a[:2], b[:2]):
        s, t = s.detach(), t.detach()
        scale = t.abs().clamp_min(1e-6)
        worst = max(worst, float(((s - t).abs() / scale).max()))
    return worst


def run_models(args, device, timer) -> list[dict]:
    import torch
    catalogue = smoke_models() if args.smoke else all_models()
    rows = []
    for name in args.models:
        factory, shape = catalogue[name]
        model = factory(0).to(device)
        for batch in args.batch:
            gen = torch.Generator().manual_seed(0)
            x = torch.rand(batch, *shape, generator=gen).to(device)
            example = x[:2] if batch >= 2 else x.repeat(2, *([1] * len(shape)))
            for method in args.methods:
                row = {"model": name, "method": method, "batch": batch}
                results = {}
                for backend in ("torch", "triton"):
                    try:
                        fn = lirpac_call(model, example, x, EPS.get(name, 1 / 255), method, backend)
                        ms, peak, out = timer.measure(fn)
                        row[backend] = (ms, peak)
                        results[backend] = out
                    except Exception as exc:   # one failed cell must not end the table
                        row[backend] = _cell_error(exc)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                if len(results) == 2:
                    row["diff"] = relative_difference(results["triton"], results["torch"])
                if not args.no_reference:
                    try:
                        fn = reference_call(model, x, EPS.get(name, 1 / 255), method)
                        row["reference"] = "n/a" if fn is None else timer.measure(fn)[:2]
                    except Exception as exc:
                        row["reference"] = _cell_error(exc)
                rows.append(row)
                print(format_row(row), flush=True)
    return rows


def _fmt(cell) -> str:
    if isinstance(cell, str) or cell is None:
        return f"{cell or '-':>10} | {'':>8}"
    ms, peak = cell
    return f"{ms:10.2f} | {'-' if peak is None else f'{peak:.0f}':>8}"


def header() -> str:
    return ("| model | method | batch | torch ms | torch MB | triton ms | triton MB | speedup "
            "| ref ms | ref MB | ref/triton | max rel diff |\n"
            "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")


def format_row(row) -> str:
    def ratio(a, b):
        if isinstance(a, tuple) and isinstance(b, tuple) and b[0] > 0:
            return f"{a[0] / b[0]:.2f}"
        return "-"
    diff = row.get("diff")
    return (f"| {row['model']} | {row['method']} | {row['batch']} | {_fmt(row.get('torch'))} | "
            f"{_fmt(row.get('triton'))} | {ratio(row.get('torch'), row.get('triton'))} | "
            f"{_fmt(row.get('reference'))} | {ratio(row.get('reference'), row.get('triton'))} | "
            f"{'-' if diff is None else f'{diff:.1e}'} |")


def micro(args, device, timer) -> None:
    """The fused relaxed step, concretization, IBP of a linear layer and the cross-entropy bound
    vs the eager torch chain on one large A."""
    import torch
    from lirpac.codegen.triton.concretize import TritonInputSet
    from lirpac.codegen.triton.relaxed_step import relaxed
    from lirpac.ir.ops.activations import relu_relax
    from lirpac.ir.ops.common import prepare_lines, relaxed_backward_lines
    from lirpac.perturbation import LpBall
    batch, rows = (2, 4) if args.smoke else (32, 64)
    n = max(8, int(args.micro_mb * 2 ** 20 / 4 / (batch * rows)))
    gen = torch.Generator().manual_seed(0)
    lower = torch.randn(batch, n, generator=gen).to(device)
    lines = prepare_lines(relu_relax(lower, lower + torch.rand(batch, n, generator=gen).to(device)))
    a = torch.randn(batch, rows, n, generator=gen).to(device)
    b = torch.randn(batch, rows, n, generator=gen).to(device)
    size = a.numel() * a.element_size() / 2 ** 20
    print(f"\n## fused steps vs the eager torch chain (A: {batch}x{rows}x{n} float32, {size:.0f} MB)\n")
    print("| step | torch ms | torch MB | triton ms | triton MB | speedup |\n|---|--:|--:|--:|--:|--:|")
    x = torch.rand(batch, n, generator=gen).to(device)
    plain = LpBall(eps=0.01).bind(x)
    fused = TritonInputSet.wrap(plain)
    l2 = LpBall(eps=0.5, norm=2).bind(x)
    cases = {
        "relaxed step, shared sides": (lambda: relaxed_backward_lines(a, a, lines), lambda: relaxed(a, a, lines)),
        "relaxed step, two sides": (lambda: relaxed_backward_lines(a, b, lines), lambda: relaxed(a, b, lines)),
        "concretize, box (pair)": (lambda: plain.concretize_pair(a, 0, a, 0),
                                   lambda: fused.concretize_pair(a, 0, a, 0)),
        "concretize, L2 ball": (lambda: l2.concretize(a, 0, upper=True),
                                lambda: TritonInputSet.wrap(l2).concretize(a, 0, upper=True)),
    }
    from lirpac.codegen.triton.ce_bound import ce_bound
    from lirpac.codegen.triton.ibp_affine import ibp_rules
    from lirpac.ir.opdef import REGISTRY, Interval
    from lirpac.training import worst_case_ce
    box = Interval(a.reshape(-1, n), a.reshape(-1, n) + b.reshape(-1, n).abs())
    weight = torch.randn(256, n, generator=gen).to(device) / n ** 0.5
    margins = torch.randn(a.numel() // 16, 9, generator=gen).to(device)
    cases.update({
        "IBP of a linear layer (256 outputs)": (lambda: REGISTRY["linear"].ibp(box, weight),
                                               lambda: ibp_rules()["ibp_linear"](box, weight)),
        "cross-entropy bound (9 margins a row)": (lambda: worst_case_ce(margins, reduction="none"),
                                                  lambda: ce_bound(margins)),
    })
    cases.update(patches_cases(batch, args.micro_mb, device, gen))
    for name, (eager, kernel) in cases.items():
        with torch.inference_mode():
            t = timer.measure(eager)[:2]
            k = timer.measure(kernel)[:2]
        print(f"| {name} | {_fmt(t)} | {_fmt(k)} | {t[0] / k[0]:.2f} |")
    # alpha-CROWN and certified training differentiate every step: forward and backward
    weights = torch.randn(batch, rows, generator=gen).to(device)
    leaf = a.clone().requires_grad_()

    def through(step):
        def run():
            [(new_l, new_u)], lbias, ubias = step(leaf, leaf, lines)
            loss = (new_l.sum() + new_u.sum()) + (weights * (lbias - ubias)).sum()
            return torch.autograd.grad(loss, leaf)
        return run
    t = timer.measure(through(relaxed_backward_lines))[:2]
    k = timer.measure(through(relaxed))[:2]
    print(f"| relaxed step + its gradient, shared sides | {_fmt(t)} | {_fmt(k)} | {t[0] / k[0]:.2f} |")
    # the same on Patches (alpha-CROWN through convolutions)
    p, p_lines = patches_operands(batch, args.micro_mb, device, gen)
    p_weights = torch.randn(batch, p.coeff.shape[1], generator=gen).to(device)
    p_leaf = p.coeff.clone().requires_grad_()
    windowed = p.with_coeff(p_leaf)

    def through_patches(step):
        def run():
            [(new_l, new_u)], lbias, ubias = step(windowed, windowed, p_lines)
            loss = (new_l.coeff.sum() + new_u.coeff.sum()) + (p_weights * (lbias - ubias)).sum()
            return torch.autograd.grad(loss, p_leaf)
        return run
    t = timer.measure(through_patches(relaxed_backward_lines))[:2]
    k = timer.measure(through_patches(relaxed))[:2]
    print(f"| relaxed step on Patches + its gradient, shared sides | {_fmt(t)} | {_fmt(k)} | {t[0] / k[0]:.2f} |")


# a CIFAR-sized conv layer's Patches: 32 channels of 16x16, 7x7 windows (two 3x3 convs back
# from a neuron, or one at stride 2 and one more)
_PATCHES_NODE, _PATCHES_WINDOW = (32, 16, 16), 7


def patches_operands(batch: int, mb: float, device, gen):
    """Window coefficients of about ``mb`` MB (float32, channels-last windows as
    Patches.conv_transpose leaves them, zero outside the map) and ReLU lines on the node."""
    import torch
    from lirpac.codegen.patches import Patches
    from lirpac.ir.ops.activations import relu_relax
    from lirpac.ir.ops.common import prepare_lines
    channels, height, width = _PATCHES_NODE
    kh = kw = _PATCHES_WINDOW
    k = max(1, int(mb * 2 ** 20 / 4 / (batch * channels * kh * kw)))
    top = torch.randint(-kh // 2, height - kh // 2, (k,), generator=gen).to(device)
    left = torch.randint(-kw // 2, width - kw // 2, (k,), generator=gen).to(device)
    raw = torch.randn(batch, k, kh, kw, channels, generator=gen).to(device)
    p = Patches(raw.permute(0, 1, 4, 2, 3), top, left, _PATCHES_NODE)
    p = p.with_coeff(p.coeff * p._inside_mask())
    lower = torch.randn(batch, *_PATCHES_NODE, generator=gen).to(device)
    lines = prepare_lines(relu_relax(lower, lower + torch.rand(batch, *_PATCHES_NODE, generator=gen).to(device)))
    return p, lines


def patches_cases(batch: int, mb: float, device, gen) -> dict:
    """The Patches step and IBP of a batch norm, each against its torch rule."""
    import torch
    from lirpac.codegen.triton.ibp_scale import ibp_rules as scale_rules
    from lirpac.codegen.triton.relaxed_step import relaxed
    from lirpac.ir.opdef import REGISTRY, Interval
    from lirpac.ir.ops.common import relaxed_backward_lines
    p, lines = patches_operands(batch, mb, device, gen)
    q = p.with_coeff(torch.randn(p.coeff.shape, generator=gen).to(device) * p._inside_mask())
    channels = _PATCHES_NODE[0]
    elements = max(1, int(mb * 2 ** 20 / 4 / (batch * channels)))
    low = torch.randn(batch, channels, elements, generator=gen).to(device)
    box = Interval(low, low + torch.rand(batch, channels, elements, generator=gen).to(device))
    bn = [torch.randn(channels, generator=gen).to(device) for _ in range(3)] + \
        [torch.rand(channels, generator=gen).to(device) + 0.5]
    size = p.coeff.numel() * p.coeff.element_size() / 2 ** 20
    return {
        f"relaxed step on Patches, shared sides ({size:.0f} MB)": (
            lambda: relaxed_backward_lines(p, p, lines), lambda: relaxed(p, p, lines)),
        "relaxed step on Patches, two sides": (
            lambda: relaxed_backward_lines(p, q, lines), lambda: relaxed(p, q, lines)),
        "IBP of a batch norm": (lambda: REGISTRY["batch_norm"].ibp(box, *bn, eps=1e-5),
                                lambda: scale_rules()["ibp_batch_norm"](box, *bn, eps=1e-5)),
    }


def environment(device) -> str:
    import torch
    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        triton_version = "not installed"
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (--smoke: CPU, Triton interpreter)"
    return f"# GPU: {gpu}; torch {torch.__version__}; triton {triton_version}; float32"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--batch", nargs="+", type=int, default=list(BATCHES))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds of timed calls per cell, at least")
    parser.add_argument("--micro-mb", type=float, default=64.0, help="size of A in the micro-benchmark")
    parser.add_argument("--no-reference", action="store_true", help="skip auto_LiRPA")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny models on the CPU through Triton's interpreter: checks the script, measures nothing")
    args = parser.parse_args(argv)
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")   # (before the kernels are first imported)
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))
    import torch
    if not args.smoke and not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device here, nothing to measure (the Triton backend's "
              "targets are GPU timings). Run it on a machine with a GPU, or use --smoke to check "
              "the script on the CPU.")
        return 0
    from lirpac.codegen import triton as triton_backend
    if not triton_backend.available():
        print("benchmarks/gpu.py: triton does not import; pip install 'lirpac[triton]'")
        return 0
    device = torch.device("cpu" if args.smoke else "cuda")
    if args.smoke:
        args.models = args.models or list(smoke_models())
        args.batch, args.repeat, args.min_time = [1, 2], 1, 0.0
        args.micro_mb = min(args.micro_mb, 0.01)
    args.models = args.models or list(MODELS)
    timer = Timer(device, args.repeat, args.min_time)
    print(environment(device))
    print(f"# eps: L-inf, {EPS} else 1/255; alpha-crown: {ALPHA_ITERATIONS} iterations; speedup = torch / triton\n")
    print(header())
    run_models(args, device, timer)
    micro(args, device, timer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
