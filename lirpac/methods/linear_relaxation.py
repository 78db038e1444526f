"""The methods that are one generated program run once: IBP, CROWN, forward mode and their
combinations (the modes of codegen/torch_backend.py)."""
from __future__ import annotations

from lirpac.errors import InputError
from lirpac.methods.base import Method


class Crown(Method):
    """CROWN also takes ``intersect``: each intermediate neuron keeps the intersection of its
    backward-pass and IBP bounds (runtime.tighten)."""

    def option_names(self) -> tuple[str, ...]:
        return ("intersect",)

    def plan_options(self, options: dict) -> dict:
        intersect = options.pop("intersect", False)
        if not isinstance(intersect, bool):
            raise InputError(f"options['intersect'] must be True or False, got {intersect!r}")
        return {"intersect": intersect}


IBP = Method("ibp", "ibp", "ibp", "interval arithmetic (spec folded into the last layer)",
             compat_names=("IBP",))
CROWN = Crown("crown", "backward", "backward", "backward passes from every pre-activation",
              compat_names=("CROWN", "backward"), forward_when_exact=True)
FORWARD = Method("forward", "forward", "forward", "linear functions of the input propagated forward",
                 compat_names=("forward", "dynamic-forward"))
CROWN_IBP = Method("crown-ibp", "ibp", "backward", "IBP intermediate bounds, a backward final pass",
                   compat_names=("CROWN-IBP", "IBP+backward", "IBP+CROWN"))
FORWARD_CROWN = Method("forward+crown", "forward", "backward",
                       "forward-mode intermediate bounds, a backward final pass",
                       compat_names=("forward+backward", "forward+CROWN", "dynamic-forward+backward"))
