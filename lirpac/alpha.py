"""alpha-CROWN (Xu et al. 2021, "Fast and complete"): CROWN whose ReLU lower slopes are
optimised by projected gradient ascent on the bounds.

Every slope in [0, 1] gives a sound bound, so the loop may try any; it starts from CROWN's
choice (step 0 is CROWN), runs Adam with an exponentially decaying step size on
``sum(lower) - sum(upper)``, projects the slopes back into [0, 1] after each step, stops early
when the objective has not improved for ``patience`` steps, and returns the elementwise best
bound seen: never looser than CROWN, and sound whatever the optimiser does.

The step itself is generated code (codegen/alpha_crown.py); this module is only the loop and
the slopes' storage, an ``AlphaState`` that a later call can start from (warm start).
"""
from __future__ import annotations

import contextlib
import functools
import math
import numbers
import time
from dataclasses import dataclass, field, fields

import torch
import torch.utils.checkpoint
from torch.optim.adam import adam as adam_step

from lirpac import deadline as clock
from lirpac.deadline import OutOfTime
from lirpac.errors import InputError
from lirpac.ir.opdef import get_op
from lirpac.ir.ops.common import weights_fixed


@dataclass(frozen=True)
class AlphaOptions:
    """iterations: bound evaluations (the first is CROWN's), each but the last followed by one
    Adam step; lr, lr_decay: Adam's step size and its decay per step; patience: steps without
    a better objective before stopping; alpha_shared: one slope per neuron shared by all rows
    of a pass instead of one per row; optimize_intermediate: also optimise the slopes of the
    intermediate bounds' passes (else the steps keep the intermediate bounds of the first
    evaluation, CROWN's within IBP's, and run no intermediate pass: auto_LiRPA's default,
    several times faster and a little looser); time_limit: seconds after which no
    further step starts (the best bound so far is returned; None or inf: no limit); beta_lr: Adam's
    step size for beta-CROWN's multipliers (only with sign constraints: lirpac.bab)."""
    iterations: int = 20
    lr: float = 0.5
    lr_decay: float = 0.98
    patience: int = 10
    alpha_shared: bool = False
    optimize_intermediate: bool = True
    time_limit: float | None = None
    beta_lr: float = 0.05

    @classmethod
    def from_dict(cls, options: dict | None) -> "AlphaOptions":
        options = dict(options or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InputError(f"unknown alpha-crown option(s) {', '.join(unknown)}; the options are "
                             f"{', '.join(sorted(known))} (and state=lirpac.AlphaState for a warm start)")
        for name, value in options.items():
            _check_option(name, value)
        return cls(**options)


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    """A finite real number (a bool is no number here; NaN and inf are refused: a NaN step
    size would silently turn every slope into NaN, and the loop would keep CROWN's bound)."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(float(value)))


# what each option accepts: (test, the accepted values in words)
_OPTION_RULES = {
    "iterations": (lambda v: _is_integer(v) and v >= 1, "an integer >= 1"),
    "patience": (lambda v: _is_integer(v) and v >= 1, "an integer >= 1"),
    "lr": (lambda v: _is_real(v) and v >= 0, "a finite number >= 0"),
    "beta_lr": (lambda v: _is_real(v) and v >= 0, "a finite number >= 0"),
    "lr_decay": (lambda v: _is_real(v) and 0 < v <= 1, "a number in (0, 1]"),
    # +inf, like None, is no limit: a caller's deadline may be infinite (verify(timeout=inf))
    "time_limit": (lambda v: v is None or v == math.inf or _is_real(v) and v > 0,
                   "a number of seconds > 0, or None (or inf) for no limit"),
    "alpha_shared": (lambda v: isinstance(v, bool), "True or False"),
    "optimize_intermediate": (lambda v: isinstance(v, bool), "True or False"),
}


def _check_option(name: str, value) -> None:
    accepts, words = _OPTION_RULES[name]
    if not accepts(value):
        raise InputError(f"alpha-crown option {name}={value!r} ({type(value).__name__}) is not "
                         f"accepted: {name} must be {words}")


@dataclass
class AlphaState:
    """What a caller of alpha-CROWN holds: the slopes and multipliers found, to warm-start a
    later call (``net.alpha_crown(..., state=s)`` or ``options={"state": s}``).

    ``alphas``: by (pass target, node), ``[alpha_l, alpha_u]``, tensors of shape (batch, rows
    of the pass or 1, *node shape), or on Patches the shape of the rows' windows (batch, rows,
    C, KH, KW), in [0, 1] (None for a side not computed; a pass over few rows folds its
    sides, codegen/runtime.fold_pair: its slopes are then ``[alpha, None]``, the upper side's
    rows after the lower's). A ReLU layer whose dead neurons leave the passes (codegen:
    ``live_neurons``) has slopes for its live neurons only, in the order of the call's live
    index (the last dimension is then their count). A slot whose shape no longer fits (other
    batch, spec, alpha_shared or number of live neurons) starts again from CROWN's.

    ``betas``: beta-CROWN's multipliers (Wang et al. 2021) of sign constraints (a
    ``BranchContext``), by (pass target, node) like the slopes, >= 0.

    ``references``: what the last call recorded (read only): each intermediate node's bounds
    from its first evaluation (CROWN's slopes), which narrowed the references of its steps."""
    alphas: dict = field(default_factory=dict)
    betas: dict = field(default_factory=dict)
    references: dict = field(default_factory=dict)

    def _snapshot(self) -> tuple[dict, dict]:
        def copy(table):
            return {k: [None if a is None else a.detach().clone() for a in pair] for k, pair in table.items()}
        return copy(self.alphas), copy(self.betas)


@dataclass
class BranchContext:
    """What branch and bound (lirpac/bab.py) sets for a batch of sub-domains, and what it
    reads back; the slopes stay in the AlphaState.

    ``constraints``: per node, (floor, ceiling) tensors of the node's batched shape (-inf /
    +inf where free) that its bounds are clipped to: a sub-domain where chosen neurons are
    >= 0 or <= 0. Every bound then holds for the inputs of the sub-domain only; a lower bound
    may subtract beta_j s_j x_j (s_j = +1 or -1 the constrained sign, beta_j >= 0), an upper
    bound add it: neither is smaller (larger) than the function anywhere in the sub-domain,
    so every beta >= 0 is sound, and beta = 0 is the clipping alone.

    ``known``: per node, bounds (an Interval of the node's batched shape) that hold already,
    such as the parent sub-domain's: references and recorded bounds are intersected with
    them, so passes skip the neurons they prove stable. ``frozen``: the steps keep the
    intermediate bounds of the first evaluation (only the final pass's slopes move): far
    cheaper steps, for sub-domains whose known bounds come from an optimised parent.

    ``track``: keep in ``tightest`` each node's tightest bounds over every evaluation.
    ``probe``: recorded bounds come back as fresh leaves that require gradients, kept in
    ``probes``, so the output bound's sensitivity to each neuron's bounds can be read
    (branching scores)."""
    constraints: dict = field(default_factory=dict)
    known: dict = field(default_factory=dict)
    frozen: bool = False
    track: bool = False
    probe: bool = False
    tightest: dict = field(default_factory=dict)
    probes: dict = field(default_factory=dict)


class StepContext:
    """The object generated alpha-CROWN code calls (``ctx.slot``, ``ctx.beta``,
    ``ctx.reference``, ``ctx.rows``, ``ctx.record``, ``ctx.keep_constrained``): one per call,
    built from the caller's AlphaState and options and an optional BranchContext."""

    def __init__(self, state: AlphaState, output: str, opts: AlphaOptions,
                 branch: BranchContext | None = None, references: dict | None = None):
        """``references``: bounds an earlier call recorded on the same inputs (state.references)
        to start from, instead of recording them in a first evaluation."""
        self.state, self.output = state, output
        self.branch = branch if branch is not None else BranchContext()
        self.shared = opts.alpha_shared
        self.train_all = opts.optimize_intermediate     # else only the final pass's slopes move
        self.references: dict = dict(references or {})
        self.recording = False
        # fresh leaves for this call (projected into [0, 1]: a state edited by hand stays sound)
        for table, top in ((state.alphas, 1), (state.betas, None)):
            for key, pair in table.items():
                table[key] = [None if a is None else a.detach().clamp(0, top).requires_grad_(self._trains(key[0]))
                              for a in pair]

    def _trains(self, target: str) -> bool:
        return self.train_all or target == self.output

    @contextlib.contextmanager
    def recording_evaluation(self):
        """The first evaluation of a call: CROWN's slopes, intermediate bounds recorded."""
        self.references, self.branch.tightest, self.recording = {}, {}, True
        try:
            yield
        finally:
            self.recording = False
            self.state.references = self.references

    def reference(self, node: str, ibp):
        """The bounds a pass for ``node`` tightens: its IBP reference, intersected with the
        known and the recorded bounds where there are some (all are sound)."""
        for table in (self.branch.known, self.references):
            ibp = _within(ibp, table.get(node))
        return ibp

    def recomputed(self, run):
        """The intermediate pass ``run(rows) -> (lower, upper)``, its autograd graph dropped
        after it ran and recomputed when the backward step reaches it (torch's non-reentrant
        checkpoint): a step's graph otherwise keeps every pass's coefficients at every
        relaxation it crosses, which grows with the passes times their depth (an LSTM's
        steps at batch 16: several GB), and now holds one pass's at a time, for one more
        evaluation of each pass. Same bounds and gradients (the pass is deterministic)."""
        if not torch.is_grad_enabled():
            return run
        return _Recomputed(run)

    def rows(self, node: str, rows: torch.Tensor) -> torch.Tensor:
        """The neurons a pass for ``node`` bounds: none once recorded when frozen."""
        if self.branch.frozen and not self.recording and node in self.references:
            return rows[..., :0]
        return rows

    def record(self, node: str, bounds):
        """``node``'s bounds, clipped to its constraints and known bounds; kept when recording
        (and the tightest when tracking), and returned as gradient leaves when probing."""
        branch = self.branch
        for clip in (branch.constraints.get(node), branch.known.get(node)):
            bounds = _within(bounds, clip)
        if self.recording:
            self.references[node] = type(bounds)(bounds.lower.detach(), bounds.upper.detach())
        if branch.track:
            branch.tightest[node] = _within(type(bounds)(bounds.lower.detach(), bounds.upper.detach()),
                                            branch.tightest.get(node))
        if branch.probe:
            bounds = type(bounds)(bounds.lower.detach().requires_grad_(), bounds.upper.detach().requires_grad_())
            branch.probes[node] = bounds
        return bounds

    def slot(self, target: str, node: str, op: str, lA, uA, bounds):
        """The slopes of ``node`` in the pass from ``target``, created from the op's CROWN
        choice the first time."""
        some = lA if lA is not None else uA
        lower = bounds.lower
        # Patches (codegen/patches.py) get a slope per row and window position, unless shared
        windowed = hasattr(some, "windows") and not self.shared
        shape = (tuple(some.coeff.shape) if windowed else
                 (lower.shape[0], 1 if self.shared else some.shape[1], *lower.shape[1:]))
        pair = self.state.alphas.get((target, node))
        if pair is None or not _fits(pair, shape, lA, uA, lower):
            start = get_op(op).alpha_init(lower.detach(), bounds.upper.detach())
            start = (some.windows(start) if windowed else start.unsqueeze(1)).expand(shape)
            if self.recording:
                # the recording evaluation runs CROWN's slopes and keeps no slot of its shape
                return [None if side is None else start for side in (lA, uA)]
            pair = [None if side is None
                    else start.clone(memory_format=torch.contiguous_format).requires_grad_(self._trains(target))
                    for side in (lA, uA)]
            self.state.alphas[(target, node)] = pair
        return pair

    def keep_constrained(self, node: str, zero: torch.Tensor) -> torch.Tensor:
        """``zero`` (true where the op after ``node`` is 0 on the whole set: codegen drops
        those neurons from later passes) without the neurons whose sign is constrained: their
        multipliers tighten the bound even where the op is 0."""
        clip = self.branch.constraints.get(node)
        if clip is None:
            return zero
        free = (clip[0] == -math.inf) & (clip[1] == math.inf)
        return zero & free.reshape(free.shape[0], -1)

    def beta(self, target: str, node: str, lA, uA, live=None):
        """The coefficients at ``node`` in the pass from ``target`` with the multipliers of its
        sign constraints (unchanged without constraints). ``live``: the coefficients are those
        of these neurons only (codegen: dead neurons leave the later passes)."""
        clip = self.branch.constraints.get(node)
        some = lA if lA is not None else uA
        if clip is None or hasattr(some, "windows") or self.recording:
            return lA, uA
        sign = ((clip[0] > -math.inf).to(some.dtype) - (clip[1] < math.inf).to(some.dtype)).unsqueeze(1)
        if live is not None:
            sign = sign.index_select(2, live)
        pair = self.state.betas.get((target, node))
        if pair is None or not _fits(pair, tuple(some.shape), lA, uA, some):
            pair = [None if side is None else torch.zeros_like(some).requires_grad_(self._trains(target))
                    for side in (lA, uA)]
            self.state.betas[(target, node)] = pair
        return (None if lA is None else lA - pair[0] * sign,
                None if uA is None else uA + pair[1] * sign)

    def trainable(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The slopes and the multipliers the optimiser moves."""
        def moving(table):
            return [a for pair in table.values() for a in pair if a is not None and a.requires_grad]
        return moving(self.state.alphas), moving(self.state.betas)


class _Recomputed:
    """``run(rows)`` under torch's non-reentrant checkpoint (StepContext.recomputed); it
    keeps the pass's ``__code__``, which keys its timing under a deadline
    (codegen/runtime.py ``_timed_pass``) the same in every step."""

    def __init__(self, run):
        self.run, self.__code__ = run, run.__code__

    def __call__(self, rows):
        return torch.utils.checkpoint.checkpoint(self.run, rows, use_reentrant=False)


def _within(bounds, clip):
    """``bounds`` intersected with ``clip``: an Interval, a (floor, ceiling) pair or None."""
    if clip is None:
        return bounds
    return type(bounds)(torch.maximum(bounds.lower, clip[0]), torch.minimum(bounds.upper, clip[1]))


def _fits(pair, shape, lA, uA, like) -> bool:
    return all((a is None) == (side is None) and (a is None or (
        tuple(a.shape) == shape and a.dtype == like.dtype and a.device == like.device))
        for a, side in zip(pair, (lA, uA)))


class _Adam:
    """Adam (betas 0.9 and 0.999, eps 1e-8) ascending the objective, with an exponentially
    decaying step size: torch's functional ``torch.optim.adam.adam``, its fused kernel where
    the device has one, else the multi-tensor one. The functional form skips
    torch.optim.Adam's per-step bookkeeping (hooks, state lookups, checks) and the scheduler:
    about 40% of the optimiser's time in the loop on the benchmark MLP, with the same steps."""

    def __init__(self, groups: list[tuple[list[torch.Tensor], float]], decay: float):
        # per parameter: itself, its moments, and its step count (the fused kernel counts in a
        # float32 tensor on the parameter's device)
        self.groups = [[(p, torch.zeros_like(p), torch.zeros_like(p),
                         torch.zeros((), dtype=torch.float32, device=p.device)) for p in params]
                       for params, _ in groups]
        self.lrs = [lr for _, lr in groups]
        self.decay = decay
        self.fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64)
                         for params, _ in groups for p in params)

    def step(self, grads: list[torch.Tensor | None]) -> None:
        """One step from the gradients of the groups' parameters, in order (None: a parameter
        the objective does not reach, left as it is, as torch.optim.Adam does)."""
        grads = iter(grads)
        for k, group in enumerate(self.groups):
            moving = [(p, g, m, v, t) for (p, m, v, t), g in zip(group, grads) if g is not None]
            if moving:
                ps, gs, ms, vs, ts = (list(column) for column in zip(*moving))
                adam_step(ps, gs, ms, vs, [], ts, foreach=None if self.fused else True,
                          fused=self.fused or None, amsgrad=False, beta1=0.9, beta2=0.999,
                          lr=self.lrs[k], weight_decay=0.0, eps=1e-8, maximize=True)
            self.lrs[k] *= self.decay


