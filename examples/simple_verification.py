"""Certify a small digits CNN with lirpac: the first script to read.

    python examples/simple_verification.py                      # bundled model, L-inf eps 0.08
    python examples/simple_verification.py --eps 0.03 --methods crown
    python examples/simple_verification.py --norm 2             # L2 ball, eps 0.2
    python examples/simple_verification.py --checkpoint my_digits_cnn.pt
    python examples/simple_verification.py --verbose             # every logit and margin

For the 10 bundled test images (8x8 digits, pixels in [0, 1]) and each bound method, prints
a summary (how many images are *certified*: no x' in {x' : ||x' - x||_p <= eps, 0 <= x' <= 1}
changes the prediction), then per image the smallest margin lower bound. lirpac bounds the
margins logit_y - logit_j (j != y) directly with a specification matrix C whose rows are
e_y - e_j; an image is certified iff every margin lower bound is > 0 (and the clean
prediction is right). --verbose adds every logit's [lower, upper] and every margin's bound.
"""
import argparse
import math
import sys
import time
from pathlib import Path

import torch

import lirpac

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models.digits_cnn import DigitsCNN, load_default, load_samples  # noqa: E402

# Default radius per norm: the bundled model is certified by CROWN on some images, not all.
DEFAULT_EPS = {"inf": 0.08, "2": 0.2, "1": 0.4}


def load_model(path):
    """A DigitsCNN state_dict, or a whole pickled nn.Module."""
    if path is None:
        return load_default()
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, torch.nn.Module):
        return obj.eval()
    model = DigitsCNN()
    model.load_state_dict(obj)
    return model.eval()


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="DigitsCNN state_dict or pickled nn.Module "
                                                      "(default: the bundled model)")
    p.add_argument("--norm", choices=["inf", "2", "1"], default="inf")
    p.add_argument("--eps", type=float, default=None, help=f"radius (default per norm: {DEFAULT_EPS})")
    p.add_argument("--methods", default="ibp,crown-ibp,crown", help="comma-separated bound methods")
    p.add_argument("--verbose", action="store_true",
                   help="also print every logit's bounds and every margin's lower bound")
    args = p.parse_args()
    eps = DEFAULT_EPS[args.norm] if args.eps is None else args.eps
    if not math.isfinite(eps) or eps < 0:
        p.error(f"--eps must be a finite number >= 0, got {args.eps}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m.lower() not in lirpac.methods.METHODS]
    if unknown or not methods:
        p.error(f"--methods: unknown method(s) {', '.join(unknown) or '(none given)'}; choose "
                f"from {', '.join(lirpac.methods.METHODS)}")

    model = load_model(args.checkpoint)
    images, labels = load_samples()                 # (10, 1, 8, 8) in [0, 1], (10,)

    # 1. Compile once: trace the model into lirpac's bound IR (any example input of the right
    #    shape and dtype; a mismatch is an InputError that says what to change).
    try:
        net = lirpac.compile(model, images[:1])
    except lirpac.InputError as err:
        sys.exit(f"error: {err}")

    # 2. The perturbation set: an Lp ball around each image, intersected with the pixel range.
    ball = lirpac.LpBall(eps=eps, norm=args.norm, lower=0.0, upper=1.0)
    C = lirpac.margin_spec(labels, 10)

    with torch.no_grad():
        logits = model(images)
        correct = logits.argmax(1) == labels
        bounds, margins, certified, times = {}, {}, {}, {}
        for m in methods:
            # 3. Bounds on the margins logit_y - logit_j (j != y), C @ logits: (10, 9). The first
            #    call generates the bound code for this method; report the best of three warm calls.
            margins[m], _ = net.bounds(images, ball, method=m, C=C)
            times[m] = min(timed(net.bounds, images, ball, method=m, C=C) for _ in range(3))
            certified[m] = correct & (margins[m] > 0).all(dim=1)
            if args.verbose:
                # 4. Bounds on the 10 logits themselves: (10, 10) each.
                bounds[m] = net.bounds(images, ball, method=m)

    # the summary first
    print(f"L{args.norm} ball, eps = {eps:g}, pixels kept in [0, 1]; {len(labels)} images")
    print(f"clean accuracy: {int(correct.sum())}/{len(labels)}")
    for m in methods:
        print(f"{m}: {int(certified[m].sum())}/{len(labels)} certified (time {times[m] * 1e3:.1f} ms)")

    # then the certificate of each image: the smallest margin lower bound (> 0: certified)
    col = 14
    print("\nsmallest lower bound of logit_label - logit_j over j != label (> 0: certified)")
    print(f"{'image':>5} {'label':>5} {'pred':>4}  " + "".join(f"{m:>{col}}" for m in methods))
    for i, y in enumerate(labels.tolist()):
        cells = "".join(f"{margins[m][i].min().item():>{col - 2}.3f} {'+' if certified[m][i] else '-'}"
                        for m in methods)
        print(f"{i:>5} {y:>5} {logits[i].argmax().item():>4}  {cells}")
    if not args.verbose:
        print("\n(+ certified, - not; --verbose prints every logit's and margin's bounds)")
        return

    col = 20
    print("\nsound [lower, upper] bounds of each logit (* = true class), margin lower bounds\n")
    for i, y in enumerate(labels.tolist()):
        pred = logits[i].argmax().item()
        note = "" if pred == y else "  (MISCLASSIFIED)"
        print(f"image {i}: label {y}, predicted {pred}{note}")
        print(f"  {'class':>5} {'clean':>7}  " + "".join(f"{m:>{col}}" for m in methods)
              + "   margin lower bound per method")
        others = [k for k in range(10) if k != y]
        for k in range(10):
            mark = "*" if k == y else " "
            lo_hi = [(bounds[m][0][i, k], bounds[m][1][i, k]) for m in methods]
            cells = "".join(f"[{lo:8.3f},{hi:8.3f}]".rjust(col) for lo, hi in lo_hi)
            margin = "" if k == y else "   " + " ".join(
                f"{margins[m][i, others.index(k)].item():8.3f}" for m in methods)
            print(f"  {mark}{k:>4} {logits[i, k]:7.3f}  {cells}{margin}")
        verdicts = ["yes" if certified[m][i] else "no" for m in methods]
        print(f"  {'certified':>13}  " + "".join(f"{v:>{col}}" for v in verdicts) + "\n")


if __name__ == "__main__":
    main()
