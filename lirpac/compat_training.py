"""auto_LiRPA's certified-training helpers under their own names, so its training scripts run by
changing imports (``from lirpac.compat import LinearScheduler, MultiAverageMeter, ...``).

The schedulers keep its protocol (``Scheduler(max_eps, "start=2,length=10")``, ``step_epoch()``
before an epoch, ``set_epoch_length``, ``step_batch()`` before a batch, ``get_eps()``) and its
values: epochs count from 1 and ``start`` is the first epoch whose eps is not 0. They compute
eps with lirpac.training's schedules over the global batch index.
"""
from __future__ import annotations

import time
from collections import defaultdict

import torch

from lirpac.errors import InputError
from lirpac.training import LinearSchedule, SmoothedSchedule


def _options(opt_str: str) -> dict:
    options = {}
    for item in (opt_str or "").split(","):
        if item.strip():
            key, sep, value = item.partition("=")
            if not sep:
                raise InputError(f"scheduler options are 'key=value' pairs separated by commas, "
                                 f"got {opt_str!r}")
            options[key.strip()] = value.strip()
    return options


class BaseScheduler:
    """eps as a function of the epoch and batch; eval mode freezes it."""

    def __init__(self, max_eps, opt_str=""):
        self.params = _options(opt_str)
        self.max_eps = float(max_eps)
        self.eps = 0.0
        self.epoch = self.batch = 0
        self.epoch_length = None
        self.is_training = True
        self.loss = self.prev_loss = float("nan")

    def _int(self, key, default=None):
        if key not in self.params and default is None:
            raise InputError(f"{type(self).__name__} needs the option {key!r} (e.g. 'start=2,length=10')")
        return int(self.params.get(key, default))

    def get_eps(self):
        return self.eps

    def get_max_eps(self):
        return self.max_eps

    def reached_max_eps(self):
        return abs(self.eps - self.max_eps) < 1e-3

    def set_epoch_length(self, epoch_length):
        self.epoch_length = int(epoch_length)

    def step_epoch(self, verbose=False):
        if self.is_training:
            self.epoch += 1

    def step_batch(self, verbose=False):
        if self.is_training:
            self.batch += 1

    def update_loss(self, new_loss):
        self.prev_loss, self.loss = self.loss, new_loss

    def train(self):
        self.is_training = True

    def eval(self):
        self.is_training = False

    def __repr__(self):
        return f"<{type(self).__name__}: eps {self.eps}, max_eps {self.max_eps}>"


class FixedScheduler(BaseScheduler):
    """eps = max_eps throughout."""

    def __init__(self, max_eps, opt_str=""):
        super().__init__(max_eps, opt_str)
        self.eps = self.max_eps


class _StepScheduler(BaseScheduler):
    """eps from a lirpac.training schedule of the global batch index (epoch_length batches an
    epoch; epoch ``start`` is the ramp's first)."""
    schedule_type = LinearSchedule

    def __init__(self, max_eps, opt_str=""):
        super().__init__(max_eps, opt_str)
        self.schedule_start, self.schedule_length = self._int("start"), self._int("length")
        self._global = 0

    def _schedule(self):
        if self.epoch_length is None:
            raise InputError(f"{type(self).__name__}: call set_epoch_length(batches per epoch) "
                             "before step_batch")
        extra = {k: float(self.params[k]) for k in ("mid", "beta") if k in self.params}
        kw = {"mid": extra["mid"]} if "mid" in extra else {}
        if "beta" in extra:
            kw["power"] = extra["beta"]
        if self.schedule_type is LinearSchedule:
            kw = {}
        return self.schedule_type(self.max_eps, start=(self.schedule_start - 1) * self.epoch_length,
                                  length=self.schedule_length * self.epoch_length, **kw)

    def step_batch(self, verbose=False):
        if self.is_training:
            self.batch += 1
            self.eps = self._schedule()(self._global)
            self._global += 1


class LinearScheduler(_StepScheduler):
    """Linear ramp from epoch ``start`` over ``length`` epochs."""
    schedule_type = LinearSchedule


class SmoothedScheduler(_StepScheduler):
    """The polynomial-then-linear ramp (options ``mid``, default 0.25, and ``beta``, the power,
    default 4) of lirpac.training.SmoothedSchedule."""
    schedule_type = SmoothedSchedule


