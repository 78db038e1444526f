"""Small helpers the generated code calls: spec handling, accumulation, identity starts."""
from __future__ import annotations

import math
import time
import weakref

import torch

from lirpac import deadline

from lirpac.codegen.patches import Patches, acc_patches, concretize_pair, to_dense
from lirpac.ir.opdef import Interval, Linear
from lirpac.ir.ops.common import PreparedLines, all_finite, split_pos_neg, unbounded_map_ibp
from lirpac.ir.scalar import centre_radius, scalar


def acc(total, extra):
    """Add coefficient contributions; None stands for 'side not computed'."""
    if total is None:
        return extra
    if extra is None:
        return total
    if isinstance(total, Patches) or isinstance(extra, Patches):
        return acc_patches(total, extra)
    return total + extra


def dense_pair(lower_coeff, upper_coeff):
    """Both sides as matrices (converted once when they are the same Patches)."""
    dense = to_dense(lower_coeff)
    return dense, dense if upper_coeff is lower_coeff else to_dense(upper_coeff)


# Folded passes bound [c; -c] from below: the upper bound of c.f is minus the lower bound of
# -c.f, and negation is exact, so the bounds are those of the two sides (up to the summation
# order of products over more rows), with each rule run once. Above this many bytes of folded
# coefficients at the widest node, the doubled tensors cost more in memory traffic than the
# halved dispatch saves (CROWN's 254-row pass on the MLP: 2.8 ms unfolded, 4.1 ms folded).
FOLD_MAX_BYTES = 1 << 20


def fold_worth(start, width: int) -> bool:
    """Fold a pass whose start has these rows, through nodes at most ``width`` wide?"""
    return 2 * start.shape[0] * start.shape[1] * width * start.element_size() <= FOLD_MAX_BYTES


def fold_pair(lA, uA, fold: bool):
    """A pass's start coefficients as [lA; -uA] and no upper side, when folding."""
    return (torch.cat([lA, -uA], 1), None) if fold else (lA, uA)


def fold_bias(lbias, ubias, fold: bool):
    """A pass's start biases as [lbias; -ubias] and no upper side, when folding (0 stays 0)."""
    if not fold:
        return lbias, ubias
    if isinstance(lbias, int):
        return 0, 0
    return torch.cat([lbias, -ubias], 1), 0


def finish_sides(inp, lA, lbias, uA, ubias, fold: bool, consume: bool = False):
    """(lower, upper) bounds at the end of a pass, folded or not (``consume``: the
    coefficients share memory with nothing else and may be overwritten, InputSet.concretize)."""
    if not fold:
        return concretize_pair(inp, lA, lbias, uA, ubias, consume)
    both = inp.concretize(lA, lbias, upper=False, consume=consume)
    half = both.shape[1] // 2
    return both[:, :half], -both[:, half:]


def unfold_coefficients(lA, lbias, uA, ubias, fold: bool) -> tuple:
    """(lA, lbias, uA, ubias) of both sides from a pass's coefficients, folded or not."""
    if not fold:
        return lA, lbias, uA, ubias
    half = lA.shape[1] // 2
    if not isinstance(lbias, int):
        lbias = lbias.expand(lA.shape[0], lA.shape[1])
        return lA[:, :half], lbias[:, :half], -lA[:, half:], -lbias[:, half:]
    return lA[:, :half], 0, -lA[:, half:], 0


def sign_rows(t, signs: torch.Tensor):
    """A pass's start times ``signs`` (B, k) of +-1, one per row: the lower bound of a row
    times -1 is minus its upper bound (``one_side_first``). ``t``: coefficients (B or 1, k,
    ...), Patches, a (B or 1, k) bias, or the int 0."""
    if isinstance(t, int):
        return t
    if isinstance(t, Patches):
        return t.with_coeff(sign_rows(t.coeff, signs))
    return t * signs.reshape(*signs.shape, *([1] * (t.dim() - 2)))


