"""lirpac.allocator: glibc malloc thresholds set once, and only where the user did not choose."""
import platform

import pytest
import torch

import lirpac
from lirpac import allocator

USER_CHOICES = ("LIRPAC_MALLOC_TUNING", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_thresholds_are_set_unless_the_user_chose(monkeypatch):
    for name in USER_CHOICES:
        monkeypatch.delenv(name, raising=False)
    assert allocator._apply()
    for name, value in (("LIRPAC_MALLOC_TUNING", "0"), ("MALLOC_MMAP_THRESHOLD_", "131072"),
                        ("MALLOC_TRIM_THRESHOLD_", "131072")):
        with monkeypatch.context() as env:
            env.setenv(name, value)
            assert not allocator._apply()


def test_compiling_a_model_tunes_once():
    lirpac.compile(torch.nn.Linear(3, 2).eval(), torch.zeros(1, 3))
    assert allocator.tune.cache_info().currsize == 1     # tuned, once
