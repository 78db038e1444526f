"""ReLU branch and bound: prove what alpha-CROWN alone leaves open by splitting unstable ReLUs.

A sub-domain is the input box with some pre-activation neurons fixed to one sign
(``x_j >= 0`` or ``x_j <= 0``). Bounding it is alpha-CROWN with, for those neurons, bounds
clipped at 0 (``BranchContext.constraints``: their ReLU becomes exact and every later bound
tightens) and beta-CROWN's multipliers (Wang et al. 2021, ``AlphaState.betas``), which bring
the constraint itself into each backward pass; both are optimised by the same steps. The
root optimises every pass; a sub-domain below it starts from its parent's intermediate bounds
(``BranchContext.known``), tightens them by one CROWN evaluation under its splits (skipping the
neurons the parent proved stable), and then moves only the final pass's slopes and
multipliers (``BranchContext.frozen``): cheap steps, many sub-domains. Each bound holds for the inputs of the
sub-domain only, and the two halves of a split cover the parent, so the property holds once
every sub-domain is proved. A sub-domain whose bounds cross (lower > upper somewhere) holds no
input at all and is proved.

Branching: the output bound's gradient with respect to each unstable neuron's bounds
(``BranchContext.probe``) estimates how much fixing its sign raises the bound on each side;
the neuron with the largest sum is split (a first-order cousin of BaBSR, Bunel et al. 2020).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from lirpac import deadline as clock
from lirpac.alpha import AlphaOptions, AlphaState, BranchContext, StepContext
from lirpac.deadline import OutOfTime
from lirpac.methods import ALPHA_CROWN
from lirpac.passes.bound_needs import sign_splittable
from lirpac.perturbation import Box

__all__ = ["BabResult", "relu_split"]

BATCH = 64            # sub-domains bounded in one call
ITERATIONS = 40       # alpha-CROWN (and beta) steps per sub-domain batch
MAX_DOMAINS = 100_000  # sub-domains (bounded or waiting) past which the search gives up


@dataclass
class BabResult:
    """``proved``: True when every sub-domain is proved, None when time or the domain budget
    ran out or a sub-domain had no unstable neuron left to split."""
    proved: bool | None
    domains: int          # sub-domains bounded
    message: str


@dataclass
class _Domain:
    splits: tuple         # ((node name, flat neuron index, +1 for >= 0 / -1 for <= 0), ...)
    open: torch.Tensor    # bool (n_groups,): groups of rows not yet excluded
    bounds: dict | None = None   # node name -> Interval (per-sample shape): the parent's bounds


def splittable_nodes(graph) -> list[str]:
    """The names of the nodes a split may fix neurons of, in graph order
    (passes.bound_needs.sign_splittable)."""
    return [n.name for n in sign_splittable(graph)]


def relu_split(net, lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor, d: torch.Tensor,
               groups: list[list[int]], deadline: float, batch: int = BATCH,
               iterations: int = ITERATIONS, max_domains: int = MAX_DOMAINS) -> BabResult:
    """Prove, over the box [lower, upper] (one sample, the model's input shape), that every
    group of rows has a row with ``C f(x) - d > 0`` (C: (rows, n_out), d: (rows,)): each
    group is one unsafe polytope, empty when one of its rows can never be met. Stops at
    ``deadline`` (time.monotonic()), or once ``max_domains`` sub-domains were bounded or
    are waiting; no batch starts that the last one's time says would end past ``deadline``
    (the work of a batch cut short by the deadline, lirpac.deadline.OutOfTime, is dropped)."""
    with clock.within(deadline):
        try:
            return _search(net, lower, upper, C, d, groups, deadline, batch, iterations, max_domains)
        except OutOfTime as err:
            return BabResult(None, 0, str(err))


def _search(net, lower, upper, C, d, groups, deadline, batch, iterations, max_domains) -> BabResult:
    """relu_split's loop."""
    nodes = {n.name: n for n in net.graph.nodes}
    splittable = set(splittable_nodes(net.graph))
    queue = [_Domain((), torch.ones(len(groups), dtype=torch.bool))]
    bounded, last = 0, 0.0
    while queue:
        if time.monotonic() + last >= deadline or max(bounded, len(queue)) >= max_domains:
            return BabResult(None, bounded, f"{bounded} sub-domains bounded, {len(queue)} left")
        started = time.monotonic()
        chunk, queue = queue[-batch:], queue[:-batch]
        try:
            margins, state, inputs = _bound(net, chunk, nodes, lower, upper, C, d, iterations, deadline)
        except OutOfTime:
            return BabResult(None, bounded, f"{bounded} sub-domains bounded, {len(queue) + len(chunk)} left "
                             "(out of time)")
        bounded += len(chunk)
        state, branch = state
        empty = _infeasible(branch, len(chunk))
        todo = []
        for b, dom in enumerate(chunk):
            still = dom.open & ~torch.stack([(margins[b, g] > 0).any() for g in groups])
            if not bool(empty[b]) and bool(still.any()):
                known = {k: type(v)(v.lower[b], v.upper[b]) for k, v in branch.tightest.items()}
                todo.append((b, _Domain(dom.splits, still, known)))
        if not todo:
            continue
        picks = _branch(net, state, branch, inputs, [b for b, _ in todo], splittable)
        last = time.monotonic() - started
        for (b, dom), score in zip(todo, picks):
            if score is None:
                return BabResult(None, bounded, "a sub-domain has no unstable ReLU left to split")
            name, index = score
            queue += [_Domain(dom.splits + ((name, index, sign),), dom.open, dom.bounds) for sign in (1, -1)]
    return BabResult(True, bounded, f"proved with {bounded} sub-domains bounded")


def _constraints(chunk, nodes, like: torch.Tensor) -> dict:
    """Per split node, (floor, ceiling) of shape (len(chunk), *node shape)."""
    out = {}
    for b, dom in enumerate(chunk):
        for name, index, sign in dom.splits:
            if name not in out:
                numel = nodes[name].numel
                out[name] = (torch.full((len(chunk), numel), -torch.inf, dtype=like.dtype),
                             torch.full((len(chunk), numel), torch.inf, dtype=like.dtype))
            out[name][0 if sign > 0 else 1][b, index] = 0.0
    return {name: tuple(t.reshape(len(chunk), *nodes[name].shape) for t in pair)
            for name, pair in out.items()}


def _known(chunk) -> dict:
    """Per node, the parents' bounds stacked over the chunk (free where a domain has none)."""
    names = {k for dom in chunk if dom.bounds for k in dom.bounds}
    out = {}
    for name in names:
        some = next(dom.bounds[name] for dom in chunk if dom.bounds and name in dom.bounds)
        pick = [dom.bounds.get(name) if dom.bounds else None for dom in chunk]
        out[name] = type(some)(
            torch.stack([torch.full_like(some.lower, -torch.inf) if p is None else p.lower for p in pick]),
            torch.stack([torch.full_like(some.upper, torch.inf) if p is None else p.upper for p in pick]))
    return out


def _bound(net, chunk, nodes, lower, upper, C, d, iterations, deadline):
    """alpha-CROWN on a batch of sub-domains: margins (n, rows), the state, and the bound
    function's inputs (centre, box, spec) for branching."""
    n = len(chunk)
    lo = lower.unsqueeze(0).expand(n, *lower.shape)
    hi = upper.unsqueeze(0).expand(n, *upper.shape)
    box, centre = Box(lo, hi), (lo + hi) / 2
    Cn = C.unsqueeze(0).expand(n, *C.shape).to(lower.dtype)
    # below the root, the steps keep the intermediate bounds (the parent's optimised ones,
    # tightened by one CROWN evaluation under the splits) and move the final pass only
    branch = BranchContext(constraints=_constraints(chunk, nodes, lower), known=_known(chunk), track=True,
                           frozen=all(dom.bounds is not None for dom in chunk))
    state = AlphaState()
    time_limit = max(deadline - time.monotonic(), 1e-3)
    with torch.no_grad():
        lb, _ = net.bounds(centre, box, method=ALPHA_CROWN.name, C=Cn, bound_upper=False,
                           options={"state": state, "branch": branch, "iterations": iterations,
                                    "time_limit": time_limit})
    return lb.double() - d.double(), (state, branch), (centre, box, Cn)


def _infeasible(branch: BranchContext, n: int) -> torch.Tensor:
    """(n,) bool: sub-domains whose bounds cross somewhere (they hold no input)."""
    empty = torch.zeros(n, dtype=torch.bool)
    for bounds in branch.tightest.values():
        empty |= (bounds.lower > bounds.upper).flatten(1).any(1)
    return empty


def _branch(net, state, branch, inputs, indices, splittable):
    """For each sub-domain in ``indices``: (node name, flat index) of the unstable splittable
    neuron whose sign, fixed either way, is estimated to raise the bound most; None if none.
    One evaluation with the optimised slopes, whose recorded bounds are gradient leaves
    (BranchContext.probe)."""
    centre, box, C = inputs
    fn = net.function(net.plan(ALPHA_CROWN.name, centre, spec=True, upper=False))
    probing = BranchContext(constraints=branch.constraints, known=branch.known, frozen=branch.frozen,
                            probe=True)
    ctx = StepContext(state, net.graph.output.name, AlphaOptions(), probing, state.references)
    with torch.enable_grad():
        lower, _, _ = fn(box.bind(centre), C, net._params(centre), ctx)
        # the rows still negative are the ones to raise
        objective = lower.clamp(max=0).sum()
        probes = {k: v for k, v in probing.probes.items() if k in splittable}
        leaves = [t for v in probes.values() for t in (v.lower, v.upper)]
        grads = torch.autograd.grad(objective, leaves, allow_unused=True) if leaves else []
    best_score = torch.full((len(centre),), -torch.inf, dtype=torch.float64)
    best = [None] * len(centre)
    for k, (name, bounds) in enumerate(probes.items()):
        l, u = bounds.lower.detach().flatten(1).double(), bounds.upper.detach().flatten(1).double()
        g_l, g_u = grads[2 * k], grads[2 * k + 1]
        g_l = torch.zeros_like(l) if g_l is None else g_l.flatten(1).double()
        g_u = torch.zeros_like(u) if g_u is None else g_u.flatten(1).double()
        unstable = (l < 0) & (u > 0)
        # raising l to 0 (x >= 0) and lowering u to 0 (x <= 0), to first order; the relaxation
        # gap -l u / (u - l) breaks ties among neurons the gradient does not see
        gain = (g_l * -l).clamp(min=0) + (g_u * -u).clamp(min=0)
        gap = torch.where(unstable, -l * u / (u - l).clamp(min=1e-12), torch.zeros_like(l))
        score = torch.where(unstable, gain + 1e-6 * gap, torch.full_like(l, -torch.inf))
        value, index = score.max(1)
        for b in range(len(centre)):
            if value[b] > best_score[b]:
                best_score[b], best[b] = value[b], (name, int(index[b]))
    return [best[b] if torch.isfinite(best_score[b]) else None for b in indices]
