"""Products of two affine maps of a word-substitution set (attention's q k^T) anchored at the
original sentence (lirpac/perturbations/anchor.py): the range of the deviations' product
contains every enumerated substitution, the planes are exact where one substitution cannot
move both factors, and attention models stay sound by enumeration."""
import itertools

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

import lirpac
from lirpac.ir.opdef import Interval
from lirpac.perturbations import anchor as anchor_module
from lirpac.perturbations.anchor import ProductAnchor
from word_models import D, T, V, exact_range, random_substitutes


def every_deviation(ga, gb, k):
    """E = (sum of the moved positions' changes of a) @ (likewise of b), every choice."""
    length, choices = ga.shape[1], ga.shape[2]
    for size in range(k + 1):
        for moved in itertools.combinations(range(length), size):
            for picks in itertools.product(range(1, choices), repeat=size):
                da = sum((ga[:, t, c] for t, c in zip(moved, picks)), torch.zeros_like(ga[:, 0, 0]))
                db = sum((gb[:, t, c] for t, c in zip(moved, picks)), torch.zeros_like(gb[:, 0, 0]))
                yield da.matmul(db)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), k=st.integers(0, 3), exact_cross=st.booleans())
def test_deviation_range_contains_every_substitution(seed, k, exact_cross):
    g = torch.Generator().manual_seed(seed)
    batch, length, choices, m, inner, n = 2, 3, 3, 2, 4, 3
    a0, b0 = torch.randn(batch, m, inner, generator=g), torch.randn(batch, inner, n, generator=g)
    ga, gb = torch.randn(batch, length, choices, m, inner, generator=g), torch.randn(batch, length, choices, inner, n, generator=g)
    ga[:, :, 0], gb[:, :, 0] = 0, 0        # candidate 0: the original word
    boxes = Interval(torch.full_like(a0, -1e3), torch.full_like(a0, 1e3)), Interval(torch.full_like(b0, -1e3), torch.full_like(b0, 1e3))
    saved = anchor_module.EXACT_CROSS_WORK
    anchor_module.EXACT_CROSS_WORK = saved if exact_cross else 0
    try:
        err = ProductAnchor(a0, b0, a0[:, None, None] + ga, b0[:, None, None] + gb, k).deviation_range(*boxes)
    finally:
        anchor_module.EXACT_CROSS_WORK = saved
    for e in every_deviation(ga, gb, k):
        assert (err.lower <= e + 1e-5).all() and (e <= err.upper + 1e-5).all()


class Scores(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.q, self.k = nn.Embedding(V, D), nn.Linear(D, D), nn.Linear(D, D)

    def forward(self, ids):
        e = self.embed(ids)
        return (self.q(e) @ self.k(e).transpose(1, 2)).flatten(1)


def scores_case():
    """(model, net on token ids, 3 sentences, their substitutes) for the Scores model."""
    torch.manual_seed(0)
    model = Scores().eval()
    net = lirpac.compile(model, torch.zeros(1, T, dtype=torch.long))
    g = torch.Generator().manual_seed(3)
    ids, subs = torch.randint(0, V, (3, T), generator=g), random_substitutes(g, batch=3, most=3)
    return model, net, ids, subs


@pytest.mark.parametrize("k", [1, 2, 3])
def test_scores_are_exact_where_one_position_moves_them(k):
    """With one substitution every score q_i . k_j is exact (i != j: E = 0; i = j: the fitted
    slopes interpolate q_i . k_i over i's candidates); with more, the diagonal ones stay exact."""
    model, net, ids, subs = scores_case()
    lower, upper = net.bounds(ids, lirpac.WordSubstitution(subs, k), method="crown")
    with torch.no_grad():
        lo, hi = exact_range(model, ids, subs, k)
    assert (lower <= lo + 1e-5).all() and (upper >= hi - 1e-5).all()
    exact = torch.ones(T * T, dtype=torch.bool) if k == 1 else torch.eye(T, dtype=torch.bool).flatten()
    assert torch.allclose(lower[:, exact], lo[:, exact], atol=2e-4)
    assert torch.allclose(upper[:, exact], hi[:, exact], atol=2e-4)
    assert "inp.product_anchor(" in net.source("crown")
    assert "inp.product_anchor(" not in net.source("ibp")


class Heads(nn.Module):
    """nn.MultiheadAttention (two heads) over embedded token ids."""

    def __init__(self):
        super().__init__()
        self.embed, self.attn, self.out = nn.Embedding(V, 6), nn.MultiheadAttention(6, 2, batch_first=True), nn.Linear(6, 2)

    def forward(self, ids):
        e = self.embed(ids)
        return self.out(torch.relu(self.attn(e, e, e, need_weights=False)[0] + e).mean(1))


@pytest.mark.parametrize("method", ["crown", "crown-ibp", "alpha-crown"])
def test_multihead_attention_is_sound_by_enumeration(method):
    torch.manual_seed(1)
    model = Heads().eval()
    net = lirpac.compile(model, torch.zeros(1, T, dtype=torch.long))
    g = torch.Generator().manual_seed(4)
    ids, subs = torch.randint(0, V, (2, T), generator=g), random_substitutes(g, batch=2, most=2)
    for k in (1, 2):
        with torch.set_grad_enabled(method == "alpha-crown"):
            lower, upper = net.bounds(ids, lirpac.WordSubstitution(subs, k), method=method,
                                      options={"iterations": 3} if method == "alpha-crown" else None)
        with torch.no_grad():
            lo, hi = exact_range(model, ids, subs, k)
        assert (lower <= lo + 1e-5).all() and (upper >= hi - 1e-5).all(), (method, k)


def test_a_non_finite_move_leaves_its_elements_unbounded():
    """(an overflowing factor: its row's E has no range, so McCormick's planes are taken there,
    and no NaN reaches the other elements)"""
    a0, b0 = torch.zeros(1, 2, 3), torch.zeros(1, 3, 2)
    a_moved, b_moved = torch.ones(1, 2, 2, 2, 3), torch.ones(1, 2, 2, 3, 2)
    a_moved[0, 1, 1, 0, 2] = float("inf")
    box = Interval(torch.full((1, 2, 3), -9.0), torch.full((1, 2, 3), 9.0)), Interval(torch.full((1, 3, 2), -9.0), torch.full((1, 3, 2), 9.0))
    anchor = ProductAnchor(a0, b0, a_moved, b_moved, 1)
    err = anchor.deviation_range(*box)
    assert torch.isinf(err.lower[0, 0]).all() and torch.isfinite(err.lower[0, 1]).all()
    assert torch.isfinite(anchor.slope_a).all() and torch.isfinite(anchor.slope_b).all()


def test_over_the_memory_budget_the_scores_keep_mccormick(monkeypatch):
    model, net, ids, subs = scores_case()
    anchored = net.bounds(ids, lirpac.WordSubstitution(subs, 1), method="crown")
    monkeypatch.setattr(anchor_module, "MAX_ELEMENTS", 10)
    lower, upper = net.bounds(ids, lirpac.WordSubstitution(subs, 1), method="crown")
    with torch.no_grad():
        lo, hi = exact_range(model, ids, subs, 1)
    assert (lower <= lo + 1e-5).all() and (upper >= hi - 1e-5).all()
    assert ((upper - lower) > (anchored[1] - anchored[0]) + 1e-3).any()      # looser: no anchor
