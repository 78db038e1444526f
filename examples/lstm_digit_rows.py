"""An LSTM that reads scikit-learn's 8x8 digits row by row (a sequence of 8 rows of 8 pixels),
trained certifiably with IBP and verified with IBP and CROWN-IBP (and CROWN with --crown).

    python examples/lstm_digit_rows.py                  # a few minutes on 2 cores
    python examples/lstm_digit_rows.py --eps 0.05 --epochs 15

The loss mixes the clean cross-entropy with the cross-entropy of the worst-case logits that
IBP's margin bounds allow over the L-inf ball (pixels kept in [0, 1]), eps ramped up from 0 as
in examples/simple_training.py. lirpac unrolls the LSTM (ir/recurrent.py) into its gates.
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


class RowLSTM(nn.Module):
    def __init__(self, hidden: int = 32):
        super().__init__()
        self.rnn = nn.LSTM(8, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, image):                      # (B, 1, 8, 8): 8 steps of 8 pixels
        out, _ = self.rnn(image.flatten(1, 2))
        return self.head(out[:, -1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eps", type=float, default=0.03, help="L-inf radius (pixels in [0, 1])")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--ramp", type=float, default=0.5, help="fraction of training over which eps ramps up")
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--verify", type=int, default=100, help="test images to verify at the end")
    p.add_argument("--crown", action="store_true",
                   help="verify with CROWN too (through the unrolled LSTM: about a second per image)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.eps < 0 or args.epochs < 1:
        p.error("--eps must be >= 0 and --epochs >= 1")

    torch.manual_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = load_data()
    model = RowLSTM()
    net = lirpac.compile(model, x_train[:1])
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps = (len(x_train) + args.batch_size - 1) // args.batch_size
    ramp_steps = max(1, int(args.ramp * args.epochs * steps))
    step, t0 = 0, time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_train))
        for i in range(0, len(perm), args.batch_size):
            idx = perm[i:i + args.batch_size]
            x, y = x_train[idx], y_train[idx]
            progress = min(1.0, step / ramp_steps)
            eps, kappa = args.eps * progress, 1.0 - 0.5 * progress
            loss = kappa * F.cross_entropy(model(x), y)
            if eps > 0:
                lower, _ = net.bounds(x, lirpac.LpBall(eps=eps, lower=0.0, upper=1.0), method="ibp",
                                      C=lirpac.margin_spec(y, 10), bound_upper=False)
                loss = loss + (1 - kappa) * worst_case_loss(lower)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            done = i // args.batch_size + 1
            print(f"\repoch {epoch + 1:3d} [{'#' * (30 * done // steps):<30}] {done}/{steps}", end="", flush=True)
        model.eval()
        with torch.no_grad():
            clean = (model(x_test).argmax(1) == y_test).float().mean().item()
        print(f"  eps {eps:.3f}  clean test acc {clean:.3f}", flush=True)
    print(f"trained in {time.time() - t0:.1f} s")

    x, y = x_test[:args.verify], y_test[:args.verify]
    ball = lirpac.LpBall(eps=args.eps, lower=0.0, upper=1.0)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
        print(f"clean accuracy on the first {len(x)} test images: {correct.float().mean().item():.3f}")
        for method in ("ibp", "crown-ibp") + (("crown",) if args.crown else ()):
            start = time.time()
            lower, _ = net.bounds(x, ball, method=method, C=lirpac.margin_spec(y, 10), bound_upper=False)
            verified = (correct & (lower > 0).all(1)).float().mean().item()
            print(f"verified accuracy at eps={args.eps} ({method}): {verified:.3f}  "
                  f"({time.time() - start:.1f} s)")


if __name__ == "__main__":
    main()
