"""glibc malloc settings under which freed tensor memory is reused, not faulted in again.

PyTorch takes CPU tensors from malloc. glibc serves blocks above a threshold (128 KiB at
first, then adjusted to the sizes freed) with their own mmap, and gives the top of its heap
back to the OS once more than twice that is free there. A bound computation allocates and
frees the same few hundred-KiB tensors on every call, so depending on the order in which the
process first allocated, every call can map and fault in its temporaries again: on the
benchmark MLP, CROWN took 3.4 ms with about 1,300 page faults per call in most processes and
2.0 ms with none in the others. Fixed thresholds (blocks under 32 MiB from the heap, up to
256 MiB of free heap kept) make every process take the fast path.

``tune()`` runs once, when lirpac compiles its first model. It leaves malloc alone where the
user chose (``LIRPAC_MALLOC_TUNING=0``, or glibc's own ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_`` set) and where there is no glibc (other C libraries, macOS,
Windows). The cost is memory the process keeps after a large computation: at most 256 MiB of
freed heap, which later tensors reuse.
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20      # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 256 << 20


@functools.cache
def tune() -> bool:
    """Set the thresholds once per process; whether they are in effect."""
    return _apply()


def _apply() -> bool:
    if os.environ.get("LIRPAC_MALLOC_TUNING", "1").strip() == "0":
        return False
    if any(v in os.environ for v in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
