"""auto_LiRPA's BoundedModule surface beyond compute_bounds: name lists, set_bound_opts,
get_split_nodes, save_intermediate and the intermediate bounds (each contains sampled values of
its node), needed_A_dict, Flatten, the perturbations module path, custom ops, method names, and
errors for what lirpac does not do (never a silent ignore)."""
import math

import pytest
import torch
import torch.nn as nn

import lirpac
from lirpac.compat import BoundedModule, BoundedTensor, Flatten, PerturbationLpNorm
from sampling import sample_lp_ball


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.flat = Flatten()
        self.fc1, self.fc2 = nn.Linear(8, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(self.flat(torch.relu(self.conv(x))))))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(2, 1, 4, 4)
    return model, x, BoundedModule(model, torch.zeros_like(x))


def test_names_are_lists(setup):
    _, _, bounded = setup
    assert isinstance(bounded.output_name, list) and len(bounded.output_name) == 1
    assert bounded.input_name == bounded.input_name() and len(bounded.input_name) == 1


def test_intermediate_bounds_contain_each_nodes_values(setup, tmp_path):
    model, x, bounded = setup
    bx = BoundedTensor(x, PerturbationLpNorm(eps=0.1))
    lb, ub = bounded.compute_bounds(x=(bx,), method="CROWN")
    saved = bounded.save_intermediate(tmp_path / "bounds.pt")
    assert set(torch.load(tmp_path / "bounds.pt")) == set(saved)
    assert len(saved) == 3           # conv and fc1 (pre-ReLU) and the output
    torch.testing.assert_close(saved[bounded.output_name[0]][0], lb)
    points = sample_lp_ball(x, 0.1, math.inf, 64, generator=torch.Generator().manual_seed(0))
    values = {}
    hooks = [model.conv.register_forward_hook(lambda m, i, o: values.setdefault("conv", []).append(o)),
             model.fc1.register_forward_hook(lambda m, i, o: values.setdefault("fc1", []).append(o))]
    with torch.no_grad():
        model(points.reshape(-1, 1, 4, 4))
    for h in hooks:
        h.remove()
    pre = [saved[k] for k in saved if k != bounded.output_name[0]]
    for (lower, upper), key in zip(pre, ("conv", "fc1")):
        v = values[key][0].reshape(64, 2, *lower.shape[1:])
        assert torch.all(v >= lower - 1e-5) and torch.all(v <= upper + 1e-5)
    nodes, activations = bounded.get_split_nodes()
    assert [n.name for n in nodes] == list(activations) and len(nodes) == 2


def test_needed_A_dict_gives_sound_linear_bounds_of_a_node(setup):
    _, x, bounded = setup
    bx = BoundedTensor(x, PerturbationLpNorm(eps=0.1))
    node = bounded.get_split_nodes()[0][1].name
    lb, ub, A = bounded.compute_bounds(x=(bx,), method="CROWN", return_A=True,
                                       needed_A_dict={node: [bounded.input_name[0]],
                                                      bounded.output_name[0]: {bounded.input_name[0]}})
    entry = A[node][bounded.input_name[0]]
    assert entry["lA"].shape[:2] == (2, 5)
    with pytest.raises(lirpac.InputError, match="return_A"):
        bounded.compute_bounds(x=(bx,), method="CROWN", needed_A_dict={node: []})


def test_set_bound_opts_and_refusals(setup):
    model, x, _ = setup
    bounded = BoundedModule(model, x, bound_opts={"sparse_intermediate_bounds": False})
    bounded.set_bound_opts({"conv_mode": "matrix", "optimize_bound_args": {"iteration": 2}})
    assert bounded.net.conv_mode == "matrix" and bounded._alpha_options["iterations"] == 2
    with pytest.raises(lirpac.InputError, match="activation_bound_option"):
        BoundedModule(model, x, bound_opts={"activation_bound_option": "steepest"})
    with pytest.raises(lirpac.InputError, match="bound_every_node"):
        bounded.set_bound_opts({"bound_every_node": True})
    with pytest.raises(lirpac.InputError, match="unknown arguments"):
        BoundedModule(model, x, colour="blue")
    with pytest.warns(UserWarning, match="Bound classes"):
        BoundedModule(model, x, custom_ops={"custom::Plus": object})
    bx = BoundedTensor(x, PerturbationLpNorm(eps=0.1))
    with pytest.raises(lirpac.InputError, match="forward-optimized"):
        bounded.compute_bounds(x=(bx,), method="forward-optimized")
    lb, ub = bounded.compute_bounds(x=(bx,), method="dynamic-forward")
    ref = lirpac.compile(model, x).bounds(x, lirpac.LpBall(eps=0.1), method="forward")
    torch.testing.assert_close(lb, ref[0])


def test_perturbations_module_path_and_register_custom_op():
    from lirpac.compat.perturbations import PerturbationLpNorm as P
    from lirpac.compat.utils import Flatten as F
    from lirpac.compat import register_custom_op
    assert P is PerturbationLpNorm and F is Flatten
    from lirpac.compat.operators import Bound
    with pytest.warns(UserWarning, match="Bound classes"):
        assert register_custom_op("custom::Plus", type("BoundPlus", (Bound,), {})) is None
    op = register_custom_op("custom::Twice", forward=lambda x: 2 * x,
                            relax=lambda l, u: (2 + 0 * l, 0 * l, 2 + 0 * l, 0 * l))
    try:
        assert op.name == "custom__Twice"
        lirpac.testing.check_op("custom__Twice", kinds=("unit",))
    finally:
        lirpac.unregister_op("custom__Twice")


class _PlusConstantOp(torch.autograd.Function):
    """auto_LiRPA's custom-op example: an autograd.Function with an ONNX symbolic."""

    @staticmethod
    def symbolic(g, x, const):
        return g.op("custom::PlusConstant", x, const_i=const)

    @staticmethod
    def forward(ctx, x, const):
        return x + const


def test_the_references_custom_op_example_runs_with_its_bound_class_unused():
    from lirpac.compat import register_custom_op
    from lirpac.compat.operators import Bound

    class BoundPlusConstant(Bound):
        pass
    with pytest.warns(UserWarning, match="not run auto_LiRPA's Bound classes"):
        register_custom_op("custom::PlusConstant", BoundPlusConstant)

    class PlusConstant(nn.Module):
        def forward(self, x):
            return _PlusConstantOp.apply(x, 1)
    model = nn.Sequential(Flatten(), nn.Linear(16, 8), PlusConstant(), nn.Linear(8, 3)).eval()
    x = torch.rand(1, 1, 4, 4)
    bounded = BoundedModule(model, torch.empty_like(x))
    bx = BoundedTensor(x, PerturbationLpNorm(eps=0.1))
    lb, ub = bounded.compute_bounds(x=(bx,), method="backward")
    points = sample_lp_ball(x, 0.1, math.inf, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(points.reshape(-1, 1, 4, 4)).reshape(32, 1, 3)
    assert torch.all(out >= lb - 1e-5) and torch.all(out <= ub + 1e-5)
