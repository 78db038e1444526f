"""RNN cells looped by hand (nn.LSTMCell, nn.GRUCell, nn.RNNCell) from a state made with
``torch.zeros(batch_size, ...)`` / ``x.new_zeros(x.size(0), ...)``: the cells decompose batch
first, the batch-size constants become constants that broadcast over the batch, and every
method's bounds contain sampled outputs."""
import math

import pytest
import torch
import torch.nn as nn

import lirpac
from lirpac.errors import UnsupportedOperationError
from sampling import assert_contains, sample_lp_ball


class CellLoop(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.cell = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}[kind](3, 4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):                      # x: (B, T, 3)
        h = torch.zeros(x.shape[0], 4)
        c = x.new_zeros(x.size(0), 4)
        for t in range(x.shape[1]):
            if self.kind == "lstm":
                h, c = self.cell(x[:, t], (h, c))
            else:
                h = self.cell(x[:, t], h)
        return self.fc(h)


@pytest.mark.parametrize("kind", ["lstm", pytest.param("gru", marks=pytest.mark.slow), "rnn"])
def test_cell_loops_bound_soundly(kind):
    torch.manual_seed(0)
    model = CellLoop(kind).eval()
    x = torch.randn(2, 3, 3)
    net = lirpac.compile(model, x)
    points = sample_lp_ball(x, 0.1, math.inf, 64, generator=torch.Generator().manual_seed(0))
    for method in ["ibp", "crown", "forward", "crown-ibp"]:
        lower, upper = net.bounds(x, lirpac.LpBall(eps=0.1), method=method)
        assert_contains(model, points, lower, upper)


class Filled(nn.Module):
    def forward(self, x):
        ones = torch.ones(x.shape[0], 3)
        half = torch.full((x.size(0), 3), 0.5)
        return torch.relu(x) * ones + half + x.new_ones(x.shape[0], 3).exp()


def test_batch_size_constants_are_exact():
    x = torch.randn(4, 3)
    net = lirpac.compile(Filled().eval(), x)
    lower, upper = net.bounds(x, lirpac.LpBall(eps=0.0), method="crown")
    assert torch.allclose(lower, Filled()(x), atol=1e-6) and torch.allclose(upper, lower, atol=1e-6)


def test_a_constant_reduced_along_the_batch_is_refused():
    class SumOverBatch(nn.Module):
        def forward(self, x):
            return x + torch.ones(x.shape[0], 3).cumsum(0)
    with pytest.raises(UnsupportedOperationError, match="batch"):
        lirpac.compile(SumOverBatch().eval(), torch.randn(2, 3))

    class TotalOverBatch(nn.Module):
        def forward(self, x):
            return x + torch.ones(x.shape[0], 3).sum()
    with pytest.raises(UnsupportedOperationError, match="reduces a constant of batch size"):
        lirpac.compile(TotalOverBatch().eval(), torch.randn(2, 3))