def identity_spec(batch: int, shape: tuple, like: torch.Tensor) -> torch.Tensor:
    """(B, n, *shape) identity coefficients, expanded over the batch (no copy)."""
    n = 1
    for s in shape:
        n *= s
    eye = torch.eye(n, dtype=like.dtype, device=like.device)
    return eye.expand(batch, n, n).reshape(batch, n, *shape)


def spec_coeffs(C: torch.Tensor, batch: int, shape: tuple) -> torch.Tensor:
    """The spec C (B or 1, S, n_out) as coefficients on the output node (B, S, *shape)."""
    return C.expand(batch, *C.shape[1:]).reshape(batch, C.shape[1], *shape)


def ibp_spec(C: torch.Tensor, out: Interval) -> Interval:
    """Interval of C . y from the interval of y (C split into its positive and negative part)."""
    lower = out.lower.reshape(out.lower.shape[0], -1, 1)
    upper = out.upper.reshape(out.upper.shape[0], -1, 1)
    pos, neg = split_pos_neg(C)
    if not all_finite(lower, upper):    # an infinite end meets C's zeros: 0 * inf = 0
        return _spec_of_unbounded(pos, neg, Interval(lower, upper), 0)
    return Interval((pos.matmul(lower) + neg.matmul(upper)).squeeze(-1),
                    (pos.matmul(upper) + neg.matmul(lower)).squeeze(-1))


def _spec_of_unbounded(pos, neg, x: Interval, offset) -> Interval:
    """Interval of (pos + neg) x + offset, x (B, in, 1), for a box with infinite ends."""
    box = unbounded_map_ibp(pos.matmul, neg.matmul, x)
    return Interval(box.lower.squeeze(-1) + offset, box.upper.squeeze(-1) + offset)


def ibp_spec_linear(C: torch.Tensor, x: Interval, weight: torch.Tensor, bias) -> Interval:
    """IBP of C . (W x + b) with C folded into the layer (W' = C W): exact for the layer, and as
    tight as IBP gets at the output (Gowal et al. 2018 fold the spec the same way)."""
    w = C.matmul(weight)                                   # (B, S, in)
    center, radius = (t.unsqueeze(-1) for t in centre_radius(x.lower, x.upper))   # (B, in, 1)
    if not all_finite(radius):          # an infinite end: the centre would be inf - inf
        return _spec_of_unbounded(*split_pos_neg(w), Interval(x.lower.unsqueeze(-1), x.upper.unsqueeze(-1)),
                                  0 if bias is None else C.matmul(bias))
    mid = w.matmul(center).squeeze(-1)
    dev = w.abs().matmul(radius).squeeze(-1)
    if bias is not None:
        mid = mid + C.matmul(bias)
    return Interval(mid - dev, mid + dev)


def input_linear(lower: torch.Tensor) -> Linear:
    """Forward mode at the input: x <= x <= x, as identity weights (B, N, *shape)."""
    batch, shape = lower.shape[0], tuple(lower.shape[1:])
    eye = identity_spec(batch, shape, lower)
    zero = torch.zeros_like(lower)
    return Linear(eye, zero, eye, zero)


