"""Read VNN-COMP property files (VNNLIB) into input boxes and output polytopes.

A VNNLIB file is a small SMT-LIB script: ``(declare-const X_i Real)`` for the network's
inputs, ``(declare-const Y_j Real)`` for its outputs, and ``(assert ...)`` formulas built from
``and``, ``or`` and comparisons (``<=``, ``>=``, ``<``, ``>``, ``=``) between a variable and a
number or between two variables. The asserts together state the *unsafe* condition: the
property holds iff no input satisfying the input constraints produces an output satisfying the
output constraints. A verifier therefore wants the asserts in disjunctive normal form,
grouped by input box::

    unsafe  =  OR over regions r:  x in box_r  and  OR over polytopes p of r:  C_p y <= d_p

which is what `parse_vnnlib` returns as a `Spec`. The conjunction of all asserts is expanded
(``and`` distributes over ``or``); each resulting conjunct splits into its input part, a box
(a top-level box applies to every region, a disjunct's input bounds intersect with it), and its
output part, the rows of one polytope. Conjuncts with the same box share one `Region`.

Strict comparisons (``<``, ``>``) stay strict in the result: each polytope row and each side of
each input bound carries a strict flag. A proof may ignore the flags (the closed unsafe set
contains the open one, so a property proved for it holds for the file's), but a counterexample
must meet every comparison as written: `OutputPolytope.satisfied` and `Region.contains` check
strict rows and sides strictly. A region whose box is empty (lower > upper, or lower == upper
with a strict side) holds no input and is dropped; when every region is dropped the unsafe set
is empty, ``Spec.regions == []``, and ``Spec.empty_reason`` says why (the property holds).
A text with no declared input or output, or no assert, is refused: read as a spec it would make
every output unsafe, which is never what a file that says nothing means.

The parser is one regular expression over the text (`re.finditer`) feeding a stack that builds
the S-expressions, and an explicit stack for the DNF expansion, so a 300 KB CIFAR spec parses in
tens of milliseconds and no nesting depth can exhaust Python's recursion limit. Top-level
conjunctions (the huge per-pixel boxes) never go through the expansion: their bounds are
applied to the box arrays in one vectorised step, which keeps the cost linear in the file size.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import sys
import time
import zlib
from dataclasses import dataclass, field

import numpy as np

from lirpac import deadline
from lirpac.errors import SpecFormatError

__all__ = ["OutputPolytope", "Region", "Spec", "parse_vnnlib"]


@dataclass(eq=False)  # arrays have no truth value, so the generated __eq__ would raise
class OutputPolytope:
    """The conjunction ``C @ y <= d`` (all rows) over the network's outputs; a row whose
    ``strict`` flag is set reads ``C_i @ y < d_i`` (from a ``<`` or ``>`` in the file).

    A polytope with no rows is the whole output space: every output is unsafe.
    """

    C: np.ndarray  # (k, n_out) float64
    d: np.ndarray  # (k,) float64
    strict: np.ndarray | None = field(default=None)  # (k,) bool; None: no row is strict

    def __post_init__(self):
        if self.strict is None:
            self.strict = np.zeros(len(self.d), dtype=bool)

    @property
    def proof_d(self) -> np.ndarray:
        """The d a proof compares a lower bound of ``C_i @ y`` with: a row is never met when
        that bound exceeds ``d_i``, or, for a strict row, reaches it (``lower >= d_i``). As a
        strict ``>``: d_i itself, or for strict rows the float64 just below it (no float64
        lies between the two), so that one ``lower > proof_d`` serves every row."""
        return np.where(self.strict, np.nextafter(self.d, -np.inf), self.d)

    def satisfied(self, y: np.ndarray, tol: float = 0.0) -> bool:
        """Whether the output ``y`` (any shape with n_out entries) meets every row within tol,
        strict rows strictly.

        Used to confirm a counterexample: an output inside this polytope violates the property,
        and one on the boundary of a strict row does not.
        """
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if y.shape[0] != self.C.shape[1]:
            raise SpecFormatError(
                f"output has {y.shape[0]} entries but the spec has {self.C.shape[1]} outputs"
            )
        value, bound = self.C @ y, self.d + tol
        return bool(np.all(np.where(self.strict, value < bound, value <= bound)))


@dataclass(eq=False)
class Region:
    """One input box and the union of output polytopes that are unsafe for inputs in it.

    A side whose strict flag is set excludes its end (``X_i > lower_i`` or ``X_i < upper_i``).
    """

    lower: np.ndarray  # (n_in,) float64
    upper: np.ndarray  # (n_in,) float64
    outputs: list[OutputPolytope]
    lower_strict: np.ndarray | None = field(default=None)  # (n_in,) bool; None: no side strict
    upper_strict: np.ndarray | None = field(default=None)

    def __post_init__(self):
        if self.lower_strict is None:
            self.lower_strict = np.zeros(self.lower.shape, dtype=bool)
        if self.upper_strict is None:
            self.upper_strict = np.zeros(self.upper.shape, dtype=bool)

    def contains(self, x: np.ndarray, tol: float = 0.0) -> bool:
        """Whether the input ``x`` (any shape with n_in entries, e.g. an image) lies in the box,
        on no strict side's end.

        A counterexample must come from the box it claims; tol absorbs rounding of the search.
        """
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if x.shape[0] != self.lower.shape[0]:
            raise SpecFormatError(
                f"input has {x.shape[0]} entries but the spec has {self.lower.shape[0]} inputs"
            )
        lower, upper = self.lower - tol, self.upper + tol
        return bool(np.all(np.where(self.lower_strict, x > lower, x >= lower))
                    and np.all(np.where(self.upper_strict, x < upper, x <= upper)))


@dataclass(eq=False)
class Spec:
    """A VNNLIB property in DNF: the unsafe set is the union of the regions' unsafe sets.

    ``regions == []`` is an empty unsafe set (the property holds); ``empty_reason`` then says
    why, e.g. every input box of the file is empty.
    """

    n_inputs: int
    n_outputs: int
    regions: list[Region]
    empty_reason: str = ""


# One pass over the text. The first alternative takes a whole simple comparison such as
# (<= X_0 0.5) in one match (group 1 is the operator): nearly every line of a real spec is one,
# and five matches and a list apiece would triple the cost. Then parentheses, comments (skipped)
# and atoms; whitespace matches nothing.
_TOKEN = re.compile(r"\(\s*(<=|>=|<|>|=)\s+([^\s();]+)\s+([^\s();]+)\s*\)|[()]|;[^\n]*|[^\s();]+")
_VARIABLE = re.compile(r"([XY])_(0|[1-9]\d*)")  # no leading zeros: X_01 must not alias X_1
# Decimal numbers only: float() alone would also take "inf", "nan" and "1_000".
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_COMPARISONS = frozenset(("<=", ">=", "<", ">", "="))
_IGNORED_COMMANDS = frozenset(("check-sat", "get-model", "set-logic", "set-info", "exit"))

# Compiled comparison atoms are tuples whose first entry is the kind and last the strict flag:
#   (_X_LOWER, index, value, pos, strict), (_X_UPPER, ...): one bound on input `index`;
#   (_Y_ROW, i, ci, j, cj, b, pos, strict): the row ci*y_i + cj*y_j <= b (< b when strict;
#   j = -1 when one variable).
_X_LOWER, _X_UPPER, _Y_ROW = 0, 1, 2
# Distributing `and` over `or` multiplies the disjunctions' sizes; past this many conjuncts a
# clear error beats exhausting memory (real specs have at most a few thousand).
_MAX_CONJUNCTS = 1_000_000


class _Box:
    """An input box under construction: its bounds and, per side, whether it excludes its end."""

    __slots__ = ("lower", "upper", "lower_strict", "upper_strict")

    def __init__(self, lower, upper, lower_strict, upper_strict):
        self.lower, self.upper = lower, upper
        self.lower_strict, self.upper_strict = lower_strict, upper_strict

    @classmethod
    def unbounded(cls, n: int) -> _Box:
        return cls(np.full(n, -np.inf), np.full(n, np.inf), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool))

    def copy(self) -> _Box:
        return _Box(self.lower.copy(), self.upper.copy(), self.lower_strict.copy(), self.upper_strict.copy())

    def key(self) -> bytes:
        """Equal keys for equal boxes, strictness included (such conjuncts share a region)."""
        return b"".join(part.tobytes() for part in (self.lower, self.upper, self.lower_strict, self.upper_strict))

    def empty_inputs(self) -> np.ndarray:
        """Inputs no value satisfies: lower > upper, or lower == upper with a strict side."""
        touching = (self.lower == self.upper) & (self.lower_strict | self.upper_strict)
        return np.flatnonzero((self.lower > self.upper) | touching)

    def region(self) -> Region:
        return Region(self.lower, self.upper, [], self.lower_strict, self.upper_strict)


class _List(list):
    """A parenthesised S-expression; pos is the offset of its '(' for error messages."""

    __slots__ = ("pos",)


class _Comparison:
    """A comparison read by the tokenizer's fast path: operator, operands and their offsets."""

    __slots__ = ("op", "left", "right", "pos", "left_pos", "right_pos")

    def __init__(self, match: re.Match):
        self.op, self.left, self.right = match.group(1, 2, 3)
        self.pos, self.left_pos, self.right_pos = match.start(), match.start(2), match.start(3)


