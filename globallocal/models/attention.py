"""open_clip's residual attention blocks run through ``scaled_dot_product_attention`` directly.

``nn.MultiheadAttention`` takes its fused fast path only for self-attention
without a mask; otherwise it goes through ``F.multi_head_attention_forward``,
whose bfloat16 path on the CPU is several times slower than float32 (ViT-B/16,
16 views: a masked block 0.94 s against 0.25 s unmasked; the class-token row
0.29 s against 0.016 s here). The same projections and attention written out
give the same values (float32: bit for bit on this machine), so every masked
or class-token pass goes through them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _plain(block: torch.nn.Module) -> torch.nn.MultiheadAttention | None:
    """The block's attention when it is open_clip's plain self-attention block, else None (run it whole)."""
    attention = getattr(block, "attn", None)
    if (
        not isinstance(attention, torch.nn.MultiheadAttention)
        or not attention._qkv_same_embed_dim
        or attention.bias_k is not None
        or attention.add_zero_attn
        or hasattr(block, "ln_1_kv")
        or (attention.training and attention.dropout > 0)
    ):
        return None
    return attention


def _attend(attention: torch.nn.MultiheadAttention, query: torch.Tensor, keys: torch.Tensor,
            mask: torch.Tensor | None) -> torch.Tensor:
    """Multi-head attention of batch-first queries (B, Q, D) over keys (B, T, D) (values: the keys).

    ``mask``: additive, (Q, T) or (B * heads, Q, T) as ``nn.MultiheadAttention`` takes it.
    """
    batch, queries, width = query.shape
    heads = attention.num_heads
    weight, bias = attention.in_proj_weight, attention.in_proj_bias
    q_bias, kv_bias = (None, None) if bias is None else (bias[:width], bias[width:])
    q = F.linear(query, weight[:width], q_bias).view(batch, queries, heads, -1).transpose(1, 2)
    kv = F.linear(keys, weight[width:], kv_bias).view(batch, keys.shape[1], 2, heads, -1).permute(2, 0, 3, 1, 4)
    if mask is not None and mask.dim() == 3:
        mask = mask.view(batch, heads, *mask.shape[1:])
    out = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask)
    return attention.out_proj(out.transpose(1, 2).reshape(batch, queries, width))


def _feed_forward(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The block's second residual half: its MLP on the attention's output, row by row."""
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _whole(block: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``block`` itself on batch-first tokens, whatever layout its attention takes."""
    batch_first = getattr(getattr(block, "attn", None), "batch_first", True)
    tokens = x if batch_first else x.transpose(0, 1)
    out = block(tokens, attn_mask=mask)
    return out if batch_first else out.transpose(0, 1)


def residual_block(block: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``block(x, attn_mask=mask)`` on batch-first tokens (B, T, D), equal to float rounding.

    Without a mask the block runs itself (its fused path is fast in every
    precision); with an additive float mask, the attention written out.
    """
    attention = _plain(block)
    if mask is None or attention is None or mask.dtype == torch.bool:
        return _whole(block, x, mask)
    normed = block.ln_1(x)
    return _feed_forward(block, x + block.ls_1(_attend(attention, normed, normed, mask.to(x.dtype))))


def class_token_block(block: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """A residual attention block's output for the class token alone: batch-first (B, T, D) -> (B, 1, D).

    For a pass that keeps only the class token (CLIP's pooled feature), the
    last block needs every token's keys and values, but its query, output
    projection and MLP act row by row: only the class row is formed, about a
    sixth of the block's work. Equal to ``block(x)[:, :1]`` up to float
    rounding. ``mask``: the block's additive mask (B * heads, T, T) or
    (T, T); only its class-token row is read. A block of another kind than
    open_clip's ResidualAttentionBlock runs whole.
    """
    attention = _plain(block)
    if attention is None or (mask is not None and mask.dtype == torch.bool):
        return _whole(block, x, mask)[:, :1]
    normed = block.ln_1(x)
    row_mask = None if mask is None else mask[..., :1, :].to(x.dtype)
    return _feed_forward(block, x[:, :1] + block.ls_1(_attend(attention, normed[:, :1], normed, row_mask)))
