"""Word substitution: each position of a sentence may be replaced by one of its listed
substitutes, at most k positions per sentence.

A model of token ids is compiled on them, and the set is over the ids; the embedding that
reads them maps it to the set of embedded sentences (ir/ops/embedding.py), where position t
holds one of its candidates' rows (the original word's included):

    net = lirpac.compile(model, ids)                     # the model calls an nn.Embedding
    ws = lirpac.WordSubstitution(substitutes, k=2)       # substitutes[b][t]: token ids
    lower, upper = net.bounds(ids, ws, method="crown")

For a linear function a . x of the embedded sentence the exact max is the original's value plus
the k largest per-position gains max_c a_t . (e_c - e_t) (each at least 0: keeping the word),
as for an L0 set with a finite choice per element; the min likewise. So backward and forward
mode bound through the embedding with the candidates themselves, not a box around them; IBP
starts from each position's own box of candidates (tight per element) and a first linear layer
gets its exact range per position. The rows come from the live table: bounds are
differentiable in it.

``SubstitutedTokens`` is the older form, on a model rewritten to take embedded sentences:

    st = lirpac.SubstitutedTokens(model, "embed")        # the model's nn.Embedding, by name
    net = lirpac.compile(st, st.embed(ids))
    lower, upper = net.bounds(st.embed(ids), st.substitution(ids, substitutes, k=2), method="crown")
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from lirpac.errors import InputError
from lirpac.ir.ops.common import overflow_unbounded
from lirpac.ir.opdef import Interval
from lirpac.perturbations import anchor
from lirpac.perturbations.anchor import ProductAnchor, single_moves
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
        return EmbeddedSubstitution(candidate_ids(ids, substitutes), self.table.weight, k)


def check_k(k, who: str) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise InputError(f"{who}: k must be a nonnegative integer (how many words may change), got {k!r}")
    return k


def check_token_ids(ids, perturbation) -> torch.Tensor:
    """The ids of a bound call on a model of token ids, and its set, checked."""
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        what = ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise InputError(f"the model reads token ids: x must be an integer tensor (batch, length), got {what}")
    if not isinstance(perturbation, WordSubstitution):
        raise InputError("the model reads token ids through an embedding: bound it with "
                         "lirpac.WordSubstitution(substitutes, k), got "
                         f"{type(perturbation).__name__} (a box or ball around token ids means nothing)")
    return ids


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


def synonym_candidates(ids: torch.Tensor, synonyms: torch.Tensor) -> torch.Tensor:
    """(B, T, 1 + S): each position's word, then its row of ``synonyms`` (V, S), where -1
    (no synonym) stands for the word itself."""
    rows = synonyms.to(ids.device)[ids]
    return torch.cat([ids.unsqueeze(-1), torch.where(rows < 0, ids.unsqueeze(-1), rows)], -1)


class WordSubstitution(Perturbation):
    """Sentences of token ids (B, T) in which at most ``k`` words are replaced, word t of
    sentence b by one of ``substitutes[b][t]`` (a list of token ids, maybe empty), or, with
    ``synonyms`` (a (V, S) integer tensor, -1 padded), word w by one of its row's ids; for a
    model compiled on token ids that reads them through an nn.Embedding. No substitutes at all
    (``WordSubstitution(None, 0)``) keeps the sentence: the bounds are its outputs. ``scale`` in
    [0, 1] shrinks every candidate's move from the original word's row by that factor, for
    training schedules that ramp the set up (Jia et al. 2019 scale theirs so); 1 is the set."""

    def __init__(self, substitutes=None, k: int = 1, *, synonyms: torch.Tensor | None = None,
                 scale: float = 1.0):
        self.k = check_k(k, "WordSubstitution")
        if not 0.0 <= scale <= 1.0:
            raise InputError(f"WordSubstitution: scale must lie in [0, 1], got {scale!r}")
        self.scale = float(scale)
        if substitutes is not None and synonyms is not None:
            raise InputError("WordSubstitution: give substitutes (per sentence) or synonyms (per "
                             "word), not both")
        if synonyms is not None and (not isinstance(synonyms, torch.Tensor) or synonyms.dim() != 2
                                     or synonyms.is_floating_point()):
            raise InputError("WordSubstitution: synonyms must be a (vocabulary, S) integer tensor "
                             "of token ids, -1 where a word has fewer than S")
        self.substitutes, self.synonyms = substitutes, synonyms

    def bind(self, ids: torch.Tensor) -> "TokenSet":
        if ids.dim() != 2:
            raise InputError(f"WordSubstitution: token ids must be (batch, length), got shape "
                             f"{tuple(ids.shape)}")
        if self.synonyms is not None:
            candidates = synonym_candidates(ids, self.synonyms)
        elif self.substitutes is not None:
            candidates = candidate_ids(ids, self.substitutes).to(ids.device)
        else:
            candidates = ids.unsqueeze(-1)
        return TokenSet(candidates, self.k, self.scale)


class TokenSet(InputSet):
    """Run-time form over the ids: each position's candidates (B, T, C), the original at
    [..., 0]. The embedding that reads the ids turns it into a set over its rows
    (``embedded``); linear functions of ids themselves mean nothing."""

    is_box = False

    def __init__(self, candidates: torch.Tensor, k: int, scale: float = 1.0):
        super().__init__(candidates.amin(-1), candidates.amax(-1))
        self.candidates, self.k, self.scale = candidates, k, scale

    def embedded(self, table: torch.Tensor) -> "SubstitutionSet":
        """The set of embedded sentences: rows of ``table`` (V, d) at the candidates."""
        if int(self.candidates.min()) < 0 or int(self.candidates.max()) >= table.shape[0]:
            raise InputError(f"WordSubstitution: a token id (of a sentence or a substitute) is outside "
                             f"the embedding's vocabulary [0, {table.shape[0]})")
        centre = F.embedding(self.candidates[..., 0], table)             # (B, T, d)
        rows = F.embedding(self.candidates, table)                        # (B, T, C, d)
        moves = rows - centre.unsqueeze(2)
        return SubstitutionSet(centre, moves if self.scale == 1.0 else moves * self.scale, self.k)

    def concretize(self, coeff, bias, upper: bool, consume: bool = False):
        raise InputError("a set over token ids is bounded through the embedding that reads them; "
                         "a linear function of the ids themselves has no meaning")


class EmbeddedSubstitution(Perturbation):
    """``SubstitutedTokens``' set, over the embedded sentence: at most ``k`` positions take one
    of their candidates (``candidates``: (B, T, C) token ids, the original at [..., 0]),
    embedded by ``table`` (V, d)."""

    def __init__(self, candidates: torch.Tensor, table: torch.Tensor, k: int):
        check_k(k, "WordSubstitution")
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

    def product_anchor(self, left, right):
        """The factors at the original sentence and their changes under each single
        substitution (perturbations/anchor.py)."""
        a0, b0 = left(self.centre), right(self.centre)
        grid = self.moves.shape[:3]                                       # (B, T, C)
        out = a0.shape[1:-1] + b0.shape[-1:]
        sizes = (self.centre[0].numel(), a0[0].numel(), b0[0].numel(), math.prod(out))
        if math.prod(grid) * max(sizes) > anchor.MAX_ELEMENTS:
            return None       # (long sentences: McCormick's planes, in the memory they need)
        points = single_moves(self.centre, self.moves)

        def moved(factor):
            values = factor(points)
            return values.reshape(*grid, *values.shape[1:])
        return ProductAnchor(a0, b0, moved(left), moved(right), self.k)

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
