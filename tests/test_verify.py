"""lirpac.verify and the lirpac CLI on tiny ONNX models with known answers, and on the VNN-COMP
2021 benchmarks when they are present (zero wrong answers against expected.csv)."""
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import lirpac  # noqa: E402
from lirpac.cli import main, read_expected, read_instances, run_batch  # noqa: E402
from lirpac.verify import verify  # noqa: E402
from lirpac.vnnlib import parse_vnnlib  # noqa: E402
from vnncomp_data import VNNCOMP  # noqa: E402

# y0 = relu(x0 + x1) + relu(x0 - x1), y1 = relu(x0 - x1) - 1: small enough to know every answer
W1 = np.array([[1.0, 1.0], [1.0, -1.0]], np.float32)
W2 = np.array([[1.0, 1.0], [0.0, 1.0]], np.float32)
B2 = np.array([0.0, -1.0], np.float32)


def tiny_model(rank1: bool = False):
    """The net above; rank1: input of shape (2,) with MatMul(W, x) (ACAS Xu style)."""
    if rank1:
        nodes = [helper.make_node("MatMul", ["w1", "x"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                 helper.make_node("MatMul", ["w2", "r"], ["m"]), helper.make_node("Add", ["m", "b2"], ["y"])]
        shapes = [2], [2]
    else:
        nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
                 helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)]
        shapes = [1, 2], [1, 2]
    inits = [numpy_helper.from_array(W1, "w1"), numpy_helper.from_array(np.zeros(2, np.float32), "b1"),
             numpy_helper.from_array(W2, "w2"), numpy_helper.from_array(B2, "b2")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shapes[0])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shapes[1])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def tiny_forward(x):
    h = np.maximum(W1 @ np.asarray(x, np.float64), 0)
    return W2 @ h + B2


def spec_text(box, output_asserts):
    lines = ["(declare-const X_0 Real)", "(declare-const X_1 Real)", "(declare-const Y_0 Real)",
             "(declare-const Y_1 Real)"]
    for i, (lo, hi) in enumerate(box):
        lines += [f"(assert (>= X_{i} {lo}))", f"(assert (<= X_{i} {hi}))"]
    return "\n".join(lines + [f"(assert {a})" for a in output_asserts]) + "\n"


BOX = [(0.0, 1.0), (0.0, 1.0)]
# over the box y0 = max(2 x0, x0 + x1) in [0, 2] and y1 in [-1, 0]
HOLDS = spec_text(BOX, ["(or (<= Y_0 -0.1) (>= Y_1 0.1))"])
VIOLATED = spec_text(BOX, ["(<= Y_1 -0.9)"])            # any x0 <= x1 + 0.1
VIOLATED_OR = spec_text(BOX, ["(or (<= Y_0 -0.1) (and (>= Y_0 1.5) (<= Y_1 -0.5)))"])


@pytest.fixture
def files(tmp_path):
    paths = {"model": tmp_path / "tiny.onnx", "rank1": tmp_path / "rank1.onnx"}
    onnx.save(tiny_model(), paths["model"])
    onnx.save(tiny_model(rank1=True), paths["rank1"])
    for name, text in [("holds", HOLDS), ("violated", VIOLATED), ("violated_or", VIOLATED_OR)]:
        paths[name] = tmp_path / f"{name}.vnnlib"
        paths[name].write_text(text)
    return paths


def check_counterexample(result, spec_path):
    """The counterexample is in the box, its output is the model's, and it is unsafe."""
    assert result.status == "violated"
    x, y = result.counterexample
    spec = parse_vnnlib(str(spec_path))
    np.testing.assert_allclose(y, tiny_forward(x), rtol=1e-5, atol=1e-5)
    assert any(region.contains(x) and any(p.satisfied(y) for p in region.outputs) for region in spec.regions)


@pytest.mark.parametrize("which", ["model", "rank1"])
def test_holds_and_violated(files, which):
    result = verify(str(files[which]), str(files["holds"]), timeout=20)
    assert result.status == "holds" and result.counterexample is None and result.time > 0
    for name in ("violated", "violated_or"):
        check_counterexample(verify(str(files[which]), str(files[name]), timeout=20), files[name])


def test_accepts_modelproto_compiled_net_and_parsed_spec(files):
    net = lirpac.compile(str(files["model"]))
    assert lirpac.verify(tiny_model(), parse_vnnlib(HOLDS)).status == "holds"
    assert verify(net, str(files["violated"]), method="crown").status == "violated"


def test_never_holds_without_proof(files, monkeypatch):
    """Without the attack and splitting, a violated property can only be unknown."""
    monkeypatch.setattr(sys.modules["lirpac.verify"], "SPLIT_MAX_INPUTS", 0)  # the module, not lirpac.verify()
    result = verify(str(files["model"]), str(files["violated"]), attack=False, timeout=20)
    assert result.status == "unknown" and result.counterexample is None


