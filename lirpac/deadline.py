"""One deadline for the work of one verification, seen by every loop that can stop early.

`lirpac.verify` runs its steps ``within(deadline)``; the loops that can run long -- the chunks
of a CROWN pass (codegen/runtime.py: ``tighten_chunks``), alpha-CROWN's iterations, branch and
bound's batches, PGD's steps, the VNNLIB expansion -- call `check` between units of work. A
unit whose estimated cost (the time the last one like it took) would end past the deadline is
not started: `OutOfTime` is raised instead, and whoever can still use the work done so far
(alpha-CROWN's best bound, branch and bound's queue) catches it. A context variable, so that
a thread, or a bound call made outside `verify`, sees no deadline.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import time

from lirpac.errors import LirpacError

__all__ = ["OutOfTime", "check", "left", "within", "validate_timeout"]

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("lirpac_deadline", default=None)


class OutOfTime(LirpacError, TimeoutError):
    """The deadline passed, or the next unit of work would end past it."""


@contextlib.contextmanager
def within(deadline: float | None):
    """Run the block with ``deadline`` (a time.monotonic() value; None: none) as the current one;
    an enclosing deadline that comes earlier stays in force."""
    outer = _DEADLINE.get()
    if outer is not None and (deadline is None or outer < deadline):
        deadline = outer
    token = _DEADLINE.set(deadline)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def left() -> float:
    """Seconds until the current deadline (inf when there is none)."""
    deadline = _DEADLINE.get()
    return math.inf if deadline is None else deadline - time.monotonic()


def check(estimate: float = 0.0, what: str = "the work") -> None:
    """Raise OutOfTime when the deadline has passed or ``estimate`` more seconds would pass it."""
    deadline = _DEADLINE.get()
    if deadline is not None and time.monotonic() + estimate > deadline:
        raise OutOfTime(f"out of time: {what} would end past the deadline")


def validate_timeout(timeout, name: str = "timeout") -> float:
    """``timeout`` as a float when it is a finite number of seconds > 0, else an InputError
    (NaN would compare false with every clock reading, inf and 0 or less decide nothing)."""
    from lirpac.errors import InputError
    try:
        if isinstance(timeout, bool):
            raise TypeError
        seconds = float(timeout)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number of seconds, got {timeout!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise InputError(f"{name} must be a finite number of seconds > 0, got {timeout!r}")
    return seconds