class _Parser:
    """One parse of one text: declarations first (any order in the file), then the asserts."""

    def __init__(self, text: str, origin: str):
        self.text = text
        self.origin = origin
        self.inputs: dict[int, int] = {}  # index -> offset of its declaration
        self.outputs: dict[int, int] = {}
        self.terms: dict[str, tuple[str, int | float]] = {}  # operand text -> term, once valid

    # -- errors -------------------------------------------------------------------------------

    def where(self, pos: int) -> str:
        """'line L, column C' (both from 1) of a text offset; computed only when failing."""
        line = self.text.count("\n", 0, pos) + 1
        column = pos - self.text.rfind("\n", 0, pos)
        return f"line {line}, column {column}"

    def error(self, pos: int, message: str) -> SpecFormatError:
        return SpecFormatError(f"{self.origin}{self.where(pos)}: {message}")

    # -- S-expressions ------------------------------------------------------------------------

    def read_forms(self) -> _List:
        """All top-level forms; atoms are (text, offset) pairs, lists are `_List`s, and simple
        comparisons `_Comparison`s."""
        top = current = _List()
        top.pos = 0
        stack = []
        for match in _TOKEN.finditer(self.text):
            if match.lastindex:
                current.append(_Comparison(match))
                continue
            token = match.group()
            if token == "(":
                node = _List()
                node.pos = match.start()
                current.append(node)
                stack.append(current)
                current = node
            elif token == ")":
                if not stack:
                    raise self.error(match.start(), "unbalanced ')': no '(' is open here")
                current = stack.pop()
            elif token[0] != ";":
                current.append((token, match.start()))
        if stack:
            raise self.error(current.pos, "unbalanced '(': it is never closed (expected ')')")
        return top

    # -- declarations -------------------------------------------------------------------------

    def declare(self, form: _List) -> None:
        if len(form) != 3 or not all(isinstance(item, tuple) for item in form[1:]):
            raise self.error(form.pos, "expected (declare-const X_<i> Real) or (declare-const Y_<i> Real)")
        (name, name_pos), (sort, sort_pos) = form[1], form[2]
        match = _VARIABLE.fullmatch(name)
        if match is None:
            raise self.error(name_pos, f"unknown variable {name!r}: expected X_<i> (input) or Y_<i> (output)")
        if sort != "Real":
            raise self.error(sort_pos, f"unknown sort {sort!r}: expected Real")
        table = self.inputs if match.group(1) == "X" else self.outputs
        index = int(match.group(2))
        if index in table:
            raise self.error(name_pos, f"{name} is declared twice (first at {self.where(table[index])})")
        table[index] = name_pos

    def check_declared(self, table: dict[int, int], letter: str, expected: int | None, role: str) -> int:
        """The variable count; indices must be 0..n-1 (they address a flat tensor) and match the model."""
        count = len(table)
        if table and max(table) != count - 1:
            last = max(table)
            missing = min(set(range(last + 1)) - set(table))
            raise self.error(table[last], f"{letter}_{last} is declared but {letter}_{missing} is not: "
                             f"{role} indices must run from 0 without gaps")
        if expected is not None and count != expected:
            pos = table[0] if table else 0
            raise self.error(pos, f"the spec declares {count} {role}s ({letter}_0..{letter}_{count - 1}) "
                             f"but {expected} were expected")
        return count

    # -- comparisons --------------------------------------------------------------------------

    def term(self, token: str, pos: int) -> tuple[str, int | float]:
        """('X', index), ('Y', index) or ('num', value) for one side of a comparison."""
        known = self.terms.get(token)
        if known is not None:
            return known
        self.terms[token] = term = self.new_term(token, pos)
        return term

    def new_term(self, token: str, pos: int) -> tuple[str, int | float]:
        match = _VARIABLE.fullmatch(token)
        if match is not None:
            letter, index = match.group(1), int(match.group(2))
            if index not in (self.inputs if letter == "X" else self.outputs):
                raise self.error(pos, f"undeclared variable {token}: add (declare-const {token} Real)")
            return letter, index
        if token[0] in "0123456789+-.":
            if _NUMBER.fullmatch(token) is None:
                raise self.error(pos, f"malformed number {token!r}: expected e.g. 0.5, -3, 1e-05")
            value = float(token)
            if not math.isfinite(value):     # (a bound of 1e400 read as none at all)
                raise self.error(pos, f"number {token} overflows float64 (largest about 1.8e308)")
            return "num", value
        raise self.error(pos, f"unknown variable {token!r}: expected X_<i>, Y_<i> or a number")

    def comparison(self, node: _Comparison | _List) -> list[tuple]:
        """Compile ``(op a b)`` into atoms: bounds on one input, or rows over the outputs."""
        if isinstance(node, _Comparison):
            op = node.op
            left, right = self.term(node.left, node.left_pos), self.term(node.right, node.right_pos)
        else:  # the slow path's list: a comment inside, a nested expression, a wrong arity
            op = node[0][0]
            if len(node) != 3:
                raise self.error(node.pos, f"({op} ...) takes exactly two operands, found {len(node) - 1}")
            for operand in node[1:]:
                if not isinstance(operand, tuple):
                    raise self.error(operand.pos, "expected a variable or a number, "
                                     "found a parenthesised expression")
            left, right = self.term(*node[1]), self.term(*node[2])
        if op in (">=", ">"):  # a >= b  is  b <= a
            left, right = right, left
        strict = op in ("<", ">")
        atoms = self.less_equal(left, right, node, strict)
        if op == "=":
            atoms += self.less_equal(right, left, node, strict)
        return atoms

    def less_equal(self, left, right, node: _Comparison | _List, strict: bool) -> list[tuple]:
        """Atoms for ``left <= right`` (``left < right`` when strict)."""
        pos = node.pos
        (left_kind, a), (right_kind, b) = left, right
        if left_kind == "X" and right_kind == "num":
            return [(_X_UPPER, a, b, pos, strict)]
        if left_kind == "num" and right_kind == "X":
            return [(_X_LOWER, b, a, pos, strict)]
        if left_kind == "Y" and right_kind == "num":
            return [(_Y_ROW, a, 1.0, -1, 0.0, b, pos, strict)]
        if left_kind == "num" and right_kind == "Y":
            return [(_Y_ROW, b, -1.0, -1, 0.0, -a, pos, strict)]
        if left_kind == "Y" and right_kind == "Y":
            return [(_Y_ROW, a, 1.0, b, -1.0, 0.0, pos, strict)]
        if left_kind == "num" and right_kind == "num":
            raise self.error(pos, "comparison of two numbers: expected a variable on one side")
        raise self.error(pos, "an input (X) may only be compared with a number: expected a box, "
                         "not a relation between variables")

    # -- formulas -----------------------------------------------------------------------------

    def operator(self, node) -> str:
        """The connective or comparison heading a formula; anything else is an error here."""
        if isinstance(node, _Comparison):
            return node.op
        if not isinstance(node, _List) or not node or not isinstance(node[0], tuple):
            pos = node.pos if isinstance(node, _List) else node[1]
            raise self.error(pos, "expected a formula (and ...), (or ...) or a comparison (<= a b)")
        op = node[0][0]
        if op not in _COMPARISONS and op not in ("and", "or"):
            raise self.error(node[0][1], f"unknown operator {op!r}: expected and, or, <=, >=, <, >, =")
        return op

    def dnf(self, formula: _List) -> list[list[tuple]]:
        """The formula as a list of conjuncts (lists of atoms), expanded with an explicit stack.

        Comparisons directly under an ``and`` join one shared conjunct, and one-term children
        fold into it too, so only genuine disjunctions are multiplied out.
        """
        # A frame is [node, next child index, is_and, shared atoms (and) or terms (or), or-children]
        stack = [[formula, 1, self.operator(formula) == "and", [], []]]
        result = None
        while True:
            frame = stack[-1]
            node, is_and = frame[0], frame[2]
            if result is not None:
                if is_and and len(result) == 1:
                    frame[3].extend(result[0])
                elif is_and:
                    frame[4].append(result)
                else:
                    frame[3].extend(result)
                result = None
            if frame[1] < len(node):
                child = node[frame[1]]
                frame[1] += 1
                op = self.operator(child)
                if op in _COMPARISONS:
                    atoms = self.comparison(child)
                    if is_and:
                        frame[3].extend(atoms)
                    else:
                        frame[3].append(atoms)
                else:
                    stack.append([child, 1, op == "and", [], []])
                continue
            stack.pop()
            if is_and:
                result = self.distribute(frame[3], frame[4], node.pos)
            else:
                result = frame[3]
            if not stack:
                return result

    def distribute(self, shared: list[tuple], disjunctions: list[list[list[tuple]]],
                   pos: int) -> list[list[tuple]]:
        """DNF of ``shared and disjunction_1 and ...``: one conjunct per choice of alternatives."""
        count = 1
        for disjunction in disjunctions:
            count *= len(disjunction)
            if count > _MAX_CONJUNCTS:
                raise self.error(pos, f"the conjunction of these disjunctions expands to more than "
                                 f"{_MAX_CONJUNCTS} conjuncts: expected fewer, smaller (or ...)")
        terms = [shared]
        for disjunction in disjunctions:
            deadline.check(what="expanding the spec's (or ...) into DNF")   # verify's, if any
            terms = [term + alternative for term in terms for alternative in disjunction]
        return terms

    # -- the whole file -----------------------------------------------------------------------

    def parse(self, n_inputs: int | None, n_outputs: int | None) -> Spec:
        forms = self.read_forms()
        asserts = []
        for form in forms:
            if isinstance(form, _Comparison):
                raise self.error(form.pos, f"unknown command {form.op!r}: expected (assert ({form.op} ...))")
            if not isinstance(form, _List):
                raise self.error(form[1], f"expected '(' to start a command, found {form[0]!r}")
            if not form or not isinstance(form[0], tuple):
                raise self.error(form.pos, "expected a command: (declare-const ...) or (assert ...)")
            command, command_pos = form[0]
            if command == "declare-const":
                self.declare(form)
            elif command == "assert":
                if len(form) != 2:
                    raise self.error(form.pos, "(assert ...) takes exactly one formula, "
                                     f"found {len(form) - 1}")
                asserts.append(form[1])
            elif command not in _IGNORED_COMMANDS:
                raise self.error(command_pos, f"unknown command {command!r}: "
                                 "expected declare-const or assert")
        self.check_not_blank(forms)
        n_in = self.check_declared(self.inputs, "X", n_inputs, "input")
        n_out = self.check_declared(self.outputs, "Y", n_outputs, "output")
        if not asserts:
            raise self.error(0, "no (assert ...): a spec must bound every input X_i and may "
                             "constrain the outputs; without asserts it states nothing")

        # Conjunctions are folded into one base conjunct; only disjunctions are multiplied out.
        base: list[tuple] = []
        disjunctions: list[list[list[tuple]]] = []
        last_disjunction = 0  # where an over-large expansion is reported
        for formula in asserts:
            if self.operator(formula) in _COMPARISONS:
                base.extend(self.comparison(formula))
                continue
            terms = self.dnf(formula)
            if len(terms) == 1:
                base.extend(terms[0])
            else:
                disjunctions.append(terms)
                last_disjunction = formula.pos
        terms = self.distribute([], disjunctions, last_disjunction)

        base_box = self.box(_Box.unbounded(n_in), base)
        why = self.why_empty(base_box, base)
        if why:
            return Spec(n_in, n_out, [], f"the input set is empty: {why}")
        base_rows = [atom for atom in base if atom[0] == _Y_ROW]
        base_key = base_box.key()
        regions: dict[bytes, Region] = {}  # conjuncts with equal boxes share a region
        empty_boxes = []  # why each dropped conjunct's box is empty
        for term in terms:
            deadline.check(what="building the spec's polytopes")   # verify's deadline, if any
            box, key = base_box, base_key
            if any(atom[0] != _Y_ROW for atom in term):
                box = self.box(base_box.copy(), term)
                why = self.why_empty(box, base, term)
                if why:  # no input meets this conjunct: it adds nothing to the unsafe set
                    empty_boxes.append(why)
                    continue
                key = box.key()
            region = regions.get(key)
            if region is None:
                region = regions[key] = box.region()
            rows = base_rows + [atom for atom in term if atom[0] == _Y_ROW]
            region.outputs.append(self.polytope(rows, n_out))
        if not regions:
            why = (f"the input set is empty: every input box of the (or ...) is empty, e.g. {empty_boxes[0]}"
                   if empty_boxes else "an empty (or) in the asserts: no output is unsafe")
            return Spec(n_in, n_out, [], why)

        for number, region in enumerate(regions.values()):
            for bound, name in ((region.lower, "lower"), (region.upper, "upper")):
                missing = np.flatnonzero(~np.isfinite(bound))
                if missing.size:
                    index = int(missing[0])
                    which = f" in region {number} (an input box of an (or ...))" if len(regions) > 1 else ""
                    raise self.error(self.inputs[index], f"input X_{index} has no {name} bound{which}: "
                                     f"expected (assert (<= X_{index} ...)) and (assert (>= X_{index} ...))")
        return Spec(n_in, n_out, list(regions.values()))

    @staticmethod
    def box(box: _Box, atoms: list[tuple]) -> _Box:
        """Tighten ``box`` in place by the input atoms; on a tie a strict bound beats a non-strict one."""
        for kind, bound, strict, tighter in ((_X_LOWER, box.lower, box.lower_strict, np.maximum),
                                             (_X_UPPER, box.upper, box.upper_strict, np.minimum)):
            chosen = [atom for atom in atoms if atom[0] == kind]
            if not chosen:
                continue
            index = np.array([atom[1] for atom in chosen])
            value = np.array([atom[2] for atom in chosen])
            is_strict = np.array([atom[4] for atom in chosen], dtype=bool)
            before = bound.copy()
            tighter.at(bound, index, value)
            strict &= bound == before   # a side an atom moved takes that atom's strictness
            strict[index[is_strict & (value == bound[index])]] = True
        return box

    def why_empty(self, box: _Box, *atom_lists: list[tuple]) -> str:
        """Why no input lies in the box, naming the last bound on the first empty input, or ""."""
        empty = box.empty_inputs()
        if not empty.size:
            return ""
        index = int(empty[0])
        culprit = max((atom[3] for atoms in atom_lists for atom in atoms
                       if atom[0] != _Y_ROW and atom[1] == index), default=0)
        low = ">" if box.lower_strict[index] else ">="
        high = "<" if box.upper_strict[index] else "<="
        return (f"X_{index} {low} {float(box.lower[index])!r} and X_{index} {high} "
                f"{float(box.upper[index])!r} hold for no value ({self.where(culprit)})")

    def check_not_blank(self, forms: _List) -> None:
        """Refuse a text that declares no input or no output: read as a spec, it would say that
        every output is unsafe, and an empty or comment-only file never means that."""
        if not forms:
            raise self.error(0, "the spec is empty (no commands, at most comments): expected "
                             "(declare-const X_0 Real) ..., (declare-const Y_0 Real) ... and (assert ...)")
        for table, letter, role in ((self.inputs, "X", "input"), (self.outputs, "Y", "output")):
            if not table:
                raise self.error(0, f"no {role} variable is declared: expected (declare-const {letter}_0 Real) "
                                 f"and one for each further {role}")

    @staticmethod
    def polytope(rows: list[tuple], n_out: int) -> OutputPolytope:
        """The matrix form of _Y_ROW atoms; += so that (<= Y_0 Y_0) gives a zero row, not y0 <= 0."""
        C = np.zeros((len(rows), n_out))
        d = np.array([row[5] for row in rows], dtype=np.float64)
        strict = np.array([row[7] for row in rows], dtype=bool)
        for r, (_, i, ci, j, cj, _b, _pos, _strict) in enumerate(rows):
            C[r, i] += ci
            if j >= 0:
                C[r, j] += cj
        return OutputPolytope(C, d, strict)


