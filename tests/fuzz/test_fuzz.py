"""The differential fuzzer (tests/fuzz_models.py, tests/fuzz_checks.py) under pytest: random
small models of the ops lirpac bounds, every method's bounds checked against sampled and
attacked points of the set, batch independence, and the exact variants (patches or matrix
convolutions, no passes, the ONNX frontend) agreeing. The default suite runs a few fixed
models; ``-m slow`` lets hypothesis draw many more. To fuzz longer, outside pytest:
``python tests/fuzz_checks.py FIRST LAST`` (one line per failing seed)."""
import warnings

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fuzz_checks import check_seed

# seeds whose models cover 2-d convolutions (transposed too), pooling, residual adds, BatchNorm
# and a product of two branches, each well under a second
QUICK_SEEDS = [4, 5, 8, 13, 14]


@pytest.mark.parametrize("seed", QUICK_SEEDS)
def test_random_model(seed):
    check_seed(seed, variants=False)


@pytest.mark.slow
def test_random_model_variants():
    """Batch independence, patches vs matrix, no passes and ONNX on one conv model."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_seed(5)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10**6))
def test_random_models(seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_seed(seed)
