"""``lirpac.verify``: decide a VNN-COMP instance (an ONNX model and a VNNLIB property).

A VNNLIB file states the *unsafe* set (see lirpac.vnnlib): the union over regions of
``x in box_r and C_p f(x) <= d_p`` for some polytope p of the region. The property holds iff
every such polytope is empty, which the bounds prove when, for some row i of each polytope,
``lower(C_p,i . f(x) - d_p,i) > 0`` over the box: that row can never be met.

The steps, cheapest first, all within one time budget:

1. PGD falsification (a short share of the budget): a candidate found on lirpac's IR is only a
   counterexample once onnxruntime, running the original model, puts it in an unsafe polytope
   and the input lies in the box. Otherwise it is dropped.
2. Bounds with the cheap method ("crown"), then with the default method ("alpha-crown" once the
   backend has it) on the polytopes still open. Every region is one sample of one batched call;
   bounds are computed in float64 so rounding in the bound code cannot make a proof unsound.
3. PGD again with the time that is left.

"holds" is only ever reported from step 2; "violated" only with a confirmed counterexample.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from lirpac.errors import InputError
from lirpac.vnnlib import Spec, parse_vnnlib

__all__ = ["VerificationResult", "verify", "default_method", "STATUSES"]

STATUSES = ("holds", "violated", "unknown", "timeout", "error")
# share of the budget the first PGD run may use
FIRST_ATTACK_SHARE = 0.1
# PGD rounds (new seeds) after the bounds failed; past them the answer is "unknown"
LATE_ATTACK_ROUNDS = 20


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
    """alpha-CROWN when the torch backend offers it, else CROWN."""
    from lirpac.codegen.torch_backend import METHODS
    return "alpha-crown" if "alpha-crown" in METHODS else "crown"


class _OutOfTime(Exception):
    pass


def _inward_box(lower: np.ndarray, upper: np.ndarray, dtype: torch.dtype):
    """The box in the model's dtype, rounded inwards so every point of it is in the float64
    box (a float32 cast of 0.1 may fall below 0.1)."""
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    lo, hi = lower.astype(np_dtype), upper.astype(np_dtype)
    lo = np.where(lo.astype(np.float64) < lower, np.nextafter(lo, np_dtype(np.inf)), lo)
    hi = np.where(hi.astype(np.float64) > upper, np.nextafter(hi, np_dtype(-np.inf)), hi)
    if np.any(lo > hi):  # a box thinner than one float: its float points are its ends
        lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    return torch.from_numpy(lo), torch.from_numpy(hi)


class _Instance:
    """A compiled net and a parsed spec, with the checks and searches on them."""

    def __init__(self, net, spec: Spec, deadline: float, log: list[str]):
        self.net, self.spec, self.deadline, self.log = net, spec, deadline, log
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
        # polytopes still open, per region index: proved ones leave
        self.open = {r: list(range(len(region.outputs))) for r, region in enumerate(spec.regions)}

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    # -- falsification ------------------------------------------------------------------
    def confirm(self, region, x: torch.Tensor):
        """(x, y) flat float64 when onnxruntime puts x (in the box) in an unsafe polytope."""
        x64 = x.detach().double().reshape(-1).numpy()
        if not region.contains(x64):
            return None
        y = self.net.module(x.detach().reshape(1, *self.shape)).double().reshape(-1).numpy()
        if any(p.satisfied(y) for p in region.outputs):
            return x64, y
        return None

    def attack(self, seed: int, deadline: float, restarts: int = 8, steps: int = 50):
        """One PGD round on every region; a confirmed counterexample or None."""
        from lirpac.attack import pgd_attack
        from lirpac.ir.interpret import evaluate
        for region in self.spec.regions:
            lo, hi = _inward_box(region.lower, region.upper, self.dtype)
            lo, hi = lo.reshape(1, *self.shape), hi.reshape(1, *self.shape)
            if any(len(p.d) == 0 for p in region.outputs):   # every output is unsafe
                found = self.confirm(region, (lo + hi) / 2)
                if found:
                    return found
            candidates, viol = pgd_attack(lambda x: evaluate(self.net.graph, x), lo, hi, region.outputs,
                                          restarts=restarts, steps=steps, seed=seed, deadline=deadline)
            for x in candidates[:4]:   # the most violating few, confirmed on onnxruntime
                found = self.confirm(region, x)
                if found:
                    return found
            if time.monotonic() > deadline:
                break
        return None

    # -- proof --------------------------------------------------------------------------
    def prove(self, method: str) -> bool:
        """Bound every open polytope with ``method``; drop the proved ones. True when none
        is left open. All open regions go through one batched call."""
        regions = [r for r, open_ in self.open.items() if open_]
        if not regions:
            return True
        rows = []   # per region: list of (polytope index, C rows, d)
        for r in regions:
            polys = [(p, self.spec.regions[r].outputs[p]) for p in self.open[r]]
            rows.append(polys)
        n_rows = max(sum(len(poly.d) for _, poly in polys) for polys in rows)
        n_out = self.spec.n_outputs
        C = torch.zeros(len(regions), max(n_rows, 1), n_out, dtype=torch.float64)
        d = torch.full((len(regions), max(n_rows, 1)), math.inf, dtype=torch.float64)
        for b, polys in enumerate(rows):
            k = 0
            for _, poly in polys:
                C[b, k:k + len(poly.d)] = torch.from_numpy(poly.C)
                d[b, k:k + len(poly.d)] = torch.from_numpy(poly.d)
                k += len(poly.d)
        lower = torch.stack([torch.from_numpy(self.spec.regions[r].lower) for r in regions]).reshape(-1, *self.shape)
        upper = torch.stack([torch.from_numpy(self.spec.regions[r].upper) for r in regions]).reshape(-1, *self.shape)
        from lirpac.perturbation import Box
        with torch.no_grad():
            lb, _ = self.net.bounds((lower + upper) / 2, Box(lower, upper), method=method, C=C,
                                    bound_upper=False)
        margin = (lb.double() - d)   # > 0: that row is never met over the box
        for b, (r, polys) in enumerate(zip(regions, rows)):
            k, still_open = 0, []
            for p, poly in polys:
                proved = len(poly.d) > 0 and bool((margin[b, k:k + len(poly.d)] > 0).any())
                if not proved:
                    still_open.append(p)
                k += len(poly.d)
            self.open[r] = still_open
        left = sum(len(v) for v in self.open.values())
        self.log.append(f"{method}: {left} unsafe polytope(s) not excluded")
        return left == 0


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
    start = time.monotonic()
    deadline = start + float(timeout)
    log: list[str] = []
    method = (method or default_method()).lower()

    def result(status, **kw):
        return VerificationResult(status, time.monotonic() - start, method, log=log, **kw)

    try:
        net, spec = _load(model, spec)
        inst = _Instance(net, spec, deadline, log)
        if attack:
            budget = start + FIRST_ATTACK_SHARE * float(timeout)
            found = inst.attack(seed, min(budget, deadline))
            if found:
                return result("violated", counterexample=found, message="PGD counterexample")
        methods = ["crown", method] if method != "crown" else ["crown"]
        for m in methods:
            if inst.time_left() <= 0:
                return result("timeout")
            if inst.prove(m):
                return result("holds", message=f"proved by {m}")
        if attack:
            for round_ in range(1, LATE_ATTACK_ROUNDS + 1):
                if inst.time_left() <= 0:
                    return result("timeout")
                found = inst.attack(seed + round_, deadline, restarts=16, steps=100)
                if found:
                    return result("violated", counterexample=found, message="PGD counterexample")
        return result("timeout" if inst.time_left() <= 0 else "unknown")
    except Exception as err:  # a missing file, a malformed model or spec, an op lirpac lacks
        return result("error", message=f"{type(err).__name__}: {err}")
