"""Word substitution: each position of a sentence may be replaced by one of its listed
substitutes, at most k positions per sentence.

The set lives on the embedded sentence (B, T, d): position t holds one of its candidates'
embeddings (the original word's included). For a linear function a . x the exact max is the
original's value plus the k largest per-position gains max_c a_t . (e_c - e_t) (each at least
0: keeping the word), as for an L0 set with a finite choice per element; the min likewise. So
backward and forward mode bound through the embedding with the candidates themselves, not a
box around them; IBP starts from each position's own box of candidates (tight per element)
and a first linear layer gets its exact range per position.

    st = lirpac.SubstitutedTokens(model, "embed")        # the model's nn.Embedding, by name
    net = lirpac.compile(st, st.embed(ids))
    ws = st.substitution(ids, substitutes, k=2)          # substitutes[b][t]: token ids
    lower, upper = net.bounds(st.embed(ids), ws, method="crown")
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from lirpac.errors import InputError
from lirpac.ir.ops.common import overflow_unbounded
from lirpac.ir.opdef import Interval
from lirpac.perturbations.base import InputSet, Perturbation
from lirpac.perturbations.l0 import top_k_sum


class _GivenEmbeddings(nn.Module):
    """Stands in for an nn.Embedding: returns the embedded sentence given to the call."""

    def __init__(self):
        super().__init__()
        self.given = None

    def forward(self, ids):
        return self.given


class SubstitutedTokens(nn.Module):
    """``model`` (which reads token ids) as a function of its embedded sentence (B, T, d): the
    nn.Embedding named ``embedding`` is bypassed, so the sentence's embeddings are the input a
    WordSubstitution set perturbs. The model may use the ids only through that embedding."""

    def __init__(self, model: nn.Module, embedding: str):
        super().__init__()
        modules = dict(model.named_modules())
        if not isinstance(modules.get(embedding), nn.Embedding):
            found = [n for n, m in modules.items() if isinstance(m, nn.Embedding)]
            raise InputError(f"SubstitutedTokens: {embedding!r} is not an nn.Embedding of the model "
                             f"(its embeddings: {', '.join(found) or 'none'})")
        self.table = modules[embedding]
        shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
        self.model = copy.deepcopy(model, shared)
        self.slot = _GivenEmbeddings()
        parent, _, child = embedding.rpartition(".")
        setattr(dict(self.model.named_modules())[parent] if parent else self.model, child, self.slot)
        self.train(model.training)

    def forward(self, embedded: torch.Tensor) -> torch.Tensor:
        ids = torch.zeros(embedded.shape[:2], dtype=torch.long, device=embedded.device)
        self.slot.given = embedded
        try:
            return self.model(ids)
        finally:
            self.slot.given = None

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The embedded sentence of token ids (B, T)."""
        if ids.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) or ids.dim() != 2:
            raise InputError(f"token ids must be an integer tensor (batch, length), got {ids.dtype} "
                             f"of shape {tuple(ids.shape)}")
        return self.table(ids)

    def substitution(self, ids: torch.Tensor, substitutes, k: int) -> "WordSubstitution":
        """The set for sentences ``ids`` (B, T): ``substitutes[b][t]`` lists the token ids that may
        replace word t of sentence b (empty: none), at most ``k`` replaced per sentence."""
        return WordSubstitution(candidate_ids(ids, substitutes), self.table.weight, k)


def candidate_ids(ids: torch.Tensor, substitutes) -> torch.Tensor:
    """(B, T, C): each position's candidates, the original first, padded with the original."""
    batch, length = ids.shape
    if len(substitutes) != batch or any(len(s) != length for s in substitutes):
        raise InputError(f"substitutes must list, for each of the {batch} sentences, one list of "
                         f"token ids per position ({length})")
    width = 1 + max((len(c) for sentence in substitutes for c in sentence), default=0)
    out = ids.unsqueeze(-1).repeat(1, 1, width)
    for b, sentence in enumerate(substitutes):
        for t, cands in enumerate(sentence):
            if len(cands):
                out[b, t, 1:1 + len(cands)] = torch.as_tensor(list(cands), dtype=ids.dtype)
    return out


class WordSubstitution(Perturbation):
    """At most ``k`` positions take one of their candidates (``candidates``: (B, T, C) token ids,
    the original at [..., 0]), embedded by ``table`` (V, d)."""

    def __init__(self, candidates: torch.Tensor, table: torch.Tensor, k: int):
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise InputError(f"WordSubstitution: k must be a nonnegative integer, got {k!r}")
        if candidates.dim() != 3:
            raise InputError("WordSubstitution: candidates must be (batch, length, choices) token ids")
        if int(candidates.min()) < 0 or int(candidates.max()) >= table.shape[0]:
            raise InputError(f"WordSubstitution: a candidate token id is outside the vocabulary "
                             f"[0, {table.shape[0]})")
        self.candidates, self.table, self.k = candidates, table, k

    def bind(self, x: torch.Tensor) -> InputSet:
        cands = self.table.detach()[self.candidates].to(x.dtype)          # (B, T, C, d)
        if x.shape != cands.shape[:2] + cands.shape[3:]:
            raise InputError(f"WordSubstitution: the embedded sentence has shape {tuple(x.shape)}, "
                             f"the candidates embed to {tuple(cands.shape[:2] + cands.shape[3:])}")
        return SubstitutionSet(x, cands - x.unsqueeze(2), self.k)


class SubstitutionSet(InputSet):
    """Run-time form: the sentence x (B, T, d) and each candidate's move from it (B, T, C, d)."""

    is_box = False

    def __init__(self, centre: torch.Tensor, moves: torch.Tensor, k: int):
        no_move = moves.new_zeros(())
        lower = centre + torch.minimum(moves.amin(2), no_move) if k else centre
        upper = centre + torch.maximum(moves.amax(2), no_move) if k else centre
        super().__init__(lower, upper)
        self.centre, self.moves, self.k = centre, moves, k

    def concretize(self, coeff: torch.Tensor, bias, upper: bool, consume: bool = False) -> torch.Tensor:
        batch, rows = coeff.shape[:2]
        a = coeff.reshape(batch, rows, *self.centre.shape[1:])           # (B, S, T, d)
        at_centre = (a.flatten(2) * self.centre.reshape(self.batch, 1, -1)).sum(-1)
        gains = torch.einsum("bstd,btcd->bstc", a.expand(self.batch, *a.shape[1:]), self.moves)
        if upper:
            best = gains.amax(-1).clamp(min=0)
            result = at_centre + top_k_sum(best, self.k)
        else:
            worst = gains.amin(-1).clamp(max=0)
            result = at_centre - top_k_sum(-worst, self.k)
        return overflow_unbounded(result + bias, upper)

    def first_affine(self, op: str, select, *args, **attrs):
        """A linear layer on each position's embedding (B, T, d) -> (B, T, O): each output reads
        one position, so its exact range is over that position's candidates (k >= 1)."""
        if op != "linear" or self.k == 0:
            return None
        weight, bias = args[0], (args[1] if len(args) > 1 else None)
        if select is not None or weight.shape[-1] != self.centre.shape[-1] or self.centre.dim() != 3:
            return self.linear_by_concretizing(op, select, *args)
        values = torch.matmul(self.centre.unsqueeze(2) + self.moves, weight.transpose(0, 1))
        lower, upper = values.amin(2), values.amax(2)                  # (B, T, O), original included
        if bias is not None:
            lower, upper = lower + bias, upper + bias
        return Interval(lower, upper)
