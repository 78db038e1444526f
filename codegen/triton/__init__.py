"""The Triton backend: the torch backend's generated program with its memory-bound steps
swapped for fused Triton kernels (docs/triton.md).

Nothing here imports triton at ``import lirpac``: a CPU user never pays for it. ``available()``
says whether triton imports; the kernels' modules import it when the backend is first used.
On a machine without a GPU the kernels run on CPU tensors through Triton's interpreter
(``TRITON_INTERPRET=1``, set before the kernels are first imported): slow, for tests.
"""
from __future__ import annotations

import functools
import os


@functools.cache
def available() -> bool:
    """triton imports (it is an optional extra: ``pip install lirpac[triton]``)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:     # ImportError, or a broken install (no driver libraries)
        return False
    return True


def interpreting() -> bool:
    """Kernels run through Triton's interpreter (on CPU tensors too)."""
    return os.environ.get("TRITON_INTERPRET", "") not in ("", "0")


def runs_on(t) -> bool:
    """A kernel can take ``t``: a CUDA tensor, or any tensor under the interpreter."""
    return t.is_cuda or (interpreting() and t.device.type == "cpu")


BACKENDS = ("torch", "triton", "auto")


def check_backend(backend) -> str:
    """The backend's canonical name, or a precise InputError (a name not in BACKENDS; triton
    asked for where it does not import)."""
    from lirpac.errors import InputError
    if not isinstance(backend, str) or backend.lower() not in BACKENDS:
        raise InputError(f"compile: backend must be one of {', '.join(repr(b) for b in BACKENDS)}, "
                         f"got {backend!r}")
    backend = backend.lower()
    if backend == "triton" and not available():
        raise InputError("compile: backend='triton' needs the triton package, which does not import "
                         "here; install it with pip install 'lirpac[triton]' (Linux), or use "
                         "backend='torch' (or 'auto', which falls back to torch)")
    return backend


def resolve(backend: str, x=None) -> str:
    """The backend that runs a bound call on ``x`` ("torch" or "triton"): "auto" is triton for
    CUDA tensors when triton imports; without ``x`` (``net.source()``), for a machine with a
    CUDA device."""
    if backend == "torch":
        return "torch"
    if backend == "auto":
        import torch
        cuda = x.is_cuda if x is not None else torch.cuda.is_available()
        return "triton" if cuda and available() else "torch"
    if x is not None and not runs_on(x):
        from lirpac.errors import InputError
        raise InputError(f"backend='triton' runs its kernels on CUDA tensors, and x is on {x.device}; "
                         "move x to a GPU (x.cuda()), compile with backend='torch' or 'auto', or, to "
                         "test the kernels without a GPU, set TRITON_INTERPRET=1 before lirpac "
                         "first uses triton (slow)")
    return "triton"


def tile(total_rows: int, n: int) -> tuple[int, int]:
    """(rows, columns) of a kernel program's tile: a row's columns in blocks of up to 1024 (a
    power of two), and short rows packed up to 4096 elements a program (one program per short
    row would leave most of a GPU's lanes, and the interpreter's time, on launch overhead)."""
    def power_of_two(k: int) -> int:
        return 1 << max(k - 1, 0).bit_length()
    block = min(1024, power_of_two(max(n, 16)))
    rows = max(2, min(4096 // block, power_of_two(max(total_rows, 1))))
    return rows, block
