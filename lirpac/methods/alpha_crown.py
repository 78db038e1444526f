"""alpha-CROWN as a method: CROWN's program with parametrised relaxations
(codegen/alpha_crown.py), run by the optimisation loop of lirpac/alpha.py."""
from __future__ import annotations

import dataclasses

from lirpac.alpha import AlphaOptions, AlphaState, BranchContext, optimise
from lirpac.codegen import alpha_crown
from lirpac.codegen.torch_backend import Plan
from lirpac.errors import InputError
from lirpac.methods.base import Method


@dataclasses.dataclass(frozen=True)
class _RunOptions:
    options: AlphaOptions
    state: AlphaState | None
    branch: BranchContext | None


class AlphaCrown(Method):
    def complete(self, plan: Plan) -> Plan:
        # passes run as one chunk: every row's slopes live anyway, and autograd keeps the
        # coefficients for the gradient
        return dataclasses.replace(super().complete(plan), max_memory=alpha_crown.ONE_CHUNK)

    def build(self, graph, plan: Plan):
        return alpha_crown.build(graph, plan)

    def option_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(AlphaOptions)) + ("state", "branch")

    def check_options(self, options: dict) -> _RunOptions:
        options = dict(options)
        state = options.pop("state", None)
        if state is not None and not isinstance(state, AlphaState):
            raise InputError(f"options['state'] must be a lirpac.AlphaState, got {type(state).__name__}")
        # (branch and bound's sub-domains: lirpac/bab.py)
        branch = options.pop("branch", None)
        if branch is not None and not isinstance(branch, BranchContext):
            raise InputError(f"options['branch'] must be a lirpac.alpha.BranchContext, got "
                             f"{type(branch).__name__}")
        return _RunOptions(AlphaOptions.from_dict(options), state, branch)

    def run(self, fn, inp, C, params, plan: Plan, output: str, options: _RunOptions):
        return optimise(fn, inp, C, params, output, options.options, options.state, options.branch)


ALPHA_CROWN = AlphaCrown("alpha-crown", "backward", "backward",
                         "backward passes with optimised relaxations",
                         compat_names=("alpha-CROWN", "CROWN-optimized"), cheap=False, iterative=True)
