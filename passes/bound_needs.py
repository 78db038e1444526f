"""Analysis: which nodes need intermediate bounds, and how CROWN gets each of them.

A nonlinear op relaxes around the bounds of its perturbed inputs, so exactly those inputs need
concrete bounds before the final bound can be formed. Every method computes bounds for this
set only (CROWN runs one backward pass per node in it, unless a cheaper way is exact).

CROWN's way per node (``crown_mode``, printed in the dump as ``[crown=...]``):

* ``ibp``: one affine map of distinct input coordinates; IBP is its exact range already.
* ``forward``: forward mode gives the same bounds as a backward pass (see ``forward_exact``)
  and costs less: its work grows with the input's size times the dense size of every op it
  crosses, a backward pass's with the number of unstable neurons of the node times what one
  row touches, which on (C, H, W) maps is the row's receptive field only (patches,
  codegen/patches.py). Low-dimensional inputs (ACAS Xu's five) favour forward mode; images
  whose convolutions keep a large map favour backward passes on patches.
* ``backward``: a backward pass over the node's unstable neurons.

A choice never loosens a bound: forward mode is only picked where it is exact.
"""
from __future__ import annotations

import math

from lirpac.codegen.patches import read_extent
from lirpac.ir.graph import Graph, Node
from lirpac.ir.opdef import get_op

# ops that only select or reorder coordinates: a chain of them keeps inputs distinct (padding
# is left out: its constant coordinates would count as perturbed in a ball's row norms)
SELECTION_OPS = frozenset({"reshape", "permute", "slice"})
# a backward pass bounds only the neurons an IBP reference leaves unstable: forward mode is
# picked when the input has at most this share of the node's neurons (a typical unstable share
# of trained networks; the exact count is only known at run time)
FORWARD_SHARE = 0.25
# ... and when that saves at least this many multiply-adds per sample: below it the few extra
# ops of forward mode cost more than they save (measured on 5-input MLPs, benchmarks/passes.py)
FORWARD_MIN_SAVING = 4_000_000


def nodes_needing_bounds(graph: Graph) -> list[Node]:
    needed: list[Node] = []
    for node in graph.nodes:
        if node.perturbed and get_op(node.op).nonlinear:
            for i in node.inputs:
                if i.perturbed and i not in needed:
                    needed.append(i)
    order = {n: k for k, n in enumerate(graph.nodes)}
    return sorted(needed, key=order.__getitem__)


def sign_splittable(graph: Graph) -> list[Node]:
    """Perturbed nodes whose every nonlinear user is exact once the sign of its input is known
    (ReLU, leaky ReLU, abs): fixing a neuron's sign (ReLU branch and bound) makes those users
    linear there."""
    users = graph.users()
    out = []
    for n in graph.nodes:
        nonlinear = [u for u in users.get(n, []) if get_op(u.op).nonlinear]
        if n.perturbed and nonlinear and all(get_op(u.op).exact_when_sign_known for u in nonlinear):
            out.append(n)
    return out


def image_of_bounded_input(graph: Graph, node: Node) -> bool:
    """``node`` is a monotone elementwise op (OpDef.monotone) of one perturbed input that gets
    bounds on every neuron (as every perturbed input of a nonlinear op does, unless a sparse
    pass skips the sign-stable neurons of an input whose nonlinear users are all exact once
    the sign is known, ReLU's). Its image of those bounds is then at least as tight as a
    backward pass from ``node``: the pass meets ``node``'s lines, a l + b <= f on [l, u],
    and continues as the input's own pass, so it reaches at most min(L(l), L(u)) <= f(l).
    (auto_LiRPA takes the same image for its activations: ``ibp_intermediate``.)"""
    if not get_op(node.op).monotone:
        return False
    perturbed = [i for i in node.inputs if i.perturbed]
    if len(perturbed) != 1:
        return False
    nonlinear = [get_op(u.op) for u in graph.users().get(perturbed[0], []) if get_op(u.op).nonlinear]
    return not all(op.exact_when_sign_known for op in nonlinear)


