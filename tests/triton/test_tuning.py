"""Autotuned tiles (codegen/triton/tuning.py): under the interpreter one config, the
heuristic's, so nothing is timed; on a GPU a few candidates around it, all launchable, with
the partial results laid out for the narrowest."""
import pytest

pytest.importorskip("triton")

from lirpac.codegen.triton import tile, tuning  # noqa: E402


def test_interpreter_runs_the_heuristic_tile():
    assert tuning.candidates(300, 70) == [tile(300, 70)]
    assert tuning.max_blocks(300, 70) == -(-70 // tile(300, 70)[1])


@pytest.mark.parametrize("rows,n", [(1, 5), (7, 1100), (4096, 64), (3, 100000)])
def test_gpu_candidates_are_configs(monkeypatch, rows, n):
    monkeypatch.setattr(tuning, "interpreting", lambda: False)
    found = tuning.candidates(rows, n)
    assert found[0] == tile(rows, n) and len(found) == len(set(found))
    assert len(found) > 1 or tile(rows, n)[1] == 16     # (the narrowest block has no narrower one)
    configs = {(c.kwargs["ROWS"], c.kwargs["BLOCK"]) for c in tuning.all_configs()}
    assert set(found) <= configs
    kept = tuning._prune(tuning.all_configs(), {"total_rows": rows, "n": n})
    assert [(c.kwargs["ROWS"], c.kwargs["BLOCK"]) for c in kept] == found
    assert tuning.max_blocks(rows, n) == max(-(-n // b) for _, b in found)


def test_a_tuned_launch_under_the_interpreter():
    """The relaxed step and concretization go through triton.autotune here too."""
    import torch
    from lirpac.codegen.triton.concretize import launch_concretize
    from lirpac.codegen.triton.relaxed_step import launch_relaxed_step, relaxed_step_kernel
    a = torch.randn(2, 3, 40, dtype=torch.float64)
    line = torch.randn(1, 40, dtype=torch.float64)
    new_l, _, lbias, _ = launch_relaxed_step(a, None, (line, line, line, None))
    p, m = a.clamp(min=0), a.clamp(max=0)
    torch.testing.assert_close(new_l, (p + m) * line.unsqueeze(1))
    torch.testing.assert_close(lbias, (p * line.unsqueeze(1)).sum(-1))
    mid, rad = torch.randn(2, 40, dtype=torch.float64), torch.rand(2, 40, dtype=torch.float64)
    at_mid, at_rad, _, _ = launch_concretize(a, mid, rad, None, True, False, False)
    torch.testing.assert_close(at_mid, (a * mid.unsqueeze(1)).sum(-1))
    torch.testing.assert_close(at_rad, (a.abs() * rad.unsqueeze(1)).sum(-1))
    assert any(kernel is relaxed_step_kernel for kernel, _ in tuning._tuners)
