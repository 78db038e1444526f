"""The certified-training loop the training examples share (simple_training.py, mnist_training.py,
cifar_training.py, lstm_digit_rows.py, weight_perturbation_training.py): options, eps schedule, progress bar, checkpoints, resume, multi-process
(torchrun), and the final verified-error report. Everything lirpac-specific is three calls:
``lirpac.compile`` (once), ``lirpac.training.robust_loss`` (each step) and
``lirpac.training.certified`` (the report).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

import lirpac
from lirpac import training

try:
    from tqdm import tqdm
except ImportError:          # the progress bar is optional: pip install -e ".[examples]"
    tqdm = None


def add_arguments(p: argparse.ArgumentParser, *, eps: float, epochs: int, batch_size: int,
                  lr: float, warmup: int, ramp: int, method: str = "crown-ibp", threads: int = 1,
                  kappa: float = 0.0, eps_help: str = "training and test radius, in pixel units ([0, 1])"):
    p.add_argument("--method", choices=training.ROBUST_METHODS, default=method,
                   help="bounds in the loss (default %(default)s)")
    p.add_argument("--eps", type=float, default=eps, help=f"{eps_help} (default %(default)s)")
    p.add_argument("--norm", choices=["inf", "2"], default="inf", help="Lp norm of the set")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--warmup", type=int, default=warmup,
                   help="epochs of natural training before eps starts to grow")
    p.add_argument("--ramp", type=int, default=ramp, help="epochs over which eps grows to --eps")
    p.add_argument("--schedule", choices=["smoothed", "linear"], default="smoothed",
                   help="eps ramp shape: CROWN-IBP's smoothed ramp, or a straight line")
    p.add_argument("--kappa", type=float, default=kappa,
                   help="weight of the clean loss once eps is at its target; it falls from 1 "
                   "during the ramp (default %(default)s)")
    p.add_argument("--no-fusion", action="store_true",
                   help="bound each margin (n_classes - 1 backward rows) instead of the loss")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=threads,
                   help="torch threads (0: torch's default; small models run fastest on 1, and "
                   "several threads on a busy machine can be 100x slower)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for checkpoint.pt (written every epoch) and model.pt")
    p.add_argument("--resume", type=Path, default=None, help="a checkpoint.pt to continue from")
    p.add_argument("--verify-methods", default="ibp,crown-ibp,crown,crown-intersect",
                   help="methods of the final verified-error report (comma separated; "
                   "crown-intersect: CROWN with intermediate bounds intersected with IBP's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--limit", type=int, default=0,
                   help="use only the first N training and N // 4 test samples (quick checks)")
    return p


def settings(**overrides) -> argparse.Namespace:
    """The loop's options at their defaults, with ``overrides`` (for scripts with their own
    command line)."""
    p = add_arguments(argparse.ArgumentParser(), eps=0.0, epochs=1, batch_size=64, lr=1e-3,
                      warmup=0, ramp=1)
    args = p.parse_args([])
    for key, value in overrides.items():
        if not hasattr(args, key):
            raise AttributeError(f"the training loop has no option {key!r}")
        setattr(args, key, value)
    return args


# -- multi-process ------------------------------------------------------------------------------

def init_distributed():
    """(rank, world size, device) under torchrun (NCCL on GPUs, gloo on CPUs), or one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def _shard(n: int, rank: int, world: int, generator: torch.Generator) -> torch.Tensor:
    """This rank's part of a permutation shared by all ranks (same seed), equal sizes."""
    perm = torch.randperm(n, generator=generator)
    per_rank = n // world
    return perm[rank * per_rank:(rank + 1) * per_rank]


# -- the loop ------------------------------------------------------------------------------------

def _schedule(args, steps_per_epoch: int):
    start, length = args.warmup * steps_per_epoch, max(1, round(args.ramp * steps_per_epoch))
    cls = training.SmoothedSchedule if args.schedule == "smoothed" else training.LinearSchedule
    return cls(args.eps, start=start, length=length)


def _ball(args, eps: float, domain):
    norm = math.inf if args.norm == "inf" else 2.0
    lower, upper = domain if norm == math.inf else (None, None)
    return lirpac.LpBall(eps=eps, norm=norm, lower=lower, upper=upper)


