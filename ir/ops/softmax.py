"""softmax from the pairwise differences: p_i = 1 / (1 + sum_m exp(d_im)), d_im = x_j(m) - x_i.

The op reads d (per sample ``(.., K, K - 1, ..)``, the K - 1 differences of entry i at
``dim + 1``; see pairwise_diff in ir/ops/normalization.py) and relaxes each p_i as one function
of its own K - 1 differences on their box [l, u] (each difference's exact range, since d is an
affine map of x), rather than as 1/t after a sum of relaxed exponentials: over a wide box the
chord of 1/t and the exponentials' lines compound (a 2.8x wider bound than auto_LiRPA's at eps
1 on benchmarks/tightness.py).

With S(d) = sum_m exp(d_m), T_lo = 1 + sum exp(l), T_hi = 1 + sum exp(u), p in [1/T_hi, 1/T_lo]:
- lower line: exp(d_m) <= its chord on [l_m, u_m], so t = 1 + S <= T(d), an affine map, and
  1/t >= 1/T(d), convex in d, above its tangent at the box's centre c: 2/T0 - T(d)/T0^2,
  T0 = T(c) (the lower bound of Wei et al. 2023, "Convex bounds on the softmax function",
  written in the differences).
- upper line: p = exp(log p) lies under exp's chord over [log p_lo, log p_hi], a + k log p,
  and log p = -log(1 + S(d)) is concave, under its tangent at c (Wei et al.'s LSE upper
  bound). At c it is never above the composition the decomposed form computes (the chord of
  1/t over [T_lo, T_hi] after the exponentials' tangents at c): a chord in log t lies under
  the chord in t, log being concave.
Backward passes also use sum_i p_i = 1 (the input is pairwise_diff's, so the p_i of one
softmax are the entries of one probability vector): A . p = (A - lambda) . p + lambda for any
lambda per row and softmax, and lambda is the weighted median of A's entries (weights: the
lines' gaps at c) that leaves the least looseness to the lines (0.42x the width at eps 3).
Every line is computed in float64 from exact identities and its bias then moved outward by a
slack that covers the rounding of the terms it sums; a line that overflows falls back to the
constant at the interval bound. alpha-CROWN moves the tangent point c inside the box (one
parameter per difference and spec row).
"""
from __future__ import annotations

import torch

from lirpac.ir.opdef import Interval, Linear, OpDef, register
from lirpac.ir.ops.common import split_pos_neg, times
from lirpac.ir.ops.relaxation import pad_down, pad_up, round_out

ROUNDING = 64 * torch.finfo(torch.float64).eps     # per term, times the number of terms


def _log_forward(d, *, dim):
    """-log(1 + sum exp(d)), as a log-sum-exp with a 0 entry: no overflow where an exp would."""
    zero = torch.zeros((), dtype=d.dtype, device=d.device).expand(*d.shape[:dim + 1], 1,
                                                                   *d.shape[dim + 2:])
    return -torch.logsumexp(torch.cat([zero, d], dim + 1), dim + 1)


def _forward(d, *, dim):
    return torch.exp(_log_forward(d, dim=dim))


def _chord_slope(el, eu, l, u):
    """Slope of exp's chord on [l, u]: (e^u - e^l) / w, or e^l expm1(w) / w where w = u - l
    is small (no cancellation)."""
    w = u - l
    wide, narrow = w > 1, (w > 0) & (w <= 1)
    one = torch.ones_like(w)
    # each branch on inputs it is defined for: a branch where() drops still passes gradients,
    # and 0 * an overflowing one would be NaN
    chord = torch.where(wide, eu - el, 0 * el) / torch.where(wide, w, one)
    small = torch.where(narrow, w, one)
    near = el * torch.expm1(small) / small
    return torch.where(wide, chord, torch.where(narrow, near, el))


