"""Embedding: token ids (B, *T) -> rows of a weight table (B, *T, d).

No interval and no line describes a set of token ids: an id's neighbours in number are
unrelated words. So when the perturbed input holds ids, the embedding that reads them is where
bound propagation starts (``Graph.set_leaf``): its ``of_set`` rule maps the set over the ids
(``lirpac.WordSubstitution``: each position's candidate ids, at most k changed) to the set of
embedded sentences, which IBP sees as each position's box of candidate rows and backward and
forward mode concretize over the candidates' rows themselves, not over that box
(lirpac/perturbations/substitution.py). The rows are read from the live table, so bounds are
differentiable in it (certified training trains the embedding). Constant ids are a const_fn
the generated code evaluates, exactly.
"""
from __future__ import annotations

import torch.nn.functional as F

from lirpac.errors import InputError
from lirpac.ir.opdef import OpDef, aten_lowering, register


def _forward(ids, weight):
    return F.embedding(ids, weight)


def _of_set(token_set, weight):
    """The set of embedded sentences, from the set over the ids."""
    embedded = getattr(token_set, "embedded", None)
    if embedded is None:
        raise InputError(f"embedding: its token ids are perturbed by {type(token_set).__name__}, "
                         "which is not a set of token ids; use lirpac.WordSubstitution(substitutes, k)")
    return embedded(weight)


register(OpDef(name="embedding", forward=_forward, of_set=_of_set,
               doc="rows of a table at token ids; a set over perturbed ids becomes the set of "
                   "their candidates' rows (the start of bound propagation)"))


@aten_lowering("embedding.default")
def _lower_embedding(lw, weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    table, ids = lw.value(weight), lw.value(indices)
    if table.perturbed:
        raise lw.error("an embedding whose table is perturbed",
                       "lirpac perturbs token ids through an embedding, not the table itself")
    # (padding_idx and scale_grad_by_freq change gradients only, not the rows read)
    return lw.add("embedding", [ids, table])
