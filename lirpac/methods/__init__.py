"""The bound methods, by name. Adding a method: a file in this package and a line in
``_REGISTERED``; nothing else in lirpac names methods."""
from __future__ import annotations

from lirpac.errors import InputError
from lirpac.methods.alpha_crown import ALPHA_CROWN
from lirpac.methods.base import MODES, Method
from lirpac.methods.linear_relaxation import CROWN, CROWN_IBP, FORWARD, FORWARD_CROWN, IBP

_REGISTERED = [IBP, CROWN, FORWARD, CROWN_IBP, FORWARD_CROWN, ALPHA_CROWN]

REGISTRY: dict[str, Method] = {m.name: m for m in _REGISTERED}
METHODS: tuple[str, ...] = tuple(REGISTRY)
DEFAULT_VERIFY = ALPHA_CROWN.name   # the tightest method verification runs after cheap ones


def get(method) -> Method:
    """The method named ``method`` (case ignored), or a Method itself; an unknown name is an
    InputError listing the accepted ones."""
    if isinstance(method, Method):
        return method
    found = REGISTRY.get(method.lower()) if isinstance(method, str) else None
    if found is None:
        raise InputError(f"unknown method {method!r}; method must be one of "
                         f"{', '.join(repr(m) for m in METHODS)}")
    return found


def read_options(method: Method, options: dict) -> tuple[dict, object]:
    """(Plan fields, run options) of ``method`` from the user's options; an option the method
    does not take is an InputError that names the methods taking it."""
    unknown = sorted(set(options) - set(method.option_names()))
    if unknown:
        owners = [m.name for m in _REGISTERED if set(unknown) & set(m.option_names())]
        takes = ", ".join(repr(o) for o in method.option_names()) or "none"
        where = (f"; {', '.join(repr(o) for o in unknown)} "
                 f"{'are options of' if len(unknown) > 1 else 'is an option of'} "
                 f"method={' or '.join(repr(m) for m in owners)}" if owners else "")
        raise InputError(f"unknown option(s) {', '.join(repr(o) for o in unknown)} for "
                         f"method={method.name!r} (its options: {takes}){where}")
    options = dict(options)
    plan_fields = method.plan_options(options)
    return plan_fields, method.check_options(options)


def by_compat_name() -> dict[str, str]:
    """auto_LiRPA's method names (lower case) and the lirpac method each one runs."""
    return {alias.lower(): m.name for m in _REGISTERED for alias in m.compat_names}


def backward_after(intermediate: str) -> Method:
    """The single-pass method with a backward final bound that forms intermediate bounds by
    ``intermediate`` (compat: a backward call reusing bounds an earlier call left)."""
    return next(m for m in _REGISTERED
                if m.intermediate == intermediate and m.final == "backward" and not m.iterative)


__all__ = ["Method", "MODES", "METHODS", "CROWN", "ALPHA_CROWN", "REGISTRY", "get", "read_options",
           "by_compat_name", "backward_after"]