def perturbed_region(graph: Graph, target: Node) -> list[Node]:
    """``target`` and the perturbed nodes it depends on, in graph order."""
    keep = {a for a in graph.ancestors(target) if a.perturbed} | {target}
    keep -= graph.ancestors(graph.set_leaf)    # (token ids before their embedding)
    return [n for n in graph.nodes if n in keep]


def single_affine_of_input(graph: Graph, target: Node) -> bool:
    """``target`` is one affine op (with an ``ibp_ball`` rule) of the input reached through
    coordinate selections only: each of its outputs is an affine function of distinct input
    coordinates, and IBP gives its exact range (centre and radius over a box, the rows' dual
    norms over a ball), so a backward pass cannot tighten it."""
    if get_op(target.op).ibp_ball is None:
        return False
    for n in perturbed_region(graph, target):
        if n is graph.set_leaf:
            continue
        if sum(i.perturbed for i in n.inputs) != 1:
            return False
        if n is not target and n.op not in SELECTION_OPS:
            return False
    return True


def selection_of_input(graph: Graph, target: Node) -> bool:
    """``target`` picks coordinates of the input (SELECTION_OPS only: a perturbed weight cut
    from a joint input, say): the set's box, which IBP carries, bounds each coordinate exactly,
    whatever the set (a coordinate's range over an Lp ball is x +- eps), so no pass can tighten
    it (a backward pass per coordinate would cost the input's size squared)."""
    return target.op in SELECTION_OPS and all(
        n is graph.set_leaf or (n.op in SELECTION_OPS and sum(i.perturbed for i in n.inputs) == 1)
        for n in perturbed_region(graph, target))


def affine_of_input(graph: Graph, target: Node) -> bool:
    """Every op between the input and ``target`` is linear with a forward-mode rule: forward
    mode carries one exact affine function, as a backward pass does."""
    return all(n is graph.set_leaf or
               (not get_op(n.op).nonlinear and get_op(n.op).forward_mode is not None)
               for n in perturbed_region(graph, target))


def forward_exact(graph: Graph, target: Node) -> bool:
    """Forward mode gives ``target`` the same bounds as a backward pass: either ``target`` is
    affine in the input, or it is one linear op (through coordinate selections) of one
    elementwise relaxation of an affine function of the input. In the second case both modes
    form the same linear function: the backward pass meets each relaxed neuron with one
    coefficient per row and picks its lower or upper line by that coefficient's sign, and the
    forward rule of a linear op splits its weights by sign in the same way; a second linear
    op after the relaxation, or a second relaxation, would let a backward pass cancel signs
    that forward mode has already split."""
    if affine_of_input(graph, target):
        return True
    opdef = get_op(target.op)
    if opdef.nonlinear or opdef.forward_mode is None:
        return False
    node = target
    while True:
        perturbed = [i for i in node.inputs if i.perturbed]
        if len(perturbed) != 1:
            return False
        node = perturbed[0]
        if node.op not in SELECTION_OPS:
            break
    relaxed = get_op(node.op)
    if relaxed.relax is None:
        return False
    below = [i for i in node.inputs if i.perturbed]
    return len(below) == 1 and affine_of_input(graph, below[0])


def _fan_in(m: Node) -> int:
    """Multiply-adds per output element of ``m``: its weight's fan-in, 1 for elementwise ops."""
    weights = [c for c in m.inputs if not c.perturbed and len(c.shape) >= 2]
    return math.prod(weights[0].shape[1:]) if weights else 1


def _line_work(graph: Graph, target: Node) -> int:
    """Multiply-adds of carrying one input column (forward mode) through the ops ``target``
    depends on: each op's size times its fan-in."""
    return sum(math.prod(m.shape) * _fan_in(m) for m in perturbed_region(graph, target))


