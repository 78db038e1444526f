#!/usr/bin/env python
"""CROWN vs alpha-CROWN: bound width and time on the model zoo, on VNN-COMP's mnist-net_256x4
(prop_0_0.03), and against auto_LiRPA's alpha-CROWN with the same iteration budget.

    python benchmarks/alpha_crown.py                 # everything
    python benchmarks/alpha_crown.py --only zoo mnist --iterations 20

Widths are means over outputs (margins of the predicted label, or of label 8 for the VNN-COMP
property); times are the median of ``--repeat`` calls after one warm-up call. auto_LiRPA is
imported from --alirpa (it is run, not copied) and skipped when missing.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))

import lirpac  # noqa: E402
from examples.models.zoo import BENCHMARK_MODELS  # noqa: E402

EPS = {"mlp": 0.01, "cnn_2c": 0.01, "cnn_4c_bn": 1 / 255, "resnet_2b": 1 / 255}
VNNCOMP = Path("/work/shared/vnncomp2021/mnistfc")


def timed(fn, repeat, grad=False):
    """(result of fn, median seconds); lirpac runs without autograd (alpha-crown enables it
    itself for its slopes), auto_LiRPA needs it on."""
    with torch.set_grad_enabled(grad):
        return _timed(fn, repeat)


def _timed(fn, repeat):
    fn()
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def compare(net, x, perturbation, C, iterations, repeat, label):
    crown, t_crown = timed(lambda: net.bounds(x, perturbation, method="crown", C=C), repeat)
    alpha, t_alpha = timed(lambda: net.bounds(x, perturbation, method="alpha-crown", C=C,
                                              options={"iterations": iterations}), repeat)
    w_crown, w_alpha = crown[1] - crown[0], alpha[1] - alpha[0]
    ok = bool(torch.all(w_alpha <= w_crown + 1e-5))
    print(f"{label:<22} crown width {w_crown.mean():9.4f} lower {crown[0].mean():9.4f} {t_crown * 1e3:8.1f} ms | "
          f"alpha-crown width {w_alpha.mean():9.4f} lower {alpha[0].mean():9.4f} {t_alpha * 1e3:8.1f} ms | "
          f"width <= crown everywhere: {ok}")
    return alpha


def zoo(args):
    for name in args.models:
        factory, shape = BENCHMARK_MODELS[name]
        model = factory()
        x = torch.rand(1, *shape, generator=torch.Generator().manual_seed(0))
        net = lirpac.compile(model, x)
        C = lirpac.margin_spec(model(x).argmax(1), 10)
        compare(net, x, lirpac.LpBall(eps=EPS[name]), C, args.iterations, args.repeat, name)


def mnist(args):
    from lirpac.vnnlib import parse_vnnlib
    net = lirpac.compile(str(VNNCOMP / "mnist-net_256x4.onnx"))
    region = parse_vnnlib(VNNCOMP / "prop_0_0.03.vnnlib").regions[0]
    lower = torch.tensor(region.lower, dtype=torch.float32).reshape(1, *net.input_shape)
    upper = torch.tensor(region.upper, dtype=torch.float32).reshape(1, *net.input_shape)
    C = lirpac.margin_spec(torch.tensor([8]), 10)
    compare(net, (lower + upper) / 2, lirpac.Box(lower, upper), C, args.iterations, args.repeat,
            "mnist-net_256x4 prop_0")


def random_models():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                              torch.nn.ReLU(), torch.nn.Linear(64, 10)).eval()
    cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 10)).eval()
    return {"random MLP": (mlp, (20,), 0.1), "random CNN": (cnn, (1, 16, 16), 0.1)}


def versus_auto_lirpa(args):
    sys.path.insert(0, args.alirpa)
    try:
        from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm
    except ImportError as err:
        print(f"auto_LiRPA not importable from {args.alirpa} ({err}): skipped")
        return
    for label, (model, shape, eps) in random_models().items():
        # batch 1: auto_LiRPA 0.3's sparse slopes fail on batch 2 of this CNN
        x = torch.rand(1, *shape, generator=torch.Generator().manual_seed(1))
        C = lirpac.margin_spec(model(x).argmax(1), 10)
        net = lirpac.compile(model, x)
        ours, t_ours = timed(lambda: net.bounds(x, lirpac.LpBall(eps=eps), method="alpha-crown", C=C,
                                                options={"iterations": args.iterations}), args.repeat)
        # dense slopes: auto_LiRPA 0.3's sparse ones fail on this CNN (same bounds, other storage)
        opts = {"optimize_bound_args": {"iteration": args.iterations, "lr_alpha": 0.5, "lr_decay": 0.98},
                "sparse_features_alpha": False}
        bx = BoundedTensor(x, PerturbationLpNorm(eps=eps))
        times = []
        for _ in range(args.repeat):
            # a fresh module per call: auto_LiRPA keeps slopes between calls (and trips on them)
            bounded = BoundedModule(model, torch.zeros(1, *shape), bound_opts=opts, verbose=False)
            start = time.perf_counter()
            theirs = bounded.compute_bounds(x=(bx,), C=C, method="CROWN-Optimized")
            times.append(time.perf_counter() - start)
        t_theirs = statistics.median(times)
        w_ours = (ours[1] - ours[0]).mean().item()
        w_theirs = (theirs[1] - theirs[0]).mean().item()
        print(f"{label:<22} lirpac width {w_ours:9.4f} {t_ours * 1e3:8.1f} ms | auto_LiRPA width "
              f"{w_theirs:9.4f} {t_theirs * 1e3:8.1f} ms | ratio {w_ours / w_theirs:.4f}")


SECTIONS = {"zoo": zoo, "mnist": mnist, "auto_lirpa": versus_auto_lirpa}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--models", nargs="*", choices=sorted(BENCHMARK_MODELS), default=list(BENCHMARK_MODELS))
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--alirpa", default="/tmp/alirpa")
    args = parser.parse_args()
    for section in args.only:
        SECTIONS[section](args)


if __name__ == "__main__":
    main()
