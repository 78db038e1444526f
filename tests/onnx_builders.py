"""Tiny ONNX models for frontend tests, built with onnx.helper."""
import numpy as np
from onnx import TensorProto, helper, numpy_helper, shape_inference

F32 = TensorProto.FLOAT


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def model(nodes, in_shape, out_shape=None, inits=(), opset=13, elem=F32):
    """A one-input ("x") one-output ("y") model; an output shape left out (None) comes from
    ONNX's shape inference; the IR version is the lowest that opset allows."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, in_shape)],
                              [helper.make_tensor_value_info("y", elem, out_shape)], list(inits))
    ir_version = 10 if opset >= 21 else 8 if opset >= 15 else 7
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=ir_version)
    return proto if out_shape is not None else shape_inference.infer_shapes(proto)
