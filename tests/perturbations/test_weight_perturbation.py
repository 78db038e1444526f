"""Weight perturbation: Lp balls on chosen nn.Linear parameters (and on the input at once);
conv and batch norm parameters in test_weight_perturbation_layers.py.
Exact for one layer with a fixed input (max over ||dW||_p <= eps of dW_i . x is eps ||x||_q),
sound by sampling weights and inputs together, and compat's BoundedParameter."""
import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

import lirpac

METHODS = ["ibp", "crown", "crown-ibp", "forward"]


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).eval()


_NETS = {}


def compiled(names):
    key = tuple(names)
    if key not in _NETS:
        model = mlp()
        wm = lirpac.PerturbedParameters(model, names)
        _NETS[key] = (model, wm, lirpac.compile(wm, wm.inputs(torch.zeros(1, 4))))
    return _NETS[key]


@pytest.mark.parametrize("p,method", [(2.0, "crown"), (math.inf, "crown"), (1.0, "crown"),
                                      (2.0, "forward"), (3.0, "crown-ibp"), (math.inf, "ibp")])
def test_one_layer_with_a_fixed_input_is_exact(p, method):
    torch.manual_seed(2)
    layer = nn.Linear(4, 3).eval()
    wm = lirpac.PerturbedParameters(nn.Sequential(layer).eval(), ["0.weight"])
    x = torch.randn(2, 4)
    net = lirpac.compile(wm, wm.inputs(x[:1]))
    lower, upper = net.bounds(wm.inputs(x), (None, lirpac.LpBall(eps=0.2, norm=p)), method=method)
    centre = layer(x)
    q = {2.0: 2.0, math.inf: 1.0, 1.0: math.inf, 3.0: 1.5}[p]
    radius = 0.2 * torch.linalg.vector_norm(x, ord=q, dim=1, keepdim=True)
    torch.testing.assert_close(lower, centre - radius, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(upper, centre + radius, rtol=1e-5, atol=1e-5)


def _sample_ball(centre, eps, p, n, g):
    """(n, *centre.shape): points of the Lp ball on each sample's whole tensor."""
    d = torch.randn((n, *centre.shape), generator=g)
    if p == math.inf:
        d = d.sign()
    else:
        flat = d.flatten(2)
        d = (flat / torch.linalg.vector_norm(flat, ord=p, dim=-1, keepdim=True)).reshape(d.shape)
    scale = torch.rand((n,) + (1,) * centre.dim(), generator=g).clamp(min=0.5)
    return centre + eps * d * scale


@settings(max_examples=5, deadline=None)
@given(method=st.sampled_from(METHODS), which=st.sampled_from([("0.weight",), ("2.weight", "4.bias"),
                                                               ("0.weight", "0.bias", "4.weight")]),
       p=st.sampled_from([2.0, math.inf, 1.0]), eps=st.floats(0.01, 0.3), input_moves=st.booleans(),
       seed=st.integers(0, 10**6))
def test_sound_by_sampling_weights_and_inputs(method, which, p, eps, input_moves, seed):
    model, wm, net = compiled(which)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 4, generator=g)
    sets = (lirpac.LpBall(eps=0.1) if input_moves else None,
            *[lirpac.LpBall(eps=eps, norm=p) for _ in which])
    inputs = wm.inputs(x)
    lower, upper = net.bounds(inputs, sets, method=method)
    n = 48
    xs = _sample_ball(x, 0.1, math.inf, n, g) if input_moves else x.expand(n, *x.shape)
    params = [_sample_ball(v, eps, p, n, g) for v in inputs[1:]]
    with torch.no_grad():
        out = torch.stack([wm(xs[i], *[v[i] for v in params]) for i in range(n)])
    assert (out >= lower - 1e-5).all() and (out <= upper + 1e-5).all()


