"""A module conversion that replaces the model's tensors after compile is read, or refused with
a clear error: never bounds of the old tensors (lirpac/live_tensors.py)."""
import pytest
import torch
import torch.nn as nn

import lirpac
from sampling import assert_contains, sample_lp_ball


def _bn_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    model.eval()
    return model


def _same_as_fresh(model, net, x, ball):
    fresh = lirpac.compile(model, x)
    for method in ("ibp", "crown"):
        got, want = net.bounds(x, ball, method=method), fresh.bounds(x, ball, method=method)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_buffers_replaced_by_double_float_are_reread():
    model, x = _bn_mlp(), torch.randn(3, 4)
    net = lirpac.compile(model, x)
    old = model[1].running_mean
    model.double().float()                      # new buffer tensors, same values
    assert model[1].running_mean is not old
    with torch.no_grad():                       # then the new buffers change
        model[1].running_mean += 0.5
        model[1].running_var *= 2.0
    ball = lirpac.LpBall(eps=0.1)
    _same_as_fresh(model, net, x, ball)
    assert_contains(model, sample_lp_ball(x, 0.1, n=64), *net.bounds(x, ball, method="crown"))


def test_parameters_replaced_by_load_state_dict_assign_are_reread():
    model, x = _bn_mlp(), torch.randn(3, 4)
    net = lirpac.compile(model, x)
    state = {k: v.clone() + 0.3 for k, v in model.state_dict().items()
             if v.is_floating_point()}
    state["1.num_batches_tracked"] = model[1].num_batches_tracked.clone()
    model.load_state_dict(state, assign=True)
    _same_as_fresh(model, net, x, lirpac.LpBall(eps=0.05))


def test_a_dtype_or_shape_change_after_compile_asks_for_a_recompile():
    model, x = _bn_mlp(), torch.randn(3, 4)
    net = lirpac.compile(model, x)
    model.double()
    with pytest.raises(lirpac.InputError, match=r"'0\.weight'.*float64.*lirpac\.compile"):
        net.bounds(x, lirpac.LpBall(eps=0.1))
    model = _bn_mlp()
    net = lirpac.compile(model, x)
    model[3].weight = nn.Parameter(torch.randn(5, 6))
    with pytest.raises(lirpac.InputError, match=r"'3\.weight'.*\(3, 6\).*\(5, 6\).*again"):
        net.bounds(x, lirpac.LpBall(eps=0.1))
