import os
import sys

from hypothesis import settings

sys.path.insert(0, os.path.dirname(__file__))

# CI must be reproducible: the same examples on every run (a red CI blocks every change).
# Explore new examples with LIRPAC_HYPOTHESIS_RANDOM=1 (and --hypothesis-seed=N).
settings.register_profile("lirpac", derandomize=not os.environ.get("LIRPAC_HYPOTHESIS_RANDOM"))
settings.load_profile("lirpac")
