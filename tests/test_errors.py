"""Bad input gives a precise lirpac error, never a deep traceback or a silent wrong bound."""
import math

import pytest
import torch
import torch.nn as nn

import lirpac
from lirpac.errors import InputError, UnsupportedOperationError


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return lirpac.compile(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval(), torch.randn(1, 4))


class Unsupported(nn.Module):
    def forward(self, x):
        return torch.linalg.qr(x.reshape(x.shape[0], 2, 2)).Q.flatten(1)


def test_unsupported_op_names_op_node_and_source():
    with pytest.raises(UnsupportedOperationError) as info:
        lirpac.compile(Unsupported().eval(), torch.randn(1, 4))
    msg = str(info.value)
    assert "unsupported op 'aten.linalg_qr.default' at node %linalg_qr (test_errors.py:" in msg
    assert "docs/ops.md" in msg


@pytest.mark.parametrize("eps", [-0.1, float("nan")])
def test_bad_eps(eps):
    with pytest.raises(InputError, match="eps"):
        lirpac.LpBall(eps=eps)


def test_bad_per_sample_eps(net):
    with pytest.raises(InputError, match="eps"):
        net.bounds(torch.randn(2, 4), lirpac.LpBall(eps=torch.tensor([0.1, -0.1])))
    with pytest.raises(InputError, match="eps"):
        net.bounds(torch.randn(2, 4), lirpac.LpBall(eps=torch.tensor([0.1, float("nan")])))
    with pytest.raises(InputError, match="broadcast"):
        net.bounds(torch.randn(2, 4), lirpac.LpBall(eps=torch.ones(3)))


def test_unbounded_input_set(net):
    """An infinite eps or box bound would give NaN bounds (inf - inf): a precise error instead;
    an infinite L-inf eps inside a finite domain box is that box."""
    x = torch.zeros(1, 4)
    low = x.clone()
    low[0, 0] = -math.inf
    for method in ("ibp", "crown"):
        with pytest.raises(InputError, match="Box: some bounds are infinite"):
            net.bounds(x, lirpac.Box(low, x + 1), method=method)
        with pytest.raises(InputError, match="eps is infinite"):
            net.bounds(x, lirpac.LpBall(eps=math.inf), method=method)
        with pytest.raises(InputError, match="finite for the L2 norm"):
            net.bounds(x, lirpac.LpBall(eps=math.inf, norm=2, lower=-1, upper=1), method=method)
        with pytest.raises(InputError, match="eps is infinite"):
            net.bounds(torch.zeros(2, 4), lirpac.LpBall(eps=torch.tensor([0.1, math.inf])), method=method)
        lower, upper = net.bounds(x, lirpac.LpBall(eps=math.inf, lower=-1, upper=1), method=method)
        box = net.bounds(x, lirpac.Box(-torch.ones(1, 4), torch.ones(1, 4)), method=method)
        assert torch.equal(lower, box[0]) and torch.equal(upper, box[1])


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_centre(net, bad):
    x = torch.zeros(2, 4)
    x[1, 2] = bad
    with pytest.raises(InputError, match=r"x contains NaN or inf \(first at index \(1, 2\)\)"):
        net.bounds(x, lirpac.LpBall(eps=0.1, norm=2))


def test_huge_finite_centre_is_accepted(net):
    """The finiteness check sums x first: a sum that overflows must not be taken for an inf."""
    x = torch.full((2, 4), 3e38)
    x[0, 0] = -math.inf
    with pytest.raises(InputError, match=r"x contains NaN or inf \(first at index \(0, 0\)\)"):
        net.bounds(x, lirpac.LpBall(eps=0.1))
    x[0, 0] = 3e38
    lower, upper = net.bounds(x, lirpac.LpBall(eps=0.0), method="ibp")
    assert lower.shape == upper.shape == (2, *net.output_shape)


@pytest.mark.parametrize("norm", [0, 3, "l3", None])
def test_bad_norm(norm):
    with pytest.raises(InputError, match="norm"):
        lirpac.LpBall(eps=0.1, norm=norm)


def test_norm_names_accepted():
    assert lirpac.LpBall(eps=0.1, norm="inf").norm == math.inf
    assert lirpac.LpBall(eps=0.1, norm="l2").norm == 2.0


def test_wrong_input_shape(net):
    with pytest.raises(InputError, match=r"input shape \(2, 5\)"):
        net.bounds(torch.randn(2, 5), lirpac.LpBall(eps=0.1))


def test_lower_above_upper(net):
    with pytest.raises(InputError, match="lower > upper"):
        net.bounds(torch.zeros(1, 4), lirpac.Box(torch.ones(1, 4), torch.zeros(1, 4)))


def test_ball_outside_domain(net):
    with pytest.raises(InputError, match="domain"):
        net.bounds(torch.full((1, 4), 5.0), lirpac.LpBall(eps=0.1, lower=0.0, upper=1.0))


def test_bad_method_and_spec(net):
    with pytest.raises(InputError, match="unknown method"):
        net.bounds(torch.randn(1, 4), lirpac.LpBall(eps=0.1), method="crwn")
    with pytest.raises(InputError, match="C must have shape"):
        net.bounds(torch.randn(1, 4), lirpac.LpBall(eps=0.1), C=torch.ones(1, 2, 3))
    with pytest.raises(InputError, match="perturbation"):
        net.bounds(torch.randn(1, 4), 0.1)
    with pytest.raises(InputError, match="floating"):
        net.bounds(torch.ones(1, 4, dtype=torch.int64), lirpac.LpBall(eps=0.1))


def test_batch_dependent_model_is_rejected():
    class MixesBatch(nn.Module):
        def forward(self, x):
            return x.reshape(-1)
    with pytest.raises(UnsupportedOperationError, match="batch"):
        lirpac.compile(MixesBatch().eval(), torch.randn(1, 4))


def test_batchnorm_in_training_mode_is_bounded_in_eval_mode_with_a_warning():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    with pytest.warns(UserWarning, match="training mode"):
        lirpac.compile(model, torch.randn(1, 4))