def test_input_splitting_proves_what_crown_alone_cannot(tmp_path):
    """|x| = relu(x) + relu(-x) >= 0 on [-1, 2]: CROWN's relaxation gives only >= -1."""
    nodes = [helper.make_node("Gemm", ["x", "w1", "b"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b1"], ["y"], transB=1)]
    inits = [numpy_helper.from_array(np.array([[1.0], [-1.0]], np.float32), "w1"),
             numpy_helper.from_array(np.zeros(2, np.float32), "b"),
             numpy_helper.from_array(np.array([[1.0, 1.0]], np.float32), "w2"),
             numpy_helper.from_array(np.zeros(1, np.float32), "b1")]
    graph = helper.make_graph(nodes, "abs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    spec = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (>= X_0 -1))\n(assert (<= X_0 2))\n"
    result = verify(proto, spec + "(assert (<= Y_0 -0.1))\n", method="crown", timeout=20)
    assert result.status == "holds" and "splitting" in result.message, result
    assert result.log[0].startswith("crown: 1 ")   # CROWN alone did not prove it
    violated = verify(proto, spec + "(assert (>= Y_0 1.9))\n", method="crown", timeout=20)
    assert violated.status == "violated" and violated.counterexample[0][0] >= 1.9


def test_relu_splitting_proves_what_alpha_crown_alone_cannot(monkeypatch):
    """f >= d on [-1, 1]^2 for a 2-8-8-1 ReLU net (tests/methods/test_bab.py, seed 4), d just
    below f's minimum: alpha-CROWN alone falls short, ReLU branch and bound proves it (input
    splitting is switched off, as for a model with many inputs)."""
    monkeypatch.setattr(sys.modules["lirpac.verify"], "SPLIT_MAX_INPUTS", 0)
    torch.manual_seed(4)
    layers = [torch.nn.Linear(2, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 1)]
    nodes, inits, prev = [], [], "x"
    for i, layer in enumerate(layers):
        inits += [numpy_helper.from_array(layer.weight.detach().numpy(), f"w{i}"),
                  numpy_helper.from_array(layer.bias.detach().numpy(), f"b{i}")]
        out = "y" if i == len(layers) - 1 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out], transB=1))
        if out != "y":
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            prev = f"r{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    spec = "".join(f"(declare-const X_{i} Real)\n(assert (>= X_{i} -1))\n(assert (<= X_{i} 1))\n"
                   for i in range(2)) + "(declare-const Y_0 Real)\n(assert (<= Y_0 -0.43))\n"
    result = verify(proto, spec, method="alpha-crown", timeout=60)
    assert result.status == "holds" and "ReLU splitting" in result.message, result
    assert any(line.startswith("alpha-crown: 1 ") for line in result.log)   # alpha-CROWN alone did not


def test_attack_box_rounds_inwards_to_float32():
    """PGD runs in the model's float32: its box must lie inside the spec's float64 box."""
    from lirpac.verify import _inward_box
    rng = np.random.default_rng(0)
    lower = rng.uniform(-1, 1, 1000)
    upper = lower + rng.uniform(0, 1e-3, 1000)
    upper[:10] = lower[:10]   # a point box
    lo, hi = _inward_box(lower, upper, torch.float32)
    assert lo.dtype == torch.float32
    lo, hi = lo.double().numpy(), hi.double().numpy()
    assert np.all(lo <= hi)
    inside = upper - lower >= 1e-6   # boxes holding at least one float32 point
    assert np.all(lo[inside] >= lower[inside]) and np.all(hi[inside] <= upper[inside])


def test_bound_failure_is_an_error_but_still_falsifies(files, monkeypatch):
    def broken(self, boxes, method, split=False):
        raise RuntimeError("backend bug")
    monkeypatch.setattr(sys.modules["lirpac.verify"]._Instance, "bound", broken)
    failed = verify(str(files["model"]), str(files["holds"]), timeout=2)
    assert failed.status == "error" and "backend bug" in failed.message
    check_counterexample(verify(str(files["model"]), str(files["violated"]), timeout=5, seed=0), files["violated"])


def test_timeout(files):
    assert verify(str(files["model"]), str(files["holds"]), timeout=1e-9).status == "timeout"


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), "soon", None, True])
def test_timeout_must_be_finite_and_positive(files, timeout):
    with pytest.raises(lirpac.errors.InputError, match="timeout must be"):
        verify(str(files["model"]), str(files["holds"]), timeout=timeout)


def test_errors(files, tmp_path):
    missing = verify(str(tmp_path / "nope.onnx"), str(files["holds"]))
    assert missing.status == "error" and "does not exist" in missing.message
    bad = tmp_path / "bad.vnnlib"
    bad.write_text("(declare-const X_0 Real)\n(assert (<= X_0 1.0)\n")
    malformed = verify(str(files["model"]), str(bad))
    assert malformed.status == "error" and "SpecFormatError" in malformed.message
    three = tmp_path / "three.vnnlib"
    three.write_text(HOLDS.replace("(declare-const X_1 Real)", "(declare-const X_1 Real)\n(declare-const X_2 Real)\n"
                                   "(assert (>= X_2 0))\n(assert (<= X_2 1))"))
    mismatch = verify(str(files["model"]), str(three))
    assert mismatch.status == "error" and "3 inputs" in mismatch.message