def parse_vnnlib(source: str | os.PathLike, n_inputs: int | None = None,
                 n_outputs: int | None = None) -> Spec:
    """Parse a VNNLIB property (a path, or the text itself) into a `Spec` in DNF.

    A str containing ``(declare-const`` is the text; any other str or PathLike is a file path
    (``.gz`` files are decompressed). n_inputs/n_outputs, when given, must equal the declared
    counts, which catches a spec paired with the wrong model. Raises `SpecFormatError` with
    line and column for anything malformed. A leading UTF-8 byte order mark is skipped.
    """
    if isinstance(source, str) and "(declare-const" in source:
        text, origin = source.removeprefix("\ufeff"), ""
    else:
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise SpecFormatError(f"{path!r} is neither an existing file nor VNNLIB text "
                                  "(text must contain '(declare-const')")
        text, origin = _read_text(path), f"{path}: "
    return _Parser(text, origin).parse(n_inputs, n_outputs)


def _read_text(path: str) -> str:
    """The file's text (gunzipped for .gz, a UTF-8 byte order mark dropped); a corrupt archive
    or bytes that are not UTF-8 are a SpecFormatError naming the file, not a codec traceback."""
    compressed = path.endswith(".gz")
    try:
        with (gzip.open if compressed else open)(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        what = "a gzip-compressed VNNLIB file (is it corrupt or truncated?)" if compressed else "a file"
        raise SpecFormatError(f"{path}: cannot read it as {what}: {type(err).__name__}: {err}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - data.rfind(b"\n", 0, err.start)
        raise SpecFormatError(f"{path}: line {line}, column {column}: byte 0x{data[err.start]:02x} is not "
                              "UTF-8 text (a Latin-1 file?): save the spec as UTF-8 or ASCII") from None


def _main(paths: list[str]) -> None:
    """Print a summary and the parse time of each file: ``python -m lirpac.vnnlib FILE...``."""
    for path in paths:
        start = time.perf_counter()
        spec = parse_vnnlib(path)
        seconds = time.perf_counter() - start
        polytopes = sum(len(region.outputs) for region in spec.regions)
        rows = sum(len(p.d) for region in spec.regions for p in region.outputs)
        print(f"{path}: n_inputs={spec.n_inputs} n_outputs={spec.n_outputs} regions={len(spec.regions)} "
              f"polytopes={polytopes} rows={rows} parse_seconds={seconds:.4f}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m lirpac.vnnlib FILE [FILE...]")
    _main(sys.argv[1:])
