"""The public custom-op API: a torch.library op registered with lirpac.register_op lowers,
bounds soundly in every method (alpha-CROWN too), reaches ONNX nodes of a custom domain, and
lirpac.testing.check_op passes sound rules and catches unsound ones."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import lirpac
import lirpac.testing
from lirpac.errors import InputError


@torch.library.custom_op("lirpac_test::cube_root", mutates_args=())
def cube_root(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * x.abs().pow(1 / 3)


@cube_root.register_fake
def _(x):
    return torch.empty_like(x)


def cube_root_lines(lower, upper):
    """Increasing: below, the flat line at f(l); above, the flat line at f(u)."""
    zero = torch.zeros_like(lower)
    return zero, cube_root(lower), zero, cube_root(upper)


@pytest.fixture
def registered():
    op = lirpac.register_op("cube_root_test", cube_root, relax=cube_root_lines,
                            torch_op=torch.ops.lirpac_test.cube_root, alpha="blend",
                            onnx_op=("lirpac.test", "CubeRoot"), doc="sign(x) |x|^(1/3)")
    yield op
    lirpac.unregister_op("cube_root_test")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(torch.ops.lirpac_test.cube_root(self.fc1(x)))


def test_registered_op_bounds_soundly_in_every_method(registered):
    torch.manual_seed(0)
    lirpac.testing.check_op("cube_root_test", shape=(5,))
    lirpac.testing.check_model(Net().eval(), torch.randn(2, 3), eps=0.2,
                               methods=("ibp", "crown", "forward", "alpha-crown"))


def test_unsound_rules_are_caught():
    lirpac.register_op("bad_square", lambda x: x * x, relax=lambda l, u: (
        torch.zeros_like(l), torch.zeros_like(l), torch.zeros_like(l), u * u),
        ibp=lambda x: lirpac.ir.opdef.Interval(x.lower * 0, x.upper * x.upper))
    try:
        with pytest.raises(AssertionError, match="bad_square"):
            lirpac.testing.check_op("bad_square")
    finally:
        lirpac.unregister_op("bad_square")


def test_general_rules_and_errors():
    from lirpac.ir.opdef import Interval

    def double_backward(lA, uA, x):
        return [(None if lA is None else 2 * lA, None if uA is None else 2 * uA)], 0, 0
    lirpac.register_op("double_it", lambda x: 2 * x, nonlinear=False,
                       ibp=lambda x: Interval(2 * x.lower, 2 * x.upper), backward=double_backward)
    try:
        lirpac.testing.check_op("double_it", shape=(2, 3))
        with pytest.raises(InputError, match="exists already"):
            lirpac.register_op("double_it", lambda x: x, ibp=lambda x: x)
        lirpac.register_op("double_it", lambda x: 2 * x, replace=True,
                           ibp=lambda x: Interval(2 * x.lower, 2 * x.upper))
    finally:
        lirpac.unregister_op("double_it")
    with pytest.raises(InputError, match="built-in"):
        lirpac.register_op("relu", torch.relu, relax=lambda l, u: (l, l, u, u))
    with pytest.raises(InputError, match="no bound rule"):
        lirpac.register_op("no_rules", torch.relu)


def test_onnx_custom_domain_node(registered):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    from lirpac.ir.onnx_frontend import lower_onnx
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("CubeRoot", ["h"], ["y"], domain="lirpac.test")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                              [numpy_helper.from_array(np.ones((3, 2), np.float32), "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid("lirpac.test", 1)])
    with pytest.warns(UserWarning, match="CubeRoot"):
        net = lirpac.compile(proto)
    assert any(n.op == "cube_root_test" for n in net.graph.nodes)
    x = torch.randn(2, 3)
    lower, upper = net.bounds(x, lirpac.LpBall(eps=0.1), method="crown")
    y = cube_root(x @ torch.ones(3, 2))
    assert torch.all(lower <= y + 1e-6) and torch.all(y <= upper + 1e-6)


def test_check_op_on_built_in_ops():
    for name in ("hardswish", "relu", "sigmoid"):
        lirpac.testing.check_op(name, kinds=("unit", "straddle"))
    lirpac.testing.check_op("prelu", consts=(torch.tensor([0.3]),), kinds=("straddle",))
