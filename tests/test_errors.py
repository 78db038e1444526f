"""Bad input gives a precise lirpac error, never a deep traceback or a silent wrong bound."""
import math

import pytest
import torch
import torch.nn as nn

import lirpac
from lirpac.errors import InputError, UnsupportedOperationError


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return lirpac.compile(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval(), torch.randn(1, 4))


class Unsupported(nn.Module):
    def forward(self, x):
        return torch.linalg.qr(x.reshape(x.shape[0], 2, 2)).Q.flatten(1)


def test_unsupported_op_names_op_node_and_source():
    with pytest.raises(UnsupportedOperationError) as info:
        lirpac.compile(Unsupported().eval(), torch.randn(1, 4))
    msg = str(info.value)
    assert "unsupported op 'aten.linalg_qr.default' at node %linalg_qr (test_errors.py:" in msg
    assert "docs/ops.md" in msg
    assert "lirpac.register_op (docs/custom_ops.md)" in msg     # where adding an op is explained


@pytest.mark.parametrize("eps", [-0.1, float("nan"), "0.1", True])
def test_bad_eps(eps):
    with pytest.raises(InputError, match="eps"):
        lirpac.LpBall(eps=eps)


def test_bad_per_sample_eps(net):
    with pytest.raises(InputError, match="eps"):
        net.bounds(torch.randn(2, 4), lirpac.LpBall(eps=torch.tensor([0.1, -0.1])))
    with pytest.raises(InputError, match="eps"):
        net.bounds(torch.randn(2, 4), lirpac.LpBall(eps=torch.tensor([0.1, float("nan")])))
    with pytest.raises(InputError, match="broadcast"):
        net.bounds(torch.randn(2, 4), lirpac.LpBall(eps=torch.ones(3)))


def test_an_empty_domain_box_is_named_as_such(net):
    """lower > upper is an empty box, not a ball that misses it."""
    with pytest.raises(InputError, match="lower > upper at .* the domain box .* is empty"):
        net.bounds(torch.zeros(1, 4), lirpac.LpBall(eps=0.1, lower=1.0, upper=0.0))
    with pytest.raises(InputError, match="does not meet the domain box"):
        net.bounds(torch.full((1, 4), 3.0), lirpac.LpBall(eps=0.1, lower=0.0, upper=1.0))


def test_unbounded_input_set(net):
    """An infinite eps or box bound would give NaN bounds (inf - inf): a precise error instead;
    an infinite L-inf eps inside a finite domain box is that box."""
    x = torch.zeros(1, 4)
    low = x.clone()
    low[0, 0] = -math.inf
    for method in ("ibp", "crown"):
        with pytest.raises(InputError, match="Box: some bounds are infinite"):
            net.bounds(x, lirpac.Box(low, x + 1), method=method)
        with pytest.raises(InputError, match="eps is infinite"):
            net.bounds(x, lirpac.LpBall(eps=math.inf), method=method)
        with pytest.raises(InputError, match="finite for the L2 norm"):
            net.bounds(x, lirpac.LpBall(eps=math.inf, norm=2, lower=-1, upper=1), method=method)
        with pytest.raises(InputError, match="eps is infinite"):
            net.bounds(torch.zeros(2, 4), lirpac.LpBall(eps=torch.tensor([0.1, math.inf])), method=method)
        lower, upper = net.bounds(x, lirpac.LpBall(eps=math.inf, lower=-1, upper=1), method=method)
        box = net.bounds(x, lirpac.Box(-torch.ones(1, 4), torch.ones(1, 4)), method=method)
        assert torch.equal(lower, box[0]) and torch.equal(upper, box[1])


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_centre(net, bad):
    x = torch.zeros(2, 4)
    x[1, 2] = bad
    with pytest.raises(InputError, match=r"x contains NaN or inf \(first at index \(1, 2\)\)"):
        net.bounds(x, lirpac.LpBall(eps=0.1, norm=2))


