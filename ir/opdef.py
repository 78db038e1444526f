"""OpDef: the one place that knows an op, and the registry of all ops.

Every rule works on full tensors whose dimension 0 is the batch. Arguments of a rule are given
per input of the node, in order: a constant input is its ``torch.Tensor``; a perturbed input
is described by the mode:

- ``forward(*xs, **attrs)``: the concrete op (all tensors).
- ``ibp(*xs, **attrs) -> Interval``: perturbed inputs are ``Interval(lower, upper)``.
- ``backward(lA, uA, *xs, **attrs) -> (input_coeffs, lbias, ubias)``: ``lA``/``uA`` are the
  coefficients of the lower/upper linear bound on this node, shape ``(B, S, *node_shape)``, or
  ``None`` when that side is not wanted. Perturbed inputs are their ``Interval`` when the op is
  ``nonlinear`` (its relaxation needs them) and ``None`` otherwise. ``input_coeffs`` has one
  entry per input: ``(lA_i, uA_i)`` for a perturbed input, ``None`` for a constant. ``lbias`` and
  ``ubias`` are ``(B, S)`` tensors or ``0``.
- ``forward_mode(*xs, **attrs) -> Linear``: perturbed inputs are ``Linear(lw, lb, uw, ub,
  bounds)``, linear functions of the perturbed input (``lw``: ``(B, N_in, *shape)``, ``lb``:
  ``(B, *shape)``) with ``bounds`` their concretization when the op is ``nonlinear``.

A mode whose rule is ``None`` is unsupported for that op; asking for it names the op and the
modes it does support.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch

from lirpac.errors import UnsupportedOperationError


class Interval(NamedTuple):
    lower: torch.Tensor
    upper: torch.Tensor


class Linear(NamedTuple):
    """Linear bounds ``lw . x + lb <= node <= uw . x + ub`` of a node in the perturbed input x."""
    lw: torch.Tensor
    lb: torch.Tensor
    uw: torch.Tensor
    ub: torch.Tensor
    bounds: Interval | None = None


MODES = ("ibp", "backward", "forward_mode")


@dataclass(frozen=True)
class OpDef:
    name: str
    forward: Callable[..., torch.Tensor]
    ibp: Callable[..., Interval] | None = None
    backward: Callable[..., Any] | None = None
    forward_mode: Callable[..., Linear] | None = None
    # Nonlinear ops relax around the bounds of their perturbed inputs, which must be computed.
    nonlinear: bool = False
    # Backward from this node with an identity spec, without materialising the identity:
    # jacobian(batch, *xs, **attrs) -> (input_coeffs, bias) (an optional fast path).
    jacobian: Callable[..., Any] | None = None
    # Backward on Patches (codegen/patches.py: one window per row on a (C, H, W) node), same
    # convention as ``backward``; an op without it makes the code generator go dense first.
    backward_patches: Callable[..., Any] | None = None
    # Ops whose output position on a (C, H, W) map reads a window of each perturbed input (conv,
    # pooling, channel concatenation): reads_window(attrs, in_shapes) -> (stride, padding,
    # dilation, kernel), one pair per spatial dim, or None where a row cannot stay a window
    # (in_shapes: every input's shape, per sample for perturbed ones). Without it, Patches pass
    # only to inputs of the op's own shape. The code generator sizes windows with it
    # (codegen/patches.py), the cost model (passes/bound_needs.py) a backward row's work.
    reads_window: Callable[..., Any] | None = None
    # Affine ops on an Lp ball: ibp_ball(center, eps, dual, *consts, **attrs) -> Interval, the
    # exact range f(c) +- eps * ||row||_dual (IBP's box around the ball is looser there).
    ibp_ball: Callable[..., Interval] | None = None
    # alpha-CROWN: backward_alpha(lA, uA, *xs, alpha_l, alpha_u, **attrs) is ``backward`` with the
    # free parameters of the relaxation given per spec row, (B, S or 1, *shape) in [0, 1] (one
    # tensor for each side's coefficients); alpha_init(lower, upper, **attrs) gives their
    # (B, *shape) start, the choice ``backward`` makes.
    backward_alpha: Callable[..., Any] | None = None
    # alpha_lines(lower, upper, **attrs): the part of backward_alpha that depends on the bounds
    # only, which it then takes in place of the input's Interval; the code generator computes
    # it once per bounds, for every pass and optimisation step that crosses the node.
    alpha_lines: Callable[..., Any] | None = None
    # Elementwise ops: relax(lower, upper, **attrs) -> (l_slope, l_bias, u_slope, u_bias), the
    # lines ``backward`` uses; the code generator computes them once per bounds and hands them
    # to every backward pass (ir/ops/common.py: relaxed_backward_lines).
    relax: Callable[..., Any] | None = None
    alpha_init: Callable[..., torch.Tensor] | None = None
    # The backward rule takes ``in_shapes=`` (the per-sample shape of each perturbed input,
    # None for constants), for ops whose coefficients cannot tell the input's shape.
    backward_needs_shapes: bool = False
    # The relaxation is exact whenever the input's bounds do not straddle 0 (ReLU, leaky ReLU,
    # abs): bounds of such inputs are only worth tightening where they straddle 0.
    exact_when_sign_known: bool = False
    # Elementwise ops that vanish on whole intervals: zero_where(lower, upper) -> a bool tensor,
    # true where f(x) = 0 for every x in [lower, upper] (ReLU: upper <= 0). Backward passes
    # drop such neurons from the layers around them (codegen: ``live_neurons``).
    zero_where: Callable[..., torch.Tensor] | None = None
    # Elementwise and nondecreasing (sigmoid, tanh, ReLU): the IBP rule maps the input's
    # bounds to the op's range on them, which no backward pass from the op can beat (its
    # lines lie below f on [l, u], so a pass's lower bound is at most min(f(l), f(u)) = f(l)).
    # A node that needs bounds takes that image of its input's bounds instead of a pass
    # (passes/bound_needs.py: image_of_bounded_input).
    monotone: bool = False
    # The relaxation exists only inside a domain of its input (1 / x away from 0, log on
    # x > 0) and raises outside it: the bounds it reads keep the intersection of a linear
    # method's bounds with IBP's, which can stay inside where a linear bound does not
    # (codegen/torch_backend.py: feeds_domain). A callable takes the node's attrs (pow: only
    # negative or non-integer exponents).
    needs_domain: bool | Callable[..., bool] = False
    # What the backward rule returns, for the code generator's proof that a pass's last
    # coefficients share memory with no other tensor (the concretization may then take their
    # absolute value in place): "fresh" (new tensors, e.g. a product with the weight), "view"
    # (views of the given coefficients, e.g. reshape) or "unknown" (anything else).
    backward_memory: str = "unknown"
    # A product a @ b of two perturbed inputs: when both are affine maps of the input, the
    # backward rules take ``anchor=`` (InputSet.product_anchor: the factors at the set's centre
    # and their deviations' product's range, or None) besides the inputs' bounds.
    anchored_product: bool = False
    # Ops that read the perturbed input when it holds integers (token ids, which no box or line
    # describes): of_set(input_set, *consts, **attrs) -> InputSet, the set of the op's outputs
    # (an embedding: each position's candidate rows). The op is then the leaf of every bound
    # computation (Graph.set_leaf), so it needs no other rule.
    of_set: Callable[..., Any] | None = None
    # ATen ops (e.g. "sigmoid.default", "leaky_relu.default") the torch frontend lowers to this op
    # generically: tensor arguments become inputs, the others attrs named as in the ATen schema.
    aten: tuple[str, ...] = ()
    doc: str = ""
    # check_attrs(**attrs) -> None, or why the rules cannot bound the op with these attributes
    # (ELU with a negative alpha is not monotone): both frontends refuse such a node at compile
    # time, naming it, instead of bounding it unsoundly or failing at bound time.
    check_attrs: Callable[..., str | None] | None = None

    def supported_modes(self) -> list[str]:
        return [m for m in MODES if getattr(self, m) is not None]

    def rule(self, mode: str, node=None) -> Callable:
        fn = getattr(self, mode)
        if fn is None:
            where = f" at node %{node.name}" if node is not None else ""
            src = f" ({node.source})" if node is not None and node.source else ""
            raise UnsupportedOperationError(
                f"op '{self.name}'{where}{src} has no {mode} rule; it supports "
                f"{', '.join(self.supported_modes()) or 'no bound mode'}. Choose a method that "
                f"uses only those modes (e.g. method='ibp'), or file an issue.")
        return fn


REGISTRY: dict[str, OpDef] = {}

# ATen overload name ('max_pool2d.default') -> converter(lowering, *args, **kwargs) -> Node, for
# ops whose lowering needs more than the generic `OpDef.aten` mapping. Op files register them
# next to their OpDef with @aten_lowering, so an op stays one place to touch.
ATEN_LOWERINGS: dict[str, Callable] = {}


def aten_lowering(*names: str):
    def decorate(fn):
        for name in names:
            ATEN_LOWERINGS[name] = fn
        return fn
    return decorate


def register(op: OpDef) -> OpDef:
    if op.name in REGISTRY:
        raise ValueError(f"op {op.name!r} registered twice")
    REGISTRY[op.name] = op
    return op


def get_op(name: str) -> OpDef:
    import lirpac.ir.ops  # noqa: F401  (fills the registry)
    return REGISTRY[name]