def _lines(l, u, c):
    """(lower slope, lower bias, upper slope, upper bias) of p on the box [l, u] (float64,
    differences on the last dim) with the tangent point c; slopes (.., M), biases (..)."""
    m = l.shape[-1]
    el, eu, ec = torch.exp(l), torch.exp(u), torch.exp(c)
    s_lo, s_hi, s_c = el.sum(-1), eu.sum(-1), ec.sum(-1)
    reach = torch.maximum(l.abs(), u.abs())
    # lower: tangent of 1/T(d) at c, T(d) = 1 + sum_m (a_m d_m + b_m) >= 1 + S(d) on the box
    a = _chord_slope(el, eu, l, u)
    b = el - a * l
    t0 = 1 + (a * c + b).sum(-1)
    l_slope = -a / t0.unsqueeze(-1) ** 2
    l_bias = 2 / t0 - (1 + b.sum(-1)) / t0 ** 2
    l_scale = 2 / t0 + (1 + (b.abs() + a * reach + eu).sum(-1)) / t0 ** 2
    l_bias = l_bias - (m + 4) * ROUNDING * l_scale
    # upper (log): p <= p_lo + k (log p - log p_lo), log p <= -log1p(S(c)) - w . (d - c)
    log_hi, log_c = torch.log1p(s_hi), torch.log1p(s_c)
    span = log_hi - torch.log1p(s_lo)                  # log p_hi - log p_lo >= 0
    p_lo = torch.reciprocal(1 + s_hi)
    # k = (p_hi - p_lo) / span, from expm1 where span is small (no cancellation)
    safe = torch.where(span > 0, span, torch.ones_like(span))
    k = torch.where(span > 1, (torch.reciprocal(1 + s_lo) - p_lo) / safe,
                    torch.where(span > 0, p_lo * torch.expm1(span) / safe, p_lo))
    w = ec / (1 + s_c).unsqueeze(-1)
    log_slope = -k.unsqueeze(-1) * w
    log_bias = p_lo + k * (log_hi - log_c + (w * c).sum(-1))
    log_scale = p_lo + k * (log_hi + log_c + span + (w * (c.abs() + reach)).sum(-1))
    log_bias = log_bias + (m + 4) * ROUNDING * log_scale
    return l_slope, l_bias, log_slope, log_bias


def _log_lines(l, u, c):
    """The lines of log p = -log(1 + S(d)), as ``_lines``: concave, so its tangent at c is the
    upper line; -log is convex and decreasing, so log p >= -log T(d) >= its tangent at c."""
    m = l.shape[-1]
    el, eu, ec = torch.exp(l), torch.exp(u), torch.exp(c)
    reach = torch.maximum(l.abs(), u.abs())
    a = _chord_slope(el, eu, l, u)
    b = el - a * l
    t0 = 1 + (a * c + b).sum(-1)
    l_slope = -a / t0.unsqueeze(-1)
    l_bias = 1 - torch.log(t0) - (1 + b.sum(-1)) / t0
    l_scale = 1 + torch.log(t0) + (1 + (b.abs() + a * reach + eu).sum(-1)) / t0
    l_bias = l_bias - (m + 4) * ROUNDING * l_scale
    log_c = torch.log1p(ec.sum(-1))
    w = ec / (1 + ec.sum(-1)).unsqueeze(-1)
    u_bias = (w * c).sum(-1) - log_c
    u_scale = log_c + (w * (c.abs() + reach)).sum(-1)
    u_bias = u_bias + (m + 4) * ROUNDING * u_scale
    return l_slope, l_bias, -w, u_bias


def _narrow(slope, bias, l, u, dtype, up: bool):
    """A line computed in float64 as a line of ``dtype``, sound on the box: the bias takes
    the rounding of every slope over its reach and is rounded outward."""
    s = slope.to(dtype)
    shift = ((slope - s.to(slope.dtype)).abs() * torch.maximum(l.abs(), u.abs())).sum(-1)
    scale = bias.abs() + shift
    b = pad_up(bias + shift, scale) if up else pad_down(bias - shift, scale)
    return s, round_out(b, dtype, up)


