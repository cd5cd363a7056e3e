"""GEM, "Grounding Everything" (Bousselham et al., CVPR 2024), on an open_clip ViT (SPEC-hybridgl section 8).

The last blocks of the image tower carry a second stream whose attention is
self-self attention (each of q, k, v attends to itself, iterated, then reads
the values), which localises text queries far better than the class token's
attention. :func:`gem_tokens` is paid once per image; :func:`gem_heat_map`
once per query.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image

from ...data.images import to_normalized_tensor
from ...errors import InputError
from ...models.clip import ClipBundle

GEM_SIZE = 448
NORM_EPS = 1e-12


def gem_input(image: Image.Image, size: int = GEM_SIZE) -> torch.Tensor:
    """(1, 3, size, size): PIL bicubic resize to a square (aspect ignored), / 255, CLIP mean/std."""
    square = image.convert("RGB").resize((size, size), Image.BICUBIC)
    return to_normalized_tensor(square, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)[None]


def resized_positional_embedding(positional_embedding: torch.Tensor, grid: int) -> torch.Tensor:
    """The (1 + g0^2, D) positional embedding for a grid x grid patch grid.

    The class row is kept; the g0 x g0 grid part is resized bicubically,
    align_corners false, with antialias (PyTorch's antialiased bicubic uses
    the coefficient -0.5, so this differs from the plain resize even when
    enlarging). Unchanged when the grid already fits.
    """
    old = int(round((positional_embedding.shape[0] - 1) ** 0.5))
    if old == grid:
        return positional_embedding
    width = positional_embedding.shape[1]
    patches = positional_embedding[1:].T.reshape(1, width, old, old)
    # In float32: the CPU has no antialiased bicubic for bfloat16 (the result is cast back).
    patches = F.interpolate(patches.float(), size=(grid, grid), mode="bicubic", align_corners=False, antialias=True)
    return torch.cat([positional_embedding[:1], patches.reshape(width, grid * grid).T.to(positional_embedding.dtype)])


def _stem(visual: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Patch convolution, class token, resized positional embedding, patch dropout, ln_pre: (B, 1 + P, D)."""
    x = visual.conv1(pixels)
    grid = x.shape[-1]
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    x = x + resized_positional_embedding(visual.positional_embedding, grid).to(x.dtype)
    return visual.ln_pre(visual.patch_dropout(x))


def self_self_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, theta: torch.Tensor, iterations: int = 1
) -> torch.Tensor:
    """GEM's attention on (B, heads, T, d) projections: the mean over z in (v, k, q) of a_z (B, heads, T, d).

    For each z: z <- normalise(z), then ``iterations`` times z <- normalise(softmax(theta z z^T) z), and
    a_z = softmax(theta z z^T) v with the raw values v. ``theta`` (B,) is the inverse temperature per image.
    """
    scale = theta.view(-1, 1, 1, 1, 1)
    z = F.normalize(torch.stack([v, k, q], dim=1), dim=-1, eps=NORM_EPS)  # (B, 3, heads, T, d)
    for _ in range(iterations):
        z = F.normalize(torch.softmax(scale * (z @ z.transpose(-1, -2)), dim=-1) @ z, dim=-1, eps=NORM_EPS)
    attended = torch.softmax(scale * (z @ z.transpose(-1, -2)), dim=-1) @ v[:, None]
    return attended.mean(dim=1)


def _gem_stream_update(block: torch.nn.Module, o: torch.Tensor, iterations: int) -> torch.Tensor:
    """The GEM stream's residual for one block: W_out(self-self attention of ln_1(o)) + b_out."""
    attn = block.attn
    heads = attn.num_heads
    u = block.ln_1(o)
    batch, tokens, width = u.shape
    q, k, v = F.linear(u, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(batch, tokens, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    theta = u.norm(dim=-1).mean(dim=-1) * (width // heads) ** -0.5
    attended = self_self_attention(q, k, v, theta, iterations).transpose(1, 2).reshape(batch, tokens, width)
    return block.ls_1(attn.out_proj(attended))


@torch.no_grad()
def gem_tokens(clip: ClipBundle, pixels: torch.Tensor, *, depth: int = 7, iterations: int = 1) -> torch.Tensor:
    """GEM's patch tokens (P, D), each L2-normalised, of one image ``pixels`` (1, 3, S, S) (SPEC-hybridgl 8).

    Blocks 0 .. L - depth run plainly; each later block carries the ordinary
    stream o (the block itself) and the GEM stream e (its residual is the
    self-self attention of ln_1(o), no MLP); both start as the output of
    block L - depth. Every patch token of e goes through ln_post and proj.
    """
    visual = clip.visual
    if clip.family != "vit" or not hasattr(visual, "transformer"):
        raise InputError(f"GEM needs a ViT image tower; {clip.name} has a {clip.family} tower")
    if pixels.dim() != 4 or pixels.shape[0] != 1:
        raise InputError(f"GEM takes one image as a (1, 3, S, S) tensor, got shape {tuple(pixels.shape)}")
    blocks = visual.transformer.resblocks
    if not 1 <= depth <= len(blocks) + 1:
        raise InputError(f"GEM depth {depth} does not fit {clip.name}'s {len(blocks)} blocks; "
                         f"use 1 to {len(blocks) + 1}")
    if iterations < 0:
        raise InputError(f"GEM iterations must be 0 or more, got {iterations}")
    batch_first = getattr(visual.transformer, "batch_first", True)

    def run(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return block(x) if batch_first else block(x.transpose(0, 1)).transpose(0, 1)

    o = _stem(visual, pixels.to(clip.device, clip.dtype))
    first_gem = len(blocks) - depth + 1
    for block in blocks[:first_gem]:
        o = run(block, o)
    e = o
    for block in blocks[first_gem:]:
        e = e + _gem_stream_update(block, o, iterations)
        o = run(block, o)
    tokens = visual.ln_post(e[0, 1:])
    if visual.proj is not None:
        tokens = tokens @ visual.proj
    return F.normalize(tokens.float(), dim=-1, eps=NORM_EPS)


def gem_heat_map(tokens: torch.Tensor, text_feature: torch.Tensor, size: int = GEM_SIZE) -> torch.Tensor:
    """The (size, size) heat map of a text feature (D,) over GEM's patch tokens (P, D).

    Dot products with the L2-normalised text feature (no scale), arranged on
    the square patch grid row-major, bilinear resize (align_corners false,
    no antialias), then min-max normalised over the map; a constant map gives
    NaN (Q-double-minmax, kept).
    """
    grid = int(round(tokens.shape[0] ** 0.5))
    if grid * grid != tokens.shape[0]:
        raise InputError(f"GEM tokens must form a square patch grid, got {tokens.shape[0]} tokens")
    text = F.normalize(text_feature.to(tokens.device, tokens.dtype), dim=-1, eps=NORM_EPS)
    scores = (tokens @ text).view(1, 1, grid, grid)
    heat = F.interpolate(scores, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    return (heat - heat.min()) / (heat.max() - heat.min())
