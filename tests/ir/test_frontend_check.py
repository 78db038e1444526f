"""The torch frontend checks its IR against the model on the example input (as the ONNX frontend
does against onnxruntime): an op lowered with other semantics than the model's is refused at
compile time instead of giving bounds of another function."""
import pytest
import torch
import torch.nn as nn

import lirpac
from lirpac.errors import UnsupportedOperationError


@torch.library.custom_op("lirpac_test::triple", mutates_args=())
def triple(x: torch.Tensor) -> torch.Tensor:
    return 3 * x


@triple.register_fake
def _(x):
    return torch.empty_like(x)


class Triples(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return torch.ops.lirpac_test.triple(self.fc(x))


def test_an_op_lowered_with_other_semantics_is_refused():
    lirpac.register_op("twice_not_thrice", lambda x: 2 * x, nonlinear=False,
                       ibp=lambda x: x.__class__(2 * x.lower, 2 * x.upper),
                       torch_op=torch.ops.lirpac_test.triple)
    try:
        with pytest.raises(UnsupportedOperationError, match="disagrees with the model"):
            lirpac.compile(Triples().eval(), torch.randn(2, 3))
    finally:
        lirpac.unregister_op("twice_not_thrice")


def test_the_example_input_is_left_alone():
    """The check runs the model on a copy: a model that writes into its input does not change
    the caller's example."""
    class ScaleInput(nn.Module):
        def forward(self, x):
            x.mul_(3.0)
            return torch.relu(x)
    x = torch.randn(2, 3)
    given = x.clone()
    lirpac.compile(ScaleInput().eval(), x)
    assert torch.equal(x, given)
