"""ONNX operators lowered onto IR ops (Reduce*, Max/Min, Where, Expand, Tile, CumSum,
negative-step Slice, DepthToSpace, MaxPool 1-D/3-D, LayerNormalization, Resize, Einsum, ...): each
tiny model agrees with onnxruntime, its IBP and CROWN bounds contain sampled outputs (box
corners included), the linear ones are bounded exactly, and attribute combinations lirpac does
not take are refused by name."""
import math

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import helper  # noqa: E402

import lirpac  # noqa: E402
from lirpac.errors import UnsupportedOperationError  # noqa: E402
from lirpac.ir.interpret import evaluate  # noqa: E402
from lirpac.ir.onnx_frontend import lower_onnx  # noqa: E402
from onnx_builders import init, model  # noqa: E402
from sampling import assert_contains, sample_lp_ball  # noqa: E402

IMAGE = [1, 2, 3, 4]
F = np.float32
I64 = np.int64
BIG = 2 ** 62


def node(op, inputs=("x",), outputs=("y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


def reduce_model(op, opset, axes, keepdims):
    """Axes as the attribute before the opset that made them an input (13 for ReduceSum, 18
    for the others), as the input from then on."""
    as_input = opset >= (13 if op == "ReduceSum" else 18)
    if axes is None:
        return model([node(op, keepdims=keepdims)], IMAGE, opset=opset)
    if as_input:
        return model([node(op, ["x", "axes"], keepdims=keepdims)], IMAGE, opset=opset,
                     inits=[init("axes", I64(axes))])
    return model([node(op, axes=axes, keepdims=keepdims)], IMAGE, opset=opset)


REDUCE_OPS = ["ReduceMin", "ReduceMax", "ReduceMean", "ReduceSum", "ReduceL1", "ReduceL2",
              "ReduceSumSquare", "ReduceLogSumExp"]
CASES = {f"{op}_{opset}_{keep}_{axes}": reduce_model(op, opset, axes, keep)
         for op in REDUCE_OPS for opset, keep, axes in
         [(13, 1, [-1]), (13, 0, [1, 3]), (18, 0, [0, 2]), (18, 1, None)]}

W = F(np.linspace(-1.5, 1.5, 4))
SCALED = node("Mul", ["x", "w"], ["xw"])
CASES.update({
    "Max_two": model([SCALED, node("Max", ["x", "xw"])], IMAGE, inits=[init("w", W)]),
    "Min_two": model([SCALED, node("Min", ["xw", "x"])], IMAGE, inits=[init("w", W)]),
    "Max_three_consts": model([SCALED, node("Max", ["x", "c", "xw", "d"])], IMAGE,
                              inits=[init("w", W), init("c", F([[0.3], [-0.2], [0.1]])),
                                     init("d", F(-0.1))]),
    "Min_const_wider": model([node("Min", ["x", "c"])], [1, 4],
                             inits=[init("c", F(np.linspace(-1, 1, 12).reshape(3, 4)))]),
    "Max_const_first": model([node("Max", ["c", "x"])], IMAGE, inits=[init("c", F(0.25))]),
    "Max_minus_inf": model([node("Max", ["x", "c"])], IMAGE, inits=[init("c", F(-np.inf))]),
    "Where_const": model([node("Where", ["m", "x", "c"])], IMAGE,
                         inits=[init("m", np.array([True, False, True, True])),
                                init("c", F([[0.5], [-1.0], [2.0]]))]),
    "Where_both": model([SCALED, node("Where", ["m", "xw", "x"])], IMAGE,
                        inits=[init("w", W), init("m", np.array([[True], [False], [True]]))]),
    "Expand": model([node("Expand", ["x", "s"])], [1, 2, 1, 4], inits=[init("s", I64([1, 2, 3, 4]))]),
    "Expand_new_dims": model([node("Expand", ["x", "s"])], [1, 3, 1],
                             inits=[init("s", I64([2, 1, 3, 4]))]),
    "Expand_vector": model([node("Expand", ["x", "s"])], [4], inits=[init("s", I64([3, 1]))]),
    "Tile": model([node("Tile", ["x", "r"])], IMAGE, inits=[init("r", I64([1, 2, 1, 3]))]),
    "Tile_batch": model([node("Tile", ["x", "r"])], IMAGE, inits=[init("r", I64([2, 1, 1, 1]))]),
    "Slice_flip": model([node("Slice", ["x", "s", "e", "a", "t"])], IMAGE,
                        inits=[init("s", I64([-1])), init("e", I64([-BIG])), init("a", I64([3])),
                               init("t", I64([-1]))]),
    "Slice_back_by_2": model([node("Slice", ["x", "s", "e", "a", "t"])], IMAGE,
                             inits=[init("s", I64([2, 3])), init("e", I64([0, -BIG])),
                                    init("a", I64([2, -1])), init("t", I64([-1, -2]))]),
    "Slice_batch_axis": model([node("Slice", ["x", "s", "e", "a", "t"])], IMAGE,
                              inits=[init("s", I64([0, 1])), init("e", I64([-2, -BIG])),
                                     init("a", I64([0, 1])), init("t", I64([-1, -1]))]),
    "MaxPool_1d": model([node("MaxPool", kernel_shape=[3], strides=[2], pads=[1, 1])], [1, 2, 9]),
    "MaxPool_1d_ceil": model([node("MaxPool", kernel_shape=[2], strides=[2], ceil_mode=1)], [1, 2, 7],
                             opset=11),
    "MaxPool_3d": model([node("MaxPool", kernel_shape=[2, 2, 2], strides=[2, 2, 2])], [1, 2, 4, 4, 4]),
    "MaxPool_3d_pads": model([node("MaxPool", kernel_shape=[3, 2, 3], strides=[2, 1, 2],
                                   pads=[1, 0, 1, 1, 0, 1], dilations=[1, 2, 1])],
                             [1, 2, 5, 5, 4], opset=12),
    "MaxPool_3d_ceil": model([node("MaxPool", kernel_shape=[2, 2, 2], strides=[2, 2, 2],
                                   ceil_mode=1)], [1, 1, 3, 5, 4], opset=12),
    "AveragePool_3d": model([node("AveragePool", kernel_shape=[2, 2, 2], strides=[1, 2, 2],
                                  pads=[1, 0, 0, 1, 0, 0])], [1, 2, 3, 4, 4]),
    "GlobalMaxPool": model([node("GlobalMaxPool")], IMAGE),
    "DepthToSpace_DCR": model([node("DepthToSpace", blocksize=2)], [1, 8, 2, 3]),
    "DepthToSpace_CRD": model([node("DepthToSpace", blocksize=2, mode="CRD")], [1, 8, 2, 3]),
    "SpaceToDepth": model([node("SpaceToDepth", blocksize=2)], [1, 2, 4, 6]),
    "LayerNormalization": model([node("LayerNormalization", ["x", "g", "b"], axis=-2, epsilon=1e-3)],
                                IMAGE, opset=17, inits=[init("g", F(np.linspace(0.5, 2, 12).reshape(3, 4))),
                                                        init("b", F(np.linspace(-1, 1, 4)))]),
    "InstanceNormalization": model([node("InstanceNormalization", ["x", "g", "b"])], IMAGE,
                                   inits=[init("g", F([1.5, -0.5])), init("b", F([0.1, 0.2]))]),
    "Resize_torch": model([node("Resize", ["x", "", "s"], mode="nearest",
                                coordinate_transformation_mode="asymmetric", nearest_mode="floor")],
                          IMAGE, inits=[init("s", F([1, 1, 2, 3]))]),
    "Resize_linear": model([node("Resize", ["x", "", "s"], mode="linear")], IMAGE,
                           inits=[init("s", F([1, 1, 2, 3]))]),
    "Resize_linear_corners": model([node("Resize", ["x", "", "", "n"], mode="linear",
                                         coordinate_transformation_mode="align_corners")], [1, 2, 3],
                                   inits=[init("n", I64([1, 2, 9]))]),
    "Resize_trilinear": model([node("Resize", ["x", "", "s"], mode="linear",
                                    coordinate_transformation_mode="pytorch_half_pixel")], [1, 1, 2, 3, 2],
                              opset=18, inits=[init("s", F([1, 1, 2, 1, 2]))]),
    "Resize_sizes": model([node("Resize", ["x", "", "", "n"])], [1, 2, 3],
                          inits=[init("n", I64([1, 2, 9]))]),
    "Sum": model([SCALED, node("Sum", ["x", "c", "xw"])], IMAGE,
                 inits=[init("w", W), init("c", F([[1.0], [2.0], [3.0]]))]),
    "Mean": model([SCALED, node("Mean", ["xw", "x"])], IMAGE, inits=[init("w", W)]),
    "Div_softsign": model([node("Abs", ["x"], ["a"]), node("Add", ["a", "one"], ["d"]),
                           node("Div", ["x", "d"])], IMAGE, inits=[init("one", F(1.0))]),
    "Einsum_matmul": model([node("Einsum", ["x", "w"], equation="bchw,wk->bchk")], IMAGE,
                           opset=12, inits=[init("w", F(np.linspace(-1, 1, 20).reshape(4, 5)))]),
    "Einsum_const_first_implicit": model([node("Einsum", ["w", "x"], equation="kw, bchw")], IMAGE,
                                         opset=12, inits=[init("w", F(np.linspace(-1, 1, 8).reshape(2, 4)))]),
    "Einsum_diagonal": model([node("Einsum", ["x", "w"], equation="bii,i->b")], [1, 3, 3], opset=12,
                             inits=[init("w", F([1.0, -2.0, 0.5]))]),
    "Einsum_ellipsis": model([node("Einsum", ["x", "w"], equation="...hw,hk->...kw")], IMAGE, opset=12,
                             inits=[init("w", F(np.linspace(-1, 1, 6).reshape(3, 2)))]),
    "Softsign": model([node("Softsign")], IMAGE),
    "Div_const_by_x": model([node("Mul", ["x", "x"], ["s"]), node("Add", ["s", "one"], ["d"]),
                             node("Div", ["c", "d"])], IMAGE,
                            inits=[init("one", F(1.0)), init("c", F([[2.0], [-1.0], [0.5]]))]),
    "Upsample_9": model([node("Upsample", ["x", "s"])], IMAGE, opset=9,
                        inits=[init("s", F([1, 1, 3, 2]))]),
    "Upsample_8": model([node("Upsample", scales=[1.0, 1.0, 2.0, 2.0])], IMAGE, opset=8),
})
for exclusive in (0, 1):
    for reverse in (0, 1):
        CASES[f"CumSum_{exclusive}{reverse}"] = model(
            [node("CumSum", ["x", "a"], exclusive=exclusive, reverse=reverse)], IMAGE,
            inits=[init("a", I64(-1 if reverse else 2))])
CASES["CumSum_size1_exclusive"] = model([node("CumSum", ["x", "a"], exclusive=1)], [1, 2, 1, 4],
                                        inits=[init("a", I64(2))])
CASES["CumSum_batch_axis"] = model([node("CumSum", ["x", "a"], reverse=1)], [2, 3],
                                   inits=[init("a", I64(0))])

# linear maps with non-negative coefficients: their exact bounds are f(x - eps), f(x + eps)
MONOTONE_LINEAR = {"Expand", "Expand_new_dims", "Expand_vector", "Tile", "Tile_batch", "Slice_flip",
                   "Slice_back_by_2", "Slice_batch_axis", "Where_const", "DepthToSpace_DCR",
                   "DepthToSpace_CRD", "SpaceToDepth", "Resize_torch", "Resize_sizes", "Resize_linear",
                   "Resize_linear_corners", "Resize_trilinear", "Upsample_8",
                   "CumSum_size1_exclusive", "CumSum_batch_axis", "AveragePool_3d"} | \
    {f"CumSum_{e}{r}" for e in (0, 1) for r in (0, 1)}


@pytest.mark.parametrize("name", list(CASES))
def test_onnx_op_matches_onnxruntime(name):
    graph, runner = lower_onnx(CASES[name])
    x = torch.randn(3, *graph.perturbed_input.shape) * 2
    torch.testing.assert_close(evaluate(graph, x), runner(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_onnx_op_bounds_contain_samples(name):
    net = lirpac.compile(CASES[name])
    runner = net.module          # onnxruntime on the original model
    shape = runner.input_shape
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    eps = 0.3
    points = sample_lp_ball(x, eps, math.inf, 32, generator=torch.Generator().manual_seed(0))
    for method in ["ibp", "crown", "forward", "alpha-crown"]:
        lower, upper = net.bounds(x, lirpac.LpBall(eps=eps), method=method)
        assert_contains(runner, points, lower.reshape(2, -1), upper.reshape(2, -1), what=method)
        if name in MONOTONE_LINEAR:
            torch.testing.assert_close(lower.reshape(2, -1), runner(x - eps).reshape(2, -1))
            torch.testing.assert_close(upper.reshape(2, -1), runner(x + eps).reshape(2, -1))


REFUSED = {
    "Resize_cubic": (model([node("Resize", ["x", "", "s"], mode="cubic")], IMAGE,
                           inits=[init("s", F([1, 1, 2, 2]))]), "mode='cubic'"),
    "Resize_linear_asymmetric": (model([node("Resize", ["x", "", "s"], mode="linear",
                                             coordinate_transformation_mode="asymmetric")], IMAGE,
                                       inits=[init("s", F([1, 1, 2, 2]))]), "asymmetric"),
    "Resize_fraction": (model([node("Resize", ["x", "", "s"])], IMAGE,
                              inits=[init("s", F([1, 1, 1.5, 2]))]), "whole upsampling"),
    "Resize_axes": (model([node("Resize", ["x", "", "s"], axes=[2, 3])], IMAGE, opset=18,
                          inits=[init("s", F([2, 2]))]), "axes"),
    "Resize_downsample": (model([node("Resize", ["x", "", "s"])], IMAGE,
                                inits=[init("s", F([1, 1, 1, 0.5]))]), "whole upsampling"),
    "Where_perturbed_condition": (model([node("Greater", ["x", "z"], ["m"]),
                                         node("Where", ["m", "x", "z"])], IMAGE,
                                        inits=[init("z", F(0.0))]), "Greater"),
    "Slice_empty": (model([node("Slice", ["x", "s", "e", "a", "t"])], IMAGE,
                          inits=[init("s", I64([0])), init("e", I64([2])), init("a", I64([3])),
                                 init("t", I64([-1]))]), "empty Slice"),
    "Min_partly_infinite": (model([node("Min", ["x", "c"])], IMAGE,
                                  inits=[init("c", F([1.0, np.inf, 2.0, 3.0]))]), "finite"),
    "Einsum_two_inputs": (model([node("Einsum", ["x", "x"], equation="bchw,bchw->bc")], IMAGE, opset=12),
                          "one input-dependent operand"),
    "LayerNormalization_no_eps": (model([node("LayerNormalization", ["x", "g"], epsilon=0.0)], IMAGE,
                                        opset=17, inits=[init("g", F(np.ones(4)))]), "epsilon"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_unsupported_attributes_are_refused_by_name(name):
    proto, words = REFUSED[name]
    with pytest.raises(UnsupportedOperationError, match=words) as info:
        lower_onnx(proto)
    assert "ONNX" in str(info.value)


@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("Einsum")])
def test_einsum_of_a_constant_is_bounded_exactly(name):
    """One affine map: IBP (centre and radius), CROWN and forward mode are all exact on it, so
    they agree (sampling, above, checks that they contain the outputs)."""
    net = lirpac.compile(CASES[name])
    x = torch.randn(2, *net.module.input_shape, generator=torch.Generator().manual_seed(2))
    ibp = net.bounds(x, lirpac.LpBall(eps=0.2), method="ibp")
    for method in ["crown", "forward"]:
        for exact, got in zip(ibp, net.bounds(x, lirpac.LpBall(eps=0.2), method=method)):
            torch.testing.assert_close(got, exact, rtol=1e-5, atol=1e-5)
