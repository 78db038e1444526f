"""Rule helpers shared by op families: coefficient plumbing and the elementwise-relaxation rules.

Coefficients of backward mode have shape (B, S, *node_shape); linear functions of forward mode
have (B, N, *node_shape). Ops are written on full batch-first tensors, so both are handled by
folding the first two dimensions into one batch dimension and unfolding after.
"""
from __future__ import annotations

import contextlib
import math
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


def both_sides(lA, uA, fn):
    """(fn(lA), fn(uA)) for a linear map fn, computed once when both sides are the same
    coefficients (an identity or Jacobian start); None stays None."""
    new_l = None if lA is None else fn(lA)
    if uA is lA:
        return new_l, new_l
    return new_l, None if uA is None else fn(uA)


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


_ABS_CACHE: dict | None = None


@contextlib.contextmanager
def weights_fixed():
    """A scope in which the layers' constant operands do not change (one alpha-CROWN call:
    many evaluations of the same weights), so ``constant_abs`` computes each |W| once."""
    global _ABS_CACHE
    if _ABS_CACHE is not None:
        yield
        return
    _ABS_CACHE = {}
    try:
        yield
    finally:
        _ABS_CACHE = None


def constant_abs(t: torch.Tensor) -> torch.Tensor:
    """|t| of a layer's constant operand (a weight): once per ``weights_fixed`` scope for a
    weight autograd does not track, else computed afresh."""
    if _ABS_CACHE is None or (t.requires_grad and torch.is_grad_enabled()):
        return t.abs()
    hit = _ABS_CACHE.get(id(t))
    if hit is None or hit[0] is not t:
        hit = _ABS_CACHE[id(t)] = (t, t.abs())    # the reference keeps the id unique in scope
    return hit[1]


def split_pos_neg(t: torch.Tensor):
    """(max(t, 0), min(t, 0)), exactly (t - t = 0, t - 0 = t); relu's backward pass is far
    cheaper than clamp's (alpha-CROWN differentiates every split). Without autograd the
    negative part is a clamp, which reads t alone."""
    pos = torch.relu(t)
    if not (t.requires_grad and torch.is_grad_enabled()):
        return pos, torch.clamp_max(t, 0)
    return pos, t - pos


# -- infinite bounds ------------------------------------------------------------------------
# A bound may be +-inf where the math is unbounded (1/y across 0, an overflowing exp). Products
# with it follow the limit 0 * inf = 0 (a zero weight or slope ignores the value): a dense
# product would give NaN for every zero weight that meets an infinity.

# While a CUDA graph is captured (codegen/cuda_graphs.py) no value may be read on the host: the
# value checks of the bound rules (all_finite, _zero_if_zero) then answer as for data they
# cannot see, so every rule takes its general branch (exact for any values, only slower).
HOST_CHECKS = [True]


def all_finite(*tensors: torch.Tensor) -> bool:
    """No NaN or inf in any tensor (non-tensors are skipped). A finite sum says so in one
    reduction and one host synchronisation for all of them (a NaN or inf element makes the sum
    NaN or inf); only a sum that overflowed needs the elementwise check. False while host
    checks are off (HOST_CHECKS)."""
    if not HOST_CHECKS[0]:
        return False
    tensors = [t.detach() for t in tensors if isinstance(t, torch.Tensor)]
    if not tensors:
        return True
    total = torch.stack([t.sum().double() for t in tensors]).sum()
    return math.isfinite(float(total)) or all(bool(torch.isfinite(t).all()) for t in tensors)


