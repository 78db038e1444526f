"""lirpac.compat: auto_LiRPA's names give lirpac's bounds."""
import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lirpac
from lirpac.compat import BoundedModule, BoundedTensor, PerturbationLpNorm
from models import ARCHS, reinit
from sampling import assert_contains, sample_lp_ball

NAMES = {"IBP": "ibp", "CROWN": "crown", "backward": "crown", "forward": "forward",
         "CROWN-IBP": "crown-ibp", "IBP+backward": "crown-ibp", "Forward+Backward": "forward+crown"}


@pytest.fixture(scope="module")
def setup():
    cls, shape = ARCHS["convnet"]
    model = cls().eval()
    reinit(model, 1)
    x = torch.randn(2, *shape)
    return model, BoundedModule(model, torch.empty_like(x)), x


@pytest.mark.parametrize("name", sorted(NAMES))
def test_method_names_map_to_lirpac_methods(setup, name):
    model, bounded, x = setup
    ptb = PerturbationLpNorm(eps=0.05)
    lower, upper = bounded.compute_bounds(x=(BoundedTensor(x, ptb),), method=name)
    ref_lower, ref_upper = bounded.net.bounds(x, lirpac.LpBall(eps=0.05), method=NAMES[name])
    assert torch.equal(lower, ref_lower) and torch.equal(upper, ref_upper)


def test_forward_runs_the_model_and_x_L_x_U_are_the_box(setup):
    model, bounded, x = setup
    bx = BoundedTensor(x, PerturbationLpNorm(eps=0.3, x_L=x - 0.1, x_U=x + 0.1))
    assert torch.equal(bounded(bx), model(x))
    wide = bounded.compute_bounds(x=(bx,), method="IBP")
    narrow = bounded.net.bounds(x, lirpac.LpBall(eps=0.1), method="ibp")
    assert torch.allclose(wide[0], narrow[0]) and torch.allclose(wide[1], narrow[1])


def test_return_A_gives_sound_linear_bounds(setup):
    model, bounded, x = setup
    C = torch.randn(2, 3, bounded.net.output_shape[0])
    lower, upper, A = bounded.compute_bounds(x=(BoundedTensor(x, PerturbationLpNorm(eps=0.05)),),
                                             method="CROWN", C=C, return_A=True)
    entry = A[bounded.output_name()[0]][bounded.input_name()[0]]
    assert entry["lA"].shape == (2, 3, *x.shape[1:])
    # at the centre the linear bounds enclose the output
    y = torch.einsum("bso,bo->bs", C, model(x))
    lin_lo = (entry["lA"] * x.unsqueeze(1)).flatten(2).sum(-1) + entry["lbias"]
    lin_up = (entry["uA"] * x.unsqueeze(1)).flatten(2).sum(-1) + entry["ubias"]
    assert torch.all(lin_lo <= y + 1e-5) and torch.all(y <= lin_up + 1e-5)


def test_unknown_method_and_missing_perturbation(setup):
    _, bounded, x = setup
    with pytest.raises(lirpac.InputError, match="unknown method"):
        bounded.compute_bounds(x=(BoundedTensor(x, PerturbationLpNorm(eps=0.1)),), method="magic")
    with pytest.raises(lirpac.InputError, match="BoundedTensor"):
        bounded.compute_bounds(x=(x,), method="IBP")


# -- PerturbationLpNorm: the set auto_LiRPA 0.7.1 bounds --------------------------------------
# On the affine map y = W x + b every method is exact, so the bounds are the closed form over
# the set: over a box W c + b ± |W| r (centre c, radius r), over an Lp ball around x
# W x + b ± eps ||W_i||_q (1/p + 1/q = 1).

W = torch.tensor([[1., -2., 0.5], [-1., 0.5, 3.]])
BIAS = torch.tensor([0.25, -1.])
X = torch.tensor([[0.5, -0.25, 1.0]])
X_L = torch.tensor([[0.0, -1.0, 0.75]])
X_U = torch.tensor([[1.0, 0.5, 1.25]])
INF = float("inf")