def forward_rows(inp, lin: Linear, rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, k) bounds of the neurons ``rows`` (None: all) of a node from its forward-mode linear
    bounds (lw: (B, N, *shape)), concretized over the input set ``inp``."""
    def pick(w, b):
        w, b = w.flatten(2), b.flatten(1)
        if rows is not None:
            w, b = pick_columns(w, rows), pick_columns(b, rows)
        return w.transpose(1, 2), b
    return (inp.concretize(*pick(lin.lw, lin.lb), upper=False),
            inp.concretize(*pick(lin.uw, lin.ub), upper=True))


def forward_spec(C, lin: Linear) -> Linear:
    """Apply a spec to forward-mode output functions: (B, S, N) weights and (B, S) biases."""
    batch = lin.lb.shape[0]
    lw = lin.lw.reshape(batch, lin.lw.shape[1], -1)         # (B, N, n_out)
    uw = lin.uw.reshape(batch, lin.uw.shape[1], -1)
    lb, ub = lin.lb.reshape(batch, -1, 1), lin.ub.reshape(batch, -1, 1)
    if C is None:
        return Linear(lw.transpose(1, 2), lb.squeeze(-1), uw.transpose(1, 2), ub.squeeze(-1))
    pos, neg = split_pos_neg(C)
    new_lw = pos.matmul(lw.transpose(1, 2)) + neg.matmul(uw.transpose(1, 2))
    new_uw = pos.matmul(uw.transpose(1, 2)) + neg.matmul(lw.transpose(1, 2))
    return Linear(new_lw, (pos.matmul(lb) + neg.matmul(ub)).squeeze(-1),
                  new_uw, (pos.matmul(ub) + neg.matmul(lb)).squeeze(-1))


# -- sparse intermediate bounds: backward passes only for the neurons that need them ----------

# A batch whose samples each straddle 0 at fewer than this fraction of the neurons that straddle
# in some sample (the union) bounds each sample's own neurons: (B, k) rows, k the largest count.
# Above it, the shared rows of the union cost about as much and keep the pass's first
# coefficients shared by the batch. (cifar_densenet at batch 2: each sample 40-70% of the
# union; at batch 32 most layers' union is nearly every neuron.)
PER_SAMPLE_FRACTION = 0.8


def straddles(bounds: Interval) -> torch.Tensor:
    """(B, n): where the bounds straddle 0 (a product that underflows to -0 leaves its neuron
    out: its reference bounds, sound, stay as they are)."""
    product = bounds.lower.flatten(1) * bounds.upper.flatten(1)
    return torch.lt(product, scalar(0.0, product))


def straddling_rows(bounds: Interval) -> torch.Tensor:
    """The neurons whose reference bounds straddle 0, only those change a ReLU-like relaxation
    when tightened: (k,) indices shared by the batch (those straddling in some sample), or
    (B, k) when each sample has far fewer than the batch together (PER_SAMPLE_FRACTION):
    sample b's straddling neurons in order, then as many of its others as make k (``tighten``
    keeps their reference bounds)."""
    straddle = straddles(bounds)
    if straddle.shape[0] == 1:
        return straddle[0].nonzero().squeeze(1)
    union = straddle.any(0)
    most, shared = int(straddle.sum(1).max()), int(union.sum())
    if most >= PER_SAMPLE_FRACTION * shared:
        return union.nonzero().squeeze(1)
    # stable sort: each sample's straddling neurons first, in index order
    return torch.argsort(torch.logical_not(straddle).to(torch.uint8), dim=1, stable=True)[:, :most]


# A layer's dead neurons (0 on the whole set in every sample) leave the backward passes that
# cross it when at least this fraction of them are dead: the smaller products then save more
# than gathering the weights' live rows and columns costs (the benchmark MLP's first layer,
# 28% dead: CROWN 0.95x of the time; mnist-net_256x4: 0.6x).
PRUNE_MIN_DEAD = 0.2


def live_neurons(zero: torch.Tensor) -> torch.Tensor | None:
    """Indices of the neurons not 0 on the whole set in some sample (``zero``: (B, n), true
    where a neuron is 0 on the whole set, OpDef.zero_where), or None when too few are dead
    to be worth dropping."""
    dead = zero[0] if zero.shape[0] == 1 else zero.all(0)
    live = torch.logical_not(dead).nonzero().squeeze(1)
    count = live.shape[0]
    if count > (1 - PRUNE_MIN_DEAD) * dead.shape[0]:
        return None
    # the live ones in order, then a few dead ones that make the count a multiple of 8, the
    # products' fast sizes (the MLP's 174x784 by 784x183 product: 1.2x the time of 784x184)
    pad = -count % 8
    return torch.cat((live, dead.nonzero().squeeze(1)[:pad])) if pad else live


def prune_lines(lines, live):
    """A relaxation's node-shaped lines (PreparedLines, or an alpha op's KinkLines) at the
    live neurons only (a line given as 0 stays 0)."""
    if live is None:
        return lines
    pruned = [t if isinstance(t, int) else t.index_select(1, live) for t in lines]
    return lines._make(pruned) if hasattr(lines, "_make") else PreparedLines(pruned)


def prune_bounds(bounds: Interval, live) -> Interval:
    """A layer's bounds (B, n) at the live neurons."""
    if live is None:
        return bounds
    return Interval(bounds.lower.index_select(1, live), bounds.upper.index_select(1, live))


