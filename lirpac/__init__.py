"""lirpac: a compiler for neural-network bound propagation.

    net = lirpac.compile(model, example_input)
    lower, upper = net.bounds(x, lirpac.LpBall(eps=0.03), method="crown")
"""
from lirpac.alpha import AlphaOptions, AlphaState
from lirpac.api import AlphaResult, CompiledNet, LinearBounds, compile
from lirpac.custom_ops import register_op, unregister_op
from lirpac import testing  # noqa: E402  (check_op, check_model: soundness checks for users)
from lirpac.methods import METHODS
from lirpac.errors import (InputError, LirpacError, ModelFormatError, SpecFormatError,
                           UnsupportedOperationError)
from lirpac.perturbation import Box, L0Ball, LpBall, Perturbation
from lirpac.perturbations import PerturbedParameters, SubstitutedTokens, WordSubstitution
from lirpac.verify import verify
from lirpac.specs import margin_spec
from lirpac import training  # robust losses, eps schedules, verified error (certified training)

__version__ = "0.1.0"
__all__ = ["compile", "CompiledNet", "LinearBounds", "AlphaOptions", "AlphaState", "AlphaResult", "LpBall", "L0Ball", "Box", "Perturbation", "PerturbedParameters", "SubstitutedTokens", "WordSubstitution", "METHODS", "margin_spec",
           "LirpacError", "InputError", "UnsupportedOperationError", "ModelFormatError",
           "SpecFormatError", "verify", "training", "register_op", "unregister_op"]
