"""Dense float64 reference implementation of bound propagation (test oracle).

This module is a *test helper*, deliberately independent of the ``lirpac``
package.  It trades all efficiency for readability: every ``nn.Linear``,
``nn.Conv2d`` and ``nn.Flatten`` of a ``torch.nn.Sequential`` is turned into an
explicit dense affine map ``y = W x + b`` acting on flattened per-sample
vectors, and the bounding algorithms are written directly on these matrices.

Supported layers: ``nn.Linear``, ``nn.Conv2d`` (any stride / padding /
dilation / groups, zero padding mode), ``nn.ReLU``, ``nn.Flatten`` (default
``start_dim=1, end_dim=-1``; it is a no-op on flattened vectors).

Input set: the Lp ball ``{x' : ||x' - x||_p <= eps}`` for p in {inf, 2, 1},
optionally intersected with a domain box ``[x_lower, x_upper]``:

* norm inf: the input set is the box ``[max(x-eps, x_lower), min(x+eps, x_upper)]``
  and every concretization uses its centre/radius;
* norm 2 / 1: linear functions are concretized with the dual norm around ``x``
  (the domain box is ignored there, which is sound); only the initial IBP box
  ``[x-eps, x+eps]`` is intersected with the domain box.

Methods (each returns ``(lower, upper)`` float64 tensors of shape
``(batch, n_spec)``; ``n_spec = n_out`` when ``C`` is None):

* ``ref_ibp``          Gowal et al. 2018 (interval bound propagation).
* ``ref_crown``        Zhang et al. 2018 (CROWN, backward mode; every ReLU
                       pre-activation bound computed by its own backward pass).
* ``ref_crown_ibp``    Zhang et al. 2020 (IBP intermediate bounds, CROWN final).
* ``ref_forward``      Xu et al. 2020 (auto_LiRPA forward mode).
* ``ref_forward_crown``forward-mode intermediate bounds, backward final bound
                       (auto_LiRPA ``method='forward+backward'``).
* ``ref_exact_linear`` exact range for ReLU-free models (closed form).

ReLU relaxation (pre-activation bounds ``l, u``):

* stable active (``l >= 0``): identity;
* stable inactive (``u <= 0``, not active): zero;
* unstable (``l < 0 < u``): upper line ``u/(u-l) * (z - l)``; lower line
  ``alpha * z`` with ``alpha = 1 if u >= -l else 0`` (the same "adaptive"
  lower line is used in the lower-bound and in the upper-bound pass).
  NOTE: auto_LiRPA uses the strict test ``u > -l`` (``upper_d > 0.5``); the two
  only differ when ``u == -l`` exactly.

The specification matrix ``C`` has shape ``(batch, n_spec, n_out)``; the bounded
quantity is ``C @ f(x')``.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

DTYPE = torch.float64
INF = float("inf")

__all__ = [
    "dense_layers", "dense_forward", "dual_norm", "relu_relaxation",
    "ref_ibp", "ref_crown", "ref_crown_ibp", "ref_forward",
    "ref_forward_crown", "ref_exact_linear", "REF_METHODS",
]


# --------------------------------------------------------------------------
# Norm helpers
# --------------------------------------------------------------------------

def _as_norm(norm):
    """Normalise the ``norm`` argument to one of inf, 2.0, 1.0."""
    p = float(norm)  # accepts 'inf', np.inf, float('inf'), 2, 1, ...
    if p not in (INF, 2.0, 1.0):
        raise ValueError(f"unsupported norm {norm!r}; use inf, 2 or 1")
    return p


def dual_norm(p):
    """Dual exponent q with 1/p + 1/q = 1: inf->1, 2->2, 1->inf."""
    p = _as_norm(p)
    return {INF: 1.0, 2.0: 2.0, 1.0: INF}[p]


# --------------------------------------------------------------------------
# Model -> list of dense layers
# --------------------------------------------------------------------------
# A layer is either ("affine", W, b) with W of shape (n_out, n_in) and b of
# shape (n_out,), or ("relu",).

def dense_layers(model, input_shape):
    """Convert a Sequential into dense layers.

    ``input_shape`` is the per-sample input shape (without batch dimension).
    Returns ``(layers, output_shape)``.
    """
    layers = []
    shape = tuple(input_shape)
    for m in model:
        if isinstance(m, nn.Linear):
            if len(shape) != 1 or shape[0] != m.in_features:
                raise ValueError(f"Linear expects ({m.in_features},), got {shape}")
            W = m.weight.detach().to(DTYPE).clone()
            if m.bias is not None:
                b = m.bias.detach().to(DTYPE).clone()
            else:
                b = torch.zeros(m.out_features, dtype=DTYPE)
            layers.append(("affine", W, b))
            shape = (m.out_features,)
        elif isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros":
                raise ValueError("only zero padding is supported")
            if len(shape) != 3:
                raise ValueError(f"Conv2d expects (C, H, W), got {shape}")
            n_in = math.prod(shape)
            # Push the identity basis through the convolution (no bias):
            # row k of `out` is the image of basis vector e_k, i.e. column k of W.
            basis = torch.eye(n_in, dtype=DTYPE).reshape(n_in, *shape)
            out = F.conv2d(basis, m.weight.detach().to(DTYPE), None,
                           m.stride, m.padding, m.dilation, m.groups)
            out_shape = tuple(out.shape[1:])
            W = out.reshape(n_in, -1).t().contiguous()
            n_pix = out_shape[1] * out_shape[2]
            if m.bias is not None:
                b = m.bias.detach().to(DTYPE).repeat_interleave(n_pix)
            else:
                b = torch.zeros(W.shape[0], dtype=DTYPE)
            layers.append(("affine", W, b))
            shape = out_shape
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise ValueError("only nn.Flatten(start_dim=1, end_dim=-1) is supported")
            shape = (math.prod(shape),)  # no-op on flattened vectors
        elif isinstance(m, nn.ReLU):
            layers.append(("relu",))
        else:
            raise TypeError(f"unsupported layer {type(m).__name__}")
    return layers, shape


def _layer_widths(layers, n_in):
    """widths[i] = width of the input of layer i; widths[-1] = output width."""
    widths = [n_in]
    for layer in layers:
        if layer[0] == "affine":
            assert layer[1].shape[1] == widths[-1]
            widths.append(layer[1].shape[0])
        else:
            widths.append(widths[-1])
    return widths


def dense_forward(model, x):
    """Evaluate the model through its dense layers (float64, flattened output)."""
    layers, _ = dense_layers(model, x.shape[1:])
    h = x.to(DTYPE).reshape(x.shape[0], -1)
    for layer in layers:
        if layer[0] == "affine":
            h = h @ layer[1].t() + layer[2]
        else:
            h = h.clamp(min=0)
    return h


# --------------------------------------------------------------------------
# Input set and concretization
# --------------------------------------------------------------------------

class _InputSet:
    """Lp ball around x0, optionally intersected with a domain box.

    x0, box_lo, box_hi: (batch, n).  For norm inf the box IS the input set;
    for norms 2/1 the box [x0-eps, x0+eps] ∩ domain is only used by IBP.
    """

    def __init__(self, x, eps, norm, x_lower=None, x_upper=None):
        self.norm = _as_norm(norm)
        self.eps = float(eps)
        batch = x.shape[0]
        self.x0 = x.to(DTYPE).reshape(batch, -1)
        lo = self.x0 - self.eps
        hi = self.x0 + self.eps
        if x_lower is not None:
            lo = torch.maximum(lo, x_lower.to(DTYPE).reshape(batch, -1))
        if x_upper is not None:
            hi = torch.minimum(hi, x_upper.to(DTYPE).reshape(batch, -1))
        self.box_lo, self.box_hi = lo, hi
        self.batch, self.n = self.x0.shape


def _concretize(A, inp, sign):
    """min (sign=-1) or max (sign=+1) of A x over the input set.

    A: (batch, spec, n).  Returns (batch, spec).
    """
    if inp.norm == INF:
        centre = (inp.box_hi + inp.box_lo) / 2
        radius = (inp.box_hi - inp.box_lo) / 2
        return (torch.einsum("bsn,bn->bs", A, centre)
                + sign * torch.einsum("bsn,bn->bs", A.abs(), radius))
    q = dual_norm(inp.norm)
    return (torch.einsum("bsn,bn->bs", A, inp.x0)
            + sign * inp.eps * torch.linalg.vector_norm(A, ord=q, dim=-1))


def _spec(C, batch, n_out):
    """The specification matrix as (batch, n_spec, n_out) float64."""
    if C is None:
        return torch.eye(n_out, dtype=DTYPE).expand(batch, n_out, n_out)
    C = C.to(DTYPE)
    if C.shape[0] != batch or C.shape[2] != n_out:
        raise ValueError(f"C must be (batch={batch}, n_spec, n_out={n_out}), got {tuple(C.shape)}")
    return C


def _setup(model, x, eps, norm, x_lower, x_upper):
    layers, _ = dense_layers(model, x.shape[1:])
    inp = _InputSet(x, eps, norm, x_lower, x_upper)
    widths = _layer_widths(layers, inp.n)
    return layers, inp, widths


# --------------------------------------------------------------------------
# ReLU relaxation
# --------------------------------------------------------------------------

def relu_relaxation(l, u):
    """Linear bounds  low_slope * z  <=  relu(z)  <=  up_slope * z + up_int.

    Valid for z in [l, u].  All three tensors have the shape of l.
    """
    active = l >= 0
    inactive = (u <= 0) & ~active
    unstable = ~active & ~inactive  # l < 0 < u
    ones = torch.ones_like(l)
    zeros = torch.zeros_like(l)
    denom = torch.where(unstable, u - l, ones)  # avoid dividing by zero
    up_slope = torch.where(unstable, u / denom, torch.where(active, ones, zeros))
    up_int = torch.where(unstable, -u * l / denom, zeros)
    adaptive = (u >= -l).to(DTYPE)
    low_slope = torch.where(unstable, adaptive, torch.where(active, ones, zeros))
    return up_slope, up_int, low_slope


# --------------------------------------------------------------------------
# IBP
# --------------------------------------------------------------------------

def _matvec(W, v):
    """W: (n_out, n_in) or (batch, n_out, n_in); v: (batch, n_in)."""
    if W.dim() == 2:
        return v @ W.t()
    return torch.einsum("bon,bn->bo", W, v)


def _ibp_affine(W, b, lo, hi):
    centre = (hi + lo) / 2
    radius = (hi - lo) / 2
    c = _matvec(W, centre) + b
    r = _matvec(W.abs(), radius)
    return c - r, c + r


def _ibp_affine_lp(W, b, inp):
    """First affine layer applied directly to an Lp ball (dual norm)."""
    c = _matvec(W, inp.x0) + b
    r = inp.eps * torch.linalg.vector_norm(W, ord=dual_norm(inp.norm), dim=-1)
    return c - r, c + r


def _ibp_all(layers, inp, lp_dual_first_layer=False, relu_inputs=None):
    """bounds[i] = (lo, hi) of the input of layer i; bounds[-1] is the output.

    relu_inputs: optional {i: (l, u)}; at ReLU layer i these bounds replace the
    propagated interval (used to restart IBP from already computed bounds).
    """
    relu_inputs = relu_inputs or {}
    bounds = [(inp.box_lo, inp.box_hi)]
    for i, layer in enumerate(layers):
        lo, hi = bounds[-1]
        if layer[0] == "affine":
            if i == 0 and lp_dual_first_layer and inp.norm != INF:
                bounds.append(_ibp_affine_lp(layer[1], layer[2], inp))
            else:
                bounds.append(_ibp_affine(layer[1], layer[2], lo, hi))
        else:
            lo, hi = relu_inputs.get(i, (lo, hi))
            bounds.append((lo.clamp(min=0), hi.clamp(min=0)))
    return bounds


def _fold_c_into_last_linear(model, layers, C):
    """If the model's last module is nn.Linear, return layers with C folded in
    (W' = C W, b' = C b, batched); otherwise return None.

    This is what auto_LiRPA does for IBP and forward mode: only a final
    BoundLinear node absorbs C (a final Conv2d or Flatten does not).
    """
    if C is None or not isinstance(list(model)[-1], nn.Linear):
        return None
    _, W, b = layers[-1]
    return layers[:-1] + [("affine", C @ W, C @ b)]


def ref_ibp(model, x, eps, norm, C=None, x_lower=None, x_upper=None,
            lp_dual_first_layer=False):
    """Interval bound propagation.

    If C is given and the model's last module is nn.Linear, C is folded into it
    (W' = C W, b' = C b) before the last IBP step; otherwise C is applied to
    the output interval with centre/radius (C c ± |C| r).

    ``lp_dual_first_layer=True`` mimics auto_LiRPA's Linear layer for norms 2/1:
    if the first layer is affine its output bounds are ``W x + b ± eps ||W_row||_q``
    instead of interval arithmetic on the box ``x ± eps`` (ignores the domain box).
    """
    layers, inp, widths = _setup(model, x, eps, norm, x_lower, x_upper)
    if C is None:
        return _ibp_all(layers, inp, lp_dual_first_layer)[-1]
    C = _spec(C, inp.batch, widths[-1])
    folded = _fold_c_into_last_linear(model, layers, C)
    if folded is not None:
        return _ibp_all(folded, inp, lp_dual_first_layer)[-1]
    lo, hi = _ibp_all(layers, inp, lp_dual_first_layer)[-1]
    return _ibp_affine(C, torch.zeros(C.shape[:2], dtype=DTYPE), lo, hi)


# --------------------------------------------------------------------------
# Backward mode (CROWN)
# --------------------------------------------------------------------------

def _backward(layers, pre_bounds, end, A, inp):
    """Bound A @ h where h is the input of layer `end` (output if end == len).

    pre_bounds[i] = (l, u) must be given for every ReLU layer i < end.
    A: (batch, spec, width).  Returns (lower, upper), each (batch, spec).
    """
    lA, uA = A, A
    l_bias = torch.zeros(A.shape[:2], dtype=DTYPE)
    u_bias = torch.zeros(A.shape[:2], dtype=DTYPE)
    for i in reversed(range(end)):
        layer = layers[i]
        if layer[0] == "affine":
            _, W, b = layer
            l_bias = l_bias + lA @ b
            u_bias = u_bias + uA @ b
            lA = lA @ W
            uA = uA @ W
        else:
            l, u = pre_bounds[i]
            up_slope, up_int, low_slope = relu_relaxation(l, u)
            up_slope = up_slope.unsqueeze(1)      # (batch, 1, width)
            up_int = up_int.unsqueeze(1)
            low_slope = low_slope.unsqueeze(1)
            # Lower bound: positive coefficients take the lower line,
            # negative coefficients take the upper line.
            pos, neg = lA.clamp(min=0), lA.clamp(max=0)
            l_bias = l_bias + (neg * up_int).sum(-1)
            lA = pos * low_slope + neg * up_slope
            # Upper bound: positive -> upper line, negative -> lower line.
            pos, neg = uA.clamp(min=0), uA.clamp(max=0)
            u_bias = u_bias + (pos * up_int).sum(-1)
            uA = pos * up_slope + neg * low_slope
    lower = _concretize(lA, inp, -1) + l_bias
    upper = _concretize(uA, inp, +1) + u_bias
    return lower, upper


def _crown_pre_bounds(layers, inp, widths, sparse_ibp=False):
    """Pre-activation bounds of every ReLU, each by a full backward pass.

    sparse_ibp=True mimics auto_LiRPA's default ``sparse_intermediate_bounds``:
    a reference interval is computed by IBP restarted from the bounds already
    computed for earlier ReLUs; neurons that this reference proves stable for
    *every* batch element keep the reference interval, the others get CROWN.
    """
    pre_bounds = {}
    for i, layer in enumerate(layers):
        if layer[0] == "relu":
            n = widths[i]
            eye = torch.eye(n, dtype=DTYPE).expand(inp.batch, n, n)
            l, u = _backward(layers, pre_bounds, i, eye, inp)
            if sparse_ibp:
                ref_l, ref_u = _ibp_all(layers[:i], inp, lp_dual_first_layer=True,
                                        relu_inputs=pre_bounds)[-1]
                unstable_somewhere = ((ref_l < 0) & (ref_u > 0)).any(dim=0)
                l = torch.where(unstable_somewhere, l, ref_l)
                u = torch.where(unstable_somewhere, u, ref_u)
            pre_bounds[i] = (l, u)
    return pre_bounds


def _ibp_pre_bounds(layers, inp, lp_dual_first_layer=False):
    bounds = _ibp_all(layers, inp, lp_dual_first_layer)
    return {i: bounds[i] for i, layer in enumerate(layers) if layer[0] == "relu"}


def ref_crown(model, x, eps, norm, C=None, x_lower=None, x_upper=None,
              sparse_ibp=False):
    """CROWN: intermediate and final bounds by backward passes.

    sparse_ibp: see ``_crown_pre_bounds`` (auto_LiRPA's default heuristic; it
    makes the result depend on the other batch elements).
    """
    layers, inp, widths = _setup(model, x, eps, norm, x_lower, x_upper)
    pre_bounds = _crown_pre_bounds(layers, inp, widths, sparse_ibp)
    A = _spec(C, inp.batch, widths[-1])
    return _backward(layers, pre_bounds, len(layers), A, inp)


def ref_crown_ibp(model, x, eps, norm, C=None, x_lower=None, x_upper=None,
                  lp_dual_first_layer=False):
    """CROWN-IBP: intermediate bounds by IBP, final bound by a backward pass."""
    layers, inp, widths = _setup(model, x, eps, norm, x_lower, x_upper)
    pre_bounds = _ibp_pre_bounds(layers, inp, lp_dual_first_layer)
    A = _spec(C, inp.batch, widths[-1])
    return _backward(layers, pre_bounds, len(layers), A, inp)


# --------------------------------------------------------------------------
# Forward mode
# --------------------------------------------------------------------------

def _forward_all(layers, inp):
    """Propagate  lw x + lb <= h <= uw x + ub  (x = input) through all layers.

    Returns (pre_bounds, (lw, lb, uw, ub)) for the output;
    lw/uw: (batch, width, n_in), lb/ub: (batch, width).
    """
    n = inp.n
    lw = torch.eye(n, dtype=DTYPE).expand(inp.batch, n, n)
    uw = lw
    lb = torch.zeros(inp.batch, n, dtype=DTYPE)
    ub = lb
    pre_bounds = {}
    for i, layer in enumerate(layers):
        if layer[0] == "affine":
            _, W, b = layer  # W may be batched (C folded in): (batch, n_out, n_in)
            Wp, Wn = W.clamp(min=0), W.clamp(max=0)
            lw, uw = Wp @ lw + Wn @ uw, Wp @ uw + Wn @ lw
            lb, ub = (_matvec(Wp, lb) + _matvec(Wn, ub) + b,
                      _matvec(Wp, ub) + _matvec(Wn, lb) + b)
        else:
            l = _concretize(lw, inp, -1) + lb
            u = _concretize(uw, inp, +1) + ub
            pre_bounds[i] = (l, u)
            up_slope, up_int, low_slope = relu_relaxation(l, u)
            # Slopes are >= 0, so the lower line only needs the lower function
            # and the upper line only the upper function.
            lw = low_slope.unsqueeze(-1) * lw
            lb = low_slope * lb
            uw = up_slope.unsqueeze(-1) * uw
            ub = up_slope * ub + up_int
    return pre_bounds, (lw, lb, uw, ub)


def ref_forward(model, x, eps, norm, C=None, x_lower=None, x_upper=None,
                fold_c=False):
    """Forward mode; the final C is applied with a sign split.

    fold_c=True mimics auto_LiRPA: if the model's last module is nn.Linear,
    C is folded into it (W' = C W) instead (tighter); otherwise sign split.
    """
    layers, inp, widths = _setup(model, x, eps, norm, x_lower, x_upper)
    C = _spec(C, inp.batch, widths[-1])
    folded = _fold_c_into_last_linear(model, layers, C) if fold_c else None
    if folded is not None:
        layers = folded
        C = _spec(None, inp.batch, C.shape[1])
    _, (lw, lb, uw, ub) = _forward_all(layers, inp)
    Cp, Cn = C.clamp(min=0), C.clamp(max=0)
    spec_lw = Cp @ lw + Cn @ uw
    spec_uw = Cp @ uw + Cn @ lw
    spec_lb = _matvec(Cp, lb) + _matvec(Cn, ub)
    spec_ub = _matvec(Cp, ub) + _matvec(Cn, lb)
    lower = _concretize(spec_lw, inp, -1) + spec_lb
    upper = _concretize(spec_uw, inp, +1) + spec_ub
    return lower, upper


def ref_forward_crown(model, x, eps, norm, C=None, x_lower=None, x_upper=None):
    """Intermediate bounds by forward mode, final bound by a backward pass."""
    layers, inp, widths = _setup(model, x, eps, norm, x_lower, x_upper)
    pre_bounds, _ = _forward_all(layers, inp)
    A = _spec(C, inp.batch, widths[-1])
    return _backward(layers, pre_bounds, len(layers), A, inp)


# --------------------------------------------------------------------------
# Exact range of a ReLU-free model
# --------------------------------------------------------------------------

def ref_exact_linear(model, x, eps, norm, C=None, x_lower=None, x_upper=None):
    """Exact range of C (W x + b) over the input set, for models without ReLU.

    Exact for norm inf (with or without domain box) and for norms 2/1 without
    a domain box (with one, the domain box is ignored, as everywhere).
    """
    layers, inp, widths = _setup(model, x, eps, norm, x_lower, x_upper)
    W_total = torch.eye(inp.n, dtype=DTYPE)
    b_total = torch.zeros(inp.n, dtype=DTYPE)
    for layer in layers:
        if layer[0] != "affine":
            raise ValueError("ref_exact_linear only supports ReLU-free models")
        _, W, b = layer
        W_total = W @ W_total
        b_total = W @ b_total + b
    C = _spec(C, inp.batch, widths[-1])
    A = C @ W_total
    bias = C @ b_total
    return _concretize(A, inp, -1) + bias, _concretize(A, inp, +1) + bias


REF_METHODS = {
    "IBP": ref_ibp,
    "CROWN": ref_crown,
    "CROWN-IBP": ref_crown_ibp,
    "forward": ref_forward,
    "forward+backward": ref_forward_crown,
}
