"""Strict comparisons (< and >) in VNNLIB specs: parsed as strict, never dropped from a
counterexample's check, and an empty input set (by strictness or crossed bounds) holds.

A counterexample must meet every comparison as written. A proof may read a strict output row as
``lower >= d`` (`OutputPolytope.proof_d`), and strict input sides as non-strict (the closed box
contains the open one), so a property that holds only because of an open box may end "timeout"
or "unknown", never "violated"."""
import itertools

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import lirpac  # noqa: E402
from lirpac.cli import main  # noqa: E402
from lirpac.vnnlib import OutputPolytope, Region, parse_vnnlib  # noqa: E402

UNDECIDED = ("holds", "unknown", "timeout")   # anything but "violated" (and "error")


def onnx_model(nodes, inits, n_in, n_out):
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n_in])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n_out])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def relu_model():
    return onnx_model([helper.make_node("Relu", ["x"], ["y"])], [], 1, 1)


def identity_model():
    return onnx_model([helper.make_node("Identity", ["x"], ["y"])], [], 1, 1)


def copy_model():
    """y0 = y1 = x, by MatMul with [[1, 1]]."""
    return onnx_model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                      [numpy_helper.from_array(np.ones((1, 2), np.float32), "w")], 1, 2)


def declare(n_in, n_out):
    return "".join(f"(declare-const X_{i} Real)\n" for i in range(n_in)) + "".join(
        f"(declare-const Y_{j} Real)\n" for j in range(n_out))


# (model, spec): each property holds, and only because a comparison is strict
STRICT_CASES = {
    "relu_of_nonpositive_is_not_positive":
        (relu_model, declare(1, 1) + "(assert (>= X_0 -1))\n(assert (<= X_0 0))\n(assert (> Y_0 0))\n"),
    "equal_outputs_are_not_greater":
        (copy_model, declare(1, 2) + "(assert (>= X_0 -1))\n(assert (<= X_0 1))\n(assert (> Y_0 Y_1))\n"),
    "open_box_excludes_its_end":
        (identity_model, declare(1, 1) + "(assert (> X_0 0))\n(assert (< X_0 1))\n(assert (>= Y_0 1))\n"),
    "empty_open_interval":
        (identity_model, declare(1, 1) + "(assert (> X_0 0.5))\n(assert (< X_0 0.5))\n(assert (>= Y_0 0))\n"),
}


@pytest.mark.parametrize("case", list(STRICT_CASES))
def test_strict_property_is_never_violated(case, tmp_path):
    build, text = STRICT_CASES[case]
    model, spec = tmp_path / "net.onnx", tmp_path / "spec.vnnlib"
    onnx.save(build(), model)
    spec.write_text(text)
    result = lirpac.verify(str(model), str(spec), timeout=1.0)
    assert result.status in UNDECIDED, result
    if case == "empty_open_interval":
        assert result.status == "holds" and "input set is empty" in result.message, result
    if case in PROVED_BY_STRICT_ROWS:
        assert result.status == "holds" and "proved" in result.message, result


# strict output rows a bound reaches but never passes: lower(C y) >= d proves them
PROVED_BY_STRICT_ROWS = ("relu_of_nonpositive_is_not_positive", "equal_outputs_are_not_greater")


def test_proof_d_is_the_float_below_d_on_strict_rows_only():
    polytope = OutputPolytope(np.eye(2), np.array([0.0, 1.0]), np.array([True, False]))
    assert polytope.proof_d[0] < 0 and np.nextafter(polytope.proof_d[0], 1.0) == 0.0
    assert polytope.proof_d[1] == 1.0


def test_the_same_cases_non_strict_are_violated(tmp_path):
    """The control: with <= and >= each case has a counterexample, found and confirmed."""
    for case, (build, text) in STRICT_CASES.items():
        model = tmp_path / f"{case}.onnx"
        onnx.save(build(), model)
        closed = text.replace("(> ", "(>= ").replace("(< ", "(<= ")
        result = lirpac.verify(str(model), closed, timeout=5.0)
        assert result.status == "violated", (case, result)


