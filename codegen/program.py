"""The bound program: what a generated bound function computes, as a list of statements.

The planner (codegen/torch_backend.py and the methods' extensions of it) emits statements; the
passes over programs read them as syntax trees, never by re-parsing printed text; the printer
turns a program into the source the backend compiles and ``net.dump()`` shows.

A ``Statement`` holds one Python statement as a syntax tree (parsed once, when it is
emitted), the IR node it bounds (the printer names the model's source line of it, as
torch.fx does), a comment, and the body of a compound statement (a pass function, a branch).
``rule`` says which op rule a statement calls, so a backend can recognise the steps it fuses.

Passes on programs: ``hoist.split`` (alpha-CROWN's loop invariants) and ``free_dead``
(coefficients deleted after their last use, so a pass holds two layers' coefficients at a
time instead of all of them).
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field

from lirpac.ir.graph import Node

# names of the coefficient tensors of backward passes (``lA_<node>``, ``uA_<node>``): the
# largest tensors of a program, the ones ``free_dead`` releases
_COEFFICIENT_PREFIXES = ("lA_", "uA_")


@dataclass
class Statement:
    """One statement (``tree``), or a comment line when ``tree`` is None."""
    tree: ast.stmt | None
    comment: str = ""
    node: Node | None = None
    body: list["Statement"] = field(default_factory=list)

    @property
    def compound(self) -> bool:
        return isinstance(self.tree, (ast.FunctionDef, ast.If))

    def full_tree(self) -> ast.stmt:
        """The statement with its body's trees attached (for analyses and printing)."""
        if not self.compound:
            return self.tree
        tree = _copy_header(self.tree)
        tree.body = [s.full_tree() for s in self.body if s.tree is not None] or [ast.Pass()]
        return tree

    def defines(self) -> set[str]:
        """Names it binds in its function (a nested def: its own name only)."""
        if isinstance(self.tree, ast.FunctionDef):
            return {self.tree.name}
        if self.tree is None:
            return set()
        return {n.id for n in ast.walk(self.full_tree()) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}

    def reads(self) -> set[str]:
        """Names it reads from its function (a nested def: its free names)."""
        if self.tree is None:
            return set()
        tree = self.full_tree()
        loaded = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        if isinstance(tree, ast.FunctionDef):
            local = {a.arg for a in tree.args.args} | {
                n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
            return loaded - local
        return loaded

    def calls(self) -> list[ast.Call]:
        return [] if self.tree is None else [n for n in ast.walk(self.full_tree()) if isinstance(n, ast.Call)]

    @property
    def rule(self) -> str | None:
        """The generated name (``<mode prefix>_<op>``) of the op rule the statement calls at its
        top, if any."""
        value = getattr(self.tree, "value", None)
        if isinstance(value, ast.Starred):
            value = value.value
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name):
            return value.func.id
        return None


def _copy_header(tree: ast.stmt) -> ast.stmt:
    if isinstance(tree, ast.FunctionDef):
        return ast.FunctionDef(name=tree.name, args=tree.args, body=[], decorator_list=[],
                               returns=None, type_params=[], lineno=0, col_offset=0)
    return ast.If(test=tree.test, body=[], orelse=[], lineno=0, col_offset=0)


def statement(code: str, node: Node | None = None) -> Statement:
    """Parse one emitted line: a simple statement, a compound header ending in ':' (its body
    is added later) or a comment ('# ...'). A trailing comment is kept."""
    text, _, comment = code.partition("  # ")
    if code.startswith("#"):
        return Statement(None, code[1:].removeprefix(" ").rstrip(), node)
    if text.rstrip().endswith(":"):
        tree = ast.parse(text.rstrip() + "\n    pass").body[0]
        return Statement(tree, comment.strip(), node)
    body = ast.parse(text).body
    if len(body) != 1:
        raise ValueError(f"one statement per emitted line, got {code!r}")
    return Statement(body[0], comment.strip(), node)