def _relax_last(lower, upper, alpha=None, log=False):
    """The sound lines of p with the differences on the last dim, in the input's dtype, and
    the gaps p(c) - lower line(c) and upper line(c) - p(c) (how loose each line is, at its
    mean over the box when c is the centre). Where a line is not finite (an unbounded or
    overflowing input) it is the constant at the interval bound. ``alpha`` (same shape as the
    bounds, in [0, 1]) places the tangent point; ``log``: the lines of log p instead."""
    dtype = lower.dtype
    work = torch.float64 if dtype in (torch.float16, torch.bfloat16, torch.float32) else dtype
    l, u = lower.to(work), upper.to(work)
    # exp's chord needs finite ends; past e^600 the fallback is as good (p < 1e-260)
    ok = (torch.isfinite(l) & (u < 600)).all(-1)
    zero = torch.zeros((), dtype=work, device=l.device)
    l, u = torch.where(ok.unsqueeze(-1), l, zero), torch.where(ok.unsqueeze(-1), u, zero)
    c = 0.5 * l + 0.5 * u if alpha is None else l + alpha.to(work).clamp(0, 1) * (u - l)
    fn = _log_forward if log else _forward
    lines = (_log_lines if log else _lines)(l, u, c)
    p_c = fn(c, dim=c.dim() - 2)
    out, gaps = [], []
    for (slope, bias), up in zip((lines[:2], lines[2:]), (False, True)):
        if work != dtype:
            slope, bias = _narrow(slope, bias, l, u, dtype, up)
        good = ok & torch.isfinite(bias) & torch.isfinite(slope).all(-1)
        # the constant fallback: exact interval bounds, moved out by a few ulps
        level = fn(lower if up else upper, dim=lower.dim() - 2)
        level = pad_up(level) if up else pad_down(level)
        slope = torch.where(good.unsqueeze(-1), slope, torch.zeros_like(slope))
        bias = torch.where(good, bias, level.clamp(max=0) if log else level.clamp(0, 1))
        at_c = bias.to(work) + (slope.to(work) * c).sum(-1)
        gaps.append((at_c - p_c if up else p_c - at_c).detach().to(dtype))
        out += [slope, bias]
    return tuple(out), tuple(gaps)


def _relax(lower, upper, *, dim, alpha=None, log=False):
    """The lines with d's layout (slopes shaped like d, biases like p: d without dim + 1),
    and their gaps, shaped like p."""
    lines, gaps = _relax_last(lower.movedim(dim + 1, -1), upper.movedim(dim + 1, -1),
                              None if alpha is None else alpha.movedim(dim + 1, -1), log)
    ls, lb, us, ub = lines
    return (ls.movedim(-1, dim + 1), lb, us.movedim(-1, dim + 1), ub), gaps


def _shift(coeff, w_pos, w_neg, dim):
    """The lambda (per row and softmax, size 1 at dim + 1) minimising sum_i w_pos_i (A_i -
    lambda)^+ + w_neg_i (lambda - A_i)^+: since sum_i p_i = 1, A . p = (A - lambda) . p +
    lambda for any lambda, and entries moved near lambda leave little to the lines' gaps
    (w_pos: the gap of the line a positive entry meets). The minimiser is a weighted median:
    the first sorted A_j where the slope -sum_{A_i > A_j} w_pos_i + sum_{A_i <= A_j} w_neg_i
    turns >= 0."""
    k = dim + 1
    values, order = coeff.sort(dim=k)
    w_pos, w_neg = (w.expand_as(coeff).gather(k, order) for w in (w_pos, w_neg))
    turned = (w_pos + w_neg).cumsum(k) < w_pos.sum(k, keepdim=True)
    index = turned.sum(k, keepdim=True).clamp(max=coeff.shape[k] - 1)
    return values.gather(k, index)


def _through(coeff, lines, gaps, dim, upper: bool, shift: bool):
    """Coefficients on d and the bias (B, S) for coefficients (B, S, *p_shape) on p (shifted
    by ``_shift`` for softmax); ``lines`` and ``gaps`` are per row (B, S or 1, ..)."""
    ls, lb, us, ub = lines
    g_lo, g_hi = gaps
    if upper:
        ls, lb, us, ub, g_lo, g_hi = us, ub, ls, lb, g_hi, g_lo
    offset = 0
    if shift:
        level = _shift(coeff, g_lo, g_hi, dim)
        coeff = coeff - level
        # sum_i p_i is 1 up to the forward's rounding, a few ulps per entry
        room = level.abs() * (coeff.shape[dim + 1] * torch.finfo(coeff.dtype).eps)
        offset = (level + (room if upper else -room)).flatten(2).sum(-1)
    pos, neg = split_pos_neg(coeff)
    new = pos.unsqueeze(dim + 2) * ls + neg.unsqueeze(dim + 2) * us
    # (0 * inf = 0: log p's fallback line is -inf below where d is unbounded above)
    return new, (times(pos, lb) + times(neg, ub)).flatten(2).sum(-1) + offset


