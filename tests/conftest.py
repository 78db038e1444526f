import os
import sys

# One torch thread per test process (before torch is imported, so subprocesses inherit it too):
# the tests' tensors are small, and a second intra-op thread only spin-waits; on a shared
# machine it made the suite 4x slower. The suite uses the cores with pytest-xdist instead
# (README: pytest -n auto, one worker per core).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

torch.set_num_threads(1)

sys.path.insert(0, os.path.dirname(__file__))

# CI must be reproducible: the same examples on every run (a red CI blocks every change).
# Explore new examples with LIRPAC_HYPOTHESIS_RANDOM=1 (and --hypothesis-seed=N).
settings.register_profile("lirpac", derandomize=not os.environ.get("LIRPAC_HYPOTHESIS_RANDOM"))
settings.load_profile("lirpac")
