"""Certified training on CIFAR-10: CROWN-IBP with loss fusion, on one or several processes.

    pip install -e ".[examples]"
    python examples/cifar_training.py --data-dir ~/data/cifar-10-batches-py
    torchrun --nproc_per_node 4 examples/cifar_training.py --data-dir ...   # DDP: NCCL / gloo
    python examples/cifar_training.py --smoke                # seconds, on random data (CI)

``--data-dir`` is the folder of the standard CIFAR-10 python files (data_batch_1 ... 5,
test_batch). Pixels are in [0, 1]; the per-channel normalisation is the model's first layer,
so eps is in pixel units (8/255 = 0.0314 is the usual radius) and the L-inf set is clipped to
[0, 1]. Loss fusion (the default) bounds the cross-entropy with one backward row per sample;
``--no-fusion`` bounds the 9 margins instead. With BatchNorm models ("cnn-bn"), the bounds in
training use the batch's statistics, as PyTorch's training step does.
"""
import argparse
import pickle
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from certified_training import add_arguments, train  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


class Normalize(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).reshape(1, 3, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def cnn_4layer():
    return nn.Sequential(Normalize(), nn.Conv2d(3, 16, 4, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32 * 8 * 8, 100), nn.ReLU(), nn.Linear(100, 10))


def cnn_bn():
    def block(i, o, k, s, p):
        return [nn.Conv2d(i, o, k, stride=s, padding=p), nn.BatchNorm2d(o), nn.ReLU()]
    return nn.Sequential(Normalize(), *block(3, 32, 3, 1, 1), *block(32, 32, 4, 2, 1),
                         *block(32, 64, 4, 2, 1), nn.Flatten(), nn.Linear(64 * 8 * 8, 256),
                         nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 10))


MODELS = {"cnn-4layer": cnn_4layer, "cnn-bn": cnn_bn}


def load_cifar(data_dir: Path):
    def batch(name):
        path = data_dir / name
        if not path.exists():
            sys.exit(f"--data-dir: {path} not found (expected the CIFAR-10 python files)")
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        x = torch.tensor(np.asarray(d[b"data"]), dtype=torch.float32).reshape(-1, 3, 32, 32) / 255.0
        return x, torch.tensor(d[b"labels"], dtype=torch.int64)
    train_parts = [batch(f"data_batch_{i}") for i in range(1, 6)]
    return (torch.cat([x for x, _ in train_parts]), torch.cat([y for _, y in train_parts])), \
        batch("test_batch")


def random_data(n_train=256, n_test=64):
    g = torch.Generator().manual_seed(0)
    return ((torch.rand(n_train, 3, 32, 32, generator=g), torch.randint(0, 10, (n_train,), generator=g)),
            (torch.rand(n_test, 3, 32, 32, generator=g), torch.randint(0, 10, (n_test,), generator=g)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, eps=8 / 255, epochs=100, batch_size=128, lr=5e-4, warmup=1, ramp=50)
    p.add_argument("--model", choices=sorted(MODELS), default="cnn-4layer")
    p.add_argument("--data-dir", type=Path, default=None, help="the CIFAR-10 python files")
    p.add_argument("--smoke", action="store_true",
                   help="a seconds-long run on random data (1 epoch of 128 samples)")
    args = p.parse_args(argv)
    if args.smoke:
        train_set, test_set = random_data(128, 32)
        args.epochs, args.warmup, args.ramp, args.batch_size = 1, 0, 1, 32
        args.verify_methods = "ibp,crown-ibp"
    elif args.data_dir is None:
        p.error("give --data-dir (the CIFAR-10 python files), or --smoke")
    else:
        train_set, test_set = load_cifar(args.data_dir)
    torch.manual_seed(args.seed)
    train(args, MODELS[args.model](), train_set, test_set)


if __name__ == "__main__":
    main()
