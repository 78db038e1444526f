"""What a bound method is: how it gets intermediate and final bounds, which options it takes,
and which code generator writes its program.

A method is data plus three hooks, so the rest of lirpac never compares method names: the API
asks the method for its plan, its options and how to run its function; codegen reads the plan's
modes (``intermediate``, ``final``); verification asks whether a method is cheap or iterative.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import torch

from lirpac.codegen import torch_backend
from lirpac.codegen.torch_backend import MODES, Plan


@dataclass(frozen=True)
class Method:
    """A bound method. ``intermediate`` / ``final``: how bounds of intermediate nodes and of the
    output are formed (one of MODES). ``compat_names``: auto_LiRPA's names for it (matched
    without case by lirpac.compat). ``cheap``: verification may try it before an iterative one.
    ``forward_when_exact``: intermediate nodes whose bounds forward mode gives exactly and more
    cheaply are bounded that way (passes/bound_needs.py)."""
    name: str
    intermediate: str
    final: str
    summary: str
    compat_names: tuple[str, ...] = ()
    cheap: bool = True
    iterative: bool = False
    forward_when_exact: bool = False

    def __post_init__(self):
        if self.intermediate not in MODES or self.final not in MODES:
            raise ValueError(f"method {self.name}: modes must be in {MODES}")

    @property
    def linear(self) -> bool:
        """Its final bound is a linear function of the input (linear_bounds can return it)."""
        return self.final != "ibp"

    # -- the program ----------------------------------------------------------------------
    def complete(self, plan: Plan) -> Plan:
        """``plan`` with this method's modes filled in (a plan names its method; codegen reads
        only the modes)."""
        return dataclasses.replace(plan, intermediate=self.intermediate, final=self.final,
                                   forward_when_exact=self.forward_when_exact)

    def build(self, graph, plan: Plan):
        """(function, source) of the generated program for ``plan``."""
        return torch_backend.build(graph, plan)

    # -- options and running ----------------------------------------------------------------
    def option_names(self) -> tuple[str, ...]:
        """The options the method accepts (lirpac.methods.read_options refuses the others)."""
        return ()

    def plan_options(self, options: dict) -> dict:
        """The Plan fields that ``options`` set (consumed from the dict), after validation."""
        return {}

    def check_options(self, options: dict) -> object:
        """What ``run`` needs of the options left after ``plan_options``, validated."""
        return None

    def run(self, fn, inp, C, params, plan: Plan, output: str, options):
        """(lower, upper, A, state) of the generated ``fn`` on the bound set ``inp``. With no
        graph to record, inference mode also skips autograd's per-op bookkeeping (view and
        version tracking: 7-8% of CROWN on the MLP); the bounds leave it as ordinary tensors,
        so later autograd code may use them."""
        inference = not (plan.return_A or torch.is_grad_enabled())
        with torch.inference_mode() if inference else contextlib.nullcontext():
            lower, upper, A = fn(inp, C, params)
        if inference:
            lower, upper = (None if t is None else t.clone() for t in (lower, upper))
        return lower, upper, A, None
