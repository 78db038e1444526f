"""The lirpac command line: exit codes, argument checks before any work, Ctrl-C, closed pipes,
the short counterexample line and the batch results file; and verify's deadlines."""
import csv
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import lirpac  # noqa: E402
from lirpac import deadline  # noqa: E402
from lirpac.attack import pgd_attack  # noqa: E402
from lirpac.cli import main  # noqa: E402
from lirpac.errors import InputError  # noqa: E402
from lirpac.verify import verify  # noqa: E402
from test_verify import BOX, HOLDS, VIOLATED, spec_text, tiny_model  # noqa: E402


def mlp(sizes, seed=0):
    """A ReLU MLP (Gemm layers, random weights) as an ONNX model with input (1, sizes[0])."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i in range(len(sizes) - 1):
        weight = (rng.standard_normal((sizes[i + 1], sizes[i])) / np.sqrt(sizes[i])).astype(np.float32)
        inits += [numpy_helper.from_array(weight, f"w{i}"),
                  numpy_helper.from_array(np.zeros(sizes[i + 1], np.float32), f"b{i}")]
        out = "y" if i == len(sizes) - 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out], transB=1))
        if out != "y":
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            prev = f"r{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, sizes[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, sizes[-1]])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def box_spec(n_in, n_out, output_asserts, low=-1.0, high=1.0):
    text = "".join(f"(declare-const X_{i} Real)\n(assert (>= X_{i} {low}))\n(assert (<= X_{i} {high}))\n"
                   for i in range(n_in))
    text += "".join(f"(declare-const Y_{j} Real)\n" for j in range(n_out))
    return text + "".join(f"(assert {a})\n" for a in output_asserts)


@pytest.fixture
def files(tmp_path):
    paths = {"model": tmp_path / "tiny.onnx"}
    onnx.save(tiny_model(), paths["model"])
    for name, text in [("holds", HOLDS), ("violated", VIOLATED)]:
        paths[name] = tmp_path / f"{name}.vnnlib"
        paths[name].write_text(text)
    return paths


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "lirpac", *map(str, args)], capture_output=True, text=True,
                          timeout=300, **kw)


# -- arguments, checked before any work ---------------------------------------------------------

def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("lirpac ")


def test_a_missing_file_is_refused_before_any_work(files, capsys, tmp_path):
    assert main(["verify", str(tmp_path / "none.onnx"), str(files["holds"])]) == 2
    assert "none.onnx: no such file (the model)" in capsys.readouterr().err


def test_swapped_model_and_spec_are_named(files, capsys):
    assert main(["verify", str(files["holds"]), str(files["model"])]) == 2
    err = capsys.readouterr().err
    assert f"the model comes first: lirpac verify {files['model']} {files['holds']}" in err


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1", "soon"])
@pytest.mark.parametrize("option", ["--timeout", "--timeout-scale"])
def test_timeouts_must_be_finite_and_positive(files, capsys, option, value):
    with pytest.raises(SystemExit) as exit_:
        main(["verify", str(files["model"]), str(files["holds"]), option, value])
    words = "number of seconds" if option == "--timeout" else "scale must be a finite number > 0"
    assert exit_.value.code == 2 and words in capsys.readouterr().err


def test_unknown_method_is_refused_before_any_work(files, capsys):
    started = time.monotonic()
    assert main(["verify", str(files["model"]), str(files["holds"]), "--method", "crwn", "--timeout", "600"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'crwn'" in err and "alpha-crown" in err and "crown-ibp" in err
    assert time.monotonic() - started < 5
    assert main(["dump", str(files["model"]), "--method", "crwn"]) == 2


def test_unwritable_out_is_refused_before_any_work(files, tmp_path, capsys):
    for out in (tmp_path / "missing" / "result.txt", tmp_path):
        assert main(["verify", str(files["model"]), str(files["holds"]), "--out", str(out)]) == 2
        assert "--out" in capsys.readouterr().err


def test_violated_prints_a_short_line_and_out_has_the_assignment(tmp_path, capsys):
    """A 20-input model: the terminal gets a summary of x, not 20 floats; --out gets them all."""
    onnx.save(mlp([20, 8, 2]), tmp_path / "m.onnx")
    (tmp_path / "v.vnnlib").write_text(box_spec(20, 2, ["(<= Y_0 1000)"]))   # every output
    out = tmp_path / "result.txt"
    assert main(["verify", str(tmp_path / "m.onnx"), str(tmp_path / "v.vnnlib"), "--out", str(out)]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("counterexample")][0]
    assert "20 values in [" in line and len(line) < 200 and str(out) in line
    assert out.read_text().startswith("sat\n") and "(X_19 " in out.read_text()


def test_single_instance_interrupted_writes_unknown(files, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(sys.modules["lirpac.cli"], "verify", interrupted)
    out = tmp_path / "result.txt"
    assert main(["verify", str(files["model"]), str(files["holds"]), "--out", str(out)]) == 130
    assert out.read_text() == "unknown\n" and "interrupted" in capsys.readouterr().out


def test_closed_pipe_gives_no_traceback(files):
    process = subprocess.Popen([sys.executable, "-m", "lirpac", "dump", str(files["model"])],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()   # the reader is gone before the first write, as after `| head -1`
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141 and "Traceback" not in err and "BrokenPipe" not in err


# -- batch mode: exit codes, input files, results -----------------------------------------------

def test_batch_exit_codes_and_input_files(files, tmp_path, capsys):
    (tmp_path / "broken.onnx").write_bytes(b"not onnx")
    (tmp_path / "errors.csv").write_text("broken.onnx,holds.vnnlib,5\nbroken.onnx,violated.vnnlib,5\n")
    assert main(["verify", "--instances", str(tmp_path / "errors.csv")]) == 2   # all errors: not 0
    assert "ModelFormatError" in capsys.readouterr().err
    (tmp_path / "short.csv").write_text("tiny.onnx,holds.vnnlib\n")
    (tmp_path / "nan.csv").write_text("tiny.onnx,holds.vnnlib,nan\n")
    (tmp_path / "latin1.csv").write_bytes("tiny.onnx,h\xe9.vnnlib,5\n".encode("latin-1"))
    for name, message in [("short.csv", "line 1: expected 'onnx,vnnlib,timeout'"),
                          ("nan.csv", "line 1: the timeout must be a finite number"),
                          ("latin1.csv", "not UTF-8"), ("missing.csv", "does not exist")]:
        assert main(["verify", "--instances", str(tmp_path / name)]) == 2, name
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (name, err)
    (tmp_path / "ok.csv").write_text("tiny.onnx,holds.vnnlib,20\n")
    assert main(["verify", "--instances", str(tmp_path / "ok.csv"), "--expected", str(tmp_path / "nope.csv")]) == 2
    assert "expected file" in capsys.readouterr().err


def test_batch_results_file(files, tmp_path, capsys):
    (tmp_path / "broken.onnx").write_bytes(b"not onnx")
    (tmp_path / "i.csv").write_text("tiny.onnx,holds.vnnlib,20\ntiny.onnx,violated.vnnlib,20\n"
                                    "broken.onnx,holds.vnnlib,20\n")
    (tmp_path / "e.csv").write_text("tiny.onnx,holds.vnnlib,unsat\ntiny.onnx,violated.vnnlib,sat\n")
    results = tmp_path / "results.csv"
    code = main(["verify", "--instances", str(tmp_path / "i.csv"), "--expected", str(tmp_path / "e.csv"),
                 "--results", str(results)])
    assert code == 2   # one instance could not be run
    rows = list(csv.DictReader(results.open()))
    assert [r["status"] for r in rows] == ["holds", "violated", "error"]
    assert [r["expected"] for r in rows] == ["holds", "violated", ""]
    assert list(rows[0]) == ["onnx", "vnnlib", "status", "time", "expected", "message"]
    assert "ModelFormatError" in rows[2]["message"] and float(rows[0]["time"]) > 0
    assert main(["verify", "--instances", str(tmp_path / "i.csv"), "--results", str(tmp_path)]) == 2


@pytest.mark.slow
def test_batch_interrupted_prints_summary_and_exits_130(files, tmp_path):
    """Ctrl-C in the second (slow) instance: exit 130, the table counts the first, the results
    file has both rows, the second as unknown."""
    onnx.save(mlp([64, 512, 512, 512, 1]), tmp_path / "wide.onnx")
    # a threshold between the largest sampled output and CROWN's upper bound: no attack reaches
    # it and no quick bound proves it (a threshold far above, like 1000, is proved at once)
    net = lirpac.compile(str(tmp_path / "wide.onnx"))
    box = lirpac.Box(-torch.ones(1, 64), torch.ones(1, 64))
    upper = net.bounds(torch.zeros(1, 64), box, method="crown")[1].item()
    sampled = net(torch.rand(4096, 64) * 2 - 1).max().item()
    threshold = sampled + 0.5 * (upper - sampled)
    (tmp_path / "hard.vnnlib").write_text(box_spec(64, 1, [f"(>= Y_0 {threshold})"]))
    (tmp_path / "i.csv").write_text("tiny.onnx,holds.vnnlib,20\nwide.onnx,hard.vnnlib,300\n")
    results = tmp_path / "results.csv"
    process = subprocess.Popen([sys.executable, "-m", "lirpac", "verify", "--instances", str(tmp_path / "i.csv"),
                                "--results", str(results)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    first = process.stderr.readline()   # the first instance's progress line: the second has begun
    assert first.startswith("[1/2]"), first
    time.sleep(2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    assert "holds" in out and "wrong" in out   # the summary table
    rows = list(csv.DictReader(results.open()))
    assert [r["status"] for r in rows] == ["holds", "unknown"] and rows[1]["message"] == "interrupted"


# -- deadlines ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wide_net(tmp_path_factory):
    """CROWN on this MLP (float64, a box of width 2 on 64 inputs) takes seconds: its
    intermediate passes must stop at the deadline."""
    path = tmp_path_factory.mktemp("wide") / "wide.onnx"
    onnx.save(mlp([64, 1024, 1024, 1024, 1]), path)
    return lirpac.compile(str(path))


@pytest.mark.parametrize("timeout", [0.3, 1.0])
def test_verify_stops_at_its_deadline(wide_net, timeout):
    spec = box_spec(64, 1, ["(>= Y_0 1000)"])
    # (CPU time, not wall time: the deadline runs on the wall clock, so a loaded machine
    # stops the work earlier in CPU time, and only an overrun past the deadline adds to it)
    started = time.process_time()
    result = verify(wide_net, spec, timeout=timeout)
    elapsed = time.process_time() - started
    assert result.status in ("timeout", "unknown") and elapsed < timeout + 0.5, (elapsed, result, result.log)


def test_parse_stops_at_the_deadline_and_huge_specs_are_refused(files):
    """19 conjoined (or a b): 2^19 polytopes. Expanding them takes far longer than the
    deadline; a smaller blow-up (2^10 polytopes of 10 rows) is refused with a precise error."""
    huge = spec_text(BOX, [f"(or (<= Y_0 {-1 - i}) (>= Y_1 {1 + i}))" for i in range(19)])
    started = time.process_time()     # (CPU time: see test_verify_stops_at_its_deadline)
    result = verify(str(files["model"]), huge, timeout=0.5)
    assert result.status == "timeout" and time.process_time() - started < 1.5, result
    large = spec_text(BOX, [f"(or (<= Y_0 {-1 - i}) (>= Y_1 {1 + i}))" for i in range(10)])
    result = verify(str(files["model"]), large, timeout=20)
    assert result.status == "error" and "10240 rows" in result.message and "split the property" in result.message


def test_pgd_starts_no_step_past_the_deadline():
    forward = torch.nn.Linear(3, 2).double()
    polytope = type("P", (), {"C": np.array([[1.0, 0.0]]), "d": np.array([-100.0])})()
    lower, upper = -torch.ones(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64)
    x, viol = pgd_attack(forward, lower, upper, [polytope], deadline=time.monotonic() + 1, first_step_seconds=5)
    assert x.shape == (0, 3) and viol.shape == (0,)
    timing = {}
    x, viol = pgd_attack(forward, lower, upper, [polytope], steps=3, timing=timing)
    assert len(x) >= 1 and timing["samples"] == 8 and timing["step_seconds"] > 0


def test_alpha_crown_under_a_deadline_keeps_its_best_bound(tmp_path):
    onnx.save(mlp([16, 128, 128, 2]), tmp_path / "m.onnx")
    net = lirpac.compile(str(tmp_path / "m.onnx"))
    x = torch.zeros(1, 16, dtype=torch.float64)
    box = lirpac.Box(x - 0.5, x + 0.5)
    with torch.no_grad():
        crown, _ = net.bounds(x, box, method="crown", bound_upper=False)
        with deadline.within(time.monotonic() + 60):
            alpha, _ = net.bounds(x, box, method="alpha-crown", bound_upper=False, options={"iterations": 5})
    assert torch.all(alpha >= crown - 1e-9)


# The timed chunks of an intermediate pass under a deadline give the bounds of the whole pass
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), width=st.floats(0.01, 2.0), chunk_seconds=st.sampled_from([0.0, 0.25]))
def test_timed_chunks_keep_the_bounds(seed, width, chunk_seconds):
    import lirpac.codegen.runtime as runtime
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 3)).double().eval()
    x = torch.randn(2, 4, dtype=torch.float64)
    net = lirpac.compile(model, x)
    ball = lirpac.LpBall(eps=width)
    with torch.no_grad():
        lower, upper = net.bounds(x, ball, method="crown")
        saved = runtime.DEADLINE_CHUNK_SECONDS
        runtime.DEADLINE_CHUNK_SECONDS = chunk_seconds   # 0: one row per chunk
        try:
            with deadline.within(time.monotonic() + 600):
                timed_lower, timed_upper = net.bounds(x, ball, method="crown")
        finally:
            runtime.DEADLINE_CHUNK_SECONDS = saved
        torch.testing.assert_close(timed_lower, lower)
        torch.testing.assert_close(timed_upper, upper)
        samples = x.unsqueeze(1) + width * (2 * torch.rand(2, 200, 4, dtype=torch.float64) - 1)
        y = model(samples)
    assert torch.all(y >= timed_lower.unsqueeze(1) - 1e-9) and torch.all(y <= timed_upper.unsqueeze(1) + 1e-9)


def test_deadline_checks():
    with deadline.within(time.monotonic() - 1):
        with pytest.raises(deadline.OutOfTime):
            deadline.check()
        with deadline.within(time.monotonic() + 100):   # an earlier enclosing deadline stays
            assert deadline.left() < 0
    assert deadline.left() == float("inf")
    deadline.check(1e9)   # no deadline: nothing is out of time
    with pytest.raises(InputError):
        deadline.validate_timeout(float("nan"))
