"""``lirpac.verify``: decide a VNN-COMP instance (an ONNX model and a VNNLIB property).

A VNNLIB file states the *unsafe* set (see lirpac.vnnlib): the union over regions of
``x in box_r and C_p f(x) <= d_p`` for some polytope p of the region. The property holds iff
every such polytope is empty, which the bounds prove when, for some row i of each polytope,
``lower(C_p,i . f(x) - d_p,i) > 0`` over the box (``>= 0`` for a strict row, ``C_p,i . f(x) <
d_p,i``: `OutputPolytope.proof_d`): that row can never be met.

The steps, cheapest first, all within one time budget:

1. PGD falsification (a short share of the budget): a candidate found on lirpac's IR is only a
   counterexample once onnxruntime, running the original model, puts it in an unsafe polytope
   and the input lies in the box. Otherwise it is dropped.
2. Bounds with CROWN (or the method asked for, when it is cheaper). Every region is one sample
   of one batched call; bounds are computed in float64 so rounding in the bound code cannot
   make a proof unsound.
3. For models with few inputs (ACAS Xu has 5): branch and bound on the input box, CROWN on
   batches of sub-boxes, splitting each undecided one in two along the input dim its linear
   bounds depend on most; the sub-box centres are tried as counterexamples on the way. For
   other models: the default method ("alpha-crown" when the backend has it) on the polytopes
   still open, when the time left allows it; then ReLU branch and bound (lirpac.bab) on what
   alpha-CROWN left open, within most of the time left.
4. PGD again with the time that is left.

"holds" is only ever reported from steps 2 and 3; "violated" only with a confirmed counterexample.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from lirpac import deadline as clock, methods
from lirpac.deadline import OutOfTime, validate_timeout
from lirpac.errors import InputError
from lirpac.perturbation import Box
from lirpac.vnnlib import Spec, parse_vnnlib

__all__ = ["VerificationResult", "verify", "default_method", "check_method", "STATUSES"]

STATUSES = ("holds", "violated", "unknown", "timeout", "error")
# share of the budget the first PGD rounds may use, and at most this many rounds
FIRST_ATTACK_SHARE = 0.1
FIRST_ATTACK_ROUNDS = 10
# PGD rounds (new seeds) after the bounds failed; past them the answer is "unknown"
LATE_ATTACK_ROUNDS = 20
# cheap methods (Method.cheap) run as they are; iterative ones (alpha-crown) run after CROWN,
# when the time left exceeds EXPENSIVE_METHOD_COST times what CROWN took (alpha-CROWN's
# default 20 iterations each cost about one CROWN pass)
EXPENSIVE_METHOD_COST = 25
# input splitting (branch and bound on the box) for models with at most this many inputs
SPLIT_MAX_INPUTS = 16
SPLIT_BATCH = 256          # sub-boxes per bound call
SPLIT_MAX_BOXES = 200_000  # queue size past which splitting gives up
# share of the time left after alpha-CROWN that ReLU branch and bound may use (the rest: PGD)
RELU_SPLIT_SHARE = 0.8
# spec rows (over all polytopes of a region) past which a spec is refused: real specs have a
# few dozen, and every bound call and attack carries them all
MAX_REGION_ROWS = 10_000
# spec rows per bound call (boxes are bounded in groups of at most this many rows)
BOUND_ROWS = 4096
# polytopes per PGD call (each gets its restarts in one batch)
ATTACK_POLYTOPES = 64


@dataclass
class VerificationResult:
    """The answer for one instance. ``counterexample`` is (input, output) as flat float64
    arrays, the output computed by onnxruntime, when status is "violated"."""
    status: str
    time: float
    method: str = ""
    counterexample: tuple[np.ndarray, np.ndarray] | None = None
    message: str = ""
    log: list[str] = field(default_factory=list)

    @property
    def vnncomp_word(self) -> str:
        """The word VNN-COMP expects in a result file."""
        return {"holds": "unsat", "violated": "sat"}.get(self.status, self.status)

    def vnncomp_text(self) -> str:
        """The result file's content: the word, then for "sat" the assignment
        ``((X_0 v)\\n (X_1 v)\\n ... (Y_0 v))`` (VNN-COMP 2021)."""
        if self.status != "violated" or self.counterexample is None:
            return self.vnncomp_word + "\n"
        x, y = self.counterexample
        pairs = [f"(X_{i} {float(v)!r})" for i, v in enumerate(x)]
        pairs += [f"(Y_{i} {float(v)!r})" for i, v in enumerate(y)]
        return "sat\n(" + "\n ".join(pairs) + ")\n"

    def __str__(self) -> str:
        text = f"{self.status} ({self.vnncomp_word}) in {self.time:.2f} s"
        if self.method:
            text += f", method {self.method}"
        return text + (f": {self.message}" if self.message else "")


def default_method() -> str:
    """The tightest registered method (lirpac.methods.DEFAULT_VERIFY: alpha-CROWN)."""
    from lirpac.methods import DEFAULT_VERIFY
    return DEFAULT_VERIFY


def check_method(method: str | None) -> str:
    """The method's canonical name (default: `default_method()`); an unknown one is an
    InputError naming the accepted ones, before any work (a typo would otherwise run the whole
    budget and fail in the bounds)."""
    from lirpac.api import method_name
    return default_method() if method is None else method_name(method)


def _inward_box(lower: np.ndarray, upper: np.ndarray, dtype: torch.dtype,
                lower_strict: np.ndarray | bool = False, upper_strict: np.ndarray | bool = False):
    """The box in the model's dtype, rounded inwards so every point of it is in the float64
    box (a float32 cast of 0.1 may fall below 0.1); a strict side moves one float further in,
    off the end it excludes, so that PGD's projections never land on it."""
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    lo, hi = lower.astype(np_dtype), upper.astype(np_dtype)
    lo64, hi64 = lo.astype(np.float64), hi.astype(np.float64)
    lo = np.where((lo64 < lower) | (lower_strict & (lo64 == lower)), np.nextafter(lo, np_dtype(np.inf)), lo)
    hi = np.where((hi64 > upper) | (upper_strict & (hi64 == upper)), np.nextafter(hi, np_dtype(-np.inf)), hi)
    if np.any(lo > hi):  # a box thinner than one float: its float points are its ends
        lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    return torch.from_numpy(lo), torch.from_numpy(hi)