def prune_rows(live, t: torch.Tensor) -> torch.Tensor:
    """The live rows of a weight (out, in) or bias (out,) of the layer feeding dead neurons."""
    return t if live is None else t.index_select(0, live)


def prune_columns(live, weight: torch.Tensor) -> torch.Tensor:
    """The live columns of a weight (out, in) of the layer the dead neurons feed."""
    return weight if live is None else weight.index_select(1, live)


def identity_rows(batch: int, rows: torch.Tensor | None, shape: tuple, like: torch.Tensor) -> torch.Tensor:
    """(B, k, *shape) coefficients selecting the neurons ``rows`` ((k,) or (B, k) per sample;
    None: all of them)."""
    if rows is None:
        return identity_spec(batch, shape, like)
    n = 1
    for s in shape:
        n *= s
    if rows.dim() == 2:
        onehot = like.new_zeros(*rows.shape, n)
        return onehot.scatter_(2, rows[..., None], 1.0).reshape(*rows.shape, *shape)
    onehot = torch.zeros(rows.shape[0], n, dtype=like.dtype, device=like.device)
    onehot[torch.arange(rows.shape[0], device=like.device), rows] = 1.0
    return onehot.reshape(rows.shape[0], *shape).expand(batch, rows.shape[0], *shape)


def intersect(a: Interval, b: Interval) -> Interval:
    """Both intervals are sound, so is their intersection."""
    return Interval(torch.maximum(a.lower, b.lower), torch.minimum(a.upper, b.upper))


def tighten(reference: Interval, lower: torch.Tensor, upper: torch.Tensor, rows=None,
            intersect: bool = False, straddling: bool = False) -> Interval:
    """Bounds of a node: the (B, k) backward-pass bounds for the neurons ``rows`` (all if
    None; (B, k) per sample), the reference elsewhere. With ``intersect`` the rows keep the
    intersection of both (sound, and never looser neuron by neuron); without it they keep the
    backward bounds as published CROWN does: CROWN's adaptive ReLU slope makes the final bound
    non-monotone in intermediate bounds, and intersecting is measurably looser on random
    nets (up to 19% mean width) while much tighter on some trained ones. ``straddling``: the
    rows were picked as straddling 0 (``straddling_rows``), and a row that does not in a
    sample keeps that sample's reference, so a sample's bounds never depend on the others of
    its batch."""
    ref_lower, ref_upper = reference.lower.flatten(1), reference.upper.flatten(1)
    if rows is not None and (straddling and ref_lower.shape[0] > 1 or rows.dim() == 2):
        rows = rows.expand(ref_lower.shape[0], rows.shape[-1])
        at_lower, at_upper = ref_lower.gather(1, rows), ref_upper.gather(1, rows)
        if straddling:
            keep = torch.logical_not(straddles(Interval(at_lower, at_upper)))
            lower, upper = torch.where(keep, at_lower, lower), torch.where(keep, at_upper, upper)
        if intersect:
            lower, upper = torch.maximum(at_lower, lower), torch.minimum(at_upper, upper)
        new_lower, new_upper = ref_lower.scatter(1, rows, lower), ref_upper.scatter(1, rows, upper)
    elif rows is None:
        if intersect:
            lower, upper = torch.maximum(ref_lower, lower), torch.minimum(ref_upper, upper)
        new_lower, new_upper = lower, upper
    else:
        if intersect:
            lower = torch.maximum(ref_lower.index_select(1, rows), lower)
            upper = torch.minimum(ref_upper.index_select(1, rows), upper)
        new_lower = ref_lower.index_copy(1, rows, lower)
        new_upper = ref_upper.index_copy(1, rows, upper)
    shape = reference.lower.shape
    return Interval(new_lower.reshape(shape), new_upper.reshape(shape))