def optimise(step, inp, C, params, output: str, opts: AlphaOptions, state: AlphaState | None,
             branch: BranchContext | None = None):
    """Run the loop over the generated ``step``; returns (lower, upper, A, state) with the
    elementwise best bounds, A (when the step returns it) of the step with the best objective,
    and the state holding that step's slopes."""
    with weights_fixed():
        return _optimise(step, inp, C, params, output, opts, state, branch)


def _optimise(step, inp, C, params, output: str, opts: AlphaOptions, state: AlphaState | None,
              branch: BranchContext | None):
    state = state if state is not None else AlphaState()
    if branch is None and not opts.optimize_intermediate:
        # no intermediate slope moves: the steps keep the first evaluation's intermediate
        # bounds instead of recomputing the same ones (as auto_LiRPA's default does)
        branch = BranchContext(frozen=True)
    ctx = StepContext(state, output, opts, branch)
    params = [p.detach() for p in params]
    started = time.monotonic()
    # a first evaluation with CROWN's slopes records every intermediate node's bounds; the
    # steps then bound only the neurons those leave unstable (far fewer rows than IBP's)
    with ctx.recording_evaluation(), torch.no_grad():
        best_lower, best_upper, _ = step(inp, C, params, ctx)
    # the statements no slope reaches run once (codegen/hoist.py), the rest every step
    hoisted = getattr(step, "hoisted", None)
    if hoisted is not None:
        with torch.no_grad():
            invariants = hoisted[0](inp, C, params, ctx)
        step = functools.partial(hoisted[1], pre=invariants)
    best_A = None
    best_objective, best_alphas, stale = -math.inf, None, 0
    optimiser = alphas = None
    iteration_seconds = time.monotonic() - started   # the first evaluation's, until one is timed
    for iteration in range(opts.iterations):
        # no iteration starts that the last one's time says would end past the time limit or
        # the deadline (lirpac.deadline: verify's); past it, the best bound so far is returned
        if opts.time_limit is not None and time.monotonic() + iteration_seconds - started > opts.time_limit:
            break
        iteration_started = time.monotonic()
        try:
            clock.check(iteration_seconds, "an alpha-crown iteration")
            # (the last evaluation takes no step: no graph to record)
            with torch.set_grad_enabled(iteration < opts.iterations - 1):
                lower, upper, A = step(inp, C, params, ctx)
                objective = (lower.sum() if lower is not None else 0) - (upper.sum() if upper is not None else 0)
        except OutOfTime:
            break
        if lower is not None:
            best_lower = lower.detach() if best_lower is None else torch.maximum(best_lower, lower.detach())
        if upper is not None:
            best_upper = upper.detach() if best_upper is None else torch.minimum(best_upper, upper.detach())
        value = float(objective.detach()) if isinstance(objective, torch.Tensor) else float(objective)
        # (the first step always counts: with an infinite bound every objective is -inf)
        if value > best_objective or best_alphas is None:
            best_objective, best_alphas, stale = value, state._snapshot(), 0
            best_A = None if A is None else tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in A)
        else:
            stale += 1
        if iteration == opts.iterations - 1 or stale >= opts.patience or (
                opts.time_limit is not None and time.monotonic() - started >= opts.time_limit):
            break
        if optimiser is None:
            alphas, betas = ctx.trainable()
            if not alphas + betas or not objective.requires_grad:
                break       # nothing to optimise (no unstable ReLU on the way)
            optimiser = _Adam([(group, lr) for group, lr in
                               ((alphas, opts.lr), (betas, opts.beta_lr)) if group], opts.lr_decay)
        grads = torch.autograd.grad(objective, alphas + betas, allow_unused=True)
        # the fused kernel needs gradients laid out like their slopes (a strided one is read
        # in the wrong order); a line that fell back to its interval bounds (a tangent at a
        # pole) may leave a NaN behind
        optimiser.step([None if g is None else g.nan_to_num(0.0, 0.0, 0.0).contiguous() for g in grads])
        with torch.no_grad():
            for a in alphas:
                a.clamp_(0, 1)
            for b in betas:
                b.clamp_(min=0)
        iteration_seconds = time.monotonic() - iteration_started
    if best_alphas is not None:
        state.alphas, state.betas = best_alphas
    return best_lower, best_upper, best_A, state


__all__ = ["AlphaOptions", "AlphaState", "BranchContext", "StepContext", "optimise"]