def times(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a * b with 0 * inf = 0 (a NaN times 0 is 0 too: a zero factor takes no part)."""
    return torch.where((a == 0) | (b == 0), torch.zeros((), dtype=a.dtype, device=a.device), a * b)


def map_unbounded(fn: Callable, v: torch.Tensor, sign: int) -> torch.Tensor:
    """fn(v) for a linear map ``fn`` (no offset) whose weights all have the sign ``sign`` (a
    positive or negative part), with 0 * inf = 0: an infinite entry of v makes an output
    infinite exactly where fn weighs it. An output reached by both +inf and -inf is NaN, as
    inf - inf has no value (a sound bound never meets that: its infinities share one sign)."""
    zero = torch.zeros((), dtype=v.dtype, device=v.device)
    out = fn(torch.where(torch.isinf(v), zero, v))
    for end in (math.inf, -math.inf):
        weighed = sign * fn((v == end).to(v.dtype)) > 0
        out = out + torch.where(weighed, torch.full((), sign * end, dtype=v.dtype, device=v.device), zero)
    return out


def overflow_unbounded(bound: torch.Tensor, upper: bool) -> torch.Tensor:
    """A concretized linear bound, with the rows whose coefficients or bias overflowed the
    float range made unbounded: -inf (lower) or +inf (upper). Lines are finite (finite
    slopes, biases at most the largest float), but their products along a deep pass can
    exceed it (exp's slopes times McCormick's bounds); an overflowed row comes out NaN
    (inf - inf) or infinite on the wrong side (a +inf lower bound), and nothing finite is
    known of it. A bound that is truly +inf below (f overflows everywhere) is given up too."""
    wrong = torch.isnan(bound) | (bound == (-math.inf if upper else math.inf))
    return torch.where(wrong, torch.full((), math.inf if upper else -math.inf, dtype=bound.dtype,
                                         device=bound.device), bound)


def unbounded_map_ibp(pos: Callable, neg: Callable, x: Interval, offset=0) -> Interval:
    """Interval of the affine map pos + neg + offset (pos, neg: the linear map's positive and
    negative parts) over a box with infinite ends, exactly: the centre-radius form IBP uses
    elsewhere is inf - inf there."""
    return Interval(map_unbounded(pos, x.lower, 1) + map_unbounded(neg, x.upper, -1) + offset,
                    map_unbounded(pos, x.upper, 1) + map_unbounded(neg, x.lower, -1) + offset)


def add_bias(a, b):
    if isinstance(a, int) and a == 0:
        return b
    if isinstance(b, int) and b == 0:
        return a
    return a + b


# -- elementwise relaxations ---------------------------------------------------------------
# A relaxation of f on [l, u] is four tensors of the node's shape: lower line (l_slope, l_bias)
# and upper line (u_slope, u_bias) with l_slope*x + l_bias <= f(x) <= u_slope*x + u_bias; a
# line that is zero everywhere may be given as the int 0.

class PreparedLines(tuple):
    """A relaxation's four node-shaped lines (``prepare_lines``), with the forms every dense
    backward step through them needs made once (``dense``): the CROWN code crosses each
    ReLU layer in several passes."""

    def dense(self) -> tuple:
        """(the lines with a row dimension, (B, 1, *shape); the two biases as columns,
        (B, n, 1), for matrix-vector products); a line given as 0 stays 0."""
        forms = self.__dict__.get("_dense")
        if forms is None:
            rows = tuple(t if isinstance(t, int) else t.unsqueeze(1) for t in self)
            columns = tuple(t if isinstance(t, int) else t.reshape(t.shape[0], -1, 1) for t in self[1::2])
            forms = self._dense = (rows, columns)
        return forms

    def channels_last(self) -> tuple:
        """The lines of a (B, C, H, W) node in channels-last memory, made once: Patches gather
        every window from that layout (codegen/patches.py ``windows``), and a pass in row
        chunks gathers once per chunk (cnn_7layer at batch 32: over a thousand chunks, each
        of which permuted copies of the whole maps)."""
        forms = self.__dict__.get("_channels_last")
        if forms is None:
            forms = self._channels_last = tuple(
                t.contiguous(memory_format=torch.channels_last) if isinstance(t, torch.Tensor) and t.dim() == 4
                else t for t in self)
        return forms

    @property
    def unbounded(self) -> bool:
        """Some bias is infinite (a line at an unbounded interval end, relaxation.finish):
        checked once, however many backward steps cross the lines."""
        flag = self.__dict__.get("_unbounded")
        if flag is None:
            flag = self._unbounded = _unbounded(self[1::2])
        return flag


def prepare_lines(relax) -> PreparedLines:
    """A relaxation's four lines, with a bias that is zero everywhere given as 0 (it then
    costs no product at all; a ReLU layer without unstable neurons has no upper bias): checked
    once per relaxation, however many backward passes use it. Slopes are seldom all zero and
    are not checked."""
    l_slope, l_bias, u_slope, u_bias = relax
    return PreparedLines((l_slope, _zero_if_zero(l_bias), u_slope, _zero_if_zero(u_bias)))


def _unbounded(biases) -> bool:
    """Some bias is infinite (a line at an unbounded interval end, relaxation.finish)."""
    return not all_finite(*(b for b in biases if not isinstance(b, int)))


def _zero_if_zero(t):
    # (count_nonzero: any() on a float tensor first copies it to bool)
    return 0 if isinstance(t, torch.Tensor) and HOST_CHECKS[0] and not t.count_nonzero() else t


def relaxed_backward(lA, uA, relax):
    """Backward through y = f(x) given its relaxation (B, *shape), on dense coefficients or
    on Patches (codegen/patches.py: the lines are read at each row's window)."""
    return relaxed_backward_lines(lA, uA, prepare_lines(relax))


def relaxed_backward_lines(lA, uA, lines):
    """``relaxed_backward`` from prepared lines (``prepare_lines``), on dense coefficients or
    on Patches."""
    rows = RowLayout(lA, uA)
    if isinstance(lines, PreparedLines) and not rows.windowed:
        at_rows, columns = lines.dense()
        new_l, new_u, lbias, ubias = _relaxed_step(*rows.coeffs, *at_rows, _row_dot, columns=columns,
                                                   unbounded=lines.unbounded)
        return [(new_l, new_u)], lbias, ubias
    new_l, new_u, lbias, ubias = _relaxed_step(*rows.coeffs, *rows.lines_at(lines), _row_dot,
                                               unbounded=getattr(lines, "unbounded", None))
    return [(rows.wrap(new_l), rows.wrap(new_u))], lbias, ubias


class RowLayout:
    """How per-row values meet a backward step's coefficients (dense, or Patches from
    codegen/patches.py): ``at(t)`` turns a node-shaped (B, *shape) tensor into one that
    multiplies the coefficients (dense: one added row dim; Patches: each row's window);
    ``slopes(alpha)`` reads a per-row parameter the same way (a shared (B, 1, ...) one on
    Patches is read at the windows); ``coeffs`` are the raw coefficient tensors of both sides
    (the same object when the sides are) and ``wrap`` turns new ones back."""

    def __init__(self, lA, uA):
        self.some = lA if lA is not None else uA
        self.windowed = hasattr(self.some, "windows")
        coeffs = [None if c is None else (c.coeff if self.windowed else c) for c in (lA, uA)]
        if uA is lA:
            coeffs[1] = coeffs[0]
        self.coeffs = coeffs

    def at(self, t: torch.Tensor) -> torch.Tensor:
        return self.some.windows(t) if self.windowed else t.unsqueeze(1)

    def lines_at(self, lines) -> list:
        """``at`` of each line, a line given as 0 staying 0."""
        if self.windowed and isinstance(lines, PreparedLines):
            lines = lines.channels_last()
        return [r if isinstance(r, int) else self.at(r) for r in lines]

    def slopes(self, alpha):
        if alpha is None or not self.windowed or alpha.shape == self.some.coeff.shape:
            return alpha
        return self.some.windows(alpha[:, 0])

    def wrap(self, coeff):
        return coeff if coeff is None or not self.windowed else self.some.with_coeff(coeff)

    def sides_apart(self, alpha_l, alpha_u, lines_of):
        """One relaxed step per side, each with its own lines ``lines_of(alpha)`` (the four
        tensors, laid out by ``at``) from that side's slopes: the rule's result."""
        new, biases = [None, None], [0, 0]
        for side, alpha in enumerate((alpha_l, alpha_u)):
            if self.coeffs[side] is None:
                continue
            args = [None, None]
            args[side] = self.coeffs[side]
            step = _relaxed_step(*args, *lines_of(self.slopes(alpha)), _row_dot)
            new[side], biases[side] = self.wrap(step[side]), step[2 + side]
        return [tuple(new)], biases[0], biases[1]


def _row_dot(coeff, values):
    """(B, S): each row of coeff (B, S, ...) summed against the same-shaped values. Contiguous
    coefficients: one batched product, without a product tensor of the coefficients' size.
    Others (Patches' windows are channels-last views): flattening would copy both operands,
    so the elementwise product is summed instead (one pass, in their own layout)."""
    values = values.expand_as(coeff)
    if coeff.dim() <= 3 or (coeff.is_contiguous() and values.is_contiguous()):
        return torch.einsum("bsn,bsn->bs", coeff.flatten(2), values.flatten(2))
    return (coeff * values).sum(tuple(range(2, coeff.dim())))


def _shared_dot(coeff, bias):
    """(B, S): each row of coeff against ``bias`` when it is the same for every row
    ((B, 1, ...)): one matrix-vector product instead of a row-by-row reduction."""
    return _column_dot(coeff, bias.expand(coeff.shape[0], 1, *coeff.shape[2:]).reshape(coeff.shape[0], -1, 1))


def _column_dot(coeff, column):
    """(B, S): each row of coeff (B, S, ...) against a (B or 1, n, 1) column."""
    if column.shape[0] != coeff.shape[0]:
        column = column.expand(coeff.shape[0], -1, -1)
    return torch.bmm(coeff.flatten(2), column).squeeze(-1)


def _relaxed_step(lA, uA, l_slope, l_bias, u_slope, u_bias, dot, l_slope_of_upper=None,
                  columns=None, unbounded: bool | None = None):
    """Coefficients and biases through one relaxation (shared by the dense and patch forms):
    positive coefficients meet the lower line of a lower bound, negative ones the upper line.
    Each side splits its coefficients into positive and negative parts with two clamps (exact,
    and far cheaper than a broadcast selection on a boolean mask); ``dot`` sums against
    relaxation values; a line given as 0 costs nothing; when both sides are the same tensor,
    its parts are computed once. ``l_slope_of_upper``: the upper side's own lower-line slope
    (alpha-CROWN optimises one per side), else ``l_slope``. ``columns``: the two biases as
    (B, n, 1) columns (``PreparedLines.dense``), for the bias products of dense coefficients.
    ``unbounded``: whether a bias is infinite somewhere (None: find out); its products then
    take 0 * inf = 0, so a row meets an infinite line end only through a nonzero coefficient."""
    parts = {}
    if unbounded is None:
        unbounded = _unbounded((l_bias, u_bias))
    if columns is not None:
        (l_bias, u_bias), dot = columns, _column_dot

    def split(coeff):
        if id(coeff) not in parts:
            parts[id(coeff)] = split_pos_neg(coeff)
        return parts[id(coeff)]

    def side(coeff, on_pos, on_neg, bias_pos, bias_neg):
        pos, neg = split(coeff)
        new = _combine(pos, on_pos, neg, on_neg)
        if new is None:
            new = torch.zeros_like(coeff)
        bias = 0
        for part, b, sign in ((pos, bias_pos, 1), (neg, bias_neg, -1)):
            if isinstance(b, int):
                continue
            product = _shared_dot if dot is _row_dot and b.shape[1] == 1 else dot
            term = map_unbounded(lambda v: product(part, v), b, sign) if unbounded else product(part, b)
            bias = term if isinstance(bias, int) else bias + term
        return new, bias

    new_l = new_u = None
    lbias = ubias = 0
    if lA is not None:
        new_l, lbias = side(lA, l_slope, u_slope, l_bias, u_bias)
    if uA is not None:
        lower_line = l_slope if l_slope_of_upper is None else l_slope_of_upper
        new_u, ubias = side(uA, u_slope, lower_line, u_bias, l_bias)
    return new_l, new_u, lbias, ubias


def _combine(pos, on_pos, neg, on_neg):
    """pos * on_pos + neg * on_neg, skipping lines given as 0 (None when both are)."""
    if isinstance(on_pos, int):
        return None if isinstance(on_neg, int) else neg * on_neg
    if isinstance(on_neg, int):
        return pos * on_pos
    new = pos * on_pos
    if new.requires_grad or new.shape != torch.broadcast_shapes(new.shape, neg.shape, on_neg.shape):
        return torch.addcmul(new, neg, on_neg)     # (autograd's in-place bookkeeping costs more)
    return new.addcmul_(neg, on_neg)      # into the fresh product: no third tensor


def relaxed_forward(x: Linear, relax) -> Linear:
    """Forward mode through y = f(x): compose each relaxation line with x's linear bounds (an
    infinite bias of x meets a zero slope part, at least, where x's bounds are infinite: 0)."""
    l_slope, l_bias, u_slope, u_bias = relax
    lsp, lsn = split_pos_neg(l_slope)
    usp, usn = split_pos_neg(u_slope)
    lw = lsp.unsqueeze(1) * x.lw + lsn.unsqueeze(1) * x.uw
    uw = usp.unsqueeze(1) * x.uw + usn.unsqueeze(1) * x.lw
    lb = times(lsp, x.lb) + times(lsn, x.ub) + l_bias
    ub = times(usp, x.ub) + times(usn, x.lb) + u_bias
    return Linear(lw, lb, uw, ub)


def monotone_ibp(fn):
    def ibp(x: Interval, **attrs) -> Interval:
        return Interval(fn(x.lower, **attrs), fn(x.upper, **attrs))
    return ibp


def elementwise(name: str, fn, relax, ibp=None, aten: tuple[str, ...] = (), doc: str = "",
                exact_when_sign_known: bool = False, zero_where=None, check_attrs=None,
                **alpha_rules) -> OpDef:
    """Register a unary elementwise nonlinear op from its function and relaxation.

    ``relax(lower, upper, **attrs)`` returns (l_slope, l_bias, u_slope, u_bias); ``ibp``
    defaults to monotone increasing; ``alpha_rules`` are the optional ``backward_alpha`` and
    ``alpha_init`` of a parametrised relaxation (alpha-CROWN); ``zero_where`` and
    ``check_attrs``: see OpDef.
    """
    def backward(lA, uA, x: Interval, **attrs):
        return relaxed_backward(lA, uA, relax(x.lower, x.upper, **attrs))

    def forward_mode(x: Linear, **attrs) -> Linear:
        return relaxed_forward(x, relax(x.bounds.lower, x.bounds.upper, **attrs))
    forward_mode.relaxed_by = relax     # (codegen/triton fuses relaxed_forward's weights)

    return register(OpDef(name=name, forward=fn, ibp=ibp or monotone_ibp(fn), backward=backward,
                          backward_patches=backward,
                          forward_mode=forward_mode, nonlinear=True, aten=aten, doc=doc,
                          exact_when_sign_known=exact_when_sign_known, relax=relax,
                          zero_where=zero_where, check_attrs=check_attrs, **alpha_rules))


# -- ops that are linear maps of their single perturbed input ------------------------------

def linear_map(name: str, fn, *, transpose=None, rows_transpose=None, doc: str = "",
               backward_memory: str = "unknown", **patch_rules) -> OpDef:
    """Register a structural op y = L(x) whose matrix is 0/1 or nonnegative (reshape, permute,
    slicing, pooling, sums): IBP maps both ends, forward mode maps every function, backward
    applies the transpose (given, or by autograd's vector-Jacobian product) to the
    coefficients folded into one batch dimension, or ``rows_transpose(a, in_shape, **attrs)``
    to the (B, S, *shape) coefficients directly (reshape: one view instead of three).
    ``patch_rules``: the OpDef's optional ``backward_patches`` and ``reads_window``."""
    def ibp(x: Interval, **attrs) -> Interval:
        return Interval(fn(x.lower, **attrs), fn(x.upper, **attrs))

    def forward_mode(x: Linear, **attrs) -> Linear:
        return Linear(fold(x.lw, lambda t: fn(t, **attrs)), fn(x.lb, **attrs),
                      fold(x.uw, lambda t: fn(t, **attrs)), fn(x.ub, **attrs))

    def backward(lA, uA, x, *, in_shapes, **attrs):
        in_shape = in_shapes[0]
        if rows_transpose is not None:
            return [both_sides(lA, uA, lambda a: rows_transpose(a, in_shape=in_shape, **attrs))], 0, 0
        back = transpose or (lambda a, in_shape, **kw: vjp_transpose(fn, a, in_shape, **kw))
        return [(fold_opt(lA, lambda a: back(a, in_shape=in_shape, **attrs)),
                 fold_opt(uA, lambda a: back(a, in_shape=in_shape, **attrs)))], 0, 0

    return register(OpDef(name=name, forward=fn, ibp=ibp, backward=backward,
                          forward_mode=forward_mode, backward_needs_shapes=True, doc=doc,
                          backward_memory=backward_memory, **patch_rules))


def vjp_transpose(fn, a: torch.Tensor, in_shape, **attrs) -> torch.Tensor:
    """Transpose of a linear op applied to a (batch-first) by autograd: exact, generic (also
    inside inference mode, which bound calls without grad run in)."""
    with torch.inference_mode(False), torch.enable_grad():
        x = torch.zeros(a.shape[0], *in_shape, dtype=a.dtype, device=a.device, requires_grad=True)
        y = fn(x, **attrs)
        (grad,) = torch.autograd.grad(y, x, a, create_graph=a.requires_grad)
    return grad


def lp_norm(t: torch.Tensor, q: float, dim) -> torch.Tensor:
    """||t||_q along ``dim`` for any q >= 1 (the dual norm of an Lp ball). For q other than
    1, 2 and inf, |t|^q overflows (|t| = 10, q = 50) or underflows where the norm does not, so
    the sum is taken of (|t| / max |t|)^q, at most 1 per element."""
    if q in (1.0, 2.0, math.inf):
        return torch.linalg.vector_norm(t, ord=q, dim=dim)
    top = t.abs().amax(dim=dim, keepdim=True)
    scaled = (t.abs() / torch.where(top > 0, top, torch.ones_like(top))).pow(q)
    return top.squeeze(dim) * scaled.sum(dim).pow(1.0 / q)


def dual_exponent(p: float) -> float:
    """q with 1/p + 1/q = 1 (p >= 1): the norm of a linear map's rows over an Lp ball."""
    if p == 1.0:
        return math.inf
    if p == math.inf:
        return 1.0
    return p / (p - 1.0)