class Affine(torch.nn.Module):
    def forward(self, x):
        return x @ W.t() + BIAS


# measured on auto_LiRPA 0.7.1 with IBP, CROWN and forward (all three agree):
# (norm, eps, sides given) -> (lower, upper); eps None: not given (its default, 0)
_POINT = ([1.75, 1.375], [1.75, 1.375])
_L2_BALL = ([0.604356050491333, -0.22578108310699463], [2.895643949508667, 2.975780963897705])
_L1_BALL = ([0.75, -0.125], [2.75, 2.875])
REFERENCE = {
    (INF, None, ""): _POINT,
    (INF, None, "LU"): ([-0.375, -0.25], [3.875, 3.0]),
    (INF, None, "L"): ([1.125, 0.25], [3.25, 1.875]),
    (INF, None, "U"): ([0.25, 0.875], [2.375, 2.5]),
    (INF, 0.5, ""): ([0.0, -0.875], [3.5, 3.625]),
    (INF, 0.5, "LU"): ([-0.375, -0.25], [3.875, 3.0]),
    (INF, 0.5, "L"): ([0.125, -0.25], [4.0, 3.625]),
    (INF, 0.5, "U"): ([-0.5, -0.875], [3.375, 3.0]),
    **{(p, None, sides): _POINT for p in (2, 1) for sides in ("", "LU", "L", "U")},
    **{(2, 0.5, sides): _L2_BALL for sides in ("", "LU", "L", "U")},
    **{(1, 0.5, sides): _L1_BALL for sides in ("", "LU", "L", "U")},
}


def _ptb(norm, eps, sides):
    kwargs = {} if eps is None else {"eps": eps}
    if "L" in sides:
        kwargs["x_L"] = X_L
    if "U" in sides:
        kwargs["x_U"] = X_U
    return PerturbationLpNorm(norm=norm, **kwargs)


def _closed_form(norm, eps, sides):
    """The bounds over auto_LiRPA's set: for inf the box (a side not given is x -+ eps), for
    2 and 1 the ball around x (x_L, x_U unused)."""
    eps = 0.0 if eps is None else eps
    if norm == INF:
        lower = X_L if "L" in sides else X - eps
        upper = X_U if "U" in sides else X + eps
        centre, radius = (upper + lower) / 2, (upper - lower) / 2
        mid, spread = centre @ W.t() + BIAS, radius @ W.abs().t()
    else:
        mid, spread = X @ W.t() + BIAS, eps * W.norm(p={2: 2, 1: INF}[norm], dim=1)
    return mid - spread, mid + spread


@pytest.fixture(scope="module")
def affine():
    return BoundedModule(Affine().eval(), torch.zeros(1, 3))


