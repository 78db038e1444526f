"""Rewrite nn.MultiheadAttention and nn.TransformerEncoderLayer batch first before export.

torch's attention folds the batch into the heads (``view(L, B * H, D)``) and, in eval mode,
may run the encoder layer as one fused kernel; neither keeps dim 0 as the batch. Each such
module of a copy of the model is replaced by the same equations written per sample (linear
maps, a reshape to heads, q k^T, softmax, a product with v), on the same Parameter objects, so
bounds stay differentiable in them and the lowered parameter names are unchanged. A module
with ``batch_first=False`` takes and returns (L, B, E) as before: it transposes to batch first
and back, and the torch frontend cancels those transposes against the model's own.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from lirpac.errors import UnsupportedOperationError

# a masked score: exp(score - 1e4) is exactly 0 in float32 and float64, as exp(-inf) is
MASKED = -1e4


def _additive(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A boolean mask (True: do not attend) or a float one (added) as finite additive scores."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=like.dtype).masked_fill(mask, MASKED)
    return mask.to(like.dtype).clamp(min=MASKED)


def attend(mha: nn.MultiheadAttention, query, key, value, attn_mask=None, key_padding_mask=None):
    """Multi-head attention on batch-first (B, L, E) inputs, as nn.MultiheadAttention computes
    it; returns the output and the per-head weights (B, H, L, S). ``key_padding_mask`` (B, S):
    keys each sample does not attend to (True, or an additive float)."""
    heads, embed = mha.num_heads, mha.embed_dim
    head_dim = embed // heads
    if mha._qkv_same_embed_dim:
        w_q, w_k, w_v = (mha.in_proj_weight[i * embed:(i + 1) * embed] for i in range(3))
    else:
        w_q, w_k, w_v = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
    b = mha.in_proj_bias
    b_q, b_k, b_v = ((None,) * 3 if b is None else
                     (b[i * embed:(i + 1) * embed] for i in range(3)))
    q, k, v = F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)
    batch, length, source = q.shape[0], q.shape[1], k.shape[1]
    q = q.reshape(batch, length, heads, head_dim).transpose(1, 2)
    k = k.reshape(batch, source, heads, head_dim).transpose(1, 2)
    v = v.reshape(batch, source, heads, head_dim).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(head_dim))
    if attn_mask is not None:
        if attn_mask.dim() != 2:
            raise UnsupportedOperationError(
                "MultiheadAttention with a 3-D attn_mask (one mask per sample and head): lirpac "
                "keeps dim 0 as the batch; give one (L, S) mask shared by every sample")
        scores = scores + _additive(attn_mask, scores)
    if key_padding_mask is not None:
        if key_padding_mask.shape != (batch, source):
            raise UnsupportedOperationError(
                f"MultiheadAttention's key_padding_mask has shape {tuple(key_padding_mask.shape)}; "
                f"it must be (batch, source length) = ({batch}, {source})")
        scores = scores + _additive(key_padding_mask, scores)[:, None, None, :]
    weights = scores.softmax(-1)
    out = (weights @ v).transpose(1, 2).reshape(batch, length, embed)
    return F.linear(out, mha.out_proj.weight, mha.out_proj.bias), weights


def _check(mha: nn.MultiheadAttention, name: str) -> None:
    if mha.bias_k is not None or mha.add_zero_attn:
        raise UnsupportedOperationError(
            f"MultiheadAttention '{name}': add_bias_kv and add_zero_attn are not supported")


class _Attention(nn.Module):
    """nn.MultiheadAttention's forward, batch first inside."""

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        self.mha = mha

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        if not self.mha.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        out, weights = attend(self.mha, query, key, value, attn_mask, key_padding_mask)
        if not self.mha.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(1) if average_attn_weights else weights


class _EncoderLayer(nn.Module):
    """nn.TransformerEncoderLayer's forward (post- or pre-norm), batch first inside."""

    def __init__(self, layer: nn.TransformerEncoderLayer):
        super().__init__()
        self.layer = layer

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        layer = self.layer
        x = src if layer.self_attn.batch_first else src.transpose(0, 1)

        def self_attention(h):
            return layer.dropout1(attend(layer.self_attn, h, h, h, src_mask, src_key_padding_mask)[0])

        def feed_forward(h):
            return layer.dropout2(layer.linear2(layer.dropout(layer.activation(layer.linear1(h)))))
        if layer.norm_first:
            x = x + self_attention(layer.norm1(x))
            x = x + feed_forward(layer.norm2(x))
        else:
            x = layer.norm1(x + self_attention(x))
            x = layer.norm2(x + feed_forward(x))
        return x if layer.self_attn.batch_first else x.transpose(0, 1)


class _Encoder(nn.Module):
    """nn.TransformerEncoder's forward without its fused and nested-tensor paths."""

    def __init__(self, encoder: nn.TransformerEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        x = src
        for layer in self.encoder.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask)
        return x if self.encoder.norm is None else self.encoder.norm(x)


def rewrite_attention(module: nn.Module) -> nn.Module:
    """``module`` itself when it has no attention module, else a copy (sharing every parameter
    and buffer) with each encoder (stack), encoder layer and other MultiheadAttention
    rewritten (deepest first, so a stack holds its rewritten layers)."""
    layers = [(n, m) for n, m in module.named_modules()
              if isinstance(m, nn.TransformerEncoderLayer)]
    inside = {f"{n}.self_attn" if n else "self_attn" for n, _ in layers}
    attentions = [(n, m) for n, m in module.named_modules()
                  if isinstance(m, nn.MultiheadAttention) and n not in inside]
    encoders = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.TransformerEncoder)]
    if not layers and not attentions:
        return module
    for name, m in layers:
        _check(m.self_attn, f"{name}.self_attn")
    for name, m in attentions:
        _check(m, name)
    shared = {id(t): t for t in list(module.parameters()) + list(module.buffers())}
    copied = copy.deepcopy(module, shared)
    replaced = [(n, _EncoderLayer(copied.get_submodule(n))) for n, _ in layers]
    replaced += [(n, _Encoder(copied.get_submodule(n))) for n, _ in encoders]
    replaced += [(n, _Attention(copied.get_submodule(n))) for n, _ in attentions]
    for name, new in sorted(replaced, key=lambda r: -(r[0].count(".") + bool(r[0]))):
        if not name:
            return new
        parent, _, child = name.rpartition(".")
        setattr(copied.get_submodule(parent), child, new)
    return copied
