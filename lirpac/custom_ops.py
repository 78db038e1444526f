"""Custom operators: give lirpac the bound rules of an op it does not know (docs/custom_ops.md).

    lirpac.register_op("my_act", forward=my_act, relax=my_act_lines, torch_op=torch.ops.mylib.my_act)

registers an OpDef (ir/opdef.py), the same object every built-in op is, and tells the torch
frontend (the ATen-style name of ``torch_op`` in the exported graph) and, optionally, the ONNX
frontend (``onnx_op``) to lower calls of it onto that op. Check the rules with
``lirpac.testing.check_op`` before trusting bounds that use them.
"""
from __future__ import annotations

from typing import Any, Callable

from lirpac.errors import InputError
from lirpac.ir.opdef import REGISTRY, OpDef, get_op, register
from lirpac.ir.ops.blend_alpha import blend_alpha_rules
from lirpac.ir.ops.common import elementwise, monotone_ibp
from lirpac.ir.ops.relaxation import sound_relax
from lirpac.ir.ops.tangent_alpha import tangent_alpha_rules

# (ONNX domain, op type) -> IR op name, read by the ONNX frontend
ONNX_OPS: dict[tuple[str, str], str] = {}


def torch_op_key(torch_op) -> str:
    """The name an op has in an exported graph's node targets, as the frontend looks it up:
    'mylib.my_act.default' for torch.ops.mylib.my_act (or its .default, or 'mylib::my_act')."""
    if isinstance(torch_op, str):
        if "::" in torch_op:
            namespace, name = torch_op.split("::", 1)
            name, _, overload = name.partition(".")
            return f"{namespace}.{name}.{overload or 'default'}"
        return torch_op if torch_op.count(".") >= 2 else f"{torch_op}.default"
    overload = getattr(torch_op, "default", torch_op)     # a packet: its default overload
    key = str(overload)
    return key[len("aten."):] if key.startswith("aten.") else key


def register_op(name: str, forward: Callable, *, torch_op=None, onnx_op=None,
                relax: Callable | None = None, ibp: Callable | None = None,
                backward: Callable | None = None, forward_mode: Callable | None = None,
                alpha: str | Callable | None = None, nonlinear: bool = True,
                backward_needs_shapes: bool = False, doc: str = "",
                replace: bool = False) -> OpDef:
    """Register an op with its bound rules.

    An elementwise op needs only ``relax(lower, upper, **attrs) -> (l_slope, l_bias, u_slope,
    u_bias)``, lines below and above f on [lower, upper] (elementwise tensors); IBP defaults to
    f at the two ends (f nondecreasing), else give ``ibp``. ``alpha``: "blend" lets
    alpha-CROWN slide each line towards the constant interval bound (any f with finite IBP
    bounds), or a function ``tangent_at(lower, upper, p) -> lines`` (f convex or concave: the
    tangent at p) lets it move the tangent point.

    Any other op gives its rules as ir/opdef.py describes them: ``ibp(*xs, **attrs)``,
    ``backward(lA, uA, *xs, **attrs)`` and/or ``forward_mode(*xs, **attrs)``; a method that
    needs a missing rule is refused at bound time with the op's name.

    ``torch_op``: the custom torch op (torch.library) whose calls lower to this op; its
    non-tensor arguments become attrs named as in its schema. ``onnx_op``: "OpType" or
    ("domain", "OpType") of ONNX nodes that lower to it; their attributes become attrs.
    ``replace``: replace an op registered before under ``name`` (re-running a notebook)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise InputError(f"register_op: the name must be an identifier, got {name!r}")
    get_op("input")     # the built-in ops first, so a clash with one is seen
    if name in REGISTRY:
        if not replace or not getattr(REGISTRY[name], "_custom", False):
            kind = "a built-in op" if not getattr(REGISTRY[name], "_custom", False) else "an op"
            raise InputError(f"register_op: {kind} named {name!r} exists already; choose "
                             "another name" + (" or pass replace=True" if kind == "an op" else ""))
        del REGISTRY[name]
    aten = (torch_op_key(torch_op),) if torch_op is not None else ()
    if relax is not None:
        if backward is not None or forward_mode is not None:
            raise InputError("register_op: give relax (an elementwise op) or backward/"
                             "forward_mode rules, not both")
        ibp = ibp or monotone_ibp(forward)
        lines = sound_relax(relax, ibp, in_dtype=True)     # non-finite lines fall back to IBP
        op = elementwise(name, forward, lines, ibp=ibp, aten=aten, doc=doc,
                         **_alpha_rules(alpha, lines, ibp, relax))
    else:
        if alpha is not None:
            raise InputError("register_op: alpha needs an elementwise op given by relax")
        if ibp is None and backward is None and forward_mode is None:
            raise InputError(f"register_op: op {name!r} has no bound rule; give relax, or ibp, "
                             "backward and/or forward_mode")
        op = register(OpDef(name=name, forward=forward, ibp=ibp, backward=backward,
                            forward_mode=forward_mode, nonlinear=nonlinear, aten=aten, doc=doc,
                            backward_needs_shapes=backward_needs_shapes))
    object.__setattr__(op, "_custom", True)
    if onnx_op is not None:
        domain, op_type = onnx_op if isinstance(onnx_op, tuple) else ("", onnx_op)
        ONNX_OPS[(domain, op_type)] = name
    _refresh_torch_table()
    return op


def _alpha_rules(alpha, lines, ibp, relax) -> dict[str, Any]:
    if alpha is None:
        return {}
    if alpha == "blend":
        return blend_alpha_rules(lines, ibp)
    if callable(alpha):
        return tangent_alpha_rules(alpha, ibp)
    raise InputError(f"register_op: alpha must be None, 'blend' or a tangent_at function, "
                     f"got {alpha!r}")


def _refresh_torch_table() -> None:
    from lirpac.ir import torch_frontend
    torch_frontend._GENERIC.update(torch_frontend._generic_table())


def unregister_op(name: str) -> None:
    """Remove an op registered with register_op (tests, notebooks)."""
    op = REGISTRY.get(name)
    if op is None or not getattr(op, "_custom", False):
        raise InputError(f"unregister_op: {name!r} is not an op registered with register_op")
    del REGISTRY[name]
    for key in [k for k, v in ONNX_OPS.items() if v == name]:
        del ONNX_OPS[key]
    from lirpac.ir import torch_frontend
    for aten in op.aten:
        torch_frontend._GENERIC.pop(aten, None)
