"""Rule helpers shared by op families: coefficient plumbing and the elementwise-relaxation rules.

Coefficients of backward mode have shape (B, S, *node_shape); linear functions of forward mode
have (B, N, *node_shape). Ops are written on full batch-first tensors, so both are handled by
folding the first two dimensions into one batch dimension and unfolding after.
"""
from __future__ import annotations

from typing import Callable

import torch

from lirpac.ir.opdef import Interval, Linear, OpDef, register


def fold(t: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply a batch-first op to (B, S, *shape) by folding B*S into one batch dimension."""
    b, s = t.shape[0], t.shape[1]
    out = fn(t.reshape(b * s, *t.shape[2:]))
    return out.reshape(b, s, *out.shape[1:])


def fold_opt(t, fn):
    return None if t is None else fold(t, fn)


def bias_of(coeff: torch.Tensor | None, value: torch.Tensor):
    """Sum of coeff * value over the node dims: (B, S). ``value`` broadcasts against the
    node's per-sample shape (a constant added to it, say)."""
    if coeff is None:
        return 0
    return (coeff * value).flatten(2).sum(-1)


def unbroadcast(coeff: torch.Tensor | None, shape) -> torch.Tensor | None:
    """Sum coefficients (B, S, *out) over the dims along which an input of per-sample shape
    ``shape`` was broadcast, giving (B, S, *shape)."""
    if coeff is None:
        return None
    target = tuple(shape)
    node = coeff.shape[2:]
    extra = len(node) - len(target)
    if extra > 0:
        coeff = coeff.sum(dim=tuple(range(2, 2 + extra)))
    dims = tuple(2 + i for i, (t, n) in enumerate(zip(target, coeff.shape[2:])) if t == 1 and n != 1)
    if dims:
        coeff = coeff.sum(dim=dims, keepdim=True)
    return coeff


def split_pos_neg(t: torch.Tensor):
    pos = t.clamp(min=0)
    return pos, t - pos


def add_bias(a, b):
    if isinstance(a, int) and a == 0:
        return b
    if isinstance(b, int) and b == 0:
        return a
    return a + b


# -- elementwise relaxations ---------------------------------------------------------------
# A relaxation of f on [l, u] is four tensors of the node's shape: lower line (l_slope, l_bias)
# and upper line (u_slope, u_bias) with l_slope*x + l_bias <= f(x) <= u_slope*x + u_bias.

def relaxed_backward(lA, uA, relax):
    """Backward through y = f(x) given its relaxation (B, *shape)."""
    l_slope, l_bias, u_slope, u_bias = (r.unsqueeze(1) for r in relax)
    new_l = new_u = None
    lbias = ubias = 0
    if lA is not None:
        pos, neg = split_pos_neg(lA)
        new_l = pos * l_slope + neg * u_slope
        lbias = (pos * l_bias + neg * u_bias).flatten(2).sum(-1)
    if uA is not None:
        pos, neg = split_pos_neg(uA)
        new_u = pos * u_slope + neg * l_slope
        ubias = (pos * u_bias + neg * l_bias).flatten(2).sum(-1)
    return [(new_l, new_u)], lbias, ubias


def relaxed_forward(x: Linear, relax) -> Linear:
    """Forward mode through y = f(x): compose each relaxation line with x's linear bounds."""
    l_slope, l_bias, u_slope, u_bias = relax
    lsp, lsn = split_pos_neg(l_slope)
    usp, usn = split_pos_neg(u_slope)
    lw = lsp.unsqueeze(1) * x.lw + lsn.unsqueeze(1) * x.uw
    uw = usp.unsqueeze(1) * x.uw + usn.unsqueeze(1) * x.lw
    lb = lsp * x.lb + lsn * x.ub + l_bias
    ub = usp * x.ub + usn * x.lb + u_bias
    return Linear(lw, lb, uw, ub)


def monotone_ibp(fn):
    def ibp(x: Interval, **attrs) -> Interval:
        return Interval(fn(x.lower, **attrs), fn(x.upper, **attrs))
    return ibp


def elementwise(name: str, fn, relax, ibp=None, aten: tuple[str, ...] = (), doc: str = "",
                exact_when_sign_known: bool = False) -> OpDef:
    """Register a unary elementwise nonlinear op from its function and relaxation.

    ``relax(lower, upper, **attrs)`` returns (l_slope, l_bias, u_slope, u_bias); ``ibp``
    defaults to monotone increasing.
    """
    def backward(lA, uA, x: Interval, **attrs):
        return relaxed_backward(lA, uA, relax(x.lower, x.upper, **attrs))

    def forward_mode(x: Linear, **attrs) -> Linear:
        return relaxed_forward(x, relax(x.bounds.lower, x.bounds.upper, **attrs))

    return register(OpDef(name=name, forward=fn, ibp=ibp or monotone_ibp(fn), backward=backward,
                          forward_mode=forward_mode, nonlinear=True, aten=aten, doc=doc,
                          exact_when_sign_known=exact_when_sign_known))


# -- ops that are linear maps of their single perturbed input ------------------------------

def linear_map(name: str, fn, *, transpose=None, doc: str = "") -> OpDef:
    """Register a structural op y = L(x) whose matrix is 0/1 or nonnegative (reshape, permute,
    slicing, pooling, sums): IBP maps both ends, forward mode maps every function, backward
    applies the transpose (given, or by autograd's vector-Jacobian product)."""
    def ibp(x: Interval, **attrs) -> Interval:
        return Interval(fn(x.lower, **attrs), fn(x.upper, **attrs))

    def forward_mode(x: Linear, **attrs) -> Linear:
        return Linear(fold(x.lw, lambda t: fn(t, **attrs)), fn(x.lb, **attrs),
                      fold(x.uw, lambda t: fn(t, **attrs)), fn(x.ub, **attrs))

    def backward(lA, uA, x, *, in_shapes, **attrs):
        in_shape = in_shapes[0]
        back = transpose or (lambda a, in_shape, **kw: vjp_transpose(fn, a, in_shape, **kw))
        return [(fold_opt(lA, lambda a: back(a, in_shape=in_shape, **attrs)),
                 fold_opt(uA, lambda a: back(a, in_shape=in_shape, **attrs)))], 0, 0

    return register(OpDef(name=name, forward=fn, ibp=ibp, backward=backward,
                          forward_mode=forward_mode, backward_needs_shapes=True, doc=doc))


def vjp_transpose(fn, a: torch.Tensor, in_shape, **attrs) -> torch.Tensor:
    """Transpose of a linear op applied to a (batch-first) by autograd: exact, generic."""
    with torch.enable_grad():
        x = torch.zeros(a.shape[0], *in_shape, dtype=a.dtype, device=a.device, requires_grad=True)
        y = fn(x, **attrs)
        (grad,) = torch.autograd.grad(y, x, a, create_graph=a.requires_grad)
    return grad
