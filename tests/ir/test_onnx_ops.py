"""One ONNX model per operator (activations, MaxPool, Gather, Split), built with onnx.helper at
several opsets: each lowers onto the IR op the torch frontend uses and the IR's forward agrees
with onnxruntime; the lowered model is bounded soundly."""
import math

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import lirpac  # noqa: E402
from lirpac.errors import UnsupportedOperationError  # noqa: E402
from lirpac.ir.interpret import evaluate  # noqa: E402
from lirpac.ir.onnx_frontend import lower_onnx  # noqa: E402
from sampling import assert_contains, sample_lp_ball  # noqa: E402

F32 = TensorProto.FLOAT
IMAGE = [1, 2, 4, 4]


def model(nodes, in_shape, out_shape, inits=(), opset=13):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F32, in_shape)],
                              [helper.make_tensor_value_info("y", F32, out_shape)], list(inits))
    ir_version = 10 if opset >= 21 else 8 if opset >= 15 else 7
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=ir_version)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def unary(op, opset=13, inits=(), extra=(), **attrs):
    return model([helper.make_node(op, ["x", *extra], ["y"], **attrs)], IMAGE, IMAGE, inits, opset)


F = np.float32
CASES = {
    "LeakyRelu": unary("LeakyRelu", alpha=0.2), "Elu": unary("Elu", alpha=0.7),
    "Selu": unary("Selu"), "Celu": unary("Celu", 13, alpha=0.5),
    "HardSigmoid": unary("HardSigmoid"), "HardSigmoid_torch": unary("HardSigmoid", alpha=1 / 6),
    "HardSwish": unary("HardSwish", 14), "Mish": unary("Mish", 18), "Softplus": unary("Softplus"),
    "Gelu": unary("Gelu", 20), "Gelu_tanh": unary("Gelu", 20, approximate="tanh"),
    "Abs": unary("Abs"), "Exp": unary("Exp"), "Sin": unary("Sin"), "Cos": unary("Cos"),
    "Erf": unary("Erf"), "Atan": unary("Atan"), "Sign": unary("Sign"), "Floor": unary("Floor"),
    "Round": unary("Round", 11),
    "PRelu_shared": unary("PRelu", extra=["s"], inits=[init("s", F([0.25]))]),
    "PRelu_channel": unary("PRelu", extra=["s"], inits=[init("s", F([[[0.1]], [[-0.3]]]))]),
    "Clip_8": unary("Clip", 8, min=-0.5, max=0.7),
    "Clip_13": unary("Clip", 13, extra=["lo", "hi"], inits=[init("lo", F(-0.5)), init("hi", F(0.7))]),
    "Pow": unary("Pow", extra=["e"], inits=[init("e", F(2.0))]),
    "Softmax": unary("Softmax", axis=1), "LogSoftmax": unary("LogSoftmax"),
    "Softmax_11_flat": unary("Softmax", 11, axis=1), "LogSoftmax_11": unary("LogSoftmax", 11, axis=3),
    "MaxPool": model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2],
                                       strides=[2, 2])], IMAGE, [1, 2, 2, 2]),
    "MaxPool_pad_8": model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3],
                                             pads=[1, 1, 1, 1])], IMAGE, IMAGE, opset=8),
    "Gather_scalar": model([helper.make_node("Gather", ["x", "i"], ["y"], axis=1)], IMAGE,
                           [1, 4, 4], [init("i", np.int64(1))]),
    "Gather_list": model([helper.make_node("Gather", ["x", "i"], ["y"], axis=3)], IMAGE,
                         [1, 2, 4, 3], [init("i", np.array([3, 0, -1], dtype=np.int64))]),
    "Split_11": model([helper.make_node("Split", ["x"], ["a", "b"], axis=2, split=[1, 3]),
                       helper.make_node("Sub", ["b", "a"], ["y"])], IMAGE, [1, 2, 3, 4], opset=11),
    "Split_13": model([helper.make_node("Split", ["x", "s"], ["a", "b"], axis=1),
                       helper.make_node("Mul", ["a", "b"], ["y"])], IMAGE, [1, 1, 4, 4],
                      [init("s", np.array([1, 1], dtype=np.int64))]),
    "Split_18": model([helper.make_node("Split", ["x"], ["a", "b"], axis=-1, num_outputs=2),
                       helper.make_node("Add", ["a", "b"], ["y"])], IMAGE, [1, 2, 4, 2], opset=18),
    "MatMul_scores": model([helper.make_node("Transpose", ["x"], ["t"], perm=[0, 1, 3, 2]),
                            helper.make_node("Mul", ["x", "w"], ["q"]),
                            helper.make_node("MatMul", ["q", "t"], ["y"])], IMAGE, IMAGE,
                           [init("w", F(np.linspace(-1, 1, 4)))]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_onnx_op_matches_onnxruntime(name):
    graph, runner = lower_onnx(CASES[name])
    x = torch.randn(3, *graph.perturbed_input.shape) * 2
    torch.testing.assert_close(evaluate(graph, x), runner(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["HardSwish", "PRelu_channel", "MaxPool", "Gather_list",
                                  "Split_13", "Mish", "Softmax_11_flat", "MatMul_scores"])
def test_onnx_op_bounds_contain_samples(name):
    net = lirpac.compile(CASES[name])
    graph, runner = lower_onnx(CASES[name])
    x = torch.randn(2, *graph.perturbed_input.shape)
    points = sample_lp_ball(x, 0.1, math.inf, 32, generator=torch.Generator().manual_seed(0))
    for method in ["ibp", "crown"]:
        lower, upper = net.bounds(x, lirpac.LpBall(eps=0.1), method=method)
        assert_contains(lambda p: runner(p), points, lower.reshape(2, -1), upper.reshape(2, -1))


def test_prelu_slope_along_another_dim_is_refused():
    proto = unary("PRelu", extra=["s"], inits=[init("s", F(np.ones((4, 1)) * 0.2))])
    with pytest.raises(UnsupportedOperationError, match="PRelu"):
        lower_onnx(proto)
