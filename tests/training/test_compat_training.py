"""lirpac.compat's training helpers: the schedulers give auto_LiRPA 0.7.1's values (measured on
it), and a CrossEntropyWrapper model is bounded by loss fusion."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lirpac import training
from lirpac.compat import (BoundedModule, BoundedTensor, CrossEntropyWrapper, FixedScheduler,
                           LinearScheduler, MultiAverageMeter, PerturbationLpNorm,
                           SmoothedScheduler)

# auto_LiRPA 0.7.1, max_eps 0.3, 6 epochs of 7 batches: LinearScheduler "start=2,length=3" then
# SmoothedScheduler "start=2,length=3,mid=0.4" (step_epoch, set_epoch_length(7), step_batch)
REFERENCE = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.014286, 0.028571, 0.042857, 0.057143, 0.071429, 0.085714, 0.1, 0.114286, 0.128571, 0.142857, 0.157143, 0.171429, 0.185714, 0.2, 0.214286, 0.228571, 0.242857, 0.257143, 0.271429, 0.285714, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1e-05, 0.000156, 0.000791, 0.0025, 0.006104, 0.012656, 0.023447, 0.04, 0.06, 0.08, 0.1, 0.12, 0.14, 0.16, 0.18, 0.2, 0.22, 0.24, 0.26, 0.28, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]


def _run(cls, opts):
    s, out = cls(0.3, opts), []
    for _ in range(6):
        s.train()
        s.set_epoch_length(7)
        s.step_epoch()
        for _ in range(7):
            s.step_batch()
            out.append(round(s.get_eps(), 6))
    return out


def test_schedulers_match_auto_lirpa():
    assert _run(LinearScheduler, "start=2,length=3") + \
        _run(SmoothedScheduler, "start=2,length=3,mid=0.4") == pytest.approx(REFERENCE, abs=2e-6)
    assert FixedScheduler(0.2).get_eps() == 0.2


def test_meter_averages_by_batch_size():
    meter = MultiAverageMeter()
    meter.update("Err", 0.5, 10)
    meter.update("Err", torch.tensor(0.0), 30)
    assert meter.avg("Err") == pytest.approx(0.125) and "Err=0.1250" in repr(meter)


def test_cross_entropy_wrapper_is_bounded_by_loss_fusion():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 10, (8,))
    wrapper = CrossEntropyWrapper(model)
    bounded = BoundedModule(wrapper, (x[:2], y[:2]))
    bx = BoundedTensor(x, PerturbationLpNorm(eps=0.05))
    clean = bounded(bx, y)
    torch.testing.assert_close(torch.log(clean[:, 0]), F.cross_entropy(model(x), y, reduction="none"))
    _, ibp = bounded.compute_bounds(x=(bx, y), IBP=True, C=None, method=None, bound_lower=False)
    _, crown_ibp = bounded(method_opt="compute_bounds", IBP=False, C=None, method="backward",
                           bound_lower=False)
    assert ibp.shape == crown_ibp.shape == (8, 1)
    for upper, method in ((ibp, "ibp"), (crown_ibp, "crown-ibp")):
        torch.testing.assert_close(torch.log(upper[:, 0]),
                                   training.fused_ce_bound(bounded.net, x, y, bx.ptb, method))
    points = x + 0.05 * (2 * torch.randint(0, 2, (300, *x.shape)) - 1)
    with torch.no_grad():
        sampled = wrapper(points.reshape(-1, 1, 4, 4), y.repeat(300)).reshape(300, 8)
    assert torch.all(sampled <= crown_ibp[:, 0] * (1 + 1e-5))
