"""Train the bundled DigitsCNN on scikit-learn's 8x8 digits.

    python examples/train_digits.py              # ~10 s on a 2-core CPU

Uses light FGSM adversarial training (a clean loss mixed with the loss on
FGSM-perturbed inputs, L-inf radius --eps) so that the model is verifiable
at small radii.  Needs only torch and scikit-learn.  Writes the state_dict
to --out and the first 10 test images + labels next to it
(digits_samples.pt).
"""
import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models.digits_cnn import CHECKPOINT, DigitsCNN  # noqa: E402

N_TEST = 297  # the last 297 of the 1,797 images


def load_data():
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N,1,8,8) in [0,1]
    y = torch.tensor(digits.target, dtype=torch.int64)
    return (x[:-N_TEST], y[:-N_TEST]), (x[-N_TEST:], y[-N_TEST:])


def fgsm(model, x, y, eps):
    x = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    return (x + eps * grad.sign()).clamp(0.0, 1.0).detach()


@torch.no_grad()
def accuracy(model, x, y):
    return (model(x).argmax(1) == y).float().mean().item()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--eps", type=float, default=0.1, help="FGSM training radius (L-inf)")
    p.add_argument("--adv-weight", type=float, default=0.5, help="weight of the adversarial loss")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=CHECKPOINT)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    (x_train, y_train), (x_test, y_test) = load_data()
    model = DigitsCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    gen = torch.Generator().manual_seed(args.seed)

    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        # ramp the radius up over the first third of training
        eps = args.eps * min(1.0, (epoch + 1) / max(1, args.epochs // 3))
        perm = torch.randperm(len(x_train), generator=gen)
        total = 0.0
        for i in range(0, len(perm), args.batch_size):
            idx = perm[i:i + args.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            loss = (1 - args.adv_weight) * F.cross_entropy(model(xb), yb)
            if args.adv_weight > 0 and eps > 0:
                loss = loss + args.adv_weight * F.cross_entropy(model(fgsm(model, xb, yb, eps)), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        if (epoch + 1) % 10 == 0 or epoch == args.epochs - 1:
            model.eval()
            print(f"epoch {epoch + 1:3d}  loss {total / len(x_train):.4f}  "
                  f"train acc {accuracy(model, x_train, y_train):.4f}  "
                  f"test acc {accuracy(model, x_test, y_test):.4f}")

    model.eval()
    x_adv = fgsm(model, x_test, y_test, args.eps)
    print(f"done in {time.time() - t0:.1f} s")
    print(f"train accuracy: {accuracy(model, x_train, y_train):.4f}")
    print(f"test accuracy:  {accuracy(model, x_test, y_test):.4f}")
    print(f"test accuracy under FGSM (eps={args.eps}): {accuracy(model, x_adv, y_test):.4f}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    samples = args.out.parent / "digits_samples.pt"
    torch.save({"images": x_test[:10].clone(), "labels": y_test[:10].clone()}, samples)
    print(f"saved {args.out} and {samples}")


if __name__ == "__main__":
    main()