def test_cli_answers_unsat_for_an_empty_input_set(tmp_path, capsys):
    build, text = STRICT_CASES["empty_open_interval"]
    model, spec, out = tmp_path / "net.onnx", tmp_path / "spec.vnnlib", tmp_path / "result.txt"
    onnx.save(build(), model)
    spec.write_text(text)
    assert main(["verify", str(model), str(spec), "--out", str(out), "--timeout", "5"]) == 0
    assert out.read_text() == "unsat\n"
    assert "input set is empty: X_0 > 0.5 and X_0 < 0.5 hold for no value (line 4" in capsys.readouterr().out


def test_blank_spec_file_is_an_error_not_every_output_unsafe(tmp_path):
    model, spec = tmp_path / "net.onnx", tmp_path / "blank.vnnlib"
    onnx.save(relu_model(), model)
    spec.write_text("; nothing but a comment\n")
    result = lirpac.verify(str(model), str(spec), timeout=5.0)
    assert result.status == "error" and "SpecFormatError" in result.message and "spec is empty" in result.message


# -- the parsed spec keeps strictness ---------------------------------------------------------


def test_strict_flags_on_rows_and_box_sides():
    text = declare(2, 2) + """
    (assert (> X_0 0)) (assert (<= X_0 1))
    (assert (>= X_1 -1)) (assert (< X_1 2))
    (assert (< Y_0 1)) (assert (>= Y_1 Y_0))
    """
    (region,) = parse_vnnlib(text).regions
    assert region.lower_strict.tolist() == [True, False] and region.upper_strict.tolist() == [False, True]
    (polytope,) = region.outputs
    assert polytope.strict.tolist() == [True, False]
    assert polytope.C.tolist() == [[1.0, 0.0], [1.0, -1.0]] and polytope.d.tolist() == [1.0, 0.0]


@pytest.mark.parametrize("bounds, lower_strict", [
    (["> X_0 0", ">= X_0 0"], True),     # on a tie the strict bound wins, in either order
    ([">= X_0 0", "> X_0 0"], True),
    (["> X_0 -1", ">= X_0 0"], False),   # the tighter bound wins with its own strictness
    ([">= X_0 -1", "> X_0 0"], True),
    (["> X_0 0", ">= X_0 0.5"], False),
])
def test_tightest_bound_keeps_its_strictness(bounds, lower_strict):
    text = declare(1, 1) + "(assert (<= X_0 1))" + "".join(f"(assert ({bound}))" for bound in bounds)
    (region,) = parse_vnnlib(text).regions
    assert bool(region.lower_strict[0]) is lower_strict and not region.upper_strict[0]


def test_disjunct_strictness_does_not_leak_into_the_shared_box():
    text = declare(1, 1) + "(assert (>= X_0 0)) (assert (<= X_0 1))" \
        "(assert (or (and (> X_0 0) (<= Y_0 0)) (and (<= Y_0 5))))"
    open_side, closed = parse_vnnlib(text).regions   # different strictness: different regions
    assert open_side.lower_strict[0] and not closed.lower_strict[0]
    assert (open_side.lower[0], closed.lower[0]) == (0.0, 0.0)


@pytest.mark.parametrize("low, high", [("> X_0 0.5", "< X_0 0.5"), (">= X_0 0.5", "< X_0 0.5"),
                                       ("> X_0 0.5", "<= X_0 0.5"), (">= X_0 1", "<= X_0 0")])
def test_empty_top_level_box_gives_an_empty_spec(low, high):
    spec = parse_vnnlib(declare(2, 1) + f"(assert (>= X_1 0)) (assert (<= X_1 1))\n(assert ({low})) (assert ({high}))"
                        "(assert (<= Y_0 0))")
    assert spec.regions == [] and spec.empty_reason.startswith("the input set is empty: X_0 ")
    column = len(f"(assert ({low})) (assert ") + 1   # the second bound on X_0 is the culprit
    assert spec.empty_reason.endswith(f"(line 5, column {column})"), spec.empty_reason


def test_point_box_with_non_strict_sides_is_not_empty():
    (region,) = parse_vnnlib(declare(1, 1) + "(assert (>= X_0 0.5)) (assert (<= X_0 0.5)) (assert (<= Y_0 0))").regions
    assert region.contains(np.array([0.5]))


