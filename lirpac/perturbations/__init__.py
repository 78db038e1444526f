"""Perturbation sets (one file per kind) and the protocol their run-time form follows
(base.py): the generated code calls only the protocol's operations."""
from lirpac.perturbations.base import InputSet, Perturbation
from lirpac.perturbations.box import Box
from lirpac.perturbations.l0 import L0Ball, L0Set
from lirpac.perturbations.lp import LpBall, LpSet
from lirpac.perturbations.substitution import SubstitutedTokens, WordSubstitution
from lirpac.perturbations.weights import PerturbedParameters

__all__ = ["Perturbation", "InputSet", "Box", "LpBall", "LpSet", "L0Ball", "L0Set", "PerturbedParameters",
           "SubstitutedTokens", "WordSubstitution"]
