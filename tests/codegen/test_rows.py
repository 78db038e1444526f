"""Rows of intermediate passes (codegen/runtime.py): each sample's bounds are those it gets
alone, whether the batch shares the rows of the union of its unstable neurons or each sample
bounds its own (per-sample rows, and Patches whose windows sit at per-sample positions)."""
import math

import pytest
import torch

import lirpac
from lirpac.codegen import runtime
from lirpac.codegen.patches import Patches, acc_patches, identity_patches
from lirpac.ir.opdef import Interval
from models import ConvNet, ResNetTiny, MLP, reinit


def test_straddling_rows_are_per_sample_only_when_samples_differ():
    lower = torch.tensor([[-1.0, -1, 1, 1, 1, 1], [1.0, 1, 1, 1, -1, -1]])
    rows = runtime.straddling_rows(Interval(lower, lower + 2.5))
    assert rows.tolist() == [[0, 1], [4, 5]]
    same = torch.tensor([[-1.0, -1, 1, 1, 1, 1], [-1.0, -1, 1, 1, 1, -1]])
    assert runtime.straddling_rows(Interval(same, same + 2.5)).tolist() == [0, 1, 5]
    # a sample with fewer unstable neurons is padded with its own stable ones, kept as they are
    ragged = torch.tensor([[-1.0, -1, -1, 1, 1, 1, 1, 1], [1.0, 1, 1, 1, 1, 1, 1, -1]])
    reference = Interval(ragged, ragged + 2.5)
    rows = runtime.straddling_rows(reference)
    assert rows.tolist() == [[0, 1, 2], [7, 0, 1]]
    new = runtime.tighten(reference, torch.zeros(2, 3), torch.ones(2, 3), rows, straddling=True)
    assert new.lower.tolist() == [[0, 0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 0]]


def _per_sample(parts: list[Patches]) -> Patches:
    return Patches(torch.cat([p.coeff for p in parts]), torch.stack([p.top for p in parts]),
                   torch.stack([p.left for p in parts]), parts[0].shape)


def _random_patches(rows, shape, kernel, g):
    channels, height, width = shape
    top = torch.randint(-kernel + 1, height, (rows,), generator=g)
    left = torch.randint(-kernel + 1, width, (rows,), generator=g)
    p = Patches(torch.randn(1, rows, channels, kernel, kernel, generator=g, dtype=torch.float64), top, left, shape)
    p.coeff = p.coeff * p._inside_mask()
    return p