def train(args, model: torch.nn.Module, train_set, test_set, *, domain=(0.0, 1.0), log=print,
          net=None, make_set=None, robust=None, final_report=True, lr_decay: bool = True):
    """Certified training of ``model`` on (x, y) tensors; returns the trained model.

    ``make_set(eps)``: the perturbation set at the schedule's eps (default: the Lp ball of
    --norm within ``domain``; examples/sentiment.py gives word substitutions). For sets the
    robust loss cannot take (weights, ...): ``net`` compiled by the caller and
    ``robust(net, x, y, eps)`` -> (loss, margins' lower bounds) of a batch. ``final_report``:
    True ends with ``report`` (the ball's verified error), False with nothing, a function
    ``final_report(net, model)`` with its own. ``lr_decay``: divide the learning rate by 5
    halfway and three quarters through the epochs after the ramp."""
    if make_set is None:
        make_set = lambda eps: _ball(args, eps, domain)       # noqa: E731
    if args.limit:
        train_set = tuple(t[:args.limit] for t in train_set)
        test_set = tuple(t[:max(1, args.limit // 4)] for t in test_set)
    rank, world, device = init_distributed()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = model.to(device)
    x_train, y_train = (t.to(device) for t in train_set)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    if rank == 0:
        log(f"settings: {json.dumps(settings)} world_size={world} device={device} "
            f"train={len(x_train)} test={len(test_set[0])}")
    if net is None:
        net = lirpac.compile(model, x_train[:2])  # once: the bounds read the live weights
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = (len(x_train) // world) // args.batch_size or 1
    schedule = _schedule(args, steps_per_epoch)
    decay_from = args.warmup + args.ramp
    milestones = (decay_from + (args.epochs - decay_from) // 2,
                  decay_from + 3 * (args.epochs - decay_from) // 4) if lr_decay else ()
    lr_sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, [m for m in milestones if m > decay_from], 0.2)
    first_epoch = 0
    if args.resume is not None:
        state = torch.load(args.resume, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        lr_sched.load_state_dict(state["lr_scheduler"])
        first_epoch = state["epoch"] + 1
        if rank == 0:
            log(f"resumed from {args.resume} after epoch {first_epoch}")
    t0 = time.time()
    for epoch in range(first_epoch, args.epochs):
        model.train()
        g = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        order = _shard(len(x_train), rank, world, g).to(device)
        batches = range(steps_per_epoch)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False, dynamic_ncols=True) \
            if tqdm is not None and rank == 0 and not args.no_progress else batches
        sums = {"loss": 0.0, "clean_err": 0.0, "verified_err": 0.0, "n": 0, "n_bounded": 0}
        for i in bar:
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            x, y = x_train[idx], y_train[idx]
            step = epoch * steps_per_epoch + i
            eps = schedule(step)
            progress = eps / args.eps if args.eps > 0 else 1.0
            logits = ddp(x)
            clean = F.cross_entropy(logits, y)
            if eps > 0 and robust is not None:
                robust_ce, margins = robust(net, x, y, eps)
            elif eps > 0:
                robust_ce, margins = training.robust_loss(
                    net, x, y, make_set(eps), args.method,
                    beta=training.crown_ibp_beta(eps, args.eps), fused=not args.no_fusion,
                    return_margins=True)
            if eps > 0:
                kappa = 1.0 - (1.0 - args.kappa) * progress
                loss = kappa * clean + (1 - kappa) * robust_ce
                verified = ((logits.argmax(1) == y) & (margins > 0).all(1)).float().mean().item()
            else:
                loss, verified = clean, float("nan")
            opt.zero_grad()
            loss.backward()
            opt.step()
            n = len(y)
            sums["n"] += n
            sums["loss"] += loss.item() * n
            sums["clean_err"] += training.clean_error(logits.detach(), y) * n
            if eps > 0:
                sums["verified_err"] += (1 - verified) * n
                sums["n_bounded"] += n
            if bar is not batches:
                bar.set_postfix(eps=f"{eps:.4f}", loss=f"{sums['loss'] / sums['n']:.3f}",
                                clean_err=f"{sums['clean_err'] / sums['n']:.3f}",
                                verified_err=_verified(sums))
        if epoch + 1 >= decay_from:
            lr_sched.step()
        if rank == 0:
            n = max(sums["n"], 1)
            model.eval()
            test_err = _clean_error(model, test_set, device)
            log(f"epoch {epoch + 1:3d}  eps {eps:.4f}  loss {sums['loss'] / n:.4f}  "
                f"train clean err {sums['clean_err'] / n:.3f}  train verified err (the loss's "
                f"bounds) {_verified(sums)}  test clean err {test_err:.3f}  "
                f"{time.time() - t0:.0f} s")
            if args.out is not None:
                args.out.mkdir(parents=True, exist_ok=True)
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                            "lr_scheduler": lr_sched.state_dict(), "epoch": epoch,
                            "settings": settings}, args.out / "checkpoint.pt")
    if rank == 0:
        log(f"trained in {time.time() - t0:.1f} s")
        if args.out is not None:
            torch.save(model.state_dict(), args.out / "model.pt")
            log(f"saved {args.out / 'model.pt'} and {args.out / 'checkpoint.pt'}")
        model.eval()
        if callable(final_report):
            final_report(net, model)
        elif final_report:
            report(args, net, model, test_set, device, domain, log)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return model


def _verified(sums) -> str:
    return f"{sums['verified_err'] / sums['n_bounded']:.3f}" if sums["n_bounded"] else "-"


@torch.no_grad()
def _clean_error(model, data, device, batch=500):
    x, y = data
    wrong = sum((model(x[i:i + batch].to(device)).argmax(1) != y[i:i + batch].to(device)).sum().item()
                for i in range(0, len(x), batch))
    return wrong / len(x)


@torch.no_grad()
def report(args, net, model, test_set, device, domain, log=print, batch=200):
    """Clean error and verified error at the training eps, per method and for their best."""
    x_test, y_test = test_set
    methods = [m.strip() for m in args.verify_methods.split(",") if m.strip()]
    certified = {m: 0 for m in methods}
    best = 0
    ball = _ball(args, args.eps, domain)
    for i in range(0, len(x_test), batch):
        x, y = x_test[i:i + batch].to(device), y_test[i:i + batch].to(device)
        logits = model(x)
        any_method = torch.zeros(len(y), dtype=torch.bool, device=device)
        for m in methods:
            ok = training.certified(net, x, y, ball, m, logits=logits)
            certified[m] += ok.sum().item()
            any_method |= ok
        best += any_method.sum().item()
    n = len(x_test)
    log(f"test clean error: {_clean_error(model, test_set, device):.4f}")
    for m in methods:
        log(f"verified test error at eps={args.eps} (L{args.norm}, {m}): {1 - certified[m] / n:.4f}")
    if len(methods) > 1:
        log(f"verified test error at eps={args.eps} (L{args.norm}, best of the methods): "
            f"{1 - best / n:.4f}")