def test_cli_single_instance(files, tmp_path, capsys):
    out = tmp_path / "result.txt"
    assert main(["verify", str(files["model"]), str(files["holds"]), "--out", str(out), "--timeout", "20"]) == 0
    assert out.read_text() == "unsat\n"
    assert "holds" in capsys.readouterr().out
    assert main(["verify", str(files["model"]), str(files["violated"]), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("sat\n((X_0 ")
    values = dict(re.findall(r"\(([XY]_\d+) (\S+?)\)", text))
    x = np.array([float(values["X_0"]), float(values["X_1"])])
    y = np.array([float(values["Y_0"]), float(values["Y_1"])])
    assert 0 <= x.min() and x.max() <= 1 and y[1] <= -0.9
    np.testing.assert_allclose(y, tiny_forward(x), rtol=1e-5, atol=1e-5)
    assert main(["verify", str(tmp_path / "nope.onnx"), str(files["holds"])]) == 2


def test_cli_batch_with_expected(files, tmp_path, capsys):
    (tmp_path / "instances.csv").write_text("tiny.onnx,holds.vnnlib,20\nrank1.onnx,violated.vnnlib,20\n")
    (tmp_path / "expected.csv").write_text("onnx,vnnlib,expected\ntiny.onnx,holds.vnnlib,holds\n"
                                           "rank1.onnx,violated.vnnlib,violated\n")
    args = ["verify", "--instances", str(tmp_path / "instances.csv"), "--root", str(tmp_path)]
    assert main(args + ["--expected", str(tmp_path / "expected.csv")]) == 0
    captured = capsys.readouterr()
    assert "[2/2]" in captured.err and re.search(r"holds.*\n\s+1\s+1\s+0\s+0\s+0\s+0", captured.out)
    (tmp_path / "broken.onnx").write_bytes(b"not onnx")
    (tmp_path / "errors.csv").write_text("broken.onnx,holds.vnnlib,5\ntiny.onnx,holds.vnnlib,5\nbroken.onnx,holds.vnnlib,5\n")
    assert main(["verify", "--instances", str(tmp_path / "errors.csv")]) == 2   # --root: the csv's folder; errors: 2
    captured = capsys.readouterr()
    assert captured.err.count("error") == 2 and "ModelFormatError" in captured.err
    (tmp_path / "wrong.csv").write_text("tiny.onnx,holds.vnnlib,sat\nrank1.onnx,violated.vnnlib,unsat\n")
    assert main(args + ["--expected", str(tmp_path / "wrong.csv")]) == 1
    assert "WRONG ANSWER" in capsys.readouterr().err


def test_cli_dump_and_module_entry_point(files):
    run = subprocess.run([sys.executable, "-m", "lirpac", "dump", str(files["model"])], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "# IR from the ONNX frontend" in run.stdout and "relu" in run.stdout and "def bound" in run.stdout


def _benchmark(name, limit, timeout):
    root = VNNCOMP / name
    csvs = sorted(root.glob("*instances.csv"))
    if not csvs:
        pytest.skip(f"no instances.csv in {root}")
    rows = [(m, s, min(t, timeout)) for m, s, t in read_instances(str(csvs[0]), str(root))[:limit]]
    expected = read_expected(str(root / "expected.csv"), str(root))
    counts, wrong, _ = run_batch(rows, expected, out=sys.stderr)
    assert not wrong, wrong
    return counts


@pytest.mark.skipif(VNNCOMP is None, reason="VNN-COMP 2021 benchmarks absent (set LIRPAC_VNNCOMP)")
def test_vnncomp_test_benchmark_all_decided():
    counts = _benchmark("test", None, 30)
    assert counts["holds"] == 4 and counts["violated"] == 1


@pytest.mark.slow
@pytest.mark.skipif(VNNCOMP is None, reason="VNN-COMP 2021 benchmarks absent (set LIRPAC_VNNCOMP)")
@pytest.mark.parametrize("name", ["acasxu", "mnistfc"])
def test_vnncomp_subset_no_wrong_answers(name):
    _benchmark(name, 6, 10)


def test_verify_a_compiled_torch_model(tmp_path):
    """lirpac.verify takes a CompiledNet of a torch module: confirming a counterexample ran
    the module with autograd on and failed ("Can't call numpy() on Tensor that requires
    grad"), so every property with a PGD candidate ended in error."""
    import torch.nn as nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    net = lirpac.compile(model, torch.zeros(1, 2))
    box = "".join(f"(assert (>= X_{i} -0.1))\n(assert (<= X_{i} 0.1))\n" for i in range(2))
    head = "".join(f"(declare-const {v} Real)\n" for v in ("X_0", "X_1", "Y_0", "Y_1"))
    for unsafe, status in (("(<= Y_1 Y_0)", "violated"), ("(>= Y_1 Y_0)", "holds")):
        spec = tmp_path / "p.vnnlib"
        spec.write_text(head + box + f"(assert {unsafe})\n")
        result = lirpac.verify(net, str(spec), timeout=5)
        assert result.status == status, result.message
