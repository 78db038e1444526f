"""A model onnxruntime cannot load or run gives a ModelFormatError that names the model (its path),
its opset and what to do, never onnxruntime's own exception."""
import re
import warnings

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import lirpac  # noqa: E402
from lirpac.errors import ModelFormatError  # noqa: E402


def relu_model(opset: int, nodes=None, inits=()):
    """x (batch, 3) -> y (batch, 3), a Relu unless other nodes are given."""
    graph = helper.make_graph(nodes or [helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
                              list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def uint64_negation():
    """y = x + float(-w) with w a uint64 constant: Neg has no uint64 type in ONNX, so
    onnxruntime rejects the graph (lirpac itself would fold the constant)."""
    w = numpy_helper.from_array(np.array([1, 2, 3], dtype=np.uint64), "w")
    nodes = [helper.make_node("Neg", ["w"], ["negated"]),
             helper.make_node("Cast", ["negated"], ["shift"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["x", "shift"], ["y"])]
    return relu_model(13, nodes, [w])


def compile_quietly(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")    # the opset range warning
        return lirpac.compile(model)


@pytest.mark.parametrize("build, opset, detail", [
    (lambda: relu_model(30), 30, "Opset 30"),
    (uint64_negation, 13, r"tensor\(uint64\)")])
@pytest.mark.parametrize("as_path", [True, False])
def test_model_onnxruntime_cannot_load(tmp_path, build, opset, detail, as_path):
    proto = build()
    path = tmp_path / "model.onnx"
    onnx.save(proto, path)
    origin = repr(str(path)) if as_path else "the ONNX model"
    with pytest.raises(ModelFormatError) as info:
        compile_quietly(str(path) if as_path else proto)
    message = str(info.value)
    assert message.startswith("onnxruntime ")
    assert f"cannot load {origin} (ONNX opset {opset})" in message
    assert "/onnxruntime_src/" not in message
    assert "opset_version=17" in message
    assert re.search(detail, message)
    assert type(info.value.__cause__).__module__.startswith("onnxruntime")


def test_model_onnxruntime_cannot_run(tmp_path):
    """A run-time failure (here a batch whose sample shape the model does not have) is wrapped
    the same way."""
    path = tmp_path / "relu.onnx"
    onnx.save(relu_model(13), path)
    net = compile_quietly(str(path))
    assert torch.equal(net(torch.tensor([[-1.0, 0.0, 2.0]])), torch.tensor([[0.0, 0.0, 2.0]]))
    net.module.input_shape = (4,)     # as if the IR disagreed with the file
    with pytest.raises(ModelFormatError, match=rf"cannot run a batch of shape \(1, 4\) through "
                                               rf"{repr(str(path))}"):
        net(torch.zeros(1, 4))