@pytest.mark.parametrize("method", ["IBP", "CROWN", "forward"])
@pytest.mark.parametrize("key", sorted(REFERENCE, key=str), ids=str)
def test_perturbation_set_is_the_references(affine, key, method):
    """Every combination of eps, x_L, x_U and norm bounds auto_LiRPA's set: for inf the box
    [x_L, x_U] (eps fills a side not given), for 2 and 1 the eps-ball (x_L, x_U unused)."""
    lower, upper = affine.compute_bounds(x=(BoundedTensor(X, _ptb(*key)),), method=method)
    exact_lower, exact_upper = _closed_form(*key)
    if method == "IBP" and key[0] != INF:
        # lirpac's IBP starts from the ball's box (auto_LiRPA applies the dual norm at the
        # first linear layer): sound, and looser
        assert torch.all(lower <= exact_lower + 1e-5) and torch.all(upper >= exact_upper - 1e-5)
        return
    torch.testing.assert_close(lower, exact_lower, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(upper, exact_upper, atol=1e-5, rtol=1e-5)
    ref_lower, ref_upper = REFERENCE[key]
    torch.testing.assert_close(lower, torch.tensor([ref_lower]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(upper, torch.tensor([ref_upper]), atol=1e-5, rtol=1e-5)


class Toy(torch.nn.Module):
    """auto_LiRPA's examples/simple/toy.py."""

    def forward(self, x):
        w1 = torch.tensor([[1., -1.], [2., -1.]])
        w2 = torch.tensor([[1., -1.]])
        return torch.relu(x @ w1.t()) @ w2.t()


@pytest.mark.parametrize("method, expected", [("IBP", (-6.0, 4.0)), ("CROWN", (-3.0, 3.0)),
                                              ("alpha-CROWN", (-3.0, 2.0))])
def test_toy_example_bounds_its_box(method, expected):
    """The reference's toy example: x = (1, 1) in the box [-1, 2] x [-2, 1] given by x_L, x_U
    alone (0.7.1 prints these three pairs); eps's default 0 once made it a single point."""
    x = torch.tensor([[1., 1.]])
    ptb = PerturbationLpNorm(norm=INF, x_L=torch.tensor([[-1., -2.]]), x_U=torch.tensor([[2., 1.]]))
    lower, upper = BoundedModule(Toy().eval(), torch.empty_like(x)).compute_bounds(
        x=(BoundedTensor(x, ptb),), method=method)
    torch.testing.assert_close((lower.item(), upper.item()), expected, atol=1e-4, rtol=0)


def test_empty_box_and_missing_eps_are_refused(affine):
    with pytest.raises(lirpac.InputError, match="empty"):
        affine.compute_bounds(x=(BoundedTensor(X, PerturbationLpNorm(x_L=X_U, x_U=X_L)),), method="IBP")
    with pytest.raises(lirpac.InputError, match="empty"):      # x_L above x + eps
        affine.compute_bounds(x=(BoundedTensor(X, PerturbationLpNorm(eps=0.1, x_L=X + 0.5)),), method="IBP")
    with pytest.raises(lirpac.InputError, match="needs eps"):
        PerturbationLpNorm(eps=None, norm=2, x_L=X_L, x_U=X_U)
    with pytest.raises(lirpac.InputError, match="norm"):
        PerturbationLpNorm(eps=0.1, norm=0.5)
    box_only = PerturbationLpNorm(eps=None, x_L=X_L, x_U=X_U)   # eps unused there
    lower, _ = affine.compute_bounds(x=(BoundedTensor(X, box_only),), method="IBP")
    torch.testing.assert_close(lower, _closed_form(INF, None, "LU")[0])


class SmallNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.w1 = torch.nn.Parameter(torch.randn(8, 3, generator=g))
        self.w2 = torch.nn.Parameter(torch.randn(2, 8, generator=g) / 2)

    def forward(self, x):
        return torch.relu(x @ self.w1.t() + 0.1) @ self.w2.t()


_SMALL = {}


def _small_net():
    if not _SMALL:
        model = SmallNet().eval()
        _SMALL["net"] = (model, BoundedModule(model, torch.zeros(1, 3)))
    return _SMALL["net"]


@settings(max_examples=40, deadline=None)
@given(norm=st.sampled_from([INF, 2, 1]), eps=st.sampled_from([None, 0.0, 0.05, 0.3, 1.0]),
       sides=st.sampled_from(["", "L", "U", "LU"]),
       centre=st.lists(st.floats(-2, 2), min_size=3, max_size=3),
       below=st.lists(st.floats(0, 1), min_size=3, max_size=3),
       above=st.lists(st.floats(0, 1), min_size=3, max_size=3),
       shift=st.floats(-1, 1), method=st.sampled_from(["IBP", "CROWN", "CROWN-IBP", "forward"]))
def test_every_point_of_the_references_set_is_bounded(norm, eps, sides, centre, below, above,
                                                      shift, method):
    """Soundness over auto_LiRPA's set, which is not lirpac's LpBall ∩ box: the whole ball
    for norm 2 and 1 (points outside x_L, x_U included), the box [x_L, x_U] for inf even
    where it does not contain x (shift moves the box away from x)."""
    model, bounded = _small_net()
    x = torch.tensor([centre])
    x_L = x + shift - torch.tensor([below])
    x_U = x + shift + torch.tensor([above])
    kwargs = {} if eps is None else {"eps": eps}
    kwargs.update({"x_L": x_L} if "L" in sides else {}, **({"x_U": x_U} if "U" in sides else {}))
    eps = 0.0 if eps is None else eps
    if norm == INF:
        lower = x_L if "L" in sides else x - eps
        upper = x_U if "U" in sides else x + eps
        if (lower > upper).any():
            with pytest.raises(lirpac.InputError, match="empty"):
                bounded.compute_bounds(x=(BoundedTensor(x, PerturbationLpNorm(norm=norm, **kwargs)),),
                                       method=method)
            return
        points = sample_lp_ball((upper + lower) / 2, (upper - lower) / 2, INF, 64)
    else:
        points = sample_lp_ball(x, eps, norm, 64)
    lb, ub = bounded.compute_bounds(x=(BoundedTensor(x, PerturbationLpNorm(norm=norm, **kwargs)),),
                                    method=method)
    assert_contains(model, points, lb, ub)


# -- the CROWN-IBP flow and the method flags ----------------------------------------------------

class Tiny(torch.nn.Module):
    """Three layers where IBP, CROWN-IBP and CROWN all give different margins (and no ReLU
    bound is a tie u = -l, where the two libraries pick different, equally valid, slopes)."""

    def forward(self, x):
        w1 = torch.tensor([[1., -1.], [2., 1.], [-1., 1.]])
        w2 = torch.tensor([[1., -2., 1.], [0.5, 1., -1.]])
        w3 = torch.tensor([[1., -1.], [-2., 1.]])
        h = torch.relu(x @ w1.t() + torch.tensor([0., -0.5, 0.5]))
        h = torch.relu(h @ w2.t() + torch.tensor([0.25, 0.]))
        return h @ w3.t()


TINY_X = torch.tensor([[0.3, -0.6], [0.1, 0.8]])
TINY_C = torch.tensor([[[1., -1.]], [[-1., 1.]]])
# auto_LiRPA 0.7.1, eps=0.45, C=TINY_C: (lower, upper) of each call
TINY_REFERENCE = {
    "ibp": ([-3.5, -7.65], [7.65, 3.3]),
    "crown-ibp": ([-4.449999, -8.589474], [5.2075, 2.757333]),
    "crown": ([-4.334745, -9.75], [4.349999, 8.55973]),
}


@pytest.fixture(scope="module")
def tiny_compiled():
    return BoundedModule(Tiny().eval(), torch.empty_like(TINY_X))


@pytest.fixture
def tiny(tiny_compiled):
    """A BoundedModule with no bounds kept yet (a copy sharing the compiled net)."""
    bounded = copy.copy(tiny_compiled)
    bounded._new_input(None)
    return bounded, BoundedTensor(TINY_X, PerturbationLpNorm(eps=0.45))


def _lirpac(bounded, method, C=TINY_C, eps=0.45, **kwargs):
    return bounded.net.bounds(TINY_X, lirpac.LpBall(eps=eps), method=method, C=C, **kwargs)


def _close_to_reference(bounds, name):
    ref_lower, ref_upper = TINY_REFERENCE[name]
    torch.testing.assert_close(bounds[0], torch.tensor(ref_lower).unsqueeze(1), atol=1e-4, rtol=0)
    if bounds[1] is not None:
        torch.testing.assert_close(bounds[1], torch.tensor(ref_upper).unsqueeze(1), atol=1e-4, rtol=0)


def test_ibp_then_backward_is_crown_ibp(tiny):
    """The reference's training example: an IBP call, then a backward call on the same input
    reusing IBP's intermediate bounds, is CROWN-IBP (it used to run full CROWN)."""
    bounded, bx = tiny
    bounded(bx)
    ibp = bounded.compute_bounds(IBP=True, C=TINY_C, method=None)
    lower, upper = bounded.compute_bounds(IBP=False, C=TINY_C, method="backward", bound_upper=False)
    assert upper is None
    assert torch.equal(ibp[0], _lirpac(bounded, "ibp")[0])
    assert torch.equal(lower, _lirpac(bounded, "crown-ibp", bound_upper=False)[0])
    _close_to_reference(ibp, "ibp")
    _close_to_reference((lower, None), "crown-ibp")
    again = bounded.compute_bounds(IBP=False, C=TINY_C, method="backward")   # still kept
    assert torch.equal(again[0], _lirpac(bounded, "crown-ibp")[0])


def test_a_new_input_drops_the_kept_bounds(tiny):
    bounded, bx = tiny
    bounded.compute_bounds(x=(bx,), IBP=True, C=TINY_C, method=None)
    bounded(bx)                                         # forward sets the input anew
    crown = bounded.compute_bounds(C=TINY_C, method="backward")
    assert torch.equal(crown[0], _lirpac(bounded, "crown")[0])
    _close_to_reference(crown, "crown")
    bounded.compute_bounds(IBP=True, C=TINY_C, method=None)
    given = bounded.compute_bounds(x=(bx,), C=TINY_C, method="backward")   # so does x=...
    assert torch.equal(given[0], crown[0])


@pytest.mark.parametrize("change", ["set_eps", "assign"])
def test_reused_bounds_follow_the_current_set(tiny, change):
    """auto_LiRPA would keep IBP bounds of the old eps (stale, possibly unsound); lirpac
    recomputes them for the set the tensor carries now, however eps was changed."""
    bounded, bx = tiny
    bounded.compute_bounds(x=(bx,), IBP=True, C=TINY_C, method=None)
    if change == "set_eps":
        bx.ptb.set_eps(0.6)
    else:
        bx.ptb.eps = 0.6
    lower, upper = bounded.compute_bounds(C=TINY_C, method="backward")
    wide = _lirpac(bounded, "crown-ibp", eps=0.6)
    assert torch.equal(lower, wide[0]) and torch.equal(upper, wide[1])


@pytest.mark.parametrize("kwargs, method", [
    (dict(IBP=True, method=None), "ibp"),
    (dict(IBP=True, method="IBP"), "ibp"),
    (dict(forward=True, method="IBP"), "ibp"),
    (dict(IBP=True, method="backward"), "crown-ibp"),
    (dict(IBP=True, method="CROWN"), "crown-ibp"),
    (dict(IBP=True, forward=True, method="backward"), "crown-ibp"),
    (dict(forward=True, method="CROWN-IBP"), "crown-ibp"),
    (dict(method="IBP+backward"), "crown-ibp"),
    (dict(method="IBP+CROWN"), "crown-ibp"),
    (dict(forward=True, method="backward"), "forward+crown"),
    (dict(method="forward+CROWN"), "forward+crown"),
    (dict(IBP=True, method="forward+backward"), "crown-ibp"),
    (dict(IBP=True, method="alpha-CROWN"), "alpha-crown"),
], ids=str)
def test_flags_select_the_references_method(tiny, kwargs, method):
    """What auto_LiRPA 0.7.1 runs for each combination (measured): IBP=True makes any backward
    pass CROWN-IBP, forward=True makes it forward+backward, neither changes IBP."""
    bounded, bx = tiny
    lower, upper = bounded.compute_bounds(x=(bx,), C=TINY_C, **kwargs)
    expected = _lirpac(bounded, method)
    torch.testing.assert_close(lower, expected[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(upper, expected[1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("first, second, method", [
    ("CROWN", "CROWN-IBP", "crown"),                # IBP only fills bounds not yet kept
    ("forward", "backward", "forward+crown"),
    ("IBP", "forward+backward", "crown-ibp"),
    ("CROWN-IBP", "backward", "crown-ibp"),
    ("CROWN", "backward", "crown"),
])
def test_a_backward_call_reuses_the_previous_calls_bounds(tiny, first, second, method):
    bounded, bx = tiny
    bounded.compute_bounds(x=(bx,), C=TINY_C, method=first)
    lower, upper = bounded.compute_bounds(C=TINY_C, method=second)
    expected = _lirpac(bounded, method)
    assert torch.equal(lower, expected[0]) and torch.equal(upper, expected[1])


def test_method_none(tiny):
    """method=None is IBP (with the spec folded into the last layer) when IBP=True; without it
    auto_LiRPA returns whatever IBP bounds it kept (None on a fresh module): refused here."""
    bounded, bx = tiny
    with pytest.raises(lirpac.InputError, match="method=None"):
        bounded.compute_bounds(x=(bx,), C=TINY_C, method=None)
    first = bounded.compute_bounds(x=(bx,), IBP=True, C=TINY_C, method=None)
    assert torch.equal(first[0], _lirpac(bounded, "ibp")[0])
    assert bounded.compute_bounds(IBP=True, method=None, reuse_ibp=True) is first


def test_refused_combinations_and_arguments(tiny):
    bounded, bx = tiny
    with pytest.raises(lirpac.InputError, match="IBP=True, method='forward'"):
        bounded.compute_bounds(x=(bx,), IBP=True, method="forward")
    with pytest.raises(lirpac.InputError) as err:
        bounded.compute_bounds(x=(bx,), method="CROWN-fancy")
    for name in ("IBP", "CROWN", "backward", "CROWN-IBP", "IBP+backward", "IBP+CROWN", "forward",
                 "forward+backward", "forward+CROWN", "alpha-CROWN", "CROWN-optimized", "method=None"):
        assert name in str(err.value)
    with pytest.raises(lirpac.InputError, match="final_node_name"):
        bounded.compute_bounds(x=(bx,), method="CROWN", final_node_name="/input")
    with pytest.raises(lirpac.InputError, match="unknown argument 'methd'"):
        bounded.compute_bounds(x=(bx,), methd="CROWN")
    lower, _ = bounded.compute_bounds(x=(bx,), C=TINY_C, method="CROWN", reuse_alpha=True,
                                      final_node_name=None)
    assert torch.equal(lower, _lirpac(bounded, "crown")[0])


@pytest.mark.parametrize("bound_opts, match", [
    ("patches", "bound_opts must be a dict"),
    ({"conv_mode": 3}, r"bound_opts\['conv_mode'\]"),
    ({"conv_mode": "patch"}, r"bound_opts\['conv_mode'\]"),
    ({"relu": "same_slope"}, r"bound_opts\['relu'\]"),
    ({"optimize_bound_args": [("iteration", 5)]}, r"bound_opts\['optimize_bound_args'\] must be a dict"),
    ({"optimize_bound_args": {"iteration": "ten"}}, r"\['iteration'\]='ten'"),
    ({"optimize_bound_args": {"iteration": 2.5}}, r"\['iteration'\]=2.5"),
    ({"optimize_bound_args": {"lr_alpha": float("nan")}}, r"\['lr_alpha'\]=nan"),
    ({"optimize_bound_args": {"use_shared_alpha": "yes"}}, r"\['use_shared_alpha'\]"),
], ids=str)
def test_bound_opts_of_the_wrong_type_are_named(bound_opts, match):
    with pytest.raises(lirpac.InputError, match=match):
        BoundedModule(Tiny().eval(), TINY_X, bound_opts=bound_opts)


def test_bound_opts_reach_lirpac():
    """conv_mode is compile's; optimize_bound_args tune alpha-CROWN (one iteration is CROWN);
    keys that only tune auto_LiRPA's speed are accepted (others are refused by name)."""
    bounded = BoundedModule(Tiny().eval(), TINY_X, bound_opts={
        "conv_mode": "matrix", "relu": "adaptive", "sparse_intermediate_bounds": False,
        "optimize_bound_args": {"iteration": 1, "lr_alpha": 0.1, "early_stop_patience": 3}})
    assert bounded.net.conv_mode == "matrix"
    bx = BoundedTensor(TINY_X, PerturbationLpNorm(eps=0.45))
    alpha = bounded.compute_bounds(x=(bx,), C=TINY_C, method="alpha-CROWN")
    crown = _lirpac(bounded, "crown")
    torch.testing.assert_close(alpha[0], crown[0], atol=1e-5, rtol=0)
