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
