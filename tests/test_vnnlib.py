"""The VNNLIB parser: every form VNN-COMP uses, its DNF normalisation, and its error messages."""

import glob
import os
import pathlib

import numpy as np
import pytest

from lirpac.errors import SpecFormatError
from lirpac.vnnlib import OutputPolytope, Region, parse_vnnlib

VNNCOMP = pathlib.Path("/work/shared/vnncomp2021")
REAL_SPECS = sorted(
    glob.glob(str(VNNCOMP / "test" / "*.vnnlib"))
    + glob.glob(str(VNNCOMP / "acasxu" / "*.vnnlib"))
    + glob.glob(str(VNNCOMP / "mnistfc" / "*.vnnlib"))
    + glob.glob(str(VNNCOMP / "cifar10_resnet" / "**" / "*.vnnlib"), recursive=True)
)


def _real_spec_params():
    """Every real spec; the CIFAR ones (one form, 3,072-input boxes, ~0.1 s each) beyond the
    first of each folder run with -m slow."""
    seen, params = set(), []
    for path in REAL_SPECS:
        folder = os.path.dirname(path)
        repeat = "cifar10_resnet" in path and folder in seen
        seen.add(folder)
        params.append(pytest.param(path, marks=pytest.mark.slow) if repeat else path)
    return params


def declare(n_in, n_out):
    return "".join(f"(declare-const X_{i} Real)\n" for i in range(n_in)) + "".join(
        f"(declare-const Y_{j} Real)\n" for j in range(n_out)
    )


def unit_box(n_in):
    return "".join(f"(assert (>= X_{i} -1))\n(assert (<= X_{i} 1))\n" for i in range(n_in))


def rows(polytope):
    """Rows as a set of tuples (C row..., d), so tests do not depend on row order."""
    return {tuple(polytope.C[r]) + (polytope.d[r],) for r in range(len(polytope.d))}


# -- real files ------------------------------------------------------------------------------


@pytest.mark.skipif(not REAL_SPECS, reason="/work/shared/vnncomp2021 is absent")
@pytest.mark.parametrize("path", _real_spec_params() or ["absent"],
                         ids=lambda p: os.path.relpath(p, VNNCOMP))
def test_real_spec_parses(path):
    spec = parse_vnnlib(path)
    assert spec.regions
    for region in spec.regions:
        assert region.lower.shape == region.upper.shape == (spec.n_inputs,)
        assert np.all(np.isfinite(region.lower)) and np.all(region.lower <= region.upper)
        assert region.outputs
        for polytope in region.outputs:
            assert polytope.C.shape == (len(polytope.d), spec.n_outputs)
            assert polytope.C.dtype == polytope.d.dtype == np.float64


@pytest.mark.skipif(not (VNNCOMP / "acasxu" / "prop_6.vnnlib").exists(), reason="acasxu specs absent")
def test_acasxu_prop6_has_two_input_boxes_times_four_outputs():
    spec = parse_vnnlib(VNNCOMP / "acasxu" / "prop_6.vnnlib", n_inputs=5, n_outputs=5)
    assert len(spec.regions) == 2
    assert [len(r.outputs) for r in spec.regions] == [4, 4]
    assert spec.regions[0].upper[1] == pytest.approx(0.499999896)
    assert spec.regions[1].upper[1] == pytest.approx(-0.11140846)
    # (<= Y_1 Y_0): y1 - y0 <= 0
    assert rows(spec.regions[0].outputs[0]) == {(-1.0, 1.0, 0.0, 0.0, 0.0, 0.0)}


@pytest.mark.skipif(not (VNNCOMP / "mnistfc" / "prop_0_0.03.vnnlib").exists(), reason="mnistfc specs absent")
def test_mnistfc_is_one_box_and_nine_single_row_polytopes():
    spec = parse_vnnlib(str(VNNCOMP / "mnistfc" / "prop_0_0.03.vnnlib"), n_inputs=784, n_outputs=10)
    (region,) = spec.regions
    assert len(region.outputs) == 9 and all(p.C.shape == (1, 10) for p in region.outputs)
    # label 8: (>= Y_0 Y_8) is y8 - y0 <= 0
    assert rows(region.outputs[0]) == {tuple(np.eye(10)[8] - np.eye(10)[0]) + (0.0,)}


# -- forms, on small inline specs ------------------------------------------------------------


