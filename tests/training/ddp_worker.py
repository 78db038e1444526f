"""One rank of the 2-process test (test_distributed.py): a few CROWN-IBP steps under
DistributedDataParallel on this rank's half of the batch; writes its parameters and losses.

    RANK=r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=p python ddp_worker.py OUT
(WORLD_SIZE=1: the same steps on the whole batch in one process, no process group.)
"""
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import lirpac
from lirpac import training

STEPS, BATCH = 3, 16


def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 5))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(BATCH, 6, generator=g), torch.randint(0, 5, (BATCH,), generator=g)
    return model, x, y


def step_loss(model_call, net, x, y):
    ball = lirpac.LpBall(eps=0.05)
    robust = training.robust_loss(net, x, y, ball, "crown-ibp", beta=0.5)
    return 0.5 * F.cross_entropy(model_call(x), y) + 0.5 * robust


def main(out, world=None):
    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1")) if world is None else world
    model, x, y = setup()
    net = lirpac.compile(model, x[:2])
    if world > 1:
        dist.init_process_group("gloo")
        rank = dist.get_rank()
        share = BATCH // world
        x, y = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]
        call = nn.parallel.DistributedDataParallel(model)
    else:
        call = model
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(STEPS):
        loss = step_loss(call, net, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    torch.save({"params": [p.detach().clone() for p in model.parameters()], "losses": losses}, out)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