def _window_in(m: Node, extent: tuple[int, int]) -> tuple[int, int] | None:
    """The window on ``m``'s perturbed (C, H, W) inputs that an ``extent`` window on its
    output reads, or None when one row's coefficients there are dense (another shape)."""
    reads_window = get_op(m.op).reads_window
    if reads_window is not None:
        window = reads_window(m.attrs, [i.shape for i in m.inputs])
        if window is None:
            return None
        stride, _, dilation, kernel = window
        return tuple(read_extent(*args) for args in zip(extent, stride, dilation, kernel))
    if all(i.shape == m.shape for i in m.inputs if i.perturbed):
        return extent
    return None


def _row_work(graph: Graph, target: Node) -> int:
    """Multiply-adds of carrying one row of coefficients back from ``target`` (a backward
    pass): on (C, H, W) maps a row is nonzero on its receptive field only (patches), elsewhere
    it is dense, as in ``_line_work``."""
    windows: dict[Node, tuple[int, int] | None] = {target: (1, 1) if len(target.shape) == 3 else None}
    total = 0
    for m in reversed(perturbed_region(graph, target)):
        if m not in windows or m is graph.set_leaf:
            continue
        extent = windows[m]
        size = math.prod(m.shape)
        if extent is not None and len(m.shape) == 3:
            size = m.shape[0] * min(extent[0], m.shape[1]) * min(extent[1], m.shape[2])
        total += size * _fan_in(m)
        below = _window_in(m, extent) if extent is not None and len(m.shape) == 3 else None
        for i in m.inputs:
            if not i.perturbed:
                continue
            if below is None or len(i.shape) != 3 or windows.get(i, ()) is None:
                windows[i] = None
            else:
                old = windows.get(i, (0, 0))
                windows[i] = (max(old[0], below[0]), max(old[1], below[1]))
    return total


def crown_mode(graph: Graph, node: Node) -> tuple[str, str]:
    """How CROWN bounds ``node`` (one that needs bounds): (mode, reason) as in the module
    docstring."""
    x = graph.set_leaf
    if node is x:
        return "input", "the perturbation set's box"
    if single_affine_of_input(graph, node):
        return "ibp", "exact, one affine map of the input"
    if selection_of_input(graph, node):
        return "ibp", "exact, coordinates of the input"
    if image_of_bounded_input(graph, node):
        return "ibp", "a monotone op's image of its input's bounds"
    if forward_exact(graph, node):
        columns, rows = math.prod(x.shape), FORWARD_SHARE * math.prod(node.shape)
        forward, backward = columns * _line_work(graph, node), rows * _row_work(graph, node)
        cost = f"~{forward / 1e6:.0f}M multiply-adds forward vs ~{backward / 1e6:.0f}M backward"
        if backward - forward >= FORWARD_MIN_SAVING:
            return "forward", f"exact here; {columns} input columns vs ~{rows:.0f} unstable rows: {cost}"
        if columns >= rows:
            return "backward", f"forward mode would be exact but carries {columns} input columns"
        return "backward", f"forward mode would be exact but saves too little: {cost}"
    return "backward", "over the unstable neurons"


def chosen_mode(graph: Graph, node: Node) -> str:
    """CROWN's way for ``node`` as annotated at compile time (so the dump says what the code
    does), else as ``crown_mode`` picks it now; a note that a later rewrite made stale never
    puts forward mode where it is not exact."""
    note = node.notes.get("crown")
    mode = note.split(" ", 1)[0] if note else crown_mode(graph, node)[0]
    if mode == "forward" and not forward_exact(graph, node):
        return "backward"
    return mode


def annotate(graph: Graph) -> Graph:
    """Mark the nodes in the dump (``[needs_bounds]``, and CROWN's way: ``[crown=...]``)."""
    for node in nodes_needing_bounds(graph):
        node.notes["needs_bounds"] = True
        mode, reason = crown_mode(graph, node)
        node.notes["crown"] = f"{mode} ({reason})"
    return graph
