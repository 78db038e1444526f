"""Unrolled nn.LSTM / nn.GRU / nn.RNN (ir/recurrent.py) equal the torch modules, share their parameters,
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


ELMAN_TANH = lambda *a, **k: nn.RNN(*a, **k)                               # noqa: E731
ELMAN_RELU = lambda *a, **k: nn.RNN(*a, nonlinearity="relu", **k)          # noqa: E731


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, ELMAN_TANH, ELMAN_RELU])
@pytest.mark.parametrize("layers,bias", [(1, True), (2, True), (2, False)])
def test_unrolled_equals_module(cell, layers, bias):
    torch.manual_seed(0)
    model = Wrapped(cell(3, 5, layers, bias=bias, batch_first=True)).eval()
    kind = type(model.rnn)
    unrolled = unroll_recurrent(model)
    assert unrolled is not model and isinstance(model.rnn, kind)
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


class LastStep(nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn, self.fc = rnn, nn.Linear(rnn.hidden_size, 2)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][:, -1])


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_elman_rnn_bounds_contain_outputs(nonlinearity):
    """nn.RNN (no initial state) failed to lower ('aten.zeros.default' on constants reads the
    batch size): it is unrolled like LSTM and GRU, and every method bounds it soundly."""
    from sampling import assert_contains, sample_lp_ball
    torch.manual_seed(0)
    model = LastStep(nn.RNN(3, 4, 2, nonlinearity=nonlinearity, batch_first=True)).double().eval()
    x = torch.randn(2, 3, 3, dtype=torch.float64)
    net = lirpac.compile(model, x)
    points = sample_lp_ball(x, 0.2, float("inf"), 64, generator=torch.Generator().manual_seed(0))
    for method in ("ibp", "crown", "forward", "crown-ibp"):
        lower, upper = net.bounds(x, lirpac.LpBall(eps=0.2), method=method)
        assert_contains(model, points, lower, upper, what=method)
