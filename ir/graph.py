"""The bound IR: a Graph of Nodes in topological order.

A node's ``shape`` is its per-sample shape when ``batched`` (the leading batch dimension is
left out and stays free, so a graph compiled at batch 1 bounds any batch) and its full shape
otherwise (parameters and constants). ``perturbed`` marks nodes that depend on the perturbed
input; everything else is a constant of the bound computation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

_DTYPE_NAMES = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16",
                torch.bfloat16: "bf16", torch.int64: "i64", torch.int32: "i32", torch.bool: "b"}


@dataclass(eq=False)
class Node:
    name: str
    op: str
    inputs: list["Node"] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    shape: tuple[int, ...] = ()
    dtype: torch.dtype = torch.float32
    batched: bool = False
    perturbed: bool = False
    source: str | None = None
    # Parameters and constants: the tensor itself (a live nn.Parameter keeps bounds differentiable).
    value: torch.Tensor | None = None
    # Free-form notes written by analyses (e.g. "needs_bounds"); printed in dumps.
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def is_constant(self) -> bool:
        return not self.perturbed

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def type_str(self) -> str:
        dims = (["B"] if self.batched else []) + [str(s) for s in self.shape]
        return f"{_DTYPE_NAMES.get(self.dtype, str(self.dtype))}[{','.join(dims)}]"

    def __repr__(self) -> str:
        return f"%{self.name}"


def _attr_str(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}"
    return repr(value)


class Graph:
    """Nodes in topological order, with unique readable names and one output node."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.output: Node | None = None
        self._names: set[str] = set()

    # -- construction -------------------------------------------------------------------
    def unique_name(self, base: str) -> str:
        base = "".join(c if c.isalnum() or c == "_" else "_" for c in base) or "v"
        if base[0].isdigit():
            base = "v" + base
        name, i = base, 1
        while name in self._names:
            name = f"{base}_{i}"
            i += 1
        return name

    def add(self, op: str, inputs: Iterable[Node] = (), *, name: str | None = None, **fields) -> Node:
        node = Node(name=self.unique_name(name or op), op=op, inputs=list(inputs), **fields)
        self._names.add(node.name)
        self.nodes.append(node)
        return node

    def remove(self, node: Node) -> None:
        self.nodes.remove(node)
        self._names.discard(node.name)

    def replace_all_uses(self, old: Node, new: Node) -> None:
        for node in self.nodes:
            node.inputs = [new if i is old else i for i in node.inputs]
        if self.output is old:
            self.output = new

    # -- queries ------------------------------------------------------------------------
    @property
    def inputs(self) -> list[Node]:
        return [n for n in self.nodes if n.op == "input"]

    @property
    def perturbed_input(self) -> Node:
        return next(n for n in self.nodes if n.op == "input" and n.perturbed)

    @property
    def set_leaf(self) -> Node:
        """The node whose values the perturbation set describes: the perturbed input, or, when
        that holds integers (token ids), the one op that reads them and maps a set over them to
        a set over its output (an embedding, ``OpDef.of_set``); bound propagation starts there."""
        x = self.perturbed_input
        if x.dtype.is_floating_point:
            return x
        from lirpac.errors import InputError
        from lirpac.ir.opdef import get_op
        readers = [n for n in self.nodes if x in n.inputs]
        if len(readers) == 1 and get_op(readers[0].op).of_set is not None and readers[0].inputs.count(x) == 1:
            return readers[0]
        read = ", ".join(f"%{n.name} ({n.op})" for n in readers) or "nothing"
        raise InputError(f"the model's input %{x.name} holds integers ({x.type_str()}): example_input "
                         "must be a floating-point tensor, or token ids that one embedding "
                         f"(nn.Embedding) reads and nothing else; here {read} read them. Read the "
                         "ids through one nn.Embedding only (a padding mask from them, say, is not "
                         "supported), or give a float input")

    def users(self) -> dict[Node, list[Node]]:
        result: dict[Node, list[Node]] = {n: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                if n not in result[i]:
                    result[i].append(n)
        return result

    def ancestors(self, node: Node) -> set[Node]:
        seen: set[Node] = set()
        stack = [node]
        while stack:
            for i in stack.pop().inputs:
                if i not in seen:
                    seen.add(i)
                    stack.append(i)
        return seen

    def to_networkx(self):
        import networkx as nx
        g = nx.DiGraph()
        for n in self.nodes:
            g.add_node(n.name, op=n.op)
            for i in n.inputs:
                g.add_edge(i.name, n.name)
        return g

    def copy(self) -> "Graph":
        """A structural copy: new Node objects, shared tensors."""
        new = Graph()
        mapping: dict[Node, Node] = {}
        for n in self.nodes:
            c = Node(name=n.name, op=n.op, inputs=[mapping[i] for i in n.inputs], attrs=dict(n.attrs),
                     shape=n.shape, dtype=n.dtype, batched=n.batched, perturbed=n.perturbed,
                     source=n.source, value=n.value, notes=dict(n.notes))
            new.nodes.append(c)
            new._names.add(c.name)
            mapping[n] = c
        new.output = mapping[self.output] if self.output is not None else None
        return new

    # -- printing -----------------------------------------------------------------------
    def __str__(self) -> str:
        lines = []
        for n in self.nodes:
            args = [repr(i) for i in n.inputs]
            args += [f"{k}={_attr_str(v)}" for k, v in n.attrs.items()]
            if n.op == "constant" and n.value is not None and n.value.numel() == 1 and "target" not in n.attrs:
                args.append(f"value={n.value.item():g}")
            flag = " perturbed" if n.perturbed else ""
            notes = "".join(f" [{k}={v}]" if v is not True else f" [{k}]" for k, v in n.notes.items())
            line = f"%{n.name} : {n.type_str()}{flag} = {n.op}({', '.join(args)}){notes}"
            if n.source:
                line += f"  # {n.source}"
            lines.append(line)
        if self.output is not None:
            lines.append(f"return %{self.output.name}")
        return "\n".join(lines)

    def to_dot(self) -> str:
        """Graphviz DOT text; perturbed nodes are filled."""
        out = ["digraph lirpac {", "  node [shape=box, fontname=monospace];"]
        for n in self.nodes:
            style = ', style=filled, fillcolor="#ffe0b0"' if n.perturbed else ""
            out.append(f'  "{n.name}" [label="{n.name}\\n{n.op} {n.type_str()}"{style}];')
            for i in n.inputs:
                out.append(f'  "{i.name}" -> "{n.name}";')
        out.append("}")
        return "\n".join(out)