class AdaptiveScheduler(BaseScheduler):
    """eps grows from epoch ``start`` by a step that widens while the loss (``update_loss``)
    falls and narrows when it jumps (options min_step, max_step, increase_thresh,
    increase_factor, decrease_thresh, decrease_factor, small_loss_thresh)."""

    def __init__(self, max_eps, opt_str=""):
        super().__init__(max_eps, opt_str)
        p = self.params
        self.schedule_start = self._int("start")
        self.min_step, self.max_step = float(p.get("min_step", 1e-9)), float(p.get("max_step", 1e-4))
        self.increase = (float(p.get("increase_thresh", 1.0)), float(p.get("increase_factor", 1.5)))
        self.decrease = (float(p.get("decrease_thresh", 1.5)), float(p.get("decrease_factor", 2.0)))
        self.small_loss = float(p.get("small_loss_thresh", 0.05))
        self.step = self.min_step

    def step_batch(self, verbose=False):
        if not (self.is_training and self.epoch >= self.schedule_start and self.eps < self.max_eps):
            return
        if self.loss == self.loss and self.prev_loss == self.prev_loss:     # both known
            if self.loss < self.increase[0] * self.prev_loss or self.loss < self.small_loss:
                self.step = min(self.step * self.increase[1], self.max_step)
            elif self.loss > self.decrease[0] * self.prev_loss:
                self.step = max(self.step / self.decrease[1], self.min_step)
        else:
            self.step = self.min_step
        self.eps = min(self.eps + self.step, self.max_eps)


class MultiAverageMeter:
    """Running averages of several named metrics, weighted by batch size."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.sums, self.counts, self.lasts = defaultdict(float), defaultdict(int), {}
        self.batch_size = 1

    def set_batch_size(self, batch_size):
        self.batch_size = batch_size

    def update(self, key, val, n=None):
        if val is None:
            return
        val = val.item() if isinstance(val, torch.Tensor) else float(val)
        n = self.batch_size if n is None else n
        self.lasts[key] = val
        self.sums[key] += val * n
        self.counts[key] += n

    def last(self, key):
        return self.lasts.get(key, 0.0)

    def avg(self, key):
        return self.sums[key] / self.counts[key] if self.counts[key] else 0.0

    def __repr__(self):
        return " ".join(f"{k}={self.avg(k):.4f}" for k in self.sums)


class MultiTimer:
    """Total time spent in several named parts of a loop (start/stop pairs)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.starts, self.totals = {}, defaultdict(float)

    def start(self, key):
        if key in self.starts:
            raise InputError(f"MultiTimer.start({key!r}) called twice without stop")
        self.starts[key] = time.time()

    def stop(self, key):
        if key not in self.starts:
            raise InputError(f"MultiTimer.stop({key!r}) without start")
        self.totals[key] += time.time() - self.starts.pop(key)

    def total(self, key):
        return self.totals[key]

    def __repr__(self):
        return " ".join(f"{k}_time={v:.3f}" for k, v in self.totals.items())


class CrossEntropyWrapper(torch.nn.Module):
    """``model`` and its loss as one function of (x, labels): sum_j exp(z_j - z_y), whose log is
    the cross-entropy. lirpac.compat.BoundedModule bounds it with loss fusion
    (lirpac.training.fused_ce_bound): ``compute_bounds(x=(x, labels), ..., bound_lower=False)``
    returns (None, upper) with upper of shape (batch, 1), and ``log(upper)`` bounds the loss."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x, labels):
        logits = self.model(x)
        return torch.exp(logits - logits.gather(-1, labels.unsqueeze(-1))).sum(dim=-1, keepdim=True)


def is_loss_wrapper(model) -> bool:
    """lirpac's CrossEntropyWrapper or auto_LiRPA's (same name, a ``model`` submodule, the same
    function of (x, labels))."""
    return type(model).__name__ == "CrossEntropyWrapper" and \
        isinstance(getattr(model, "model", None), torch.nn.Module)


def get_spec_matrix(x, y, num_classes):
    """Margin specs e_y - e_j for every class j (the row j = y is 0), shape (batch, n, n)."""
    eye = torch.eye(num_classes, dtype=x.dtype, device=x.device)
    return eye[y].unsqueeze(1) - eye.unsqueeze(0)