def test_crown_ibp_training_step_has_gradients():
    """Certified training under weight perturbation: the CROWN-IBP bound is differentiable in
    the (live) parameters."""
    model, wm, net = compiled(("2.weight",))
    x = torch.rand(3, 4)
    lower, upper = net.bounds(wm.inputs(x), (None, lirpac.LpBall(eps=0.05, norm=2)), method="crown-ibp")
    (upper - lower).sum().backward()
    assert model[2].weight.grad is not None and model[0].weight.grad is not None
    model.zero_grad()


def test_bad_names_are_refused():
    with pytest.raises(lirpac.InputError, match="no parameter 'fc.weight'"):
        lirpac.PerturbedParameters(mlp(), ["fc.weight"])
    with pytest.raises(lirpac.InputError, match="named twice"):
        lirpac.PerturbedParameters(mlp(), ["0.weight", "0.weight"])
    embedding = nn.Sequential(nn.Embedding(3, 2))
    with pytest.raises(lirpac.InputError, match="0.weight is used by embedding.*nn.Linear"):
        lirpac.PerturbedParameters(embedding, ["0.weight"])


def test_compat_bounded_parameter():
    from lirpac.compat import BoundedModule, BoundedParameter, BoundedTensor, PerturbationLpNorm
    model = mlp()
    wm = lirpac.PerturbedParameters(model, ["2.weight"])
    expected_net = lirpac.compile(wm, wm.inputs(torch.zeros(1, 4)))
    x = torch.rand(2, 4)
    expected = expected_net.bounds(wm.inputs(x), (lirpac.LpBall(eps=0.05), lirpac.LpBall(eps=0.1, norm=2)))
    model[2].weight = BoundedParameter(model[2].weight.data, PerturbationLpNorm(norm=2, eps=0.1))
    bounded = BoundedModule(model, torch.zeros(1, 4))
    lower, upper = bounded.compute_bounds(x=(BoundedTensor(x, PerturbationLpNorm(eps=0.05)),), method="backward")
    torch.testing.assert_close(lower, expected[0])
    torch.testing.assert_close(upper, expected[1])
    only_weights = bounded.compute_bounds(x=(x,), method="IBP")
    assert torch.isfinite(only_weights[0]).all()


@pytest.mark.slow
def test_weight_training_example_runs():
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "examples/weight_perturbation_training.py", "--epochs", "1"],
                            cwd=root, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "certified under L2 weight perturbation" in result.stdout


@pytest.mark.slow
def test_weight_training_example_runs_a_cnn():
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "examples/weight_perturbation_training.py", "--model", "cnn",
                             "--epochs", "1"], cwd=root, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "certified under L2 weight perturbation eps=0.05 of 2.weight (crown)" in result.stdout


def test_a_first_layer_weight_costs_no_pass_per_coordinate(monkeypatch):
    """The weight cut from the joint input is coordinates of the input: the set's box bounds it
    exactly, so CROWN runs no backward pass per weight entry (a 784-input first layer took
    gigabytes that way) and the bounds are those of the passes it used to run."""
    from lirpac.codegen import torch_backend
    from lirpac.passes import bound_needs
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(30, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    wm = lirpac.PerturbedParameters(model, ["1.weight"])
    x = torch.rand(2, 30)
    ball = lirpac.LpBall(eps=0.05, norm=2.0)
    net = lirpac.compile(wm, wm.inputs(x[:1]))
    assert "crown=ibp (exact, coordinates of the input)" in net.dump()
    lower, upper = net.bounds(wm.inputs(x), (None, ball), method="crown")
    for module in (bound_needs, torch_backend):
        monkeypatch.setattr(module, "selection_of_input", lambda graph, target: False)
    per_coordinate = lirpac.compile(wm, wm.inputs(x[:1]))
    assert "crown=ibp (exact, coordinates of the input)" not in per_coordinate.dump()
    old_lower, old_upper = per_coordinate.bounds(wm.inputs(x), (None, ball), method="crown")
    torch.testing.assert_close(lower, old_lower, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(upper, old_upper, rtol=1e-6, atol=1e-6)