def test_empty_disjunct_boxes_are_dropped_and_all_empty_is_an_empty_spec():
    head = declare(1, 1) + "(assert (>= X_0 0)) (assert (<= X_0 1))\n"
    some = parse_vnnlib(head + "(assert (or (and (> X_0 1) (<= Y_0 0)) (and (< X_0 0.5) (<= Y_0 1))))")
    (region,) = some.regions
    assert region.upper[0] == 0.5 and region.upper_strict[0] and region.outputs[0].d.tolist() == [1.0]
    none = parse_vnnlib(head + "(assert (or (and (> X_0 1) (<= Y_0 0)) (and (< X_0 0) (<= Y_0 1))))")
    assert none.regions == [] and "every input box of the (or ...) is empty" in none.empty_reason


def test_empty_or_says_no_output_is_unsafe():
    spec = parse_vnnlib(declare(1, 1) + "(assert (>= X_0 0)) (assert (<= X_0 1)) (assert (or))")
    assert spec.regions == [] and "empty (or)" in spec.empty_reason


# -- membership checks of a counterexample ---------------------------------------------------


def test_satisfied_checks_strict_rows_strictly():
    polytope = OutputPolytope(np.array([[1.0, -1.0], [0.0, 1.0]]), np.array([0.0, 1.0]), np.array([True, False]))
    assert polytope.satisfied(np.array([1.0, 1.0])) is False      # y0 - y1 < 0 fails at 0
    assert polytope.satisfied(np.array([1 - 1e-12, 1.0])) is True  # y1 <= 1 holds at 1
    assert OutputPolytope(np.array([[1.0]]), np.array([0.0])).satisfied(np.array([0.0]))   # default: non-strict


def test_contains_excludes_strict_ends_only():
    region = Region(np.array([0.0, 0.0]), np.array([1.0, 1.0]), [], np.array([True, False]), np.array([False, True]))
    assert not region.contains(np.array([0.0, 0.5])) and region.contains(np.array([1.0, 0.0]))
    assert not region.contains(np.array([0.5, 1.0])) and region.contains(np.array([5e-324, 1 - 1e-16]))
    assert Region(np.zeros(1), np.ones(1), []).contains(np.zeros(1))   # default: closed


def test_attack_box_steps_off_strict_ends():
    from lirpac.verify import _inward_box
    lower, upper = np.array([0.0, 0.5, -1.0]), np.array([1.0, 0.75, 0.1])
    lo, hi = _inward_box(lower, upper, torch.float32, np.array([True, False, True]), np.array([False, True, True]))
    lo, hi = lo.double().numpy(), hi.double().numpy()
    assert lo[0] > 0 and lo[1] == 0.5 and lo[2] > -1 and hi[0] == 1 and hi[1] < 0.75 and hi[2] < 0.1
    assert lo[0] == np.nextafter(np.float32(0), np.float32(1))


# -- property: random nets and random specs mixing strict and non-strict ----------------------

VALUES = [-1.0, -0.5, 0.0, 0.5, 1.0]
OPS = ["<", "<=", ">", ">="]
COMPARE = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}


@st.composite
def instances(draw):
    """(weights, input bounds, output disjunction): a ReLU net with weights on a coarse grid
    (boundaries are met exactly, so strictness decides), an input box whose sides may be
    strict, and an (or (and ...)) of comparisons of outputs with constants or each other."""
    n_in, n_hidden = draw(st.integers(2, 3)), draw(st.integers(1, 3))
    grid = st.sampled_from(VALUES)
    w1 = np.array(draw(st.lists(grid, min_size=n_in * n_hidden, max_size=n_in * n_hidden))).reshape(n_hidden, n_in)
    b1 = np.array(draw(st.lists(grid, min_size=n_hidden, max_size=n_hidden)))
    w2 = np.array(draw(st.lists(grid, min_size=2 * n_hidden, max_size=2 * n_hidden))).reshape(2, n_hidden)
    if draw(st.booleans()):   # y1 = y0: comparisons between outputs meet their boundary everywhere
        w2[1] = w2[0]
    b2 = np.array(draw(st.lists(grid, min_size=2, max_size=2)))
    box = []
    for _ in range(n_in):   # width 0 (a point: empty when a side is strict) now and then
        low, width = draw(st.sampled_from([-1.0, -0.5, 0.0])), draw(st.sampled_from([1.0, 0.5, 1.5, 0.0, 1.0]))
        box.append((draw(st.sampled_from([">", ">="])), low, draw(st.sampled_from(["<", "<="])), low + width))
    operand = st.one_of(st.sampled_from(VALUES), st.sampled_from(["Y_0", "Y_1"]))
    comparison = st.tuples(st.sampled_from(["Y_0", "Y_1"]), st.sampled_from(OPS), operand)
    unsafe = draw(st.lists(st.lists(comparison, min_size=1, max_size=2), min_size=1, max_size=2))
    return (w1, b1, w2, b2), box, unsafe