def test_per_sample_patches_match_each_sample_alone():
    g = torch.Generator().manual_seed(0)
    shape = (3, 7, 6)
    parts = [_random_patches(5, shape, 3, g) for _ in range(2)]
    both = _per_sample(parts)
    assert both.per_sample
    t = torch.randn(2, *shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(both.to_dense(), torch.cat([p.to_dense() for p in parts]))
    torch.testing.assert_close(both.windows(t), torch.cat([p.windows(t[b:b + 1]) for b, p in enumerate(parts)]))
    torch.testing.assert_close(both.bias(t[:1]), torch.cat([p.bias(t[:1]) for p in parts]))
    torch.testing.assert_close(both._inside_mask().expand(2, 5, 1, 3, 3),
                               torch.stack([p._inside_mask() for p in parts]))
    weight = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    moved = both.conv_transpose(weight, (2, 2), (1, 1), (1, 1), 1, (2, 13, 12))
    alone = [p.conv_transpose(weight, (2, 2), (1, 1), (1, 1), 1, (2, 13, 12)) for p in parts]
    torch.testing.assert_close(moved.to_dense(), torch.cat([p.to_dense() for p in alone]))
    shifted = Patches(torch.randn(2, 5, 3, 2, 2, generator=g, dtype=torch.float64), both.top + 1, both.left - 1, shape)
    shifted.coeff = shifted.coeff * shifted._inside_mask()
    merged = acc_patches(both, shifted)
    assert isinstance(merged, Patches)
    torch.testing.assert_close(merged.to_dense(), both.to_dense() + shifted.to_dense())


def test_per_sample_identity_rows_and_patches():
    rows = torch.tensor([[0, 7, 29], [89, 3, 3]])
    like = torch.zeros(1, dtype=torch.float64)
    eye = torch.eye(90, dtype=torch.float64)
    expect = torch.stack([eye[r] for r in rows])
    torch.testing.assert_close(runtime.identity_rows(2, rows, (3, 6, 5), like).reshape(2, 3, 90), expect)
    torch.testing.assert_close(identity_patches(2, rows, (3, 6, 5), like).to_dense().reshape(2, 3, 90), expect)
    t = torch.randn(2, 90, 4, dtype=torch.float64)
    torch.testing.assert_close(runtime.pick_rows(t, rows), torch.stack([t[b, r] for b, r in enumerate(rows)]))
    w = torch.randn(2, 4, 90, dtype=torch.float64)     # (forward mode's (B, N, n) weights)
    torch.testing.assert_close(runtime.pick_columns(w, rows), torch.stack([w[b][:, r] for b, r in enumerate(rows)]))


NETS = {"mlp": (MLP, (6,), "matrix"), "convnet": (ConvNet, (2, 8, 8), "matrix"),
        "convnet_patches": (ConvNet, (2, 8, 8), "patches"),
        "resnet_patches": (ResNetTiny, (1, 5, 5), "patches")}


@pytest.mark.parametrize("name", sorted(NETS))
def test_a_sample_gets_its_own_bounds_in_any_batch(name, monkeypatch):
    """Rows shared by the batch (the union: PER_SAMPLE_FRACTION 0) or per sample whenever the
    samples' unstable neurons differ (1): each sample's bounds are those it gets alone."""
    cls, shape, conv_mode = NETS[name]
    model = reinit(cls().double(), 4)
    g = torch.Generator().manual_seed(4)
    x = 3 * torch.randn(3, *shape, generator=g, dtype=torch.float64)
    net = lirpac.compile(model, x[:1], conv_mode=conv_mode)
    ball = lirpac.LpBall(eps=0.2, norm=math.inf)
    alone = [net.bounds(x[b:b + 1], ball, method="crown") for b in range(3)]
    for fraction in (0.0, 1.0):
        monkeypatch.setattr(runtime, "PER_SAMPLE_FRACTION", fraction)
        lower, upper = net.bounds(x, ball, method="crown")
        torch.testing.assert_close(lower, torch.cat([a[0] for a in alone]), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(upper, torch.cat([a[1] for a in alone]), rtol=1e-10, atol=1e-10)


# -- one side first (runtime.one_side_first) ------------------------------------------------

def _table_run(lower, upper, calls):
    """A pass over rows that reads its bounds from a table: run(rows, signs) gives the lower
    bound of signs * row, as a generated pass over signed rows does."""
    def run(rows, signs=None):
        at = rows.expand(lower.shape[0], rows.shape[-1]) if rows is not None else None
        lo = lower if at is None else lower.gather(1, at)
        up = upper if at is None else upper.gather(1, at)
        calls.append((None if rows is None else rows.clone(), None if signs is None else signs.clone()))
        if signs is None:
            return lo, up
        return torch.where(signs > 0, lo, -up), None
    return run


@pytest.mark.parametrize("stable", [False, True])
@pytest.mark.parametrize("per_sample", [False, True])
def test_one_side_first_keeps_every_needed_side(stable, per_sample, monkeypatch):
    """Straddling rows end with the two-sided pass's bounds; a row proved dead keeps its
    reference lower bound; a row proved active keeps its reference upper only when no later
    pass reads it (``stable``). The second pass bounds only the rows that need it."""
    monkeypatch.setattr(runtime, "PER_SAMPLE_FRACTION", 1.01 if per_sample else 0.0)
    g = torch.Generator().manual_seed(0)
    centre = 3 * torch.rand(2, 40, generator=g, dtype=torch.float64) - 1.5
    radius = 0.5 * torch.rand(2, 40, generator=g, dtype=torch.float64)
    true_lower, true_upper = centre - radius, centre + radius
    ref_lower = true_lower - 1.6 - torch.rand(2, 40, generator=g, dtype=torch.float64)
    ref_upper = true_upper + 1.6 + torch.rand(2, 40, generator=g, dtype=torch.float64)
    reference = Interval(ref_lower, ref_upper)
    rows = torch.arange(40)
    calls = []
    lower, upper = runtime.one_side_first(reference, rows, _table_run(true_lower, true_upper, calls), 64, stable)
    dead, active = true_upper <= 0, true_lower >= 0
    unstable = ~(dead | active)
    assert dead.any() and active.any() and unstable.any()
    assert torch.equal(lower[~dead], true_lower[~dead])
    # (a row may get the side it did not need: predicted the other way, or filling a sample's
    # rows up to the batch's count)
    assert torch.all((lower[dead] == ref_lower[dead]) | (lower[dead] == true_lower[dead]))
    loose = active if stable else torch.zeros_like(active)
    assert torch.equal(upper[~loose], true_upper[~loose])
    assert torch.all((upper[loose] == ref_upper[loose]) | (upper[loose] == true_upper[loose]))
    # (every row straddles: the first pass runs over the whole node, runtime.WHOLE_PASS_FRACTION)
    assert len(calls) == 2 and calls[0][0] is None and calls[0][1].shape == (2, 40)
    second_rows = calls[1][0]
    needed = (unstable | (~stable & (ref_lower + ref_upper >= 0))).sum(1).max()
    assert second_rows.shape[-1] >= needed and second_rows.shape[-1] < 40
    assert second_rows.dim() == (2 if per_sample else 1)


_TIGHTEN_CHUNKS = runtime.tighten_chunks


def _recorded_passes(monkeypatch, one_side: bool, net_args, x, ball):
    """Final bounds and every intermediate node's bounds of a fresh net, with one side first
    on or off."""
    from lirpac.codegen import torch_backend
    monkeypatch.setattr(torch_backend._Emitter, "one_side_passes", one_side)
    seen = []

    def record(*args, **kwargs):
        seen.append((_TIGHTEN_CHUNKS(*args, **kwargs), kwargs.get("one_side")))
        return seen[-1][0]
    monkeypatch.setattr(runtime, "tighten_chunks", record)
    model, kwargs = net_args
    net = lirpac.compile(model, x[:1], **kwargs)
    return net.bounds(x, ball, method="crown"), seen


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("memory", [None, 4096])
def test_one_side_first_changes_no_bound_a_later_step_reads(name, memory, monkeypatch):
    """With one side first, final bounds are those of two-sided passes (rows in chunks too),
    and so is each intermediate bound, except the sides that no later step reads: a dead
    neuron's lower bound, and an active one's upper bound when no later pass follows."""
    cls, shape, conv_mode = NETS[name]
    model = reinit(cls().double(), 4)
    g = torch.Generator().manual_seed(4)
    x = 3 * torch.randn(3, *shape, generator=g, dtype=torch.float64)
    ball = lirpac.LpBall(eps=0.2, norm=math.inf)
    kwargs = {"conv_mode": conv_mode, "max_memory": memory}
    (lower, upper), both = _recorded_passes(monkeypatch, False, (model, kwargs), x, ball)
    (lower1, upper1), one = _recorded_passes(monkeypatch, True, (model, kwargs), x, ball)
    torch.testing.assert_close(lower1, lower, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(upper1, upper, rtol=1e-10, atol=1e-10)
    assert len(one) == len(both) and any(mode is not None for _, mode in one)
    for (a, mode), (b, _) in zip(one, both):
        dead, active = b.upper <= 0, b.lower >= 0
        torch.testing.assert_close(a.lower[~dead], b.lower[~dead], rtol=1e-10, atol=1e-10)
        loose = active if mode == "stable" else torch.zeros_like(active)
        torch.testing.assert_close(a.upper[~loose], b.upper[~loose], rtol=1e-10, atol=1e-10)
        assert torch.all(a.upper[loose] >= b.upper[loose] - 1e-10)      # (the reference's)