def test_top_level_box_and_output_conjunction():
    text = declare(2, 3) + """
    ; a comment (with parentheses) that must be skipped
    (assert (<= X_0 0.5)) (assert (>= X_0 -0.5))
    (assert (>= X_1 1e-05))
    (assert (<= X_1 +2))
    (assert (<= Y_0 .5))
    (assert (>= Y_1 -0.3))
    """
    spec = parse_vnnlib(text, n_inputs=2, n_outputs=3)
    assert (spec.n_inputs, spec.n_outputs) == (2, 3)
    (region,) = spec.regions
    np.testing.assert_array_equal(region.lower, [-0.5, 1e-05])
    np.testing.assert_array_equal(region.upper, [0.5, 2.0])
    (polytope,) = region.outputs
    assert rows(polytope) == {(1.0, 0.0, 0.0, 0.5), (0.0, -1.0, 0.0, 0.3)}


def test_comparison_split_by_comments_and_newlines():
    """Such comparisons miss the tokenizer's one-match fast path and take the general one."""
    text = declare(1, 2) + """(assert (>= X_0 ; lower bound
        -1))
    (assert
      (<= X_0 1))
    (assert (<= Y_0 ; first output
        Y_1))"""
    (region,) = parse_vnnlib(text).regions
    assert (region.lower[0], region.upper[0]) == (-1.0, 1.0)
    assert rows(region.outputs[0]) == {(1.0, -1.0, 0.0)}


def test_repeated_bounds_keep_the_tightest():
    text = declare(1, 1) + "(assert (<= X_0 3)) (assert (<= X_0 1)) (assert (>= X_0 -2)) (assert (>= X_0 0))"
    (region,) = parse_vnnlib(text).regions
    assert (region.lower[0], region.upper[0]) == (0.0, 1.0)


def test_variable_against_variable_and_constant_on_the_left():
    text = declare(1, 3) + unit_box(1) + """
    (assert (<= Y_0 Y_1))
    (assert (>= Y_2 Y_1))
    (assert (<= 0.5 Y_0))
    (assert (> 2 Y_2))
    (assert (< Y_1 4))
    """
    (region,) = parse_vnnlib(text).regions
    assert rows(region.outputs[0]) == {
        (1.0, -1.0, 0.0, 0.0),   # y0 - y1 <= 0
        (0.0, 1.0, -1.0, 0.0),   # y1 - y2 <= 0
        (-1.0, 0.0, 0.0, -0.5),  # 0.5 <= y0
        (0.0, 0.0, 1.0, 2.0),    # strict: y2 < 2
        (0.0, 1.0, 0.0, 4.0),    # strict: y1 < 4
    }
    strict = {tuple(region.outputs[0].C[r]): bool(region.outputs[0].strict[r]) for r in range(5)}
    assert [key for key, value in strict.items() if value] == [(0.0, 0.0, 1.0), (0.0, 1.0, 0.0)]


def test_constant_on_the_left_bounds_an_input():
    text = declare(1, 1) + "(assert (<= -1 X_0)) (assert (>= 2 X_0)) (assert (<= Y_0 0))"
    (region,) = parse_vnnlib(text).regions
    assert (region.lower[0], region.upper[0]) == (-1.0, 2.0)


def test_equality():
    text = declare(1, 2) + "(assert (= X_0 0.25)) (assert (= Y_0 Y_1))"
    (region,) = parse_vnnlib(text).regions
    assert (region.lower[0], region.upper[0]) == (0.25, 0.25)
    assert rows(region.outputs[0]) == {(1.0, -1.0, 0.0), (-1.0, 1.0, 0.0)}


def test_or_of_single_comparisons():
    text = declare(1, 3) + unit_box(1) + "(assert (or (<= Y_0 Y_1) (<= Y_0 Y_2)))"
    (region,) = parse_vnnlib(text).regions
    assert [rows(p) for p in region.outputs] == [{(1.0, -1.0, 0.0, 0.0)}, {(1.0, 0.0, -1.0, 0.0)}]


def test_or_of_ands_distributes_the_top_level_output_conjunction():
    text = declare(1, 3) + unit_box(1) + """
    (assert (<= Y_2 7))
    (assert (or (and (<= Y_0 Y_1) (<= Y_0 1)) (and (>= Y_0 5))))
    """
    (region,) = parse_vnnlib(text).regions
    assert [rows(p) for p in region.outputs] == [
        {(0.0, 0.0, 1.0, 7.0), (1.0, -1.0, 0.0, 0.0), (1.0, 0.0, 0.0, 1.0)},
        {(0.0, 0.0, 1.0, 7.0), (-1.0, 0.0, 0.0, -5.0)},
    ]


