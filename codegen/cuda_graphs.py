"""CUDA graphs for the generated bound functions (opt-in: ``lirpac.compile(..., cuda_graphs=True)``).

On a GPU a bound call of a small network is dominated by launching its hundreds of small
kernels. Where a call's shapes are static, one graph captured per call signature (the input
set's class, the shapes and dtypes of its tensors and of C and the parameters, its other
attributes) replays all of them with one launch. What is captured, and what runs as before:

- calls on CUDA tensors that want no gradient (under ``torch.no_grad()`` or inference mode,
  or with parameters that need none: a replayed graph records no autograd history);
- non-iterative methods (IBP, CROWN, forward, CROWN-IBP; alpha-CROWN differentiates its
  steps) whose input set holds plain tensors and scalars (no nested sets);
- functions that never wait on the GPU inside. The rules' value checks (is every end finite,
  is a bias all zero) are switched off while capturing (ir/ops/common.py ``HOST_CHECKS``): each
  rule then takes its general branch, exact for any values (infinite ends included), only
  slower. A shape that depends on values (CROWN's choice of the neurons that straddle 0) makes
  the capture fail, and that signature runs eagerly from then on (one warning says so): IBP,
  forward mode and CROWN-IBP's IBP part capture, CROWN's sparse passes do not.

Each replay copies the call's tensors into the graph's input buffers and returns clones of
its outputs; each captured signature keeps its own memory pool. Not tested on a GPU here (no
device in this project's CI): only the CPU path (a compile without CUDA raises InputError; a
call on CPU tensors runs the function as is) is.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import warnings

import torch

from lirpac.errors import InputError
from lirpac.ir.ops import common

_SCALARS = (bool, int, float, str, type(None))


def check(flag) -> bool:
    """The ``cuda_graphs`` option, or a precise InputError."""
    if not isinstance(flag, bool):
        raise InputError(f"compile: cuda_graphs must be True or False, got {flag!r}")
    if flag and not torch.cuda.is_available():
        raise InputError("compile: cuda_graphs=True captures CUDA graphs of the bound calls, and no CUDA "
                         "device is available here; leave cuda_graphs=False on this machine (graphs only "
                         "save kernel launches on a GPU)")
    return flag


def _set_tensors(inp) -> dict | None:
    """The input set's tensor attributes by name, or None when it holds anything but tensors
    and scalars (a nested set: its tensors could not be refilled)."""
    attrs = vars(inp)
    if not all(isinstance(v, (torch.Tensor, *_SCALARS)) or (isinstance(v, tuple) and all(
            isinstance(e, _SCALARS) for e in v)) for v in attrs.values()):
        return None
    return {k: v for k, v in attrs.items() if isinstance(v, torch.Tensor)}


def _signature(inp, tensors: dict, C, params) -> tuple:
    def of(t):
        return None if t is None else (tuple(t.shape), t.dtype, t.device)
    scalars = tuple(sorted((k, v) for k, v in vars(inp).items() if not isinstance(v, torch.Tensor)))
    return (type(inp), scalars, tuple((k, of(t)) for k, t in sorted(tensors.items())), of(C),
            tuple(of(p) for p in params))


def _clone(out):
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_clone(o) for o in out)
    return out


class GraphedBound:
    """``fn(inp, C, params)`` replayed from a CUDA graph per call signature where it can be
    (module docstring), else run as is."""

    def __init__(self, fn):
        functools.update_wrapper(self, fn)
        self.fn = fn
        # signature -> (graph, static tensors in call order, outputs), or None: runs eagerly
        self.graphs: dict = {}

    def __call__(self, inp, C, params):
        tensors = _set_tensors(inp)
        operands = None if tensors is None else [*tensors.values(), *([] if C is None else [C]), *params]
        if not operands or not all(t.is_cuda for t in operands) or (
                torch.is_grad_enabled() and any(t.requires_grad for t in operands)):
            return self.fn(inp, C, params)
        key = _signature(inp, tensors, C, params)
        if key not in self.graphs:
            self.graphs[key] = self._capture(inp, tensors, C, params)
        entry = self.graphs[key]
        if entry is None:
            return self.fn(inp, C, params)
        graph, static, outputs = entry
        for buffer, t in zip(static, operands):
            buffer.copy_(t)
        graph.replay()
        return _clone(outputs)

    def _capture(self, inp, tensors, C, params):
        static_inp = copy.copy(inp)
        for name, t in tensors.items():
            setattr(static_inp, name, t.clone())
        static_C = None if C is None else C.clone()
        static_params = [p.detach().clone() for p in params]
        static = [*(getattr(static_inp, name) for name in tensors), *([] if C is None else [static_C]),
                  *static_params]
        try:
            # a warm-up on a side stream (Triton compiles and autotunes there, cuBLAS picks
            # its workspaces), then the capture
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with host_checks_off(), torch.cuda.stream(stream):
                self.fn(copy.copy(static_inp), static_C, static_params)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with host_checks_off(), torch.cuda.graph(graph, capture_error_mode="thread_local"):
                outputs = self.fn(static_inp, static_C, static_params)
        except Exception as err:    # a host synchronisation inside: not capturable
            warnings.warn(f"cuda_graphs: {getattr(self.fn, '__name__', 'bound')} cannot be captured for this "
                          f"call signature ({type(err).__name__}: {str(err)[:120]}); it runs without a graph",
                          RuntimeWarning, stacklevel=3)
            return None
        return graph, static, outputs


@contextlib.contextmanager
def host_checks_off():
    """The bound rules' value checks off (ir/ops/common.py HOST_CHECKS): their general
    branches, which read no value on the host."""
    common.HOST_CHECKS[0] = False
    try:
        yield
    finally:
        common.HOST_CHECKS[0] = True
