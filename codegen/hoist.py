"""Loop-invariant code motion for alpha-CROWN's generated step.

The optimisation loop (lirpac/alpha.py) evaluates the generated function about 20 times on the
same input, changing only the slopes. Most of its statements never see a slope: the IBP chain,
the references and rows of the passes, the relaxations of bounds that no pass with slopes
tightened, the start of the final pass up to its first parametrised node. ``split`` moves them
into ``prepare`` (run once per call, after the recording evaluation) and leaves the rest in
``step``, which reads prepare's values. The statements keep their text and their order, so
``step`` computes exactly what the whole function does.

A top-level statement is varying when it calls one of the state's per-step methods (``slot``,
``beta``) or reads a name whose reaching definition is varying. An invariant statement that
redefines a name some varying statement defined before it stays in ``step`` (moving it would
change which value later reads see), and so does a nested function (a backward pass) whose
free names are assigned more than once: its calls would read them at another point.
"""
from __future__ import annotations

import ast

STEP_METHODS = ("slot", "beta")


def split(source: str, fn_name: str = "bound") -> tuple[str, str] | None:
    """(prepare source, step source) for the function ``fn_name`` in ``source``, or None when
    nothing but its return is left to move (the whole function is the step)."""
    tree = ast.parse(source)
    fn = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == fn_name)
    lines = source.splitlines()
    params = [a.arg for a in fn.args.args]
    body = fn.body[1:] if _is_docstring(fn.body[0]) else fn.body
    assigned = _assignment_counts(body)
    varying: set[str] = set()
    defined_varying: set[str] = set()
    hoisted, kept, invariant_names = [], [], []
    kept_reads: set[str] = set()
    start = body[0].lineno
    for st in body:
        text = "\n".join(lines[start - 1:st.end_lineno])
        start = st.end_lineno + 1
        defs = _defined(st)
        moving = (isinstance(st, ast.Return) or _calls_step_method(st) or bool(_read(st) & varying)
                  or bool(defs & defined_varying)
                  or isinstance(st, ast.FunctionDef) and any(assigned.get(n, 0) > 1 for n in _read(st)))
        if moving:
            varying |= defs
            defined_varying |= defs
            kept.append(text)
            kept_reads |= _read(st)
        else:
            invariant_names += [n for n in sorted(defs) if n not in invariant_names]
            hoisted.append(text)
    if not hoisted:
        return None
    passed = [n for n in invariant_names if n in kept_reads]
    names = ", ".join(passed) + ("," if len(passed) == 1 else "")
    # a name bound inside an if block may stay unbound: None unless the block binds it
    maybe_unbound = sorted(n for st in body if isinstance(st, (ast.If, ast.For, ast.While, ast.With, ast.Try))
                           for n in _defined(st) if n in passed)
    signature = ", ".join(params)
    prepare = "\n".join([
        f"def prepare({signature}):",
        '    """The loop invariants of step (codegen/hoist.py): once per alpha-CROWN call."""',
        *[f"    {n} = None" for n in maybe_unbound],
        *hoisted,
        f"    return ({names})"])
    step = "\n".join([
        f"def step({signature}, pre):",
        '    """One evaluation of bound from prepare\'s values: the statements the slopes reach."""',
        f"    ({names}) = pre",
        *kept])
    return prepare + "\n", step + "\n"


def _is_docstring(st: ast.stmt) -> bool:
    return isinstance(st, ast.Expr) and isinstance(st.value, ast.Constant) and isinstance(st.value.value, str)


def _calls_step_method(st: ast.stmt) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
               and isinstance(n.func.value, ast.Name) and n.func.value.id == "ctx"
               and n.func.attr in STEP_METHODS for n in ast.walk(st))


def _defined(st: ast.stmt) -> set[str]:
    """Names a top-level statement binds in the function (a nested def: its own name only)."""
    if isinstance(st, ast.FunctionDef):
        return {st.name}
    return {n.id for n in ast.walk(st) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def _read(st: ast.stmt) -> set[str]:
    """Names a top-level statement reads from the function (a nested def: its free names)."""
    loaded = {n.id for n in ast.walk(st) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    if isinstance(st, ast.FunctionDef):
        local = {a.arg for a in st.args.args} | {
            n.id for n in ast.walk(st) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        return loaded - local
    return loaded


def _assignment_counts(body: list[ast.stmt]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for st in body:
        for name in _defined(st):
            counts[name] = counts.get(name, 0) + 1
    return counts