def test_two_disjunctions_multiply_out():
    text = declare(1, 2) + unit_box(1) + """
    (assert (or (<= Y_0 0) (<= Y_0 1)))
    (assert (or (<= Y_1 0) (<= Y_1 1) (<= Y_1 2)))
    """
    (region,) = parse_vnnlib(text).regions
    assert len(region.outputs) == 6 and all(p.C.shape == (2, 2) for p in region.outputs)


def test_top_level_and_and_nested_connectives():
    text = declare(2, 2) + """
    (assert (and (>= X_0 0) (<= X_0 1) (and (>= X_1 2) (<= X_1 3))))
    (assert (and (or (<= Y_0 0) (and (<= Y_1 0) (or (<= Y_0 5) (<= Y_0 6))))))
    """
    (region,) = parse_vnnlib(text).regions
    np.testing.assert_array_equal(region.lower, [0, 2])
    np.testing.assert_array_equal(region.upper, [1, 3])
    assert [rows(p) for p in region.outputs] == [
        {(1.0, 0.0, 0.0)},
        {(0.0, 1.0, 0.0), (1.0, 0.0, 5.0)},
        {(0.0, 1.0, 0.0), (1.0, 0.0, 6.0)},
    ]


def test_or_over_several_input_boxes_with_mixed_disjuncts():
    """Each disjunct carries its own box and output rows; boxes intersect the top-level box."""
    text = declare(2, 2) + """
    (assert (>= X_1 -1)) (assert (<= X_1 1))
    (assert (or
        (and (>= X_0 0) (<= X_0 1) (<= X_1 0.5) (>= Y_0 Y_1))
        (and (>= X_0 2) (<= X_0 3) (<= Y_1 0))
        (and (<= X_0 1) (>= X_0 0) (<= X_1 0.5) (<= Y_0 -4))
    ))
    """
    spec = parse_vnnlib(text)
    assert len(spec.regions) == 2  # the first and third disjunct share a box
    first, second = spec.regions
    np.testing.assert_array_equal(first.lower, [0, -1])
    np.testing.assert_array_equal(first.upper, [1, 0.5])
    assert [rows(p) for p in first.outputs] == [{(-1.0, 1.0, 0.0)}, {(1.0, 0.0, -4.0)}]
    np.testing.assert_array_equal(second.lower, [2, -1])
    np.testing.assert_array_equal(second.upper, [3, 1])
    assert [rows(p) for p in second.outputs] == [{(0.0, 1.0, 0.0)}]


def test_input_disjunction_crossed_with_output_disjunction():
    """ACAS-Xu property 6 form: an or of boxes and, separately, an or of output conditions."""
    text = declare(1, 2) + """
    (assert (or (and (>= X_0 0) (<= X_0 1)) (and (>= X_0 2) (<= X_0 3))))
    (assert (or (and (<= Y_0 Y_1)) (and (<= Y_1 Y_0))))
    """
    spec = parse_vnnlib(text)
    assert [(r.lower[0], r.upper[0], len(r.outputs)) for r in spec.regions] == [(0, 1, 2), (2, 3, 2)]


def test_no_output_constraint_means_every_output_is_unsafe():
    (region,) = parse_vnnlib(declare(1, 2) + unit_box(1)).regions
    (polytope,) = region.outputs
    assert polytope.C.shape == (0, 2) and polytope.satisfied(np.array([1e9, -1e9]))


def test_source_as_path_and_pathlike(tmp_path):
    path = tmp_path / "p.vnnlib"
    path.write_text(declare(1, 1) + unit_box(1) + "(assert (<= Y_0 0))")
    assert parse_vnnlib(path).n_inputs == 1
    assert parse_vnnlib(str(path)).n_outputs == 1


# -- membership checks used for counterexamples ----------------------------------------------


def test_satisfied_and_contains():
    polytope = OutputPolytope(np.array([[1.0, -1.0]]), np.array([0.0]))
    assert polytope.satisfied(np.array([0.0, 1.0]))
    assert not polytope.satisfied(np.array([1.0, 0.0]))
    assert polytope.satisfied(np.array([1.0, 0.5]), tol=0.5)
    region = Region(np.array([0.0, 0.0]), np.array([1.0, 1.0]), [polytope])
    assert region.contains(np.array([[0.5, 1.0]]))  # any shape with n_in entries
    assert not region.contains(np.array([0.5, 1.1]))
    assert region.contains(np.array([0.5, 1.1]), tol=0.2)
    with pytest.raises(SpecFormatError):
        region.contains(np.zeros(3))


