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

import math
import time
from dataclasses import dataclass, field, fields

import torch

from lirpac.errors import InputError
from lirpac.ir.opdef import get_op


@dataclass(frozen=True)
class AlphaOptions:
    """iterations: bound evaluations (the first is CROWN's), each but the last followed by one
    Adam step; lr, lr_decay: Adam's step size and its decay per step; patience: steps without
    a better objective before stopping; alpha_shared: one slope per neuron shared by all rows
    of a pass instead of one per row; optimize_intermediate: also optimise the slopes of the
    intermediate bounds' passes (else they keep CROWN's); time_limit: seconds after which no
    further step starts (the best bound so far is returned; None: no limit)."""
    iterations: int = 20
    lr: float = 0.5
    lr_decay: float = 0.98
    patience: int = 10
    alpha_shared: bool = False
    optimize_intermediate: bool = True
    time_limit: float | None = None

    @classmethod
    def from_dict(cls, options: dict | None) -> "AlphaOptions":
        options = dict(options or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InputError(f"unknown alpha-crown option(s) {', '.join(unknown)}; the options are "
                             f"{', '.join(sorted(known))} (and state=lirpac.AlphaState for a warm start)")
        opts = cls(**options)
        if (opts.iterations < 1 or opts.lr < 0 or not 0 < opts.lr_decay <= 1 or opts.patience < 1
                or opts.time_limit is not None and not opts.time_limit > 0):
            raise InputError(f"alpha-crown options out of range: {opts} (iterations >= 1, lr >= 0, "
                             "0 < lr_decay <= 1, patience >= 1, time_limit > 0 or None)")
        return opts


@dataclass
class AlphaState:
    """The slopes of one alpha-CROWN problem, by (pass target, node): ``[alpha_l, alpha_u]``,
    tensors of shape (batch, rows of the pass or 1, *node shape), or on Patches the shape of the
    rows' windows (batch, rows, C, KH, KW), in [0, 1] (None for a side not
    computed). Pass it back (``net.alpha_crown(..., state=s)`` or ``options={"state": s}``) to
    start from these slopes; a slot whose shape no longer fits (other batch, spec or
    alpha_shared) starts again from CROWN's.

    ``references``: each intermediate node's bounds from the first evaluation of the current
    call (CROWN's slopes, no gradients), which narrow the IBP reference of the steps that
    follow, so their passes bound only the neurons those bounds leave unstable. They belong to
    one input set: ``optimise`` clears them at the start of every call.

    ``constraints``: per node, (floor, ceiling) tensors of the node's batched shape (-inf /
    +inf where free) that its bounds are clipped to: ReLU branch and bound (lirpac/bab.py)
    bounds a sub-domain where chosen neurons are >= 0 or <= 0 this way. Every bound then holds
    for the inputs of the sub-domain only. ``probing``: the recorded bounds come back as
    fresh leaves that require gradients (``probes``), so the output bound's sensitivity to
    each neuron's bounds can be read (branching scores)."""
    alphas: dict = field(default_factory=dict)
    output: str = ""
    shared: bool = False
    trained_passes: str = "all"      # "all" or "final": whose slopes the optimiser moves
    references: dict = field(default_factory=dict)
    recording: bool = False
    constraints: dict = field(default_factory=dict)
    probing: bool = False
    probes: dict = field(default_factory=dict)

    def reference(self, node: str, ibp):
        """The bounds a pass for ``node`` tightens: its IBP reference, intersected with the
        recorded bounds when there are some (both are sound)."""
        known = self.references.get(node)
        if known is None:
            return ibp
        return type(ibp)(torch.maximum(ibp.lower, known.lower), torch.minimum(ibp.upper, known.upper))

    def record(self, node: str, bounds):
        """``node``'s bounds, clipped to its constraints; kept when recording, and returned as
        gradient leaves when probing (called by the generated code)."""
        clip = self.constraints.get(node)
        if clip is not None:
            bounds = type(bounds)(torch.maximum(bounds.lower, clip[0]), torch.minimum(bounds.upper, clip[1]))
        if self.recording:
            self.references[node] = type(bounds)(bounds.lower.detach(), bounds.upper.detach())
        if self.probing:
            bounds = type(bounds)(bounds.lower.detach().requires_grad_(), bounds.upper.detach().requires_grad_())
            self.probes[node] = bounds
        return bounds

    def slot(self, target: str, node: str, op: str, lA, uA, bounds):
        """The slopes of ``node`` in the pass from ``target`` (called by the generated code),
        created from the op's CROWN choice the first time."""
        some = lA if lA is not None else uA
        lower = bounds.lower
        # Patches (codegen/patches.py) get a slope per row and window position, unless shared
        windowed = hasattr(some, "windows") and not self.shared
        shape = (tuple(some.coeff.shape) if windowed else
                 (lower.shape[0], 1 if self.shared else some.shape[1], *lower.shape[1:]))
        pair = self.alphas.get((target, node))
        if pair is None or not _fits(pair, shape, lA, uA, lower):
            start = get_op(op).alpha_init(lower.detach(), bounds.upper.detach())
            start = (some.windows(start) if windowed else start.unsqueeze(1)).expand(shape)
            if self.recording:
                # the recording evaluation runs CROWN's slopes and keeps no slot of its shape
                return [None if side is None else start for side in (lA, uA)]
            train = self.trained_passes == "all" or target == self.output
            pair = [None if side is None
                    else start.clone(memory_format=torch.contiguous_format).requires_grad_(train)
                    for side in (lA, uA)]
            self.alphas[(target, node)] = pair
        return pair

    def trainable(self) -> list[torch.Tensor]:
        return [a for pair in self.alphas.values() for a in pair if a is not None and a.requires_grad]

    def _prepare(self, output: str, opts: AlphaOptions) -> None:
        """Fresh leaves for this call (projected into [0, 1]: a state edited by hand stays sound)."""
        self.output, self.shared = output, opts.alpha_shared
        self.trained_passes = "all" if opts.optimize_intermediate else "final"
        for key, pair in self.alphas.items():
            train = self.trained_passes == "all" or key[0] == output
            self.alphas[key] = [None if a is None else a.detach().clamp(0, 1).requires_grad_(train)
                                for a in pair]

    def _snapshot(self) -> dict:
        return {k: [None if a is None else a.detach().clone() for a in pair] for k, pair in self.alphas.items()}


def _fits(pair, shape, lA, uA, like) -> bool:
    return all((a is None) == (side is None) and (a is None or (
        tuple(a.shape) == shape and a.dtype == like.dtype and a.device == like.device))
        for a, side in zip(pair, (lA, uA)))


def _adam(alphas, lr):
    """Adam with its fused kernel where the device has one (a tenth of the loop's time on a
    CPU), else the multi-tensor one."""
    try:
        return torch.optim.Adam(alphas, lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(alphas, lr=lr, foreach=True)


def optimise(step, inp, C, params, output: str, opts: AlphaOptions, state: AlphaState | None):
    """Run the loop over the generated ``step``; returns (lower, upper, A, state) with the
    elementwise best bounds, A (when the step returns it) of the step with the best objective,
    and the state holding that step's slopes."""
    state = state if state is not None else AlphaState()
    state._prepare(output, opts)
    params = [p.detach() for p in params]
    started = time.monotonic()
    # a first evaluation with CROWN's slopes records every intermediate node's bounds; the
    # steps then bound only the neurons those leave unstable (far fewer rows than IBP's)
    state.references, state.recording = {}, True
    try:
        with torch.no_grad():
            best_lower, best_upper, _ = step(inp, C, params, state)
    finally:
        state.recording = False
    best_A = None
    best_objective, best_alphas, stale = -math.inf, None, 0
    optimiser = schedule = alphas = None
    for iteration in range(opts.iterations):
        with torch.enable_grad():
            lower, upper, A = step(inp, C, params, state)
            objective = (lower.sum() if lower is not None else 0) - (upper.sum() if upper is not None else 0)
        if lower is not None:
            best_lower = lower.detach() if best_lower is None else torch.maximum(best_lower, lower.detach())
        if upper is not None:
            best_upper = upper.detach() if best_upper is None else torch.minimum(best_upper, upper.detach())
        value = float(objective.detach()) if isinstance(objective, torch.Tensor) else float(objective)
        if value > best_objective:
            best_objective, best_alphas, stale = value, state._snapshot(), 0
            best_A = None if A is None else tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in A)
        else:
            stale += 1
        if iteration == opts.iterations - 1 or stale >= opts.patience or (
                opts.time_limit is not None and time.monotonic() - started >= opts.time_limit):
            break
        if optimiser is None:
            alphas = state.trainable()
            if not alphas or not objective.requires_grad:
                break       # nothing to optimise (no unstable ReLU on the way)
            optimiser = _adam(alphas, opts.lr)
            schedule = torch.optim.lr_scheduler.ExponentialLR(optimiser, opts.lr_decay)
        grads = torch.autograd.grad(objective, alphas, allow_unused=True)
        for a, g in zip(alphas, grads):
            # Adam descends (the objective is maximised); the fused kernel needs gradients laid
            # out like their slopes (a strided one is read in the wrong order); a line that fell
            # back to its interval bounds (a tangent at a pole) may leave a NaN behind
            a.grad = None if g is None else -g.nan_to_num(0.0, 0.0, 0.0).contiguous()
        optimiser.step()
        schedule.step()
        with torch.no_grad():
            for a in alphas:
                a.clamp_(0, 1)
    if best_alphas is not None:
        state.alphas = best_alphas
    return best_lower, best_upper, best_A, state


__all__ = ["AlphaOptions", "AlphaState", "optimise"]
