"""benchmarks/gpu.py: its exit without a GPU, and (slow) every code path on tiny models."""
import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("triton")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.py"


def _script():
    spec = importlib.util.spec_from_file_location("_gpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_exits_cleanly_without_a_gpu(monkeypatch, capsys):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _script().main([]) == 0
    assert "no CUDA device" in capsys.readouterr().out


@pytest.mark.slow
def test_smoke_run(capsys):
    assert _script().main(["--smoke", "--models", "mlp", "cnn", "--no-reference"]) == 0
    out = capsys.readouterr().out
    assert "| mlp | alpha-crown | 2 |" in out and "| relaxed step, two sides |" in out
    assert "| relaxed step on Patches + its gradient, shared sides |" in out and "| IBP of a batch norm |" in out
    assert "Error" not in out and "OOM" not in out
