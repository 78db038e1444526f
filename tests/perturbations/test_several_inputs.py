"""Models with several perturbed inputs: each input's set concretizes its part of a linear
bound (the parts summed); sound by sampling every set at once, and an image split in two halves
with the same L-inf ball on each gives the bounds of the whole image's ball."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import lirpac
from lirpac.compat import BoundedModule, BoundedTensor, PerturbationLpNorm

METHODS = ["ibp", "crown", "forward", "crown-ibp", "forward+crown"]


class WholeImage(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(4 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        h = F.relu(self.conv1(x)).flatten(1)
        return self.fc2(F.relu(self.fc1(h)))


class TwoHalves(nn.Module):
    """verify_two_node's shape: the two halves of an image, joined again inside the model."""

    def __init__(self, whole: WholeImage):
        super().__init__()
        self.whole = whole

    def forward(self, top, bottom):
        return self.whole(torch.cat([top, bottom], dim=2))


class Mixed(nn.Module):
    """An image and a vector, mixed through a product of both branches."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc_a, self.fc_b = nn.Linear(8, 5), nn.Linear(4, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, image, vector):
        a = self.fc_a(F.relu(self.conv(image)).flatten(1))
        b = torch.tanh(self.fc_b(vector))
        return self.head(F.relu(a) * b + a)


@pytest.fixture(scope="module")
def halves():
    torch.manual_seed(0)
    whole = WholeImage().eval()
    image = torch.rand(2, 1, 8, 8)
    top, bottom = image[:, :, :4], image[:, :, 4:]
    model = TwoHalves(whole).eval()
    nets = lirpac.compile(whole, image[:1]), lirpac.compile(model, (top[:1], bottom[:1]))
    return whole, model, image, top, bottom, nets


@pytest.mark.parametrize("method", ["ibp", "crown", pytest.param("forward", marks=pytest.mark.slow),
                                    pytest.param("crown-ibp", marks=pytest.mark.slow),
                                    pytest.param("forward+crown", marks=pytest.mark.slow)])
def test_two_halves_match_the_whole_image(halves, method):
    whole, model, image, top, bottom, (whole_net, net) = halves
    expected = whole_net.bounds(image, lirpac.LpBall(eps=0.1), method=method)
    got = net.bounds((top, bottom), (lirpac.LpBall(eps=0.1), lirpac.LpBall(eps=0.1)), method=method)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_compat_two_node(halves):
    """auto_LiRPA's verify_two_node: BoundedModule over a tuple of inputs, both perturbed."""
    whole, model, image, top, bottom, (whole_net, _) = halves
    bounded = BoundedModule(model, (torch.empty_like(top), torch.empty_like(bottom)))
    ptb = PerturbationLpNorm(norm=math.inf, eps=0.1)
    pred = bounded(BoundedTensor(top, ptb), BoundedTensor(bottom, ptb))
    torch.testing.assert_close(pred, whole(image))
    lower, upper = bounded.compute_bounds(method="backward")
    expected = whole_net.bounds(image, lirpac.LpBall(eps=0.1), method="crown")
    torch.testing.assert_close(lower, expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(upper, expected[1], rtol=1e-5, atol=1e-5)
    # a plain tensor is a fixed input: only the top half moves
    fixed = bounded.compute_bounds(x=(BoundedTensor(top, ptb), bottom), method="backward")
    assert ((fixed[1] - fixed[0]) <= (upper - lower) + 1e-6).all()


def _sample(x, ball, n, g):
    """(n, *x.shape) points of one input's set (None: x itself)."""
    if ball is None:
        return x.unsqueeze(0).expand(n, *x.shape)
    if isinstance(ball, lirpac.L0Ball):
        flat = x.flatten(1).unsqueeze(0).repeat(n, 1, 1)
        for i in range(n):
            idx = torch.randperm(flat.shape[-1], generator=g)[:ball.k]
            corner = torch.randint(0, 2, (x.shape[0], len(idx)), generator=g).to(x.dtype)
            if i % 2:
                corner = torch.rand(x.shape[0], len(idx), generator=g)
            flat[i][:, idx] = ball.lower + corner * (ball.upper - ball.lower)
        return flat.reshape(n, *x.shape)
    d = torch.randn((n, *x.shape), generator=g)
    if ball.norm == math.inf:
        d = d.sign()
    else:
        d = d / torch.linalg.vector_norm(d.flatten(2), ord=ball.norm, dim=-1).reshape(n, x.shape[0], *[1] * (x.dim() - 1))
    return x + ball.eps * d * torch.rand((n,) + (1,) * x.dim(), generator=g).clamp(min=0.5)


def _a_set(kind, eps):
    return {"none": None, "linf": lirpac.LpBall(eps=eps), "l2": lirpac.LpBall(eps=eps, norm=2),
            "l3": lirpac.LpBall(eps=eps, norm=3), "l0": lirpac.L0Ball(2, -1.0, 1.0)}[kind]


_MIXED = {}


@settings(max_examples=4, deadline=None)
@given(method=st.sampled_from(METHODS), first=st.sampled_from(["none", "linf", "l2", "l0"]),
       second=st.sampled_from(["linf", "l3", "l0", "none"]), seed=st.integers(0, 10**6),
       eps=st.floats(0.01, 0.5))
def test_sound_by_sampling_both_sets(method, first, second, seed, eps):
    if first == second == "none":
        second = "linf"
    if not _MIXED:
        torch.manual_seed(1)
        model = Mixed().eval()
        _MIXED["net"] = (model, lirpac.compile(model, (torch.zeros(1, 1, 4, 4), torch.zeros(1, 4))))
    model, net = _MIXED["net"]
    g = torch.Generator().manual_seed(seed)
    image, vector = torch.rand(2, 1, 4, 4, generator=g), torch.rand(2, 4, generator=g)
    sets = (_a_set(first, eps), _a_set(second, eps))
    lower, upper = net.bounds((image, vector), sets, method=method)
    n = 64
    points_a, points_b = _sample(image, sets[0], n, g), _sample(vector, sets[1], n, g)
    with torch.no_grad():
        out = model(points_a.flatten(0, 1), points_b.flatten(0, 1)).reshape(n, 2, -1)
    assert (out >= lower - 1e-5).all() and (out <= upper + 1e-5).all()


def test_bad_arguments_are_refused(halves):
    _, model, _, top, bottom, (_, net) = halves
    with pytest.raises(lirpac.InputError, match="tuple of 2"):
        net.bounds(top, lirpac.LpBall(eps=0.1))
    with pytest.raises(lirpac.InputError, match="every perturbation is None"):
        net.bounds((top, bottom), (None, None))
    with pytest.raises(lirpac.InputError, match=r"x\[1\] has shape"):
        net.bounds((top, bottom[:, :, :2]), lirpac.LpBall(eps=0.1))
    with pytest.raises(lirpac.InputError, match="input 1: .*lower > upper"):
        net.bounds((top, bottom), (lirpac.LpBall(eps=0.1), lirpac.Box(1.0, 0.0)))


class TwoLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc_a, self.fc_b = nn.Linear(6, 3), nn.Linear(4, 3)

    def forward(self, a, b):
        return self.fc_a(a.flatten(1)) + self.fc_b(b)


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_first_layers_are_exact_on_each_input(method):
    """Each input's first linear layer gets its exact range (the rows' dual norms over an L2
    ball, the k largest gains over an L0 set): IBP is exact on a sum of the two."""
    torch.manual_seed(3)
    model = TwoLinear().eval().double()
    a, b = torch.rand(2, 2, 3, dtype=torch.float64), torch.rand(2, 4, dtype=torch.float64)
    net = lirpac.compile(model, (a[:1], b[:1]))
    lower, upper = net.bounds((a, b), (lirpac.LpBall(eps=0.2, norm=2), lirpac.LpBall(eps=0.1, norm=3)),
                              method=method)
    centre = model(a, b)
    radius = (0.2 * torch.linalg.vector_norm(model.fc_a.weight, ord=2, dim=1)
              + 0.1 * torch.linalg.vector_norm(model.fc_b.weight, ord=1.5, dim=1))
    torch.testing.assert_close(lower, centre - radius, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(upper, centre + radius, rtol=1e-9, atol=1e-9)
