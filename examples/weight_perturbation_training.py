"""Certified training against weight perturbations on scikit-learn's 8x8 digits: an MLP whose
second hidden layer's weights may move within an L2 ball (the whole matrix's norm at most eps),
or (--model cnn) a small CNN whose second convolution's kernels may move so.

    python examples/weight_perturbation_training.py              # about a minute on 2 cores
    python examples/weight_perturbation_training.py --eps 0.05 --epochs 20
    python examples/weight_perturbation_training.py --model cnn  # a few minutes on 2 cores

(--model cnn --epochs 8, eps 0.05: clean test accuracy 0.83, certified 0.78 by CROWN-IBP and
0.80 by CROWN; IBP's box around the L2 ball certifies nothing.)

lirpac.PerturbedParameters makes the chosen weights (of nn.Linear or nn.Conv layers) inputs of
the model, each with its own set (here an L2 ball around the current weights, the image
fixed). The loss mixes the clean cross-entropy with the cross-entropy of the worst-case
logits that CROWN-IBP's margin bounds allow, with eps ramped up from 0 (as
examples/simple_training.py does for inputs). At the end it reports clean accuracy and the
accuracy certified under weight perturbation, by IBP, CROWN-IBP and CROWN.
"""
import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn

import lirpac

sys.path.insert(0, str(Path(__file__).resolve().parent))
import certified_training  # noqa: E402
from lirpac.training import worst_case_ce  # noqa: E402
from train_digits import load_data  # noqa: E402

def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(),
                         nn.Linear(32, 10))


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


# each model, and the weights that move: the second hidden layer, the second convolution
MODELS = {"mlp": (mlp, ["3.weight"]), "cnn": (cnn, ["2.weight"])}


def margin_lower(net, wm, x, y, eps, method):
    sets = (None, *[lirpac.LpBall(eps=eps, norm=2) for _ in wm.names])
    lower, _ = net.bounds(wm.inputs(x), sets, method=method, C=lirpac.margin_spec(y, 10),
                          bound_upper=False)
    return lower


def certified_accuracy(net, wm, model, x, y, eps, method):
    with torch.no_grad():
        lower = margin_lower(net, wm, x, y, eps, method)
        correct = model(x).argmax(1) == y
    return (correct & (lower > 0).all(1)).float().mean().item()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="mlp",
                   help="mlp: its second hidden layer's weights move; cnn: its second conv's kernels")
    p.add_argument("--eps", type=float, default=0.05, help="L2 radius of each moving weight tensor")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--ramp", type=float, default=0.5, help="fraction of training over which eps ramps up")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.eps < 0 or args.epochs < 1:
        p.error("--eps must be >= 0 and --epochs >= 1")

    train_set, (x_test, y_test) = load_data()
    torch.manual_seed(args.seed)
    make_model, moving = MODELS[args.model]
    model = make_model()
    wm = lirpac.PerturbedParameters(model, moving)
    net = lirpac.compile(wm, wm.inputs(train_set[0][:1]))

    def robust(net, x, y, eps):
        """CROWN-IBP's margin bounds over the weight balls (the image fixed), as a loss."""
        margins = margin_lower(net, wm, x, y, eps, "crown-ibp")
        return worst_case_ce(margins), margins

    def report(net, model):
        for method in ("ibp", "crown-ibp", "crown"):
            acc = certified_accuracy(net, wm, model, x_test, y_test, args.eps, method)
            print(f"accuracy certified under L2 weight perturbation eps={args.eps} of "
                  f"{', '.join(moving)} ({method}): {acc:.3f}")

    # the shared loop (examples/certified_training.py): eps ramped linearly from the first step,
    # the clean cross-entropy mixed with the robust one (kappa falling from 1 to 0.5)
    loop = certified_training.settings(
        eps=args.eps, norm="2", epochs=args.epochs, warmup=0, ramp=args.ramp * args.epochs,
        schedule="linear", kappa=0.5, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
        threads=0, verify_methods="ibp,crown-ibp,crown")
    certified_training.train(loop, model, train_set, (x_test, y_test), net=net, robust=robust,
                             final_report=report, lr_decay=False)


if __name__ == "__main__":
    main()