class _Instance:
    """A compiled net and a parsed spec, with the checks and searches on them."""

    def __init__(self, net, spec: Spec, deadline: float, log: list[str]):
        self.net, self.spec, self.deadline, self.log = net, spec, deadline, log
        self.found = None   # a confirmed counterexample from input splitting
        self.shape = tuple(net.input_shape)
        self.dtype = net.graph.perturbed_input.dtype
        n_in = int(np.prod(self.shape)) if self.shape else 1
        n_out = int(np.prod(net.output_shape)) if net.output_shape else 1
        if (spec.n_inputs, spec.n_outputs) != (n_in, n_out):
            raise InputError(f"the spec has {spec.n_inputs} inputs and {spec.n_outputs} outputs but the "
                             f"model has {n_in} inputs {list(self.shape)} and {n_out} outputs: is the "
                             "spec for this model?")
        if net.module is None:
            raise InputError("onnxruntime is needed to confirm counterexamples (pip install onnxruntime)")
        for r, region in enumerate(spec.regions):
            rows = sum(len(p.d) for p in region.outputs)
            if rows > MAX_REGION_ROWS:
                raise InputError(f"region {r} of the spec has {len(region.outputs)} unsafe polytopes with {rows} "
                                 f"rows in all (its DNF), more than the {MAX_REGION_ROWS} lirpac verify bounds "
                                 "at once: split the property into several files")
        self._step_seconds = None   # PGD: seconds of one step per sample (measured once)
        # the parts of the input left to prove: at first each region's whole box
        self.boxes = [_SubBox(r, list(range(len(region.outputs))), torch.from_numpy(region.lower),
                              torch.from_numpy(region.upper)) for r, region in enumerate(spec.regions)]

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    # -- falsification ------------------------------------------------------------------
    def confirm(self, region, x: torch.Tensor):
        """(x, y) flat float64 when onnxruntime puts x (in the box) in an unsafe polytope and so
        does the network evaluated in float64 (lirpac's IR): an x that only the model's float32
        rounding makes unsafe (e.g. onto the end of a strict row) is dropped, so a "violated"
        holds for the deployed model and for the network the file describes alike."""
        from lirpac.ir.interpret import evaluate
        x64 = x.detach().double().reshape(-1).numpy()
        if not region.contains(x64):
            return None
        with torch.no_grad():   # (a torch model's output carries its parameters' grad)
            y = self.net(x.detach().reshape(1, *self.shape)).double().reshape(-1).numpy()
        unsafe = [p for p in region.outputs if p.satisfied(y)]
        if not unsafe:
            return None
        with torch.no_grad():
            exact = evaluate(self.net.graph, torch.from_numpy(x64).reshape(1, *self.shape)).reshape(-1).numpy()
        if any(p.satisfied(exact) for p in unsafe):
            return x64, y
        return None

    def step_seconds(self) -> float:
        """Seconds one PGD step takes per sample (forward and gradient on the IR), measured once
        on two samples: what a first step costs, before the attack has timed any."""
        from lirpac.ir.interpret import evaluate
        if self._step_seconds is None:
            x = torch.zeros((2, *self.shape), dtype=self.dtype, requires_grad=True)
            started = time.monotonic()
            with torch.enable_grad():
                torch.autograd.grad(evaluate(self.net.graph, x).sum(), x)
            self._step_seconds = (time.monotonic() - started) / 2
        return self._step_seconds

    def attack(self, seed: int, deadline: float, restarts: int = 8, steps: int = 50):
        """One PGD round on every region, its polytopes in groups of ATTACK_POLYTOPES; a
        confirmed counterexample or None. No group whose first step would end past
        ``deadline`` starts."""
        from lirpac.attack import pgd_attack
        from lirpac.ir.interpret import evaluate
        for region in self.spec.regions:
            lo, hi = _inward_box(region.lower, region.upper, self.dtype, region.lower_strict, region.upper_strict)
            lo, hi = lo.reshape(1, *self.shape), hi.reshape(1, *self.shape)
            if any(len(p.d) == 0 for p in region.outputs):   # every output is unsafe
                found = self.confirm(region, (lo + hi) / 2)
                if found:
                    return found
            for first in range(0, len(region.outputs), ATTACK_POLYTOPES):
                group = region.outputs[first:first + ATTACK_POLYTOPES]
                first_step = self.step_seconds() * len(group) * restarts
                if time.monotonic() + first_step > deadline:
                    return None
                timing = {}
                candidates, viol = pgd_attack(lambda x: evaluate(self.net.graph, x), lo, hi, group,
                                              restarts=restarts, steps=steps, seed=seed, deadline=deadline,
                                              first_step_seconds=first_step, timing=timing)
                if timing:   # the steps' own time beats the two-sample estimate
                    self._step_seconds = timing["step_seconds"] / timing["samples"]
                for x in candidates[:4]:   # the most violating few, confirmed on onnxruntime
                    found = self.confirm(region, x)
                    if found:
                        return found
        return None

    # -- proof --------------------------------------------------------------------------
    def bound(self, boxes: list[_SubBox], method: str, split: bool = False) -> list[_SubBox]:
        """Bound the open polytopes of ``boxes`` (batched calls of at most BOUND_ROWS spec rows)
        and return the boxes that still have open polytopes; with ``split``, each of those comes
        back as its two halves along the input dim that the linear lower bounds depend on most.
        No call starts that the last one's time says would end past the deadline."""
        left, group, rows, last = [], [], 0, 0.0
        for k, box in enumerate(boxes):
            group.append(box)
            rows += sum(len(self.spec.regions[box.region].outputs[p].d) for p in box.open)
            if rows >= BOUND_ROWS or k == len(boxes) - 1:
                clock.check(last, f"a {method} bound call")
                started = time.monotonic()
                left += self.bound_group(group, method, split)
                last, group, rows = time.monotonic() - started, [], 0
        return left

    def bound_group(self, boxes: list[_SubBox], method: str, split: bool) -> list[_SubBox]:
        """`bound` in one batched call."""
        polys = [[self.spec.regions[b.region].outputs[p] for p in b.open] for b in boxes]
        n_rows = max(1, max(sum(len(poly.d) for poly in ps) for ps in polys))
        C = torch.zeros(len(boxes), n_rows, self.spec.n_outputs, dtype=torch.float64)
        d = torch.full((len(boxes), n_rows), math.inf, dtype=torch.float64)
        for b, ps in enumerate(polys):
            k = 0
            for poly in ps:
                C[b, k:k + len(poly.d)] = torch.from_numpy(poly.C)
                d[b, k:k + len(poly.d)] = torch.from_numpy(poly.proof_d)
                k += len(poly.d)
        lower = torch.stack([b.lower for b in boxes])
        upper = torch.stack([b.upper for b in boxes])
        box = Box(lower.reshape(-1, *self.shape), upper.reshape(-1, *self.shape))
        centre = ((lower + upper) / 2).reshape(-1, *self.shape)
        with torch.no_grad():
            if split:
                lin = self.net.linear_bounds(centre, box, method=method, C=C, bound_upper=False)
                lb, coeff = lin.lower, lin.lower_coeff.reshape(len(boxes), n_rows, -1).abs()
            else:
                # alpha-CROWN stops its steps when the instance's time is nearly spent
                options = ({"time_limit": max(0.8 * self.time_left(), 1e-3)}
                           if methods.get(method).iterative else None)
                lb, _ = self.net.bounds(centre, box, method=method, C=C, bound_upper=False,
                                        options=options)
        margin = lb.double() - d   # > 0: that row is never met in the box (d: proof_d)
        left = []
        for b, (sub, ps) in enumerate(zip(boxes, polys)):
            k, still_open, rows = 0, [], []
            for p, poly in zip(sub.open, ps):
                n = len(poly.d)
                if n == 0 or not bool((margin[b, k:k + n] > 0).any()):
                    still_open.append(p)
                    rows.extend(range(k, k + n))
                k += n
            if not still_open:
                continue
            if not split:
                left.append(_SubBox(sub.region, still_open, sub.lower, sub.upper))
                continue
            width = sub.upper - sub.lower
            score = (coeff[b, rows].sum(0) * width) if rows else width
            left.extend(_SubBox(sub.region, still_open, lo, hi) for lo, hi in _halves(sub, int(score.argmax())))
        return left

    def prove(self, method: str) -> bool:
        """Bound the open boxes with ``method``; True when every unsafe polytope is excluded."""
        if self.boxes:
            self.boxes = self.bound(self.boxes, method)
        self.log.append(f"{method}: {sum(len(b.open) for b in self.boxes)} unsafe polytope(s) not excluded")
        return not self.boxes

    def prove_by_splitting(self, method: str = "crown") -> bool | None:
        """Branch and bound on the input box: bound sub-boxes in batches, split the undecided
        ones in two. True when all are proved; None when time or the box budget ran out.
        Each batch's box centres are also tried as counterexamples (``self.found``)."""
        queue, bounded, last = list(self.boxes), 0, 0.0
        while queue:
            if self.time_left() <= last or len(queue) > SPLIT_MAX_BOXES:
                self.log.append(f"input splitting: {bounded} boxes bounded, {len(queue)} left")
                self.boxes = queue
                return None
            started = time.monotonic()
            batch, queue = queue[-SPLIT_BATCH:], queue[:-SPLIT_BATCH]
            self.found = self.try_centres(batch)
            if self.found:
                return False
            try:
                queue.extend(self.bound(batch, method, split=True))
            except OutOfTime:
                queue.extend(batch)
                continue
            bounded += len(batch)
            last = time.monotonic() - started
        self.log.append(f"input splitting: proved with {bounded} boxes bounded")
        self.boxes = []
        return True

    def prove_by_relu_splitting(self, share: float) -> bool:
        """ReLU branch and bound (lirpac.bab) on each open box, within ``share`` of the time
        left; True when every box's open polytopes are proved empty."""
        from lirpac.bab import relu_split
        deadline = time.monotonic() + share * self.time_left()
        for sub in list(self.boxes):
            polys = [self.spec.regions[sub.region].outputs[p] for p in sub.open]
            if any(len(poly.d) == 0 for poly in polys):   # every output unsafe: nothing to prove
                return False
            groups, k = [], 0
            for poly in polys:
                groups.append(list(range(k, k + len(poly.d))))
                k += len(poly.d)
            C = torch.from_numpy(np.concatenate([poly.C for poly in polys]))
            d = torch.from_numpy(np.concatenate([poly.proof_d for poly in polys]))
            found = relu_split(self.net, sub.lower.reshape(self.shape), sub.upper.reshape(self.shape),
                               C, d, groups, deadline)
            self.log.append(f"ReLU splitting (region {sub.region}): {found.message}")
            if not found.proved:
                return False
            self.boxes.remove(sub)
        return True

    def try_centres(self, boxes: list[_SubBox]):
        """A confirmed counterexample among the boxes' centres, by the IR first."""
        from lirpac.ir.interpret import evaluate
        centre = torch.stack([(b.lower + b.upper) / 2 for b in boxes]).to(self.dtype).reshape(-1, *self.shape)
        with torch.no_grad():
            y = evaluate(self.net.graph, centre).double().reshape(len(boxes), -1).numpy()
        for b, sub in enumerate(boxes):
            region = self.spec.regions[sub.region]
            if any(region.outputs[p].satisfied(y[b]) for p in sub.open):
                found = self.confirm(region, centre[b])
                if found:
                    return found
        return None


