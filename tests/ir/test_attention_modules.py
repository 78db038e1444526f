"""nn.MultiheadAttention (with and without masks) and nn.TransformerEncoderLayer /
nn.TransformerEncoder in both batch_first settings, as users write them: rewritten batch first
before export (ir/attention.py), the seq-first transposes cancelled by the frontend, and bounds
that contain sampled outputs."""
import math

import pytest
import torch
import torch.nn as nn

import lirpac
from lirpac.errors import UnsupportedOperationError
from sampling import assert_contains, sample_lp_ball


class Attention(nn.Module):
    def __init__(self, batch_first, mask=None):
        super().__init__()
        self.batch_first, self.mask = batch_first, mask
        self.att = nn.MultiheadAttention(4, 2, batch_first=batch_first)

    def forward(self, x):                         # x: (B, L, E)
        if not self.batch_first:
            x = x.transpose(0, 1)
        mask = None
        if self.mask == "causal_bool":
            mask = torch.triu(torch.ones(3, 3, dtype=torch.bool), 1)
        elif self.mask == "float":
            mask = torch.tensor([[0.0, -1.0, float("-inf")], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])
        y, _ = self.att(x, x, x, attn_mask=mask)
        if not self.batch_first:
            y = y.transpose(0, 1)
        return y.flatten(1)


class Encoder(nn.Module):
    def __init__(self, batch_first, norm_first=False, stacked=False):
        super().__init__()
        self.batch_first = batch_first
        layer = nn.TransformerEncoderLayer(4, 2, 8, dropout=0.1, batch_first=batch_first,
                                           norm_first=norm_first, activation="gelu")
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False) if stacked else layer
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        if not self.batch_first:
            x = x.permute(1, 0, 2)
        y = self.enc(x)
        if not self.batch_first:
            y = y.permute(1, 0, 2)
        return self.head(y.mean(1))


MODELS = {
    "mha_batch_first": lambda: Attention(True), "mha_seq_first": lambda: Attention(False),
    "mha_causal_mask": lambda: Attention(True, "causal_bool"),
    "mha_float_mask_seq_first": lambda: Attention(False, "float"),
    "encoder_batch_first": lambda: Encoder(True), "encoder_seq_first": lambda: Encoder(False),
    "encoder_pre_norm": lambda: Encoder(True, norm_first=True),
    "encoder_stack_seq_first": lambda: Encoder(False, stacked=True),
}


FAST = {"mha_causal_mask", "encoder_seq_first"}


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow)
                                  for n in MODELS])
def test_attention_modules_bound_soundly(name):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    x = torch.randn(2, 3, 4)
    net = lirpac.compile(model, x)
    points = sample_lp_ball(x, 0.05, math.inf, 48, generator=torch.Generator().manual_seed(0))
    for method in ["ibp", "crown"]:
        lower, upper = net.bounds(x, lirpac.LpBall(eps=0.05), method=method)
        assert_contains(model, points, lower, upper)


def test_a_seq_first_tensor_used_before_its_batch_is_back_is_refused():
    class Stray(nn.Module):
        def forward(self, x):
            return torch.relu(x.transpose(0, 1)).transpose(0, 1)
    with pytest.raises(UnsupportedOperationError, match="batch dimension was moved"):
        lirpac.compile(Stray().eval(), torch.randn(2, 3, 4))


class Padded(nn.Module):
    """Attention (or an encoder layer, seq first) whose keys are masked per sample: a mask given
    as a second input (additive float), or one built in forward and shared by the batch."""
    def __init__(self, layer=False):
        super().__init__()
        self.layer = layer
        self.att = nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0) if layer else \
            nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x, pad=None):                 # x: (B, L, E), pad: (B, L)
        if pad is None:
            pad = torch.tensor([False, False, True]).expand(x.shape[0], 3)
        if self.layer:
            return self.att(x.transpose(0, 1), src_key_padding_mask=pad).transpose(0, 1).flatten(1)
        return self.att(x, x, x, key_padding_mask=pad)[0].flatten(1)


@pytest.mark.parametrize("layer", [False, True])
def test_key_padding_mask_per_sample_is_sound(layer):
    torch.manual_seed(0)
    model = Padded(layer).eval()
    x = torch.randn(2, 3, 4)
    pad = torch.tensor([[0.0, 0.0, -1e4], [0.0, -1e4, 0.0]])     # (a bool mask, as floats)
    net = lirpac.compile(model, (x, pad))
    points = sample_lp_ball(x, 0.05, math.inf, 64)
    outputs = torch.stack([model(p, pad) for p in points])
    for method in ("ibp", "crown", "alpha-crown"):
        lower, upper = net.bounds((x, pad), (lirpac.LpBall(eps=0.05), None), method=method)
        assert (outputs >= lower - 1e-5).all() and (outputs <= upper + 1e-5).all(), method
    # the masked key is ignored: its input moves nothing (the second sample's key 1)
    moved = x.clone()
    moved[1, 1] += 3.0
    if not layer:
        torch.testing.assert_close(model(moved, pad)[1].reshape(3, 4)[0], model(x, pad)[1].reshape(3, 4)[0])


def test_key_padding_mask_shared_by_the_batch():
    model = Padded().eval()
    x = torch.randn(2, 3, 4)
    lower, upper = lirpac.compile(model, x).bounds(x, lirpac.LpBall(eps=0.05), method="crown")
    assert_contains(model, sample_lp_ball(x, 0.05, math.inf, 64), lower, upper)


def test_a_boolean_mask_input_is_refused_with_what_to_pass():
    model = Padded().eval()
    pad = torch.tensor([[False, False, True], [False, True, False]])
    with pytest.raises(lirpac.errors.InputError, match=r"mask.float\(\) \* -1e4"):
        lirpac.compile(model, (torch.randn(2, 3, 4), pad))