# -- errors ----------------------------------------------------------------------------------

GOOD_HEAD = declare(1, 2)  # 3 lines; line 4 is where each case below starts


@pytest.mark.parametrize(
    "body, line, column, words",
    [
        ("(assert (<= X_0 1)", 4, 1, "unbalanced '('"),
        ("(assert (<= X_0 1)))", 4, 20, "unbalanced ')'"),
        ("(assert (<= Z_0 1))", 4, 13, "unknown variable 'Z_0'"),
        ("(assert (<= foo 1))", 4, 13, "unknown variable 'foo'"),
        ("(assert (<= X_0 1..5))", 4, 17, "malformed number '1..5'"),
        ("(assert (<= X_0 1e))", 4, 17, "malformed number"),
        ("(assert (<= X_0 inf))", 4, 17, "unknown variable 'inf'"),
        ("(assert (<= X_0 1e400))", 4, 17, "number 1e400 overflows float64"),
        ("(assert (>= Y_0 -2e308))", 4, 17, "number -2e308 overflows float64"),
        ("(assert (<= X_3 1))", 4, 13, "undeclared variable X_3"),
        ("(assert (<= Y_9 1))", 4, 13, "undeclared variable Y_9"),
        ("(assert (=> X_0 1))", 4, 10, "unknown operator '=>'"),
        ("(assert (not (<= X_0 1)))", 4, 10, "unknown operator 'not'"),
        ("(assert (or (<= Y_0 1) (xor Y_0 Y_1)))", 4, 25, "unknown operator 'xor'"),
        ("(assert (<= X_0 1 2))", 4, 9, "exactly two operands"),
        ("(assert (<= X_0 Y_0))", 4, 9, "only be compared with a number"),
        ("(assert (<= 1 2))", 4, 9, "two numbers"),
        ("(assert (<= (+ Y_0 Y_1) 2))", 4, 13, "expected a variable or a number"),
        ("(assert (<= X_0 1) (<= X_0 2))", 4, 1, "exactly one formula"),
        ("(assert X_0)", 4, 9, "expected a formula"),
        ("(frobnicate)", 4, 2, "unknown command 'frobnicate'"),
        ("(<= X_0 1)", 4, 1, "unknown command '<='"),
        ("(assert (<= (<= Y_0 1) 2))", 4, 13, "expected a variable or a number"),
        ("(assert (<=X_0 1))", 4, 10, "unknown operator '<=X_0'"),
        ("assert", 4, 1, "expected '('"),
        ("(declare-const X_0 Real)", 4, 16, "declared twice"),
        ("(declare-const X_5 Int)", 4, 20, "unknown sort 'Int'"),
        ("(declare-const W_1 Real)", 4, 16, "unknown variable 'W_1'"),
        ("(assert (<= X_0 1))", 1, 16, "X_0 has no lower bound"),
        ("(assert (>= X_0 1))", 1, 16, "X_0 has no upper bound"),
    ],
)
def test_malformed_spec_names_line_and_column(body, line, column, words):
    with pytest.raises(SpecFormatError) as info:
        parse_vnnlib(GOOD_HEAD + body)
    message = str(info.value)
    assert f"line {line}, column {column}" in message, message
    assert words in message, message


def test_empty_disjunct_box_is_dropped():
    """A disjunct no input satisfies adds nothing to the unsafe set: dropped, not an error."""
    text = declare(1, 1) + unit_box(1) + "(assert (or (and (>= X_0 2)) (and (<= Y_0 0))))"
    (region,) = parse_vnnlib(text).regions
    assert (region.lower[0], region.upper[0]) == (-1.0, 1.0)
    assert rows(region.outputs[0]) == {(1.0, 0.0)}


def test_missing_bound_inside_one_region_names_the_region():
    text = declare(1, 1) + "(assert (or (and (>= X_0 0) (<= X_0 1)) (and (>= X_0 2))))"
    with pytest.raises(SpecFormatError, match=r"X_0 has no upper bound in region 1"):
        parse_vnnlib(text)


def test_gap_in_declared_indices():
    text = "(declare-const X_0 Real)\n(declare-const X_2 Real)\n(declare-const Y_0 Real)\n"
    with pytest.raises(SpecFormatError, match=r"line 2, column 16: X_2 is declared but X_1 is not"):
        parse_vnnlib(text)