@dataclass
class _SubBox:
    """Part of a region's input box (flat float64 bounds) and its polytopes still open."""
    region: int
    open: list[int]
    lower: torch.Tensor
    upper: torch.Tensor


def _halves(box: _SubBox, dim: int):
    """The box's two halves along ``dim``; together they cover it (both hold the midpoint)."""
    mid = (box.lower[dim] + box.upper[dim]) / 2
    upper, lower = box.upper.clone(), box.lower.clone()
    upper[dim], lower[dim] = mid, mid
    return (box.lower, upper), (lower, box.upper)


def _prove(inst: _Instance, method: str):
    """("holds", how, None) or ("violated", how, counterexample) when the bounds (and input
    splitting) decide, else None. CROWN first unless ``method`` is cheaper; ``method`` after
    it when the time left allows."""
    first = method if methods.get(method).cheap else methods.CROWN.name
    started = time.monotonic()
    if inst.prove(first):
        return "holds", f"proved by {first}", None
    first_time = time.monotonic() - started
    if inst.spec.n_inputs <= SPLIT_MAX_INPUTS:
        if inst.prove_by_splitting():
            return "holds", "proved by crown with input splitting", None
        if inst.found:
            return "violated", "counterexample from input splitting", inst.found
    elif method != first and inst.time_left() > EXPENSIVE_METHOD_COST * first_time:
        if inst.prove(method):
            return "holds", f"proved by {method}", None
        if methods.get(method).iterative and inst.prove_by_relu_splitting(RELU_SPLIT_SHARE):
            return "holds", "proved by alpha-crown with ReLU splitting", None
    return None