def mlp_model(weights):
    w1, b1, w2, b2 = (np.asarray(w, np.float32) for w in weights)
    inits = [numpy_helper.from_array(a, name) for a, name in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)]
    return onnx_model(nodes, inits, w1.shape[1], 2)


def forward(weights, x):
    """The net in float64 numpy, independent of lirpac and onnxruntime; x (N, n_in)."""
    w1, b1, w2, b2 = weights
    return np.maximum(x @ w1.T + b1, 0) @ w2.T + b2


def spec_text(box, unsafe):
    lines = [declare(len(box), 2)]
    for i, (low_op, low, high_op, high) in enumerate(box):
        lines.append(f"(assert ({low_op} X_{i} {low}))\n(assert ({high_op} X_{i} {high}))\n")
    disjuncts = " ".join("(and " + " ".join(f"({op} {a} {b})" for a, op, b in conj) + ")" for conj in unsafe)
    return "".join(lines) + f"(assert (or {disjuncts}))\n"


def in_box(box, x):
    """Which rows of x (N, n_in) meet every input comparison as written."""
    ok = np.ones(len(x), dtype=bool)
    for i, (low_op, low, high_op, high) in enumerate(box):
        ok &= COMPARE[low_op](x[:, i], low) & COMPARE[high_op](x[:, i], high)
    return ok


def unsafe_outputs(unsafe, y):
    """Which rows of y (N, 2) meet some conjunct of the unsafe disjunction, as written."""
    def value(operand):
        return y[:, int(operand[2])] if isinstance(operand, str) else np.full(len(y), operand)
    return np.any([np.all([COMPARE[op](value(a), value(b)) for a, op, b in conj], axis=0) for conj in unsafe], axis=0)


def dense_points(box, rng):
    """A 9-point grid per input (ends included), the corners, and 300 random points of the closed box."""
    lows = np.array([side[1] for side in box])
    highs = np.array([side[3] for side in box])
    if np.any(lows > highs):
        return np.zeros((0, len(box)))
    axes = [np.linspace(low, high, 9) for low, high in zip(lows, highs)]
    grid = np.array(list(itertools.product(*axes)))
    return np.concatenate([grid, lows + (highs - lows) * rng.random((300, len(box)))])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(instance=instances())
def test_random_strict_specs_answer_only_what_is_true(instance, tmp_path):
    weights, box, unsafe = instance
    model, spec = tmp_path / "net.onnx", tmp_path / "spec.vnnlib"
    onnx.save(mlp_model(weights), model)
    spec.write_text(spec_text(box, unsafe))
    result = lirpac.verify(str(model), str(spec), method="crown", timeout=0.4)
    assert result.status in ("holds", "violated", "unknown", "timeout"), result
    if result.status == "violated":
        x, y = result.counterexample
        np.testing.assert_allclose(y, forward(weights, x[None])[0], rtol=1e-6, atol=1e-6)
        assert in_box(box, x[None])[0], (x, box)
        assert unsafe_outputs(unsafe, forward(weights, x[None]))[0], (x, y, unsafe)
    elif result.status == "holds":
        x = dense_points(box, np.random.default_rng(0))
        x = x[in_box(box, x)]
        bad = unsafe_outputs(unsafe, forward(weights, x))
        assert not bad.any(), (result, x[bad][:3], spec.read_text())
