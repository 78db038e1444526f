"""The ONNX frontend on small models built with onnx.helper, one per pattern real VNN-COMP
files use, each checked against onnxruntime; errors for malformed and unsupported models; and
the real benchmark models when they are present."""
import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from lirpac.errors import ModelFormatError, UnsupportedOperationError  # noqa: E402
from lirpac.ir import onnx_frontend  # noqa: E402
from lirpac.ir.interpret import evaluate  # noqa: E402
from lirpac.ir.onnx_frontend import lower_onnx  # noqa: E402
from vnncomp_data import VNNCOMP  # noqa: E402

RNG = np.random.default_rng(0)
F32, F64 = TensorProto.FLOAT, TensorProto.DOUBLE


def weight(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def model(nodes, in_shape, out_shape, inits=(), opset=13, elem=F32):
    """A one-input one-output model; the IR version is the lowest that opset allows."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, in_shape)],
                              [helper.make_tensor_value_info("y", elem, out_shape)], list(inits))
    ir_version = 10 if opset >= 21 else 8 if opset >= 15 else 7
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


def assert_matches_onnxruntime(proto, samples=5):
    """Lowering succeeds, reports a small error, and the IR agrees with onnxruntime."""
    graph, runner = lower_onnx(proto)
    assert runner.max_error is not None and runner.max_error <= 1e-4
    x = torch.randn(samples, *graph.perturbed_input.shape, dtype=graph.perturbed_input.dtype)
    ours, ref = evaluate(graph, x), runner(x)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    return graph


def mlp_nodes(n_in=4, hidden=6, n_out=3):
    """Gemm + Relu + Gemm on a (1, n_in) input, with initializers."""
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu1"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1, name="fc2")]
    inits = [init("w1", weight(hidden, n_in)), init("b1", weight(hidden)),
             init("w2", weight(n_out, hidden)), init("b2", weight(n_out))]
    return nodes, inits


@pytest.mark.parametrize("opset", [9, 11, 13, 15, 17, 19, 21])
def test_opsets(opset, recwarn):
    nodes, inits = mlp_nodes()
    assert_matches_onnxruntime(model(nodes, [1, 4], [1, 3], inits, opset=opset))
    assert not [w for w in recwarn if "opset" in str(w.message)]


def test_float64_model():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    proto = model(nodes, [1, 4], [1, 3], [init("w", weight(4, 3, dtype=np.float64)),
                                          init("b", weight(3, dtype=np.float64))], elem=F64)
    graph = assert_matches_onnxruntime(proto)
    assert graph.perturbed_input.dtype == torch.float64


def test_rank1_input_weight_first_matmul():
    """ACAS Xu style: x has shape (5,) and no batch dim; MatMul(W, x) then Add."""
    nodes = [helper.make_node("MatMul", ["w", "x"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("MatMul", ["w2", "r"], ["y"])]
    proto = model(nodes, [5], [2], [init("w", weight(7, 5)), init("b", weight(7)), init("w2", weight(2, 7))])
    graph = assert_matches_onnxruntime(proto)
    assert graph.perturbed_input.shape == (5,)
    assert [n.op for n in graph.nodes if n.perturbed] == ["input", "linear", "relu", "linear"]


def test_matmul_add_fuses_into_one_linear():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["b", "m"], ["y"])]
    graph = assert_matches_onnxruntime(model(nodes, [1, 4], [1, 3], [init("w", weight(4, 3)), init("b", weight(3))]))
    assert [n.op for n in graph.nodes if n.perturbed] == ["input", "linear"]


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm_transposes(trans_a, trans_b):
    in_shape = [4, 1] if trans_a else [1, 4]
    w = weight(3, 4) if trans_b else weight(4, 3)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transA=trans_a, transB=trans_b,
                              alpha=0.5, beta=2.0)]
    assert_matches_onnxruntime(model(nodes, in_shape, [1, 3], [init("w", w), init("b", weight(3))]))


def test_gemm_weight_first():
    nodes = [helper.make_node("Gemm", ["w", "x", "b"], ["y"], transB=1)]
    assert_matches_onnxruntime(model(nodes, [1, 4], [3, 1], [init("w", weight(3, 4)), init("b", weight(3, 1))]))


def test_nhwc_input_with_transpose_then_conv():
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], transB=1)]
    proto = model(nodes, [1, 5, 5, 2], [1, 3], [init("w", weight(4, 2, 3, 3)), init("b", weight(4)),
                                                init("w2", weight(3, 100)), init("b2", weight(3))])
    graph = assert_matches_onnxruntime(proto)
    assert graph.perturbed_input.shape == (5, 5, 2)


def test_normalisation_with_constant_nodes_sub_div():
    mean = helper.make_tensor("mean_value", F32, [1, 4], weight(1, 4).reshape(-1).tolist())
    nodes = [helper.make_node("Constant", [], ["mean"], value=mean),
             helper.make_node("Constant", [], ["std"], value_float=0.3),
             helper.make_node("Sub", ["x", "mean"], ["s"]), helper.make_node("Div", ["s", "std"], ["n"]),
             helper.make_node("Gemm", ["n", "w", "b"], ["y"], transB=1)]
    assert_matches_onnxruntime(model(nodes, [1, 4], [1, 3], [init("w", weight(3, 4)), init("b", weight(3))]))


@pytest.mark.parametrize("opset", [9, 13])
def test_noop_pad_and_sub_of_zeros_vanish(opset):
    pad = (helper.make_node("Pad", ["x"], ["p"], pads=[0, 0, 0, 0]) if opset < 11 else
           helper.make_node("Pad", ["x", "pads"], ["p"]))
    nodes = [pad, helper.make_node("Sub", ["p", "zeros"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    inits = [init("zeros", np.zeros((1, 4), np.float32))] + ([init("pads", np.zeros(4, np.int64))] if opset >= 11 else [])
    graph = assert_matches_onnxruntime(model(nodes, [1, 4], [1, 4], inits, opset=opset))
    assert [n.op for n in graph.nodes if n.perturbed] == ["input", "relu"]


@pytest.mark.parametrize("opset", [9, 13])
def test_dropout_and_identity_vanish(opset):
    nodes = [helper.make_node("Dropout", ["x"], ["d", "mask"]), helper.make_node("Identity", ["d"], ["i"]),
             helper.make_node("MatMul", ["i", "w"], ["y"])]
    graph = assert_matches_onnxruntime(model(nodes, [1, 4], [1, 3], [init("w", weight(4, 3))], opset=opset))
    assert [n.op for n in graph.nodes if n.perturbed] == ["input", "linear"]


def test_flatten_and_reshape_with_minus_one_and_zero():
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1),
             helper.make_node("Reshape", ["f", "shape1"], ["r1"]),     # (0, 3, -1)
             helper.make_node("Relu", ["r1"], ["a"]),
             helper.make_node("Reshape", ["a", "shape2"], ["r2"]),     # (1, -1)
             helper.make_node("MatMul", ["r2", "w"], ["y"])]
    inits = [init("shape1", np.array([0, 3, -1], np.int64)), init("shape2", np.array([1, -1], np.int64)),
             init("w", weight(12, 2))]
    assert_matches_onnxruntime(model(nodes, [1, 2, 6], [1, 2], inits))


def test_relu_on_logits_and_mnist_style_input():
    """mnistfc: input (1, 784, 1) flattened, ReLU on the last layer too."""
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w", "b"], ["g"], transB=1),
             helper.make_node("Relu", ["g"], ["y"])]
    graph = assert_matches_onnxruntime(model(nodes, [1, 8, 1], [1, 3], [init("w", weight(3, 8)), init("b", weight(3))],
                                             opset=9))
    assert graph.output.op == "relu"


def test_mismatch_with_onnxruntime_raises(monkeypatch):
    """A wrong lowering (Relu as identity here) must not pass the load-time check."""
    nodes, inits = mlp_nodes()
    monkeypatch.setitem(onnx_frontend._CONVERTERS, "Relu", lambda lw, node, inputs: inputs[0])
    with pytest.raises(ModelFormatError, match="disagrees with onnxruntime"):
        lower_onnx(model(nodes, [1, 4], [1, 3], inits))
    graph, runner = lower_onnx(model(nodes, [1, 4], [1, 3], inits), check=False)
    assert runner.max_error is None


def test_malformed_files(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07this is not a protobuf \xff\xfe")
    with pytest.raises(ModelFormatError, match="garbage.onnx"):
        lower_onnx(str(garbage))
    with pytest.raises(ModelFormatError, match="does not exist"):
        lower_onnx(str(tmp_path / "missing.onnx"))
    dangling = model([helper.make_node("Add", ["x", "nowhere"], ["y"])], [1, 4], [1, 4])
    with pytest.raises(ModelFormatError, match="not a valid ONNX model"):
        lower_onnx(dangling)
    with pytest.raises(ModelFormatError, match="ModelProto"):
        lower_onnx(42)


def test_unsupported_op_names_op_node_and_hint():
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1),
             helper.make_node("Tan", ["g"], ["y"], name="my_tan")]
    with pytest.raises(UnsupportedOperationError) as err:
        lower_onnx(model(nodes, [1, 4], [1, 3], [init("w", weight(3, 4)), init("b", weight(3))]))
    message = str(err.value)
    assert "Tan" in message and "my_tan" in message and "Re-export" in message
    assert "lirpac.register_op(..., onnx_op='Tan') (docs/custom_ops.md)" in message


def _real_models():
    if VNNCOMP is None:
        return []
    return sorted(VNNCOMP.glob("*/**/*.onnx"))


QUICK = ["test/test_small.onnx", "test/test_sat.onnx", "acasxu/ACASXU_run2a_1_1_batch_2000.onnx",
         "mnistfc/mnist-net_256x2.onnx"]


@pytest.mark.skipif(VNNCOMP is None, reason="VNN-COMP 2021 benchmarks absent (set LIRPAC_VNNCOMP)")
@pytest.mark.parametrize("name", QUICK)
def test_some_real_models_load_and_match(name):
    path = VNNCOMP / name
    if not path.is_file():
        pytest.skip(f"{path} absent")
    graph, runner = lower_onnx(str(path))
    assert runner.max_error <= 1e-4


@pytest.mark.slow
@pytest.mark.skipif(VNNCOMP is None, reason="VNN-COMP 2021 benchmarks absent (set LIRPAC_VNNCOMP)")
@pytest.mark.parametrize("path", _real_models(), ids=lambda p: p.name)
def test_every_real_model_loads_and_matches(path):
    graph, runner = lower_onnx(str(path), check_samples=8)
    assert runner.max_error <= 1e-4