def _load(model, spec):
    from lirpac.api import CompiledNet, compile
    if isinstance(spec, (str, os.PathLike)):
        spec = parse_vnnlib(spec)
    elif not isinstance(spec, Spec):
        raise InputError(f"spec must be a VNNLIB path or a lirpac.vnnlib.Spec, got {type(spec).__name__}")
    if not isinstance(model, CompiledNet):
        model = compile(model)
    return model, spec


def verify(model, spec, method: str | None = None, timeout: float = 60.0, *,
           attack: bool = True, seed: int = 0) -> VerificationResult:
    """Decide whether ``spec`` holds on ``model``.

    model: an ONNX path, an onnx.ModelProto or a CompiledNet from one; spec: a VNNLIB path or a
    parsed `lirpac.vnnlib.Spec`. ``method`` is the bound method of the proof (default:
    `default_method()`); CROWN runs first when it differs. Returns a `VerificationResult` with
    status "holds", "violated" (with a counterexample confirmed by onnxruntime), "unknown",
    "timeout" or "error" (the message says why: a missing file, a malformed model or spec).
    """
    timeout = validate_timeout(timeout)
    start = time.monotonic()
    deadline = start + timeout
    log: list[str] = []
    method = check_method(method)

    def result(status, **kw):
        return VerificationResult(status, time.monotonic() - start, method, log=log, **kw)

    try:
        with clock.within(deadline):
            return _decide(model, spec, method, deadline, attack, seed, log, result)
    except OutOfTime as err:
        log.append(str(err))
        return result("timeout")
    except Exception as err:  # a missing file, a malformed model or spec, an op lirpac lacks
        return result("error", message=f"{type(err).__name__}: {err}")


