"""Certified training in a few lines: CROWN-IBP on scikit-learn's 8x8 digits.

    python examples/simple_training.py                 # about a minute on a 2-core CPU
    python examples/simple_training.py --eps 0.05 --epochs 30 --out trained.pt

The loss mixes the clean cross-entropy with the cross-entropy of the *worst-case logits*
that the bounds allow: for the margins m_j = logit_y - logit_j (spec rows e_y - e_j) with
certified lower bounds lb_j, the worst logits are (0, -lb_1, ..., -lb_9) with the true class
first. Minimising it pushes every margin's lower bound above 0, i.e. certifies the sample.
As in Zhang et al. 2020 (CROWN-IBP), eps ramps up from 0 and the bound moves from the
CROWN-IBP bound to the cheaper IBP bound (beta: 1 -> 0) during the ramp. The bounds come
from the compiled network and are differentiable in the model's parameters; the model is
compiled once, and the updated weights are read on every call.
"""
import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import lirpac

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models.digits_cnn import DigitsCNN  # noqa: E402
from train_digits import load_data  # noqa: E402


def worst_case_loss(margin_lower: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the worst logits (0 for the true class, -lb_j for the others)."""
    logits = torch.cat([torch.zeros_like(margin_lower[:, :1]), -margin_lower], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))


def certified_accuracy(net, model, x, y, eps, method):
    with torch.no_grad():
        lower, _ = net.bounds(x, lirpac.LpBall(eps=eps, lower=0.0, upper=1.0), method=method,
                              C=lirpac.margin_spec(y, 10), bound_upper=False)
        correct = model(x).argmax(1) == y
    return (correct & (lower > 0).all(1)).float().mean().item()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eps", type=float, default=0.1, help="L-inf training and test radius (pixels in [0, 1])")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--ramp", type=float, default=0.5, help="fraction of training over which eps ramps up")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="save the trained state_dict here")
    args = p.parse_args()
    if args.eps < 0 or args.epochs < 1:
        p.error("--eps must be >= 0 and --epochs >= 1")

    torch.manual_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = load_data()
    model = DigitsCNN()
    net = lirpac.compile(model, x_train[:1])
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = (len(x_train) + args.batch_size - 1) // args.batch_size
    ramp_steps = max(1, int(args.ramp * args.epochs * steps_per_epoch))
    step, t0 = 0, time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_train))
        total = robust = 0.0
        for i in range(0, len(perm), args.batch_size):
            idx = perm[i:i + args.batch_size]
            x, y = x_train[idx], y_train[idx]
            progress = min(1.0, step / ramp_steps)
            eps, beta, kappa = args.eps * progress, 1.0 - progress, 1.0 - 0.5 * progress
            ball = lirpac.LpBall(eps=eps, lower=0.0, upper=1.0)
            C = lirpac.margin_spec(y, 10)
            lower_ibp, _ = net.bounds(x, ball, method="ibp", C=C, bound_upper=False)
            lower = lower_ibp
            if beta > 0:
                lower_crown_ibp, _ = net.bounds(x, ball, method="crown-ibp", C=C, bound_upper=False)
                lower = beta * lower_crown_ibp + (1 - beta) * lower_ibp
            loss_robust = worst_case_loss(lower)
            loss = kappa * F.cross_entropy(model(x), y) + (1 - kappa) * loss_robust
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            total += loss.item() * len(idx)
            robust += loss_robust.item() * len(idx)
        model.eval()
        print(f"epoch {epoch + 1:3d}  eps {eps:.3f}  loss {total / len(x_train):.4f}  "
              f"robust loss {robust / len(x_train):.4f}  "
              f"clean test acc {(model(x_test).argmax(1) == y_test).float().mean().item():.3f}", flush=True)

    model.eval()
    print(f"trained in {time.time() - t0:.1f} s")
    for method in ("ibp", "crown-ibp", "crown"):
        acc = certified_accuracy(net, model, x_test, y_test, args.eps, method)
        print(f"certified test accuracy at eps={args.eps} ({method}): {acc:.3f}")
    if args.out is not None:
        torch.save(model.state_dict(), args.out)
        print(f"saved {args.out}")


if __name__ == "__main__":
    main()
