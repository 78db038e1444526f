"""Points of a perturbation set, corners included, and a containment check: the checker lirpac
ships to users (lirpac/testing.py), which the tests run too."""
from lirpac.testing import assert_contains, sample_lp_ball  # noqa: F401