def _rules(log: bool) -> dict:
    """The OpDef rules of softmax (``log`` false) or log_softmax from the differences."""
    def backward(lA, uA, d: Interval, *, dim):
        lines, gaps = _relax(d.lower, d.upper, dim=dim, log=log)
        lines, gaps = tuple(t.unsqueeze(1) for t in lines), tuple(g.unsqueeze(1) for g in gaps)
        new, biases = [None, None], [0, 0]
        for side, coeff in enumerate((lA, uA)):
            if coeff is not None:
                new[side], biases[side] = _through(coeff, lines, gaps, dim, side == 1, not log)
        return [tuple(new)], biases[0], biases[1]

    def backward_alpha(lA, uA, d: Interval, alpha_l, alpha_u, *, dim):
        """Tangent points per spec row: alpha (B, S or 1, *d_shape) in [0, 1] on each box."""
        lower, upper = d.lower.unsqueeze(1), d.upper.unsqueeze(1)

        def lines_of(alpha):
            shape = torch.broadcast_shapes(lower.shape, alpha.shape)
            fold = (lambda t: t.expand(shape).reshape(shape[0] * shape[1], *shape[2:]))   # (K = 1: empty)
            lines, gaps = _relax(fold(lower), fold(upper), dim=dim, alpha=fold(alpha), log=log)
            unfold = (lambda t: t.reshape(*shape[:2], *t.shape[1:]))
            return tuple(unfold(t) for t in lines), tuple(unfold(g) for g in gaps)
        new, biases = [None, None], [0, 0]
        for side, (coeff, alpha) in enumerate(((lA, alpha_l), (uA, alpha_u))):
            if coeff is not None:
                new[side], biases[side] = _through(coeff, *lines_of(alpha), dim, side == 1, not log)
        return [tuple(new)], biases[0], biases[1]

    def forward_mode(d: Linear, *, dim) -> Linear:
        """Each line composed with d's linear bounds, summed over the differences."""
        (ls, lb, us, ub), _ = _relax(d.bounds.lower, d.bounds.upper, dim=dim, log=log)
        lsp, lsn = split_pos_neg(ls)
        usp, usn = split_pos_neg(us)
        lw = (lsp.unsqueeze(1) * d.lw + lsn.unsqueeze(1) * d.uw).sum(dim + 2)
        uw = (usp.unsqueeze(1) * d.uw + usn.unsqueeze(1) * d.lw).sum(dim + 2)
        lo = (times(lsp, d.lb) + times(lsn, d.ub)).sum(dim + 1) + lb
        hi = (times(usp, d.ub) + times(usn, d.lb)).sum(dim + 1) + ub
        return Linear(lw, lo, uw, hi)

    fn = _log_forward if log else _forward

    def ibp(d: Interval, *, dim) -> Interval:
        """Exact on the box of d: p falls as each difference grows."""
        return Interval(fn(d.upper, dim=dim), fn(d.lower, dim=dim))

    return dict(forward=fn, ibp=ibp, backward=backward, forward_mode=forward_mode,
                nonlinear=True, backward_alpha=backward_alpha,
                alpha_init=lambda lower, upper, **attrs: torch.full_like(lower, 0.5))


register(OpDef(
    name="softmax_from_diffs", **_rules(log=False),
    doc="softmax_i = 1 / (1 + sum_m exp(d_im)) from the K - 1 differences d_i. of each entry "
        "(dims dim, dim + 1; the input must be pairwise_diff's, since the backward rule uses "
        "sum_i softmax_i = 1); relaxed jointly in them (Wei et al. 2023's lines)"))
register(OpDef(
    name="log_softmax_from_diffs", **_rules(log=True),
    doc="log_softmax_i = -log(1 + sum_m exp(d_im)) from the K - 1 differences d_i. of each "
        "entry (dims dim, dim + 1); concave in them: tangent above, below the tangent of "
        "-log of the exponentials' chords"))
