"""Loop-invariant code motion for alpha-CROWN's generated step, on the bound program.

The optimisation loop (lirpac/alpha.py) evaluates the generated function about 20 times on the
same input, changing only the slopes. Most of its statements never see a slope: the IBP chain,
the references and rows of the passes, the relaxations of bounds that no pass with slopes
tightened, the start of the final pass up to its first parametrised node. ``split`` moves them
into ``prepare`` (run once per call, after the recording evaluation) and leaves the rest in
``step``, which reads prepare's values. The statements keep their order, so ``step`` computes
exactly what the whole function does.

A top-level statement is varying when it calls one of the step context's per-step methods
(``slot``, ``beta``) or reads a name whose reaching definition is varying. An invariant
statement that redefines a name some varying statement defined before it stays in ``step``
(moving it would change which value later reads see), and so does a nested function (a
backward pass) whose free names are assigned more than once: its calls would read them at
another point. Comments go with the statement that follows them.
"""
from __future__ import annotations

import ast

from lirpac.codegen.program import Program, Statement, statement

STEP_METHODS = ("slot", "beta")


def split(program: Program) -> tuple[Program, Program] | None:
    """(prepare, step) programs for ``program``, or None when nothing but its return is left
    to move (the whole function is the step)."""
    body = program.body
    assigned = _assignment_counts(body)
    varying: set[str] = set()
    defined_varying: set[str] = set()
    hoisted, kept, invariant_names = [], [], []
    kept_reads: set[str] = set()
    comments: list[Statement] = []
    for st in body:
        if st.tree is None:
            comments.append(st)
            continue
        defs = st.defines()
        moving = (isinstance(st.tree, ast.Return) or _calls_step_method(st) or bool(st.reads() & varying)
                  or bool(defs & defined_varying)
                  or isinstance(st.tree, ast.FunctionDef) and any(assigned.get(n, 0) > 1 for n in st.reads()))
        if moving:
            varying |= defs
            defined_varying |= defs
            kept += comments + [st]
            kept_reads |= st.reads()
        else:
            invariant_names += [n for n in sorted(defs) if n not in invariant_names]
            hoisted += comments + [st]
        comments = []
    if not any(st.tree is not None for st in hoisted):
        return None
    passed = [n for n in invariant_names if n in kept_reads]
    names = ", ".join(passed) + ("," if len(passed) == 1 else "")
    # a name bound inside an if block may stay unbound: None unless the block binds it
    maybe_unbound = sorted(n for st in body if isinstance(st.tree, ast.If) for n in st.defines() if n in passed)
    prepare = Program("prepare", list(program.params),
                      "The loop invariants of step (codegen/hoist.py): once per alpha-CROWN call.",
                      [statement(f"{n} = None") for n in maybe_unbound] + hoisted
                      + [statement(f"return ({names})")])
    step = Program("step", list(program.params) + ["pre"],
                   "One evaluation of bound from prepare's values: the statements the slopes reach.",
                   [statement(f"({names}) = pre")] + kept)
    return prepare, step


def _calls_step_method(st: Statement) -> bool:
    return any(isinstance(c.func, ast.Attribute) and isinstance(c.func.value, ast.Name)
               and c.func.value.id == "ctx" and c.func.attr in STEP_METHODS for c in st.calls())


def _assignment_counts(body: list[Statement]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for st in body:
        for name in st.defines():
            counts[name] = counts.get(name, 0) + 1
    return counts
