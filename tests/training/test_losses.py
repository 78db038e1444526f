"""lirpac.training: robust losses bound the cross-entropy over the set; loss fusion agrees with
the unfused loss where theory says it must and costs one backward row per sample; schedules."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

import lirpac
from lirpac import training
from sampling import sample_lp_ball

N_CLASSES = 7


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, N_CLASSES)).eval()
    return model, lirpac.compile(model, torch.zeros(2, 5))


def _data(seed, batch=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 5, generator=g), torch.randint(0, N_CLASSES, (batch,), generator=g)


def _worst_sampled_ce(model, x, y, eps, norm, seed):
    points = sample_lp_ball(x, eps, norm, 400, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        logits = model(points.reshape(-1, x.shape[1]))
    ce = F.cross_entropy(logits, y.repeat(len(points)), reduction="none")
    return ce.reshape(len(points), -1).max(dim=0).values


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.sampled_from([0.01, 0.1, 0.5]),
       norm=st.sampled_from([math.inf, 2.0]), method=st.sampled_from(training.ROBUST_METHODS),
       fused=st.booleans())
def test_robust_loss_bounds_the_sampled_cross_entropy(mlp, seed, eps, norm, method, fused):
    model, net = mlp
    x, y = _data(seed)
    ball = lirpac.LpBall(eps=eps, norm=norm)
    bound = training.robust_loss(net, x, y, ball, method, fused=fused, reduction="none")
    assert torch.all(_worst_sampled_ce(model, x, y, eps, norm, seed) <= bound + 1e-5)


@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_fused_equals_unfused_for_ibp(mlp, eps):
    """IBP of log sum exp(d) is log sum exp(upper d): the worst-logit cross-entropy exactly."""
    _, net = mlp
    x, y = _data(1)
    ball = lirpac.LpBall(eps=eps)
    fused = training.fused_ce_bound(net, x, y, ball, "ibp")
    unfused = training.robust_loss(net, x, y, ball, "ibp", fused=False, reduction="none")
    torch.testing.assert_close(fused, unfused, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_fused_crown_never_looser_than_unfused_crown(mlp, eps):
    """With the chords over CROWN's own margin bounds, the one-row bound of sum_j chord_j(d_j)
    is at most sum_j chord_j(upper d_j) = sum_j exp(upper d_j): the unfused bound."""
    _, net = mlp
    x, y = _data(2, batch=16)
    ball = lirpac.LpBall(eps=eps)
    fused = training.robust_loss(net, x, y, ball, "crown", fused=True, reduction="none")
    unfused = training.robust_loss(net, x, y, ball, "crown", fused=False, reduction="none")
    assert torch.all(fused <= unfused + 1e-5)


@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_fused_crown_ibp_never_looser_than_the_ibp_loss(mlp, eps):
    _, net = mlp
    x, y = _data(3, batch=16)
    ball = lirpac.LpBall(eps=eps)
    fused = training.robust_loss(net, x, y, ball, "crown-ibp", fused=True, reduction="none")
    ibp = training.robust_loss(net, x, y, ball, "ibp", fused=False, reduction="none")
    assert torch.all(fused <= ibp + 1e-6)


@pytest.mark.parametrize("method", training.ROBUST_METHODS)
@pytest.mark.parametrize("fused", [True, False])
def test_zero_radius_gives_the_clean_cross_entropy(mlp, method, fused):
    model, net = mlp
    x, y = _data(4)
    bound = training.robust_loss(net, x, y, lirpac.LpBall(eps=0.0), method, fused=fused,
                                 reduction="none")
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y, reduction="none")
    torch.testing.assert_close(bound, clean, rtol=1e-5, atol=1e-5)


def test_fused_loss_runs_one_backward_row_per_sample(mlp, monkeypatch):
    _, net = mlp
    x, y = _data(5)
    rows = []
    original = net.bounds

    def spy(x, perturbation, method="crown", C=None, **kw):
        rows.append((method, None if C is None else C.shape[1]))
        return original(x, perturbation, method=method, C=C, **kw)
    monkeypatch.setattr(net, "bounds", spy)
    training.robust_loss(net, x, y, lirpac.LpBall(eps=0.1), "crown-ibp", fused=True)
    assert [r for m, r in rows if m != "ibp"] == [1]
    rows.clear()
    training.robust_loss(net, x, y, lirpac.LpBall(eps=0.1), "crown-ibp", fused=False)
    assert [r for m, r in rows if m != "ibp"] == [N_CLASSES - 1]


@pytest.mark.parametrize("fused", [True, False])
def test_robust_loss_is_differentiable_in_the_parameters(mlp, fused):
    model, net = mlp
    x, y = _data(6)
    model.zero_grad()
    loss = training.robust_loss(net, x, y, lirpac.LpBall(eps=0.1), "crown-ibp", beta=0.5,
                                fused=fused)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    model.zero_grad()


def test_crown_ibp_beta_mixes_the_margin_bounds(mlp):
    _, net = mlp
    x, y = _data(7)
    ball = lirpac.LpBall(eps=0.2)
    ibp = training.margin_lower_bounds(net, x, y, ball, "ibp")
    crown_ibp = training.margin_lower_bounds(net, x, y, ball, "crown-ibp", beta=1.0)
    mixed = training.margin_lower_bounds(net, x, y, ball, "crown-ibp", beta=0.25)
    torch.testing.assert_close(mixed, 0.25 * crown_ibp + 0.75 * ibp)


def test_verified_error_at_zero_radius_is_the_clean_error(mlp):
    model, net = mlp
    x, y = _data(8, batch=32)
    with torch.no_grad():
        clean = training.clean_error(model(x), y)
    for method in ("ibp", "crown", "crown-intersect", "best"):
        assert training.verified_error(net, x, y, lirpac.LpBall(eps=0.0), method) == \
            pytest.approx(clean)
    assert training.verified_error(net, x, y, lirpac.LpBall(eps=10.0), "crown") == 1.0


def test_bad_arguments_are_named(mlp):
    _, net = mlp
    x, y = _data(9)
    with pytest.raises(lirpac.InputError, match="method"):
        training.robust_loss(net, x, y, lirpac.LpBall(eps=0.1), "forward")
    with pytest.raises(lirpac.InputError, match="beta"):
        training.robust_loss(net, x, y, lirpac.LpBall(eps=0.1), "crown-ibp", beta=2.0)


# -- schedules -----------------------------------------------------------------------------------

def test_linear_schedule():
    s = training.LinearSchedule(0.3, start=10, length=100)
    assert [s(0), s(10), s(60), s(110), s(500)] == pytest.approx([0, 0, 0.15, 0.3, 0.3])


def test_smoothed_schedule_is_a_smooth_monotone_ramp():
    s = training.SmoothedSchedule(0.4, start=5, length=200, mid=0.25, power=4.0)
    values = [s(t) for t in range(0, 260)]
    assert values[:6] == [0.0] * 6
    assert values[205] == pytest.approx(0.4) and values[-1] == pytest.approx(0.4)
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))
    # the polynomial piece meets the linear one with the same slope at the mid point
    t_mid = 5 + 50
    left, right = s(t_mid) - s(t_mid - 1), s(t_mid + 1) - s(t_mid)
    assert left == pytest.approx(right, rel=0.05)
    # closed form below the mid point: alpha t^4 with the matched-slope alpha
    alpha = 0.4 / ((200 - 50) * 4 * 50 ** 3 + 50 ** 4)
    assert s(5 + 20) == pytest.approx(alpha * 20 ** 4)


def test_crown_ibp_beta():
    assert training.crown_ibp_beta(0.0, 0.3) == 1.0
    assert training.crown_ibp_beta(0.15, 0.3) == pytest.approx(0.5)
    assert training.crown_ibp_beta(0.3, 0.3) == 0.0


def test_exp_chords_are_sound_and_have_finite_gradients_on_wide_intervals():
    lower = torch.tensor([-8e4, -3.0, -0.5, -2.0, -1e-9], requires_grad=True)
    upper = torch.tensor([0.0, -1.0, -0.5, -2.0 + 1e-6, 0.0], requires_grad=True)
    slope, intercept = training._exp_chords(lower, upper)
    t = torch.linspace(0, 1, 101).unsqueeze(1)
    points = lower.detach() + t * (upper - lower).detach()
    assert torch.all(torch.exp(points) <= slope.detach() * points + intercept.detach() + 1e-6)
    (slope.sum() + intercept.sum()).backward()
    assert torch.isfinite(lower.grad).all() and torch.isfinite(upper.grad).all()
