"""Unrolled nn.LSTM / nn.GRU (ir/recurrent.py) equal the torch modules, share their parameters,
leave the user's model alone, and refuse the layouts lirpac cannot keep batch-first."""
import pytest
import torch
import torch.nn as nn

import lirpac
from lirpac.errors import UnsupportedOperationError
from lirpac.ir.recurrent import unroll_recurrent


class Wrapped(nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("layers,bias", [(1, True), (2, True), (2, False)])
def test_unrolled_equals_module(cell, layers, bias):
    torch.manual_seed(0)
    model = Wrapped(cell(3, 5, layers, bias=bias, batch_first=True)).eval()
    unrolled = unroll_recurrent(model)
    assert unrolled is not model and isinstance(model.rnn, cell)
    x = torch.randn(2, 4, 3)
    expected, got = model(x), unrolled(x)
    assert torch.allclose(got[0], expected[0], atol=1e-6)
    for e, g in zip(expected[1] if cell is nn.LSTM else [expected[1]],
                    got[1] if cell is nn.LSTM else [got[1]]):
        assert torch.allclose(g, e, atol=1e-6)
    assert {id(p) for p in unrolled.parameters()} == {id(p) for p in model.parameters()}


def test_module_without_rnn_is_returned_as_is():
    model = nn.Linear(2, 2)
    assert unroll_recurrent(model) is model


@pytest.mark.parametrize("rnn", [nn.LSTM(3, 4), nn.GRU(3, 4, batch_first=True, bidirectional=True)])
def test_unsupported_layouts_name_the_module(rnn):
    with pytest.raises(UnsupportedOperationError, match="'rnn'.*batch_first"):
        unroll_recurrent(Wrapped(rnn))


def test_bounds_are_differentiable_in_rnn_weights():
    model = nn.Sequential(nn.GRU(2, 3, batch_first=True))

    class Last(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = model[0]

        def forward(self, x):
            return self.gru(x)[0][:, -1]
    net = lirpac.compile(Last().eval(), torch.zeros(1, 2, 2))
    lower, _ = net.bounds(torch.randn(1, 2, 2), lirpac.LpBall(eps=0.05), method="ibp")
    lower.sum().backward()
    assert model[0].weight_ih_l0.grad is not None
