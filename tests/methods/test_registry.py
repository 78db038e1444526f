"""Methods are objects (lirpac/methods/): names, compat names, modes and options live there."""
import pytest
import torch

import lirpac
from lirpac import methods


def test_every_method_is_registered_once_with_valid_modes():
    assert set(methods.METHODS) == {"ibp", "crown", "forward", "crown-ibp", "forward+crown", "alpha-crown"}
    for name, m in methods.REGISTRY.items():
        assert m.name == name and m.intermediate in methods.MODES and m.final in methods.MODES
    aliases = [a.lower() for m in methods.REGISTRY.values() for a in m.compat_names]
    assert len(aliases) == len(set(aliases))


def test_compat_names_map_as_auto_lirpa_does():
    table = methods.by_compat_name()
    assert table["backward"] == "crown" and table["ibp+backward"] == "crown-ibp"
    assert table["crown-optimized"] == "alpha-crown" and table["forward+backward"] == "forward+crown"
    assert methods.backward_after("ibp").name == "crown-ibp"
    assert methods.backward_after("forward").name == "forward+crown"


def test_lookup_ignores_case_and_names_the_choices():
    assert methods.get("CROWN") is methods.CROWN
    with pytest.raises(lirpac.InputError, match="'alpha-crown'"):
        methods.get("crown2")


def test_options_name_the_method_that_takes_them():
    with pytest.raises(lirpac.InputError, match="'iterations' is an option of method='alpha-crown'"):
        methods.read_options(methods.CROWN, {"iterations": 3})
    fields, run = methods.read_options(methods.CROWN, {"intersect": True})
    assert fields == {"intersect": True} and run is None


def test_a_new_method_needs_no_change_elsewhere():
    """A method is data: a registered variant of CROWN-IBP runs through the API unchanged."""
    variant = methods.Method("ibp-then-backward", "ibp", "backward", "test variant")
    methods.REGISTRY[variant.name] = variant
    try:
        net = lirpac.compile(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(),
                                                 torch.nn.Linear(4, 2)).eval(), torch.zeros(1, 3))
        x, ball = torch.randn(2, 3), lirpac.LpBall(eps=0.2)
        got = net.bounds(x, ball, method=variant.name)
        want = net.bounds(x, ball, method="crown-ibp")
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)
    finally:
        del methods.REGISTRY[variant.name]