def test_huge_finite_centre_is_accepted(net):
    """The finiteness check sums x first: a sum that overflows must not be taken for an inf."""
    x = torch.full((2, 4), 3e38)
    x[0, 0] = -math.inf
    with pytest.raises(InputError, match=r"x contains NaN or inf \(first at index \(0, 0\)\)"):
        net.bounds(x, lirpac.LpBall(eps=0.1))
    x[0, 0] = 3e38
    lower, upper = net.bounds(x, lirpac.LpBall(eps=0.0), method="ibp")
    assert lower.shape == upper.shape == (2, *net.output_shape)


@pytest.mark.parametrize("norm", [0, 0.5, -1, "l3", None, float("nan")])
def test_bad_norm(norm):
    with pytest.raises(InputError, match="norm"):
        lirpac.LpBall(eps=0.1, norm=norm)


def test_norm_names_accepted():
    assert lirpac.LpBall(eps=0.1, norm="inf").norm == math.inf
    assert lirpac.LpBall(eps=0.1, norm="l2").norm == 2.0


def test_wrong_input_shape(net):
    with pytest.raises(InputError, match=r"input shape \(2, 5\)"):
        net.bounds(torch.randn(2, 5), lirpac.LpBall(eps=0.1))


def test_lower_above_upper(net):
    with pytest.raises(InputError, match="lower > upper"):
        net.bounds(torch.zeros(1, 4), lirpac.Box(torch.ones(1, 4), torch.zeros(1, 4)))


def test_ball_outside_domain(net):
    with pytest.raises(InputError, match="domain"):
        net.bounds(torch.full((1, 4), 5.0), lirpac.LpBall(eps=0.1, lower=0.0, upper=1.0))


def test_bad_method_and_spec(net):
    with pytest.raises(InputError, match="unknown method"):
        net.bounds(torch.randn(1, 4), lirpac.LpBall(eps=0.1), method="crwn")
    with pytest.raises(InputError, match="C must have shape"):
        net.bounds(torch.randn(1, 4), lirpac.LpBall(eps=0.1), C=torch.ones(1, 2, 3))
    with pytest.raises(InputError, match="perturbation"):
        net.bounds(torch.randn(1, 4), 0.1)
    with pytest.raises(InputError, match="floating"):
        net.bounds(torch.ones(1, 4, dtype=torch.int64), lirpac.LpBall(eps=0.1))


def test_batch_dependent_model_is_rejected():
    class MixesBatch(nn.Module):
        def forward(self, x):
            return x.reshape(-1)
    with pytest.raises(UnsupportedOperationError, match="batch"):
        lirpac.compile(MixesBatch().eval(), torch.randn(1, 4))


def test_dropout_in_training_mode_is_bounded_in_eval_mode_with_a_warning():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Dropout(0.2))
    with pytest.warns(UserWarning, match="training mode"):
        lirpac.compile(model, torch.randn(1, 4))


# -- argument validation: each bad argument named, with what is accepted ----------------------

def test_batch_size_zero(net):
    for method in ("crown", "alpha-crown"):
        with pytest.raises(InputError, match="batch size 0"):
            net.bounds(torch.randn(0, 4), lirpac.LpBall(eps=0.1), method=method)


@pytest.mark.parametrize("method", [None, 3, "crwn"])
def test_unknown_method_lists_every_accepted_name(net, method):
    from lirpac.methods import METHODS
    for call in (net.bounds, net.linear_bounds):
        with pytest.raises(InputError, match="unknown method") as info:
            call(torch.randn(1, 4), lirpac.LpBall(eps=0.1), method=method)
        assert all(repr(name) in str(info.value) for name in METHODS)


@pytest.mark.parametrize("method", ["crown", "alpha-crown"])
def test_options_must_be_a_dict(net, method):
    with pytest.raises(InputError, match="options must be a dict.*got list"):
        net.bounds(torch.randn(1, 4), lirpac.LpBall(eps=0.1), method=method, options=["iterations", 2])


