"""CLIP ViT passes that several methods share: mask resizing to the patch grid and running blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .clip import ClipBundle


def resize(image: torch.Tensor, size: tuple[int, int], antialias: bool = False) -> torch.Tensor:
    """Bilinear resize of (..., C, H, W) or (N, H, W); the reference resizes without antialiasing."""
    squeeze = image.dim() == 3
    batch = image[None] if squeeze else image
    out = F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=antialias)
    return out[0] if squeeze else out


def soft_masks(masks: torch.Tensor, grid: int, antialias: bool = False, chunk_size: int = 8) -> torch.Tensor:
    """Masks (N, H, W) as float (N, grid, grid) in [0, 1], bilinear from full size.

    Converted a few at a time: a float copy of 100 full-size masks of a
    12-megapixel photo would need about 5 GB.
    """
    if masks.shape[0] == 0:
        return masks.new_zeros((0, grid, grid), dtype=torch.float32)
    return torch.cat(
        [resize(chunk.float()[:, None], (grid, grid), antialias)[:, 0] for chunk in masks.split(chunk_size)]
    )


def vit_blocks(clip: ClipBundle) -> torch.nn.ModuleList:
    """The residual blocks of a CLIP ViT's visual transformer."""
    return clip.visual.transformer.resblocks


def run_blocks(clip: ClipBundle, blocks, tokens: torch.Tensor) -> torch.Tensor:
    """Run ``blocks`` on batch-first tokens, whatever layout the transformer uses."""
    batch_first = getattr(clip.visual.transformer, "batch_first", True)
    x = tokens if batch_first else tokens.transpose(0, 1)
    for block in blocks:
        x = block(x)
    return x if batch_first else x.transpose(0, 1)


def class_token_block(block: torch.nn.Module, x: torch.Tensor, attention_mask: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """A residual attention block's output for the class token alone: batch-first (B, T, D) -> (B, 1, D).

    For a pass that keeps only the class token (CLIP's pooled feature), the
    last block needs every token's keys and values, but its query, output
    projection and MLP act row by row: only the class row is formed, about a
    sixth of the block's work. Equal to ``block(x)[:, :1]`` up to float
    rounding. ``attention_mask``: the block's additive mask (B * heads, T, T)
    or (T, T); only its class-token row is read. A block of another kind
    than open_clip's ResidualAttentionBlock runs whole.
    """
    attention = getattr(block, "attn", None)
    if not isinstance(attention, torch.nn.MultiheadAttention) or hasattr(block, "ln_1_kv"):
        batch_first = getattr(attention, "batch_first", True)
        tokens = x if batch_first else x.transpose(0, 1)
        out = block(tokens, attn_mask=attention_mask)
        return (out if batch_first else out.transpose(0, 1))[:, :1]
    normed = block.ln_1(x)
    query = normed[:, :1]
    if attention_mask is not None:
        attention_mask = attention_mask[..., :1, :].to(x.dtype)
    if not attention.batch_first:
        query, normed = query.transpose(0, 1), normed.transpose(0, 1)
    attended = attention(query, normed, normed, need_weights=False, attn_mask=attention_mask)[0]
    if not attention.batch_first:
        attended = attended.transpose(0, 1)
    out = x[:, :1] + block.ls_1(attended)
    return out + block.ls_2(block.mlp(block.ln_2(out)))


def pooled_class_token(clip: ClipBundle, x: torch.Tensor) -> torch.Tensor:
    """CLIP's image feature (B, D) from the last block's class-token row (B, 1, D): ln_post, then proj."""
    pooled, _ = clip.visual._pool(x)
    return pooled @ clip.visual.proj if clip.visual.proj is not None else pooled


def vit_image_features(clip: ClipBundle, images: torch.Tensor) -> torch.Tensor:
    """``clip.model.encode_image`` of a class-token ViT, with the last block on the class row only (B, D)."""
    blocks = vit_blocks(clip)
    tokens = run_blocks(clip, blocks[:-1], clip.visual._embeds(images.to(clip.device, clip.dtype)))
    return pooled_class_token(clip, class_token_block(blocks[-1], tokens))