@dataclass
class Program:
    """A generated function: its name, parameters, docstring and statements."""
    name: str
    params: list[str]
    doc: str
    body: list[Statement]


def print_program(program: Program) -> str:
    """The program as Python source. Each group of statements of one IR node is preceded by
    the model's source line of the node, where the frontend recorded one."""
    lines = [f"def {program.name}({', '.join(program.params)}):", f'    """{program.doc}"""']
    _print_body(program.body, 1, lines, [None])
    return "\n".join(lines) + "\n"


def _print_body(body: list[Statement], depth: int, lines: list[str], last_source: list) -> None:
    pad = "    " * depth
    for st in body:
        source = getattr(st.node, "source", None)
        if source and source != last_source[0]:
            lines.append(f"{pad}# {st.node.name}: {source}")
        last_source[0] = source or last_source[0]
        if st.tree is None:
            lines.append(f"{pad}# {st.comment}")
            continue
        trailing = f"  # {st.comment}" if st.comment else ""
        if isinstance(st.tree, ast.FunctionDef):
            lines.append(f"{pad}def {st.tree.name}({ast.unparse(st.tree.args)}):{trailing}")
        elif isinstance(st.tree, ast.If):
            lines.append(f"{pad}if {ast.unparse(st.tree.test)}:{trailing}")
        else:
            lines.append(f"{pad}{ast.unparse(st.tree)}{trailing}")
            continue
        _print_body(st.body, depth + 1, lines, last_source)
        if not st.body:
            lines.append(f"{pad}    pass")


def free_dead(body: list[Statement], keep: set[str] = frozenset()) -> list[Statement]:
    """``body`` with ``del`` statements after the last read of each coefficient tensor it binds
    at its top level (recursively into nested pass functions). Not deleted: names in ``keep``,
    names a nested function reads (it may run later) and names a nested block binds (they
    might be unbound there)."""
    body = [_free_nested(st) for st in body]
    closures = set().union(*[st.reads() for st in body if isinstance(st.tree, ast.FunctionDef)] or [set()])
    nested_binds = set().union(*[st.defines() for st in body if isinstance(st.tree, ast.If)] or [set()])
    top = set().union(*[st.defines() for st in body if st.tree is not None and not st.compound] or [set()])
    candidates = {n for n in top if n.startswith(_COEFFICIENT_PREFIXES)} - closures - nested_binds - set(keep)
    last_read: dict[str, int] = {}
    for k, st in enumerate(body):
        for name in st.reads() & candidates:
            last_read[name] = k
    after: dict[int, list[str]] = {}
    for name, k in last_read.items():
        # (a read by the statement that rebinds it, ``lA_x = acc(lA_x, ...)``, leaves it live)
        if name not in body[k].defines():
            after.setdefault(k, []).append(name)
    out: list[Statement] = []
    for k, st in enumerate(body):
        out.append(st)
        if k in after and not isinstance(st.tree, ast.Return):
            names = sorted(after[k])
            out.append(Statement(ast.parse(f"del {', '.join(names)}").body[0]))
    return out


def _free_nested(st: Statement) -> Statement:
    if isinstance(st.tree, ast.FunctionDef):
        return Statement(st.tree, st.comment, st.node, free_dead(st.body))
    return st


def from_source(source: str, name: str | None = None) -> Program:
    """The function ``name`` (default: the first) of Python source as a Program (comments are
    not kept): for tests and tools that write programs by hand."""
    tree = ast.parse(source)
    fn = next(st for st in tree.body if isinstance(st, ast.FunctionDef) and name in (None, st.name))
    body = fn.body
    doc = ""
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        doc, body = body[0].value.value, body[1:]
    return Program(fn.name, [a.arg for a in fn.args.args], doc, [_from_tree(st) for st in body])


def _from_tree(tree: ast.stmt) -> Statement:
    if isinstance(tree, (ast.FunctionDef, ast.If)) and not (isinstance(tree, ast.If) and tree.orelse):
        return Statement(_copy_header(tree), body=[_from_tree(st) for st in tree.body])
    return Statement(tree)
