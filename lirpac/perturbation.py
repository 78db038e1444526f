"""Perturbation sets: kept as the import path of earlier code (lirpac.perturbation); the sets
live in lirpac/perturbations/, one file per kind, around the protocol of base.py."""
from lirpac.ir.ops.common import all_finite
from lirpac.perturbations import Box, InputSet, L0Ball, L0Set, LpBall, LpSet, Perturbation

__all__ = ["Perturbation", "InputSet", "Box", "LpBall", "LpSet", "L0Ball", "L0Set", "all_finite"]
