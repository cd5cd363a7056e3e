"""CLIP ViT passes that several methods share: mask resizing to the patch grid and running blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .attention import class_token_block
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


def pooled_class_token(clip: ClipBundle, x: torch.Tensor) -> torch.Tensor:
    """CLIP's image feature (B, D) from the last block's class-token row (B, 1, D): ln_post, then proj."""
    pooled, _ = clip.visual._pool(x)
    return pooled @ clip.visual.proj if clip.visual.proj is not None else pooled


def vit_image_features(clip: ClipBundle, images: torch.Tensor) -> torch.Tensor:
    """``clip.model.encode_image`` of a class-token ViT, with the last block on the class row only (B, D)."""
    blocks = vit_blocks(clip)
    tokens = run_blocks(clip, blocks[:-1], clip.visual._embeds(images.to(clip.device, clip.dtype)))
    return pooled_class_token(clip, class_token_block(blocks[-1], tokens))
