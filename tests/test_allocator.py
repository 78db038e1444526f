"""lirpac.allocator: glibc malloc thresholds set once, and only where the user did not choose."""
import os
import platform
import subprocess
import sys

import pytest

PROBE = ("import torch, lirpac, lirpac.allocator as a; "
         "lirpac.compile(torch.nn.Linear(3, 2), torch.zeros(1, 3)); print(a.tune())")


def _tuned(**env) -> str:
    full = {k: v for k, v in os.environ.items()
            if k not in ("LIRPAC_MALLOC_TUNING", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    full.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE], env=full, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_compile_tunes_malloc_unless_the_user_chose():
    assert _tuned() == "True"
    assert _tuned(LIRPAC_MALLOC_TUNING="0") == "False"
    assert _tuned(MALLOC_TRIM_THRESHOLD_="131072") == "False"
