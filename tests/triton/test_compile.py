"""The kernels compile for a GPU (sm_90 PTX, Triton's own compiler and bundled ptxas), even
here without one: the interpreter runs any Python, the compiler only Triton's subset (constexpr
branches, typed scalars), so this catches what the interpreter's tests cannot. The compiler
needs a process where triton was imported without TRITON_INTERPRET (this folder's conftest sets
it), so the test runs this file as a script."""
import inspect
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

from triton.runtime.jit import JITFunction  # noqa: E402

from lirpac.codegen.triton.ce_bound import ce_bound_kernel  # noqa: E402
from lirpac.codegen.triton.concretize import concretize_kernel  # noqa: E402
from lirpac.codegen.triton.forward_step import forward_step_kernel  # noqa: E402
from lirpac.codegen.triton.ibp_affine import centre_radius_kernel, interval_of_kernel  # noqa: E402
from lirpac.codegen.triton.ibp_scale import scale_shift_ibp_kernel  # noqa: E402
from lirpac.codegen.triton.patches_step import patches_step_grad_kernel, patches_step_kernel  # noqa: E402
from lirpac.codegen.triton.relaxed_step import relaxed_step_kernel  # noqa: E402
from lirpac.codegen.triton.relaxed_step_grad import relaxed_step_grad_kernel  # noqa: E402

_INTS = {"total_rows", "rows_per_batch", "n", "n_blocks", "line_batch_stride", "alpha_batch_stride",
         "alpha_row_stride", "set_batch_stride", "tiles_per_batch", "rows",
         "k", "C", "H", "W", "KH", "KW", "l_batch_stride", "u_batch_stride", "grad_batch_stride", "node_size",
         "inner", "channels", "corner_stride"}
_I64_POINTERS = {"top", "left"}      # (Patches' window corners)
_PATCHES = dict(CL=True, HAS_LOWER=True, HAS_UPPER=True, HAS_L_SLOPE=True, HAS_L_BIAS=False, HAS_U_SLOPE=True,
                HAS_U_BIAS=True, HAS_ALPHA=True, ALPHA_WINDOWED=True, ALPHA_CL=False, ROWS=4, BLOCK=256)
_RELAXED = dict(HAS_LOWER=True, HAS_UPPER=True, LOAD_UPPER=True, HAS_L_SLOPE=True, HAS_L_BIAS=False,
                HAS_U_SLOPE=True, HAS_U_BIAS=True, HAS_BIAS=True, HAS_ALPHA=True, ROWS=4, BLOCK=1024)
CASES = {
    "relaxed_alpha": (relaxed_step_kernel, _RELAXED, "fp32"),
    "relaxed_shared_lines_0": (relaxed_step_kernel, dict(_RELAXED, LOAD_UPPER=False, HAS_U_BIAS=False, HAS_BIAS=False,
                                                         HAS_ALPHA=False, ROWS=2, BLOCK=16), "fp64"),
    "relaxed_grad_alpha_shared": (relaxed_step_grad_kernel, dict(
        HAS_LOWER=True, HAS_UPPER=True, SHARED=True, SEPARATE=False, HAS_G_L=True, HAS_G_U=True, HAS_GB_L=True,
        HAS_GB_U=True, HAS_L_SLOPE=True, HAS_L_BIAS=False, HAS_U_SLOPE=True, HAS_U_BIAS=True, HAS_ALPHA=True,
        LINE_GRADS=True, ROWS=4, BLOCK=1024), "fp32"),
    "relaxed_grad_upper": (relaxed_step_grad_kernel, dict(
        HAS_LOWER=False, HAS_UPPER=True, SHARED=False, SEPARATE=True, HAS_G_L=False, HAS_G_U=True, HAS_GB_L=False,
        HAS_GB_U=False, HAS_L_SLOPE=True, HAS_L_BIAS=True, HAS_U_SLOPE=True, HAS_U_BIAS=True, HAS_ALPHA=False,
        LINE_GRADS=False, ROWS=2, BLOCK=64), "fp64"),
    "patches_alpha_windows": (patches_step_kernel, dict(_PATCHES, LOAD_UPPER=True, HAS_BIAS=True), "fp32"),
    "patches_shared_alpha": (patches_step_kernel, dict(_PATCHES, CL=False, LOAD_UPPER=False, HAS_BIAS=True,
                                                       ALPHA_WINDOWED=False, BLOCK=16), "fp64"),
    "patches_grad_lines": (patches_step_grad_kernel, dict(
        _PATCHES, SHARED=True, SEPARATE=False, HAS_G_L=True, HAS_G_U=True, HAS_GB_L=True, HAS_GB_U=True,
        ALPHA_WINDOWED=False, LINE_GRADS=True), "fp64"),
    "patches_grad_alpha_windows": (patches_step_grad_kernel, dict(
        _PATCHES, SHARED=False, SEPARATE=True, HAS_G_L=True, HAS_G_U=False, HAS_GB_L=False, HAS_GB_U=True,
        LINE_GRADS=False, ALPHA_CL=True), "fp32"),
    "concretize_ball_box": (concretize_kernel, dict(BOX=True, BALL=True, DUAL_INF=True, ROWS=2, BLOCK=1024), "fp32"),
    "forward_shared": (forward_step_kernel, dict(SHARED=True, ROWS=8, BLOCK=512), "fp32"),
    "ibp_centre_radius": (centre_radius_kernel, dict(BLOCK=1024), "fp32"),
    "ibp_interval_of": (interval_of_kernel, dict(BLOCK=1024), "fp64"),
    "ibp_scale_shift": (scale_shift_ibp_kernel, dict(HAS_SHIFT=True, BLOCK=1024), "fp32"),
    "ibp_scale": (scale_shift_ibp_kernel, dict(HAS_SHIFT=False, BLOCK=1024), "fp64"),
    "ce_bound": (ce_bound_kernel, dict(ROWS=64, BLOCK=16), "fp32"),
}


def _compile(kernel, constants, dtype):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    fn = getattr(kernel, "fn", kernel)      # (the interpreter's wrapper holds the Python function)
    names = list(inspect.signature(fn).parameters)
    signature = {n: "constexpr" if n in constants else "i32" if n in _INTS else "*i64" if n in _I64_POINTERS
                 else f"*{dtype}" for n in names}
    constexprs = {(names.index(k),): v for k, v in constants.items()}
    source = ASTSource(fn=JITFunction(fn), signature=signature, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32))


@pytest.mark.slow
def test_kernels_compile_for_a_gpu():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    run = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    if "SKIP" in run.stdout:
        pytest.skip(run.stdout.strip())
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.split().count("ok") == len(CASES), run.stdout


if __name__ == "__main__":
    for case, (kernel, constants, dtype) in sorted(CASES.items()):
        try:
            ptx = _compile(kernel, constants, dtype).asm["ptx"]
        except (ImportError, RuntimeError) as err:
            if "ptxas" in str(err) or "backend" in str(err).lower():
                print(f"SKIP no CUDA compiler backend in this triton install: {err}")
                break
            raise
        print(case, "ok" if ".entry" in str(ptx) else "no entry in the PTX")