def _decide(model, spec, method: str, deadline: float, attack: bool, seed: int, log: list[str],
            result) -> VerificationResult:
    """verify's steps, under its deadline (lirpac.deadline): a unit of work that would end past
    it raises OutOfTime."""
    net, spec = _load(model, spec)
    inst = _Instance(net, spec, deadline, log)
    if not spec.regions:   # no input (or no output) is unsafe: nothing to search or bound
        return result("holds", message=spec.empty_reason or "the spec's unsafe set is empty")
    if attack:   # rounds with new seeds until the first attack's share of the time is spent
        budget = time.monotonic() + FIRST_ATTACK_SHARE * inst.time_left()
        for round_ in range(FIRST_ATTACK_ROUNDS):
            found = inst.attack(seed + 1000 * round_, budget)
            if found:
                return result("violated", counterexample=found, message="PGD counterexample")
            if time.monotonic() >= budget:
                break
    if time.monotonic() > deadline:
        return result("timeout")
    try:
        decided = _prove(inst, method)
    except OutOfTime as err:   # a pass that would have ended past the deadline did not start
        decided, proof_error = None, None
        log.append(f"bounds: {err}")
    except Exception as err:  # a bound the backend cannot compute: still try to falsify
        decided, proof_error = None, f"bounds failed: {type(err).__name__}: {err}"
        log.append(proof_error)
    else:
        proof_error = None
    if decided:
        status, how, found = decided
        return result(status, message=how, counterexample=found)
    if attack:
        for round_ in range(1, LATE_ATTACK_ROUNDS + 1):
            if inst.time_left() <= 0:
                break
            found = inst.attack(seed + round_, deadline, restarts=16, steps=100)
            if found:
                return result("violated", counterexample=found, message="PGD counterexample")
    if proof_error:
        return result("error", message=proof_error)
    return result("timeout" if inst.time_left() <= 0 else "unknown")
