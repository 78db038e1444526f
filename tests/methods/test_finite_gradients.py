"""Certified training through exp and softmax where intermediate bounds overflow exp (a wide
score interval: exp(u) = inf): bounds are never NaN and contain sampled outputs, and the
gradient of a finite loss is finite (a line dropped for its IBP fallback was computed through
infinities, whose inf * 0 gradient used to reach the parameters as NaN)."""
import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

import lirpac
from sampling import sample_lp_ball
from word_models import T, V, Attention, random_substitutes


class Scores(nn.Module):
    """Linear -> exp or softmax -> Linear, with large first-layer weights."""

    def __init__(self, act, scale):
        super().__init__()
        self.a, self.b, self.act = nn.Linear(3, 4), nn.Linear(4, 2), act
        with torch.no_grad():
            self.a.weight.mul_(scale)

    def forward(self, x):
        h = self.a(x)
        return self.b(torch.exp(h) if self.act == "exp" else torch.softmax(h, -1))


def finite_part(t):
    return torch.where(torch.isfinite(t), t, torch.zeros((), dtype=t.dtype))


def grads(model, lower, upper):
    """Gradients of the width, its infinite entries left out (their loss is not finite)."""
    model.zero_grad()
    (finite_part(upper) - finite_part(lower)).sum().backward()
    return [p.grad for p in model.parameters() if p.grad is not None]


@settings(max_examples=6, deadline=None)
@given(act=st.sampled_from(["exp", "softmax"]), method=st.sampled_from(["crown", "crown-ibp"]),
       scale=st.sampled_from([1.0, 30.0, 300.0]), eps=st.sampled_from([0.5, 3.0, 10.0]),
       seed=st.integers(0, 100))
def test_overflowing_exp_keeps_bounds_and_gradients_finite(act, method, scale, eps, seed):
    torch.manual_seed(seed)
    model = Scores(act, scale)
    x = torch.randn(2, 3)
    net = lirpac.compile(model, x)
    lower, upper = net.bounds(x, lirpac.LpBall(eps=eps), method=method)
    assert not lower.isnan().any() and not upper.isnan().any()
    if act == "softmax":          # a bounded output: its bounds are finite too
        assert lower.isfinite().all() and upper.isfinite().all()
    points = sample_lp_ball(x, eps, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out = model(points.reshape(-1, 3)).reshape(points.shape[0], 2, 2)
    finite = out.isfinite()             # (a point's exp may overflow in the model itself)
    tol = 1e-5 * (1 + finite_part(out).abs())
    assert ((out >= lower.detach() - tol) | ~finite).all()
    assert ((out <= upper.detach() + tol) | ~finite).all()
    for grad in grads(model, lower, upper):
        assert grad.isfinite().all()


def test_overflow_is_reached():
    """The cases above do overflow: exp's interval bounds are infinite at the largest scale."""
    torch.manual_seed(0)
    model = Scores("exp", 300.0)
    x = torch.randn(2, 3)
    lower, upper = lirpac.compile(model, x).bounds(x, lirpac.LpBall(eps=10.0), method="crown")
    assert (upper == math.inf).any()


@pytest.mark.parametrize("method", ["crown", "crown-ibp"])
def test_attention_over_substitutions_trains(method):
    """The word-substitution attention model with sharp scores (the case certified training
    hit NaN on): finite bounds and finite gradients."""
    torch.manual_seed(0)
    model = Attention()
    with torch.no_grad():
        model.q.weight.mul_(40.0)
        model.k.weight.mul_(40.0)
        model.embed.weight.mul_(4.0)
    net = lirpac.compile(model, torch.zeros(1, T, dtype=torch.long))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (2, T), generator=g)
    subs = random_substitutes(g, most=3)
    lower, upper = net.bounds(ids, lirpac.WordSubstitution(subs, 3), method=method)
    assert lower.isfinite().all() and upper.isfinite().all()
    for grad in grads(model, lower, upper):
        assert grad.isfinite().all()