@pytest.mark.parametrize("name, value, accepted", [
    ("iterations", "20", "an integer >= 1"), ("iterations", 2.5, "an integer >= 1"),
    ("iterations", 0, "an integer >= 1"), ("iterations", True, "an integer >= 1"),
    ("patience", None, "an integer >= 1"),
    ("lr", math.nan, "a finite number >= 0"), ("lr", math.inf, "a finite number >= 0"),
    ("lr", -1, "a finite number >= 0"), ("lr", "0.5", "a finite number >= 0"),
    ("beta_lr", math.nan, "a finite number >= 0"),
    ("lr_decay", 0, r"a number in \(0, 1\]"), ("lr_decay", math.nan, r"a number in \(0, 1\]"),
    ("time_limit", math.nan, "a number of seconds > 0"), ("time_limit", -math.inf, "a number of seconds > 0"),
    ("time_limit", 0, "a number of seconds > 0"), ("time_limit", "1", "a number of seconds > 0"), ("alpha_shared", "yes", "True or False"),
    ("optimize_intermediate", 1, "True or False")])
def test_bad_alpha_option_names_option_and_what_it_accepts(net, name, value, accepted):
    x, ball = torch.randn(1, 4), lirpac.LpBall(eps=0.1)
    with pytest.raises(InputError, match=f"option {name}=.*{name} must be {accepted}"):
        net.bounds(x, ball, method="alpha-crown", options={name: value})
    with pytest.raises(InputError, match=f"option {name}="):
        net.alpha_crown(x, ball, **{name: value})


def test_every_alpha_option_has_a_rule():
    from dataclasses import fields
    from lirpac.alpha import _OPTION_RULES
    assert set(_OPTION_RULES) == {f.name for f in fields(lirpac.AlphaOptions)}


def test_good_alpha_options_are_accepted(net):
    lower, upper = net.bounds(torch.randn(1, 4), lirpac.LpBall(eps=0.1), method="alpha-crown",
                              options={"iterations": 2, "lr": 1, "time_limit": 5, "patience": 3})
    assert torch.isfinite(lower).all() and torch.isfinite(upper).all()
    for no_limit in (None, math.inf):    # an infinite deadline is no limit
        net.bounds(torch.randn(1, 4), lirpac.LpBall(eps=0.1), method="alpha-crown",
                   options={"iterations": 2, "time_limit": no_limit})


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_spec_with_nan_or_inf(net, bad):
    C = torch.ones(2, 3, 2)
    C[1, 2, 0] = bad
    with pytest.raises(InputError, match=r"C contains NaN or inf \(first at index \(1, 2, 0\)"):
        net.bounds(torch.randn(2, 4), lirpac.LpBall(eps=0.1), C=C)


def test_spec_overflowing_the_input_dtype(net):
    with pytest.raises(InputError, match="C contains NaN or inf"):
        net.bounds(torch.randn(1, 4), lirpac.LpBall(eps=0.1),
                   C=torch.full((1, 1, 2), 1e300, dtype=torch.float64))


@pytest.mark.parametrize("C", [torch.ones(3, 2), torch.ones(2, 3, 5), torch.ones(3, 1, 2), [[[1.0, 0.0]]]])
def test_spec_of_the_wrong_shape(net, C):
    with pytest.raises(InputError, match=r"C must have shape \(batch, n_spec, 2\)"):
        net.bounds(torch.randn(2, 4), lirpac.LpBall(eps=0.1), C=C)


def test_boolean_spec(net):
    with pytest.raises(InputError, match="C must be a real"):
        net.bounds(torch.randn(1, 4), lirpac.LpBall(eps=0.1), C=torch.ones(1, 1, 2, dtype=torch.bool))