def test_declared_counts_must_match_the_model():
    text = declare(1, 2) + unit_box(1)
    with pytest.raises(SpecFormatError, match=r"declares 1 inputs .* but 3 were expected"):
        parse_vnnlib(text, n_inputs=3)
    with pytest.raises(SpecFormatError, match=r"declares 2 outputs .* but 10 were expected"):
        parse_vnnlib(text, n_outputs=10)
    assert parse_vnnlib(text, n_inputs=1, n_outputs=2).n_outputs == 2


def test_file_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.vnnlib"
    path.write_text(declare(1, 1) + "(assert (<= X_0 1)")
    with pytest.raises(SpecFormatError, match=r"bad\.vnnlib: line 3, column 1"):
        parse_vnnlib(path)
    with pytest.raises(SpecFormatError, match="neither an existing file nor VNNLIB text"):
        parse_vnnlib(str(tmp_path / "missing.vnnlib"))


def test_exponential_dnf_is_refused():
    text = declare(1, 1) + unit_box(1) + "(assert (or (<= Y_0 0) (<= Y_0 1)))\n" * 21
    with pytest.raises(SpecFormatError, match="expands to more than"):
        parse_vnnlib(text)


def test_empty_or_makes_the_unsafe_set_empty():
    assert parse_vnnlib(declare(1, 1) + unit_box(1) + "(assert (or))").regions == []


def test_deep_nesting_does_not_recurse():
    depth = 5000
    text = declare(1, 1) + unit_box(1) + "(assert " + "(and " * depth + "(<= Y_0 1)" + ")" * depth + ")"
    (region,) = parse_vnnlib(text).regions
    assert rows(region.outputs[0]) == {(1.0, 1.0)}


# -- blank files and encodings ---------------------------------------------------------------


@pytest.mark.parametrize("text, words", [
    ("", "the spec is empty"),
    ("; only a comment\n\n   ; and another\n", "the spec is empty"),
    ("(check-sat)\n", "no input variable is declared"),
    ("(declare-const X_0 Real)\n(assert (>= X_0 0))\n(assert (<= X_0 1))\n", "no output variable is declared"),
    ("(declare-const Y_0 Real)\n(assert (<= Y_0 0))\n", "no input variable is declared"),
    (declare(1, 1), "no (assert ...)"),
])
def test_blank_spec_is_refused_not_read_as_every_output_unsafe(tmp_path, text, words):
    path = tmp_path / "blank.vnnlib"
    path.write_text(text)
    with pytest.raises(SpecFormatError, match=r"blank\.vnnlib: line 1, column 1: ") as info:
        parse_vnnlib(path)
    assert words in str(info.value)


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    text = declare(1, 1) + unit_box(1) + "(assert (<= Y_0 0))\n"
    path = tmp_path / "bom.vnnlib"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    (region,) = parse_vnnlib(path).regions
    assert (region.lower[0], region.upper[0]) == (-1.0, 1.0)
    assert len(parse_vnnlib("\ufeff" + text).regions) == 1


def test_latin1_file_names_the_file_and_the_byte(tmp_path):
    path = tmp_path / "latin1.vnnlib"
    path.write_bytes((declare(1, 1) + "; propriété\n" + unit_box(1)).encode("latin-1"))
    with pytest.raises(SpecFormatError, match=r"latin1\.vnnlib: line 3, column 9: byte 0xe9 is not UTF-8"):
        parse_vnnlib(path)


def test_gzip_files_read_and_corrupt_ones_name_the_file(tmp_path):
    import gzip
    text = declare(1, 1) + unit_box(1) + "(assert (<= Y_0 0))\n"
    good = tmp_path / "good.vnnlib.gz"
    good.write_bytes(gzip.compress(text.encode()))
    assert parse_vnnlib(good).n_inputs == 1
    for name, data in [("plain.vnnlib.gz", text.encode()), ("truncated.vnnlib.gz", gzip.compress(text.encode())[:-12]),
                       ("garbled.vnnlib.gz", gzip.compress(text.encode())[:10] + b"\x00" * 40)]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(SpecFormatError, match=rf"{name}: cannot read it as a gzip-compressed VNNLIB file"):
            parse_vnnlib(path)
    latin = tmp_path / "latin1.vnnlib.gz"
    latin.write_bytes(gzip.compress("; é\n".encode("latin-1") + text.encode()))
    with pytest.raises(SpecFormatError, match=r"latin1\.vnnlib\.gz: line 1, column 3: byte 0xe9"):
        parse_vnnlib(latin)
