"""Triton's kernels run here on CPU tensors through its interpreter: TRITON_INTERPRET must be
set before a kernel is decorated, that is before lirpac.codegen.triton's kernel modules are
first imported (this conftest loads before the tests of this folder; nothing else in the
suite imports them). The test modules skip themselves when triton does not import."""
import os
import warnings

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _quiet_interpreter():
    # the interpreter evaluates both branches of tl.where with numpy: 0 * inf warns there,
    # though the kernel's result is the selected 0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="triton")
        yield