def test_meta_tensors(net):
    x = torch.randn(1, 4)
    with pytest.raises(InputError, match="x is on the meta device"):
        net.bounds(x.to("meta"), lirpac.LpBall(eps=0.1))
    with pytest.raises(InputError, match="C is on the meta device"):
        net.bounds(x, lirpac.LpBall(eps=0.1), C=torch.ones(1, 1, 2, device="meta"))
    with pytest.raises(InputError, match="eps is on the meta device"):
        net.bounds(x, lirpac.LpBall(eps=torch.ones(1, device="meta")))
    with pytest.raises(InputError, match="lower is on the meta device"):
        net.bounds(x, lirpac.Box(torch.zeros(1, 4, device="meta"), 1.0))
    model = nn.Linear(4, 2).eval()
    with pytest.raises(InputError, match="example_input is on the meta device"):
        lirpac.compile(model, x.to("meta"))
    with pytest.raises(InputError, match="parameters are on the meta device"):
        lirpac.compile(model.to("meta"), x)


@pytest.mark.parametrize("norm", ["inf", 2, 1])
def test_eps_finite_as_given_but_infinite_in_the_input_dtype(net, norm):
    for eps in (1e300, torch.tensor([1e300], dtype=torch.float64)):
        with pytest.raises(InputError, match=r"infinite \(eps=1e\+300 is infinite in float32, the "
                                             r"input's dtype, whose largest number is 3.403e\+38\)"):
            net.bounds(torch.randn(1, 4), lirpac.LpBall(eps=eps, norm=norm))
    with pytest.raises(InputError, match=r"Box: some bounds are infinite.*lower=-1e\+300 is infinite"):
        net.bounds(torch.randn(1, 4), lirpac.Box(-1e300, 1.0))


def test_eps_overflowing_to_inf_inside_a_domain_box_is_that_box(net):
    x = torch.zeros(1, 4)
    lower, upper = net.bounds(x, lirpac.LpBall(eps=1e300, lower=-1, upper=1), method="crown")
    box = net.bounds(x, lirpac.Box(-1.0, 1.0), method="crown")
    assert torch.equal(lower, box[0]) and torch.equal(upper, box[1])


def test_model_and_example_of_different_dtypes():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double().eval()
    with pytest.raises(InputError, match="the dtypes differ: the model's parameters are float64 but "
                                         "example_input is float32"):
        lirpac.compile(model, torch.randn(1, 4))
    with pytest.raises(InputError, match="example_input must be a floating-point tensor"):
        lirpac.compile(model, torch.ones(1, 4, dtype=torch.int64))


def test_unbatched_example_is_named():
    """One image (C, H, W) for a model of (B, C, H, W), or one feature vector, is refused with
    what to pass instead."""
    import torch.nn as nn
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()
    with pytest.raises(lirpac.InputError, match=r"looks unbatched.*unsqueeze\(0\)"):
        lirpac.compile(conv, torch.rand(1, 8, 8))
    with pytest.raises(lirpac.InputError, match="looks unbatched"):
        lirpac.compile(nn.Linear(4, 3).eval(), torch.rand(4))


@pytest.mark.parametrize("max_memory", [-1, 0, 0.5, "1GB", float("nan"), float("inf"), True])
def test_bad_max_memory_is_named(max_memory):
    """A max_memory no chunk size can honour was accepted silently (a string or a negative
    number): it is refused when the model is compiled."""
    model = nn.Sequential(nn.Linear(4, 2)).eval()
    with pytest.raises(InputError, match="max_memory"):
        lirpac.compile(model, torch.randn(1, 4), max_memory=max_memory)
    assert lirpac.compile(model, torch.randn(1, 4), max_memory=1e9).max_memory == 10 ** 9


@pytest.mark.slow      # (torch.export takes seconds to fail on the guard)
def test_value_dependent_control_flow_is_named():
    """An `if` on a tensor's value fails torch.export with a guard error; the message says that
    the control flow depends on the input's values and what to write instead."""
    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)
    with pytest.raises(UnsupportedOperationError, match="control flow or a shape depends on the input's values"):
        lirpac.compile(Branches().eval(), torch.randn(2, 3))
