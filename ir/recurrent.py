"""Unroll nn.LSTM / nn.GRU / nn.RNN before export, so the exported graph is made of ops lirpac bounds.

torch.export keeps an RNN as one ``aten.lstm.input`` / ``aten.gru.input`` (``rnn_tanh``, ``rnn_relu``) node whose initial
state is a zeros tensor of the batch size, and ``run_decompositions()`` lowers it time-major
(the batch moved to dim 1): neither keeps dim 0 as the batch. Instead each RNN module of a
copy of the model is replaced by the same cell equations written step by step (linear,
sigmoid, tanh, products), batch first, on the same Parameter objects, so bounds stay
differentiable in them and the lowered parameter names are unchanged. The zero initial state
is folded away (its products vanish), so nothing reads the batch size.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from lirpac.errors import UnsupportedOperationError


class _Unrolled(nn.Module):
    """The RNN ``rnn`` (batch_first, unidirectional) unrolled over its input's time steps."""

    def __init__(self, rnn: nn.RNNBase):
        super().__init__()
        for name, param in rnn.named_parameters(recurse=False):
            self.register_parameter(name, param)
        self.mode, self.num_layers, self.bias = rnn.mode, rnn.num_layers, rnn.bias

    def weights(self, layer: int):
        get = lambda kind: getattr(self, f"{kind}_l{layer}", None)  # noqa: E731
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")

    def forward(self, x, hx=None):
        if hx is not None:
            raise UnsupportedOperationError(
                f"{self.mode} with a given initial state: lirpac unrolls RNNs from a zero state; "
                "call it without hx")
        finals = []
        for layer in range(self.num_layers):
            step = _STEPS[self.mode]
            state, outputs = None, []
            for t in range(x.shape[1]):
                state = step(x[:, t], state, *self.weights(layer))
                outputs.append(state[0] if self.mode == "LSTM" else state)
            finals.append(state)
            x = torch.stack(outputs, 1)
        if self.mode == "LSTM":
            return x, (torch.stack([s[0] for s in finals]), torch.stack([s[1] for s in finals]))
        return x, torch.stack(finals)


def _gates(x, h, w_ih, w_hh, b_ih, b_hh):
    """x W_ih^T + b_ih + h W_hh^T + b_hh, where h = None is the zero state."""
    out = F.linear(x, w_ih, b_ih)
    if h is not None:
        return out + F.linear(h, w_hh, b_hh)
    return out if b_hh is None else out + b_hh


def _lstm_step(x, state, w_ih, w_hh, b_ih, b_hh):
    h, c = state if state is not None else (None, None)
    i, f, g, o = _gates(x, h, w_ih, w_hh, b_ih, b_hh).chunk(4, -1)
    c_new = torch.sigmoid(i) * torch.tanh(g)
    if c is not None:
        c_new = torch.sigmoid(f) * c + c_new
    return torch.sigmoid(o) * torch.tanh(c_new), c_new


def _gru_step(x, h, w_ih, w_hh, b_ih, b_hh):
    x_r, x_z, x_n = F.linear(x, w_ih, b_ih).chunk(3, -1)
    if h is None:
        size = w_hh.shape[1]    # slices, not chunk: a multi-output op on constants has no node
        h_r, h_z, h_n = ((b_hh[:size], b_hh[size:2 * size], b_hh[2 * size:]) if b_hh is not None
                         else (0, 0, 0))
    else:
        h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, -1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return n - z * n if h is None else n + z * (h - n)


def _elman_step(activation):
    """nn.RNN's cell: h' = activation(x W_ih^T + b_ih + h W_hh^T + b_hh)."""
    def step(x, h, w_ih, w_hh, b_ih, b_hh):
        return activation(_gates(x, h, w_ih, w_hh, b_ih, b_hh))
    return step


_STEPS = {"LSTM": _lstm_step, "GRU": _gru_step, "RNN_TANH": _elman_step(torch.tanh),
          "RNN_RELU": _elman_step(torch.relu)}


def unroll_recurrent(module: nn.Module) -> nn.Module:
    """``module`` itself when it has no LSTM/GRU/RNN, else a copy (sharing every parameter and
    buffer) with each one replaced by its unrolled form."""
    rnns = [(name, m) for name, m in module.named_modules() if isinstance(m, nn.RNNBase)]
    if not rnns:
        return module
    for name, rnn in rnns:
        if not rnn.batch_first or rnn.bidirectional or getattr(rnn, "proj_size", 0):
            raise UnsupportedOperationError(
                f"{type(rnn).__name__} '{name}': lirpac bounds batch_first, unidirectional "
                "RNNs without projections (dim 0 must stay the batch); use batch_first=True")
    shared = {id(t): t for t in list(module.parameters()) + list(module.buffers())}
    copied = copy.deepcopy(module, shared)
    for name, rnn in rnns:
        unrolled = _Unrolled(rnn)
        if not name:
            return unrolled
        parent_name, _, child = name.rpartition(".")
        setattr(copied.get_submodule(parent_name), child, unrolled)
    return copied
