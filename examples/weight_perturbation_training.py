"""Certified training against weight perturbations: an MLP on scikit-learn's 8x8 digits whose
second hidden layer's weights may move within an L2 ball (the whole matrix's norm at most eps).

    python examples/weight_perturbation_training.py              # about a minute on 2 cores
    python examples/weight_perturbation_training.py --eps 0.05 --epochs 20

lirpac.PerturbedParameters makes the chosen nn.Linear weights inputs of the model, each with
its own set (here an L2 ball around the current weights, the image fixed). The loss mixes the
clean cross-entropy with the cross-entropy of the worst-case logits that CROWN-IBP's margin
bounds allow, with eps ramped up from 0 (as examples/simple_training.py does for inputs). At
the end it reports clean accuracy and the accuracy certified under weight perturbation, by
IBP, CROWN-IBP and CROWN.
"""
import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import lirpac

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lirpac.training import worst_case_ce as worst_case_loss  # noqa: E402
from train_digits import load_data  # noqa: E402

MOVING = ["3.weight"]      # the second hidden layer of the MLP below


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(),
                         nn.Linear(32, 10))


def margin_lower(net, wm, x, y, eps, method):
    sets = (None, *[lirpac.LpBall(eps=eps, norm=2) for _ in MOVING])
    lower, _ = net.bounds(wm.inputs(x), sets, method=method, C=lirpac.margin_spec(y, 10),
                          bound_upper=False)
    return lower


def certified_accuracy(net, wm, model, x, y, eps, method):
    with torch.no_grad():
        lower = margin_lower(net, wm, x, y, eps, method)
        correct = model(x).argmax(1) == y
    return (correct & (lower > 0).all(1)).float().mean().item()


def bar(done: int, total: int, width: int = 30) -> str:
    filled = int(width * done / total)
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eps", type=float, default=0.05, help="L2 radius of each moving weight matrix")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--ramp", type=float, default=0.5, help="fraction of training over which eps ramps up")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.eps < 0 or args.epochs < 1:
        p.error("--eps must be >= 0 and --epochs >= 1")

    torch.manual_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = load_data()
    model = mlp()
    wm = lirpac.PerturbedParameters(model, MOVING)
    net = lirpac.compile(wm, wm.inputs(x_train[:1]))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = (len(x_train) + args.batch_size - 1) // args.batch_size
    ramp_steps = max(1, int(args.ramp * args.epochs * steps_per_epoch))
    step, t0 = 0, time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_train))
        total = 0.0
        for i in range(0, len(perm), args.batch_size):
            idx = perm[i:i + args.batch_size]
            x, y = x_train[idx], y_train[idx]
            progress = min(1.0, step / ramp_steps)
            eps, kappa = args.eps * progress, 1.0 - 0.5 * progress
            loss = kappa * F.cross_entropy(model(x), y)
            if eps > 0:
                loss = loss + (1 - kappa) * worst_case_loss(margin_lower(net, wm, x, y, eps, "crown-ibp"))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            total += loss.item() * len(idx)
            print(f"\repoch {epoch + 1:3d} {bar(i // args.batch_size + 1, steps_per_epoch)}", end="", flush=True)
        model.eval()
        with torch.no_grad():
            clean = (model(x_test).argmax(1) == y_test).float().mean().item()
        print(f"  eps {eps:.3f}  loss {total / len(x_train):.4f}  clean test acc {clean:.3f}", flush=True)

    model.eval()
    print(f"trained in {time.time() - t0:.1f} s")
    for method in ("ibp", "crown-ibp", "crown"):
        acc = certified_accuracy(net, wm, model, x_test, y_test, args.eps, method)
        print(f"accuracy certified under L2 weight perturbation eps={args.eps} of {', '.join(MOVING)} "
              f"({method}): {acc:.3f}")


if __name__ == "__main__":
    main()
