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


def test_simple_training_runs_and_certifies_something():
    out = _run("examples/simple_training.py", "--epochs", "2", "--ramp", "0.5")
    assert "certified test accuracy" in out


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
