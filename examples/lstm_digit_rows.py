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

import lirpac

sys.path.insert(0, str(Path(__file__).resolve().parent))
import certified_training  # noqa: E402
from train_digits import load_data  # noqa: E402


class RowLSTM(nn.Module):
    def __init__(self, hidden: int = 32):
        super().__init__()
        self.rnn = nn.LSTM(8, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, image):                      # (B, 1, 8, 8): 8 steps of 8 pixels
        out, _ = self.rnn(image.flatten(1, 2))
        return self.head(out[:, -1])


def verify(args, net, model, x_test, y_test):
    """Verified accuracy on the first --verify test images, per method."""
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

    # the shared loop (examples/certified_training.py): eps ramped linearly from the first step,
    # IBP's worst-case cross-entropy mixed with the clean one (kappa falling from 1 to 0.5)
    loop = certified_training.settings(
        method="ibp", no_fusion=True, eps=args.eps, epochs=args.epochs, warmup=0,
        ramp=args.ramp * args.epochs, schedule="linear", kappa=0.5, lr=args.lr,
        batch_size=args.batch_size, seed=args.seed, threads=0,
        verify_methods="ibp,crown-ibp" + (",crown" if args.crown else ""))
    train_set, (x_test, y_test) = load_data()
    torch.manual_seed(args.seed)
    certified_training.train(loop, RowLSTM(), train_set, (x_test, y_test), lr_decay=False,
                             final_report=lambda net, model: verify(args, net, model, x_test, y_test))


if __name__ == "__main__":
    main()
