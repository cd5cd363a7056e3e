"""TCL's networks (SPEC-tcl section 4): the frozen CLIP ViT run TCL's way and the learned masker head.

The head's modules are named after the released checkpoint's, under the
short prefixes of :data:`CHECKPOINT_PREFIXES`, so loading is a prefix map
and nothing else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import LayerNorm, QuickGELU, ResidualAttentionBlock
from torch import nn

from ...models.clip import ClipBundle
from ...models.vit import run_blocks

# head state-dict prefix -> the released checkpoint's prefix (under its "model" entry)
CHECKPOINT_PREFIXES = (
    ("block.", "masker.image_encoder.backbone.transformer.resblocks.11."),
    ("decoder.", "masker.image_encoder.decoder.decoder."),
    ("image_proj.", "masker.image_encoder.decoder.image_proj."),
    ("sim2mask.", "masker.sim2mask."),
)


def self_only_attention(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """Attention in which every token attends only to itself: out_proj(v(x)) per token.

    With 0 on the diagonal and -inf elsewhere, each softmax row is exactly
    one 1, so the attention output is the token's own value: the query and
    key thirds of the input projection never matter.
    """
    width = x.shape[-1]
    attention = block.attn
    value = F.linear(x, attention.in_proj_weight[2 * width :], attention.in_proj_bias[2 * width :])
    return attention.out_proj(value)


def self_only_block(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """A pre-norm CLIP block with :func:`self_only_attention` (MaskCLIP's last block)."""
    x = x + block.ls_1(self_only_attention(block, block.ln_1(x)))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def positional_embedding(visual: nn.Module, height: int, width: int) -> torch.Tensor:
    """CLIP's positional embedding (1 + height * width, D) for a height x width token grid.

    The class entry is kept; the square grid part is resized bicubically
    (align_corners false) unless it already has the size.
    """
    embedding = visual.positional_embedding
    grid = int(round((embedding.shape[0] - 1) ** 0.5))
    if (height, width) == (grid, grid):
        return embedding
    cls, patches = embedding[:1], embedding[1:]
    image = patches.float().reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    image = F.interpolate(image, size=(height, width), mode="bicubic", align_corners=False)
    patches = image[0].permute(1, 2, 0).reshape(height * width, -1).to(embedding.dtype)
    return torch.cat([cls, patches])


def clip_tokens(clip: ClipBundle, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's tokens for padded windows (B, 3, hp, wp): (Z, F).

    Z (B, 1 + h w, D): the output of the second-to-last block, all tokens
    (the masker's input). F (B, D, h, w): the patch tokens after the last
    block run self-only, without ln_post or projection (the KP branch's input).
    """
    visual = clip.visual
    blocks = visual.transformer.resblocks
    x = visual.conv1(windows.to(clip.dtype))  # (B, D, h, w)
    batch, width, height, columns = x.shape
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(batch, 1, width)
    x = torch.cat([cls, x], dim=1) + positional_embedding(visual, height, columns).to(x.dtype)
    x = visual.ln_pre(x)
    z = run_blocks(clip, blocks[:-1], x)
    last = self_only_block(blocks[-1], z)
    patches = last[:, 1:].transpose(1, 2).reshape(batch, width, height, columns)
    return z, patches


def clip_token_embeddings(clip: ClipBundle, patches: torch.Tensor) -> torch.Tensor:
    """Q (B, C, h, w): CLIP's own ln_post and projection applied to each patch token of F."""
    visual = clip.visual
    tokens = visual.ln_post(patches.permute(0, 2, 3, 1))
    if visual.proj is not None:
        tokens = tokens @ visual.proj
    return tokens.permute(0, 3, 1, 2)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map, at each pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Gate(nn.Module):
    """A learned scalar gate: tanh(gate) times the input (0 at initialisation: the block starts as identity)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.gate) * x


class GatedConvBlock(nn.Module):
    """x + gate(conv3x3(GELU(LayerNorm(x)))): pre-activation, exact GELU."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = ChannelLayerNorm(width)
        self.conv = nn.Conv2d(width, width, kernel_size=3, padding=1)
        self.gate = Gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gate(self.conv(F.gelu(self.norm(x))))


class UpsampleStage(nn.Module):
    """Nearest-neighbour x2, then two gated convolution blocks."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = GatedConvBlock(width)
        self.conv2 = GatedConvBlock(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv2(self.conv(x))


class GatedDecoder(nn.Module):
    """Two upsampling stages: D x h x w -> D x 4h x 4w."""

    def __init__(self, width: int, stages: int = 2) -> None:
        super().__init__()
        self.net = nn.Sequential(*(UpsampleStage(width) for _ in range(stages)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ImageProjection(nn.Module):
    """The masker's own copy of CLIP's ln_post and projection, per pixel: D -> C."""

    def __init__(self, width: int, embed_dim: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.ln(x.permute(0, 2, 3, 1)) @ self.proj).permute(0, 3, 1, 2)


class Sim2Mask(nn.Module):
    """sigmoid(w * similarity + b), with the learned scalars w and b."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(10.0))
        self.b = nn.Parameter(torch.tensor(-2.5))

    def forward(self, similarity: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.w * similarity + self.b)


class TCLHead(nn.Module):
    """TCL's learned masker: its own last CLIP block, the gated decoder, the projection and Sim2Mask."""

    def __init__(self, width: int = 768, heads: int = 12, embed_dim: int = 512) -> None:
        super().__init__()
        self.block = ResidualAttentionBlock(width, heads, act_layer=QuickGELU, norm_layer=LayerNorm)
        self.decoder = GatedDecoder(width)
        self.image_proj = ImageProjection(width, embed_dim)
        self.sim2mask = Sim2Mask()

    @staticmethod
    def dims_for(clip: ClipBundle) -> dict[str, int]:
        """The head's shape for a CLIP ViT (OpenAI's ViT-B/16: width 768, 12 heads, embedding 512)."""
        last = clip.visual.transformer.resblocks[-1]
        return {
            "width": last.ln_1.normalized_shape[0],
            "heads": last.attn.num_heads,
            "embed_dim": clip.model.text_projection.shape[-1],
        }

    def pixel_embeddings(self, z: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """E (B, C, 4h, 4w) from CLIP's block-11 tokens Z (B, 1 + h w, D)."""
        tokens = self_only_block(self.block, z)[:, 1:]
        grid = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)
        return self.image_proj(self.decoder(grid))
