"""The compiled net reads the model's parameters and buffers live: the tensors captured at
compile time are the module's own, so a weight update (in place) shows in the next bound.

A conversion that *replaces* those tensors after compile would leave the net reading the old
ones silently: ``model.double().float()`` and ``model.to(...)`` make new buffer tensors,
``load_state_dict(..., assign=True)`` new parameters, ``model.fc.weight = nn.Parameter(...)``
a new parameter. ``LiveTensors.sync`` notices (one dictionary lookup and identity check per
tensor, each bound call) and re-reads a replaced tensor of the same shape and dtype; a changed
shape or dtype (``model.double()`` after compiling the float model: its bounds would round the
weights) needs a new compile, and says so.
"""
from __future__ import annotations

import torch

from lirpac.errors import InputError


class LiveTensors:
    """The leaves of the compiled graphs that name a module tensor (attrs["target"])."""

    def __init__(self, module, graphs):
        # (the owner's _parameters or _buffers dict, tensor name, [leaf nodes reading it],
        #  target, compiled shape, compiled dtype)
        self._slots = []
        if not isinstance(module, torch.nn.Module):
            return
        by_target: dict[str, list] = {}
        for graph in graphs:
            for node in graph.nodes:
                target = node.attrs.get("target") if node.op in ("param", "constant") else None
                if isinstance(target, str) and node.value is not None:
                    by_target.setdefault(target, []).append(node)
        for target, nodes in by_target.items():
            prefix, _, name = target.rpartition(".")
            try:
                owner = module.get_submodule(prefix)
            except AttributeError:
                continue            # not a module attribute (a lifted constant)
            kind = ("_parameters" if name in owner._parameters else
                    "_buffers" if name in owner._buffers else None)
            value = nodes[0].value
            if kind is not None and getattr(owner, kind)[name] is value:
                self._slots.append((getattr(owner, kind), name, nodes, target, value.shape,
                                    value.dtype))

    def sync(self) -> None:
        """Re-read every tensor the module replaced since compile (same shape and dtype)."""
        for tensors, name, nodes, target, shape, dtype in self._slots:
            current = tensors.get(name)
            if current is nodes[0].value and current.dtype is dtype:
                continue            # unchanged (model.double() converts parameters in place)
            if current is None or current.dtype != dtype or current.shape != shape:
                now = ("removed" if current is None else
                       f"now {tuple(current.shape)} {current.dtype}")
                raise InputError(
                    f"the model's {target!r} changed after lirpac.compile (compiled with "
                    f"{tuple(shape)} {dtype}, {now}); call lirpac.compile(model, x) again "
                    "after converting the model")
            for node in nodes:
                node.value = current