# Bytes of coefficients one backward pass may hold before its rows are split into chunks, when
# the caller sets no max_memory. On the CPU, smaller chunks are faster: a chunk's ~10
# coefficient tensors then stay under the heap's 32 MiB mapping threshold (lirpac/allocator.py)
# instead of being mapped and faulted in afresh (cifar_resnet at batch 2: 1.49 s in 1 GiB
# chunks, 1.02 s in 128 MiB ones; cifar_cnn_4c 5.67 -> 3.65 s; one chunk of the benchmark MLP's
# rows either way). A GPU takes larger chunks.
DEFAULT_MAX_MEMORY = 1 << 30
DEFAULT_CPU_CHUNK = 128 << 20


def default_max_memory(like: torch.Tensor) -> int:
    """The chunk budget of a pass when the caller sets none: DEFAULT_CPU_CHUNK on the CPU."""
    return DEFAULT_CPU_CHUNK if like.device.type == "cpu" else DEFAULT_MAX_MEMORY


def pick_rows(t: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """The rows ``rows`` of a pass's start (dim 1; None: all of them, no copy; (B, k): each
    sample's own)."""
    if rows is None:
        return t
    if rows.dim() == 2:
        t = t.expand(rows.shape[0], *t.shape[1:])
        return t[torch.arange(rows.shape[0], device=rows.device)[:, None], rows]
    return t.index_select(1, rows)


def pick_columns(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """A (B, ..., n) tensor at the neurons ``rows`` ((k,), or (B, k): each sample's own) of
    its last dim: (B, ..., k)."""
    if rows.dim() == 2:
        t = t.expand(rows.shape[0], *t.shape[1:])
        index = rows.view(rows.shape[0], *([1] * (t.dim() - 2)), rows.shape[1])
        return t.gather(-1, index.expand(*t.shape[:-1], rows.shape[1]))
    return t.index_select(-1, rows)


# A pass over this fraction of a node's neurons or more runs over all of them: its first
# coefficients are then the weight itself, not a gathered copy (on the benchmark MLP, 254 of
# 256 rows: gathering them took longer than the products of the two extra rows).
WHOLE_PASS_FRACTION = 0.9


def all_rows(bounds: Interval) -> torch.Tensor:
    """Every neuron of a node, as row indices (for nodes whose users need all of them)."""
    return torch.arange(bounds.lower[0].numel(), device=bounds.lower.device)


def once_per_rows(start):
    """``start(rows)``, computed again only for another rows tensor: the first coefficients of
    an intermediate pass, which alpha-CROWN's steps of a call all take for the same rows."""
    memo = []

    def run(rows):
        if not memo or memo[0] is not rows:
            memo[:] = [rows, start(rows)]
        return memo[1]
    return run


# Under a deadline (lirpac.verify), an intermediate pass that may take longer than this runs in
# chunks of about this many seconds, and the deadline is checked before each one
DEADLINE_CHUNK_SECONDS = 0.25
# seconds per row and sample of each pass (by its code), as last measured under a deadline
_SECONDS_PER_ROW: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _timed_pass(rows: torch.Tensor, run, call, whole, max_rows: int, batch: int, signs=None):
    """The pass ``run`` (called as ``call(chunk, chunk_signs)``) over ``rows`` (of ``batch``
    samples) under a deadline: at once (``whole()``) when the last time it ran says it is
    cheap, else in chunks of about DEADLINE_CHUNK_SECONDS (64 rows the first time; at most
    ``max_rows``), starting none that would end past the deadline (lirpac.deadline.OutOfTime
    then). ``signs``: as in ``rows_bounds``."""
    key = getattr(run, "__code__", run)
    per_row = _SECONDS_PER_ROW.get(key)
    count = rows.shape[-1]
    if per_row is not None and per_row * batch * count <= DEADLINE_CHUNK_SECONDS:
        deadline.check(per_row * batch * count, "an intermediate bound pass")
        return tuple(whole())
    fit = 64 if per_row is None else int(DEADLINE_CHUNK_SECONDS / max(per_row * batch, 1e-12))
    results = []
    for chunk, chunk_signs in _row_chunks(rows, signs, max(1, min(max_rows, fit))):
        if per_row is not None:
            deadline.check(per_row * batch * chunk.shape[-1], "an intermediate bound pass")
        started = time.monotonic()
        results.append(call(chunk, chunk_signs))
        per_row = (time.monotonic() - started) / (batch * chunk.shape[-1])
    _SECONDS_PER_ROW[key] = per_row
    return _cat_sides(results)


def tighten_chunks(reference: Interval, rows: torch.Tensor, run, bytes_per_row: int,
                   max_memory: int, intersect: bool = False, straddling: bool = False,
                   one_side: str | None = None) -> Interval:
    """``tighten`` the neurons ``rows`` by ``run(chunk) -> (lower, upper)``, a backward pass
    over a chunk of rows, with chunks small enough for ``max_memory`` bytes: rows are
    independent, so the bounds are those of one pass, without running out of memory. No rows
    (no unstable neuron): no pass at all. ``one_side`` ("dead" or "stable"): the node's users
    are all ReLU-like, and ``run(chunk, signs)`` bounds one side per row (``one_side_first``)."""
    if rows.numel() == 0:     # (split would still give one empty chunk)
        return reference
    size = max(1, max_memory // max(1, bytes_per_row))
    if one_side is not None:
        lower, upper = one_side_first(reference, rows, run, size, one_side == "stable")
    else:
        lower, upper = rows_bounds(reference, rows, run, size)
    return tighten(reference, lower, upper, rows, intersect, straddling)


def rows_bounds(reference: Interval, rows: torch.Tensor, run, size: int, signs=None):
    """``run`` over ``rows`` in chunks of at most ``size`` rows (under a deadline, chunks that
    fit it): (lower, upper), (B, k) each. Nearly all rows (``WHOLE_PASS_FRACTION``), in one
    chunk: ``run(None)``, a pass over every row, whose bounds at ``rows`` are kept. Rows (B, k)
    per sample split along k. ``signs`` (B, k): one side per row, ``run(chunk, signs)``, whose
    upper side is None."""
    every, count = reference.lower[0].numel(), rows.shape[-1]
    if signs is None:
        def call(r, s=None):
            return run(r)
    else:
        call = run
    if count >= WHOLE_PASS_FRACTION * every and every <= size:
        def whole():
            every_sign = None
            if signs is not None:
                at = rows.expand(signs.shape[0], count)
                every_sign = signs.new_ones(signs.shape[0], every).scatter(1, at, signs)
            return (None if side is None else pick_columns(side, rows) for side in call(None, every_sign))
    elif count <= size:
        def whole():
            return call(rows, signs)
    else:
        def whole():
            return _cat_sides([call(chunk, s) for chunk, s in _row_chunks(rows, signs, size)])
    if deadline.left() == math.inf:
        return tuple(whole())
    return _timed_pass(rows, run, call, whole, size, reference.lower.shape[0], signs)


def _row_chunks(rows: torch.Tensor, signs, size: int):
    """(rows, their signs or None) in chunks of at most ``size`` rows."""
    chunks = rows.split(size, dim=-1)
    return zip(chunks, [None] * len(chunks) if signs is None else signs.split(size, dim=-1))


def _cat_sides(results) -> tuple:
    """The chunks' (lower, upper) joined along the rows (a side that is None stays None)."""
    return tuple(None if results[0][side] is None else torch.cat([r[side] for r in results], 1)
                 for side in (0, 1))


def one_side_first(reference: Interval, rows: torch.Tensor, run, size: int, stable: bool = False):
    """(lower, upper) of the straddling ``rows`` of a node whose users are all ReLU-like, for
    far fewer rows' worth of passes. Most rows turn out stable, and a dead neuron's lower bound
    changes nothing (its ReLU is 0 whatever it is): a row nearer the dead side (reference
    centre below 0) first gets its upper bound only, as minus the lower bound of the negated
    row; the others get their lower bound. Then a second pass gives the other side to each row
    that needs it: the rows the first pass did not prove stable, and the active ones, whose
    upper bound feeds the IBP references of later passes, unless ``stable`` (no later pass
    reads them: a stable neuron's relaxation is exact whatever its bounds). Every row thus gets
    the bounds of the two-sided pass, except on the side a stable row did not need, which keeps
    the reference. (Predicting by the centre costs nothing: on the calibration models it picked
    the side that proved every row CROWN proves stable.)"""
    batch = reference.lower.shape[0]
    at = rows.expand(batch, rows.shape[-1])
    ref_lower, ref_upper = reference.lower.flatten(1).gather(1, at), reference.upper.flatten(1).gather(1, at)
    active = torch.ge(ref_lower + ref_upper, scalar(0.0, ref_lower))
    one = scalar(1.0, ref_lower)
    signs = torch.where(active, one, -one)
    first = rows_bounds(reference, rows, run, size, signs)[0]
    lower, upper = torch.where(active, first, ref_lower), torch.where(active, ref_upper, -first)
    # (not >= 0: a NaN bound proves nothing; a row that fills up a sample's rows, not
    # straddling there, keeps its reference: runtime.tighten)
    need = torch.logical_not(torch.ge(first, scalar(0.0, first)))
    if not stable:
        need = need | active
    need = need & straddles(Interval(ref_lower, ref_upper))
    picked = _needed_rows(rows, need)
    if picked is None:
        return lower, upper
    positions, second_rows = picked
    second = rows_bounds(reference, second_rows, run, size, -signs.gather(1, positions))[0]
    done = torch.zeros_like(need).scatter(1, positions, True)
    value = torch.zeros_like(lower).scatter(1, positions, second)
    lower = torch.where(done & ~active, value, lower)
    upper = torch.where(done & active, -value, upper)
    return lower, upper


def _needed_rows(rows: torch.Tensor, need: torch.Tensor):
    """(positions (B, k2) in ``rows``, the neurons there: (k2,) shared by the batch or (B, k2)
    per sample) covering every ``need``ed position, or None when none is. As in
    ``straddling_rows``: shared rows (the union) unless each sample needs far fewer."""
    counts = need.sum(1)
    most = int(counts.max())
    if most == 0:
        return None
    union = need.any(0)
    if need.shape[0] == 1 or most >= PER_SAMPLE_FRACTION * int(union.sum()):
        kept = union.nonzero().squeeze(1)
        picked = rows.index_select(-1, kept) if rows.dim() == 1 else rows[:, kept]
        return kept.expand(need.shape[0], -1), picked
    # each sample's needed positions first (stable sort), then some others to make k2
    positions = torch.argsort(torch.logical_not(need).to(torch.uint8), dim=1, stable=True)[:, :most]
    return positions, rows.expand(need.shape[0], -1).gather(1, positions)
