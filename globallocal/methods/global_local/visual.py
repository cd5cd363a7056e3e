"""Visual side: global-context and local-context features of each mask (SPEC 3, 4).

All functions take an already normalised image tensor; they do not decide
normalisation or blending (see :mod:`globallocal.segmenter`).
"""

from __future__ import annotations

import torch

from ...errors import InputError
from ...models.clip import ClipBundle
from ...models.vit import (
    class_token_block,
    pooled_class_token,
    resize,
    run_blocks,
    soft_masks,
    vit_blocks,
    vit_image_features,
)


def resnet_feature_map(clip: ClipBundle, image: torch.Tensor) -> torch.Tensor:
    """Output of layer4 of a ModifiedResNet for a (1, 3, S, S) image."""
    visual = clip.visual
    x = visual.stem(image.to(clip.dtype))
    x = visual.layer1(x)
    x = visual.layer2(x)
    x = visual.layer3(x)
    return visual.layer4(x)


def resnet_global_features(
    clip: ClipBundle, image: torch.Tensor, masks: torch.Tensor, chunk_size: int = 256, antialias: bool = False
) -> torch.Tensor:
    """Masked attention pooling (SPEC 3, ResNet): (N, D) features, not normalised.

    The layer4 map is L2-normalised over channels, multiplied by each soft
    mask, and pooled by CLIP's own attention pool unchanged: its query is the
    mean over all positions, zeros included. Computed by
    :func:`masked_attention_pool`, which gives the same numbers as running
    the pool on every masked map, at a fraction of the cost.
    """
    return resnet_masked_features(clip, resnet_trunk(clip, image), masks, chunk_size, antialias)


def resnet_trunk(clip: ClipBundle, image: torch.Tensor) -> torch.Tensor:
    """The part of :func:`resnet_global_features` no mask changes: the layer4 map, L2-normalised over channels."""
    feature_map = resnet_feature_map(clip, image)
    return feature_map / feature_map.norm(dim=1, keepdim=True)


def resnet_masked_features(
    clip: ClipBundle, feature_map: torch.Tensor, masks: torch.Tensor, chunk_size: int = 256, antialias: bool = False
) -> torch.Tensor:
    """The masks' pooled features (N, D) from :func:`resnet_trunk`'s map; each row depends on its mask alone."""
    grid = feature_map.shape[-1]
    weights = soft_masks(masks, grid, antialias).to(feature_map.device, feature_map.dtype)
    outputs = [
        masked_attention_pool(clip.visual.attnpool, feature_map[0], chunk.flatten(1))
        for chunk in weights.split(chunk_size)
    ]
    return torch.cat(outputs).float() if outputs else _empty(clip)


def masked_attention_pool(pool: torch.nn.Module, feature_map: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """CLIP's AttentionPool2d applied to ``feature_map * mask`` for many masks at once.

    ``feature_map`` is (C, H, W), ``weights`` (N, H*W) the soft masks. The
    pool's tokens are x_t = m(t) F_t + p_t (and the mean token), and its
    projections are linear, so W x_t = m(t) (W F_t) + W p_t: the C x C
    projections run once on the 49 positions instead of once per mask, and
    only the mean token's query and output are formed (the pool returns that
    token alone). Same arithmetic as the pool up to float rounding.
    """
    channels = feature_map.shape[0]
    positions = feature_map.flatten(1).T  # (HW, C)
    count = positions.shape[0]
    heads = pool.num_heads
    head_dim = channels // heads
    n = weights.shape[0]

    def projected(linear: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        of_features = positions @ linear.weight.T  # (HW, C'): W F_t
        of_positions = pool.positional_embedding @ linear.weight.T + linear.bias  # (HW+1, C'): W p_t + b
        mean_token = weights @ of_features / count + of_positions[0]  # (N, C')
        return of_features, of_positions, mean_token

    _, _, query = projected(pool.q_proj)
    key_features, key_positions, key_mean = projected(pool.k_proj)
    value_features, value_positions, value_mean = projected(pool.v_proj)
    keys = torch.cat([key_mean[:, None], weights[:, :, None] * key_features + key_positions[1:]], dim=1)
    values = torch.cat([value_mean[:, None], weights[:, :, None] * value_features + value_positions[1:]], dim=1)
    query = query.view(n, heads, 1, head_dim)
    keys = keys.view(n, count + 1, heads, head_dim).transpose(1, 2)
    values = values.view(n, count + 1, heads, head_dim).transpose(1, 2)
    attention = torch.softmax(query @ keys.transpose(-1, -2) / head_dim**0.5, dim=-1)  # (N, heads, 1, HW+1)
    pooled = (attention @ values).reshape(n, channels)
    return pool.c_proj(pooled)


def vit_global_features(
    clip: ClipBundle,
    image: torch.Tensor,
    masks: torch.Tensor,
    masked_blocks: int = 3,
    chunk_size: int = 256,
    antialias: bool = False,
) -> torch.Tensor:
    """Masked tokens in the last k blocks (SPEC 3, ViT): (N, D) features, not normalised.

    The stem and the first L-k blocks run once (:func:`vit_trunk`); before
    each of the last k blocks every patch token is multiplied by its soft
    mask value (the class token is left alone), with no attention mask
    (:func:`vit_masked_features`). With k = 0 every mask gets CLIP's own
    image feature.
    """
    tokens = vit_trunk(clip, image, masked_blocks)
    return vit_masked_features(clip, tokens, masks, masked_blocks, chunk_size, antialias)


def vit_trunk(clip: ClipBundle, image: torch.Tensor, masked_blocks: int) -> torch.Tensor:
    """The tokens (1, 1 + g*g, width) after the stem and the first L-k blocks, which no mask changes."""
    blocks = vit_blocks(clip)
    if not 0 <= masked_blocks <= len(blocks):
        raise InputError(f"masked blocks k={masked_blocks} must be between 0 and {len(blocks)} for {clip.name}")
    tokens = clip.visual._embeds(image.to(clip.dtype))  # after ln_pre
    return run_blocks(clip, blocks[: len(blocks) - masked_blocks], tokens)


def vit_masked_features(
    clip: ClipBundle,
    tokens: torch.Tensor,
    masks: torch.Tensor,
    masked_blocks: int,
    chunk_size: int = 256,
    antialias: bool = False,
) -> torch.Tensor:
    """The masks' features (N, D) from :func:`vit_trunk`'s tokens: the last k blocks per mask, each row
    depending on its mask alone."""
    blocks = vit_blocks(clip)
    grid = int(round((tokens.shape[1] - 1) ** 0.5))
    weights = soft_masks(masks, grid, antialias).flatten(1).to(tokens.device, tokens.dtype)
    if masked_blocks == 0:
        return pooled_class_token(clip, tokens[:, :1]).float().expand(len(masks), -1).clone()
    outputs = []
    for chunk in weights.split(chunk_size):
        x = tokens.expand(chunk.shape[0], -1, -1)
        for block in blocks[len(blocks) - masked_blocks : -1]:
            x = run_blocks(clip, [block], _masked_tokens(x, chunk))
        outputs.append(pooled_class_token(clip, class_token_block(blocks[-1], _masked_tokens(x, chunk))))
    return torch.cat(outputs).float() if outputs else _empty(clip)


def _masked_tokens(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The class token unchanged, each patch token times its soft mask value."""
    return torch.cat([x[:, :1], x[:, 1:] * weights[:, :, None]], dim=1)


def _empty(clip: ClipBundle) -> torch.Tensor:
    return torch.zeros((0, clip.model.text_projection.shape[-1]), device=clip.device)


def crop_boxes(boxes: torch.Tensor, height: int, width: int) -> list[tuple[int, int, int, int]]:
    """Integer crop windows (x0, y0, x1, y1) from float boxes, as the reference crops.

    Coordinates are truncated toward zero (``int()``), as the reference does.
    The reference would crash on an empty window (a one-pixel mask in the
    first row or column truncates to zero width); such windows grow to one
    pixel instead. Windows are clamped to the image.
    """
    windows = []
    for x0, y0, x1, y1 in boxes.tolist():
        x0, y0, x1, y1 = int(x0), int(y0), int(x1), int(y1)
        x0, y0 = min(max(x0, 0), width - 1), min(max(y0, 0), height - 1)
        x1, y1 = min(max(x1, x0 + 1), width), min(max(y1, y0 + 1), height)
        windows.append((x0, y0, x1, y1))
    return windows


def local_crops(
    image: torch.Tensor,
    masks: torch.Tensor,
    windows: list[tuple[int, int, int, int]],
    fill: torch.Tensor,
    size: int,
    antialias: bool = False,
) -> torch.Tensor:
    """Masked crops (N, 3, size, size) of a (3, H, W) image (SPEC 4).

    Pixels outside the mask take the value ``fill`` (3,) of the normalised
    tensor; each window is cut out and resized to size x size. Cropping first
    and masking the crop gives the same pixels as masking the whole image,
    without materialising N full-size images.
    """
    fill = fill.to(image.device, image.dtype).view(3, 1, 1)
    crops = []
    for mask, (x0, y0, x1, y1) in zip(masks, windows):
        region = image[:, y0:y1, x0:x1]
        inside = mask[y0:y1, x0:x1].to(image.device)
        crops.append(resize(torch.where(inside, region, fill), (size, size), antialias))
    if not crops:
        return image.new_zeros((0, 3, size, size))
    return torch.stack(crops)


def local_features(
    clip: ClipBundle,
    image: torch.Tensor,
    masks: torch.Tensor,
    windows: list[tuple[int, int, int, int]],
    fill: torch.Tensor,
    chunk_size: int = 32,
    antialias: bool = False,
) -> torch.Tensor:
    """CLIP image features (N, D) of the masked crops, encoded ``chunk_size`` at a time."""
    outputs = []
    for start in range(0, len(windows), chunk_size):
        stop = start + chunk_size
        crops = local_crops(image, masks[start:stop], windows[start:stop], fill, clip.image_size, antialias)
        crops = crops.to(clip.device, clip.dtype)
        encoded = vit_image_features(clip, crops) if clip.family == "vit" else clip.model.encode_image(crops)
        outputs.append(encoded.float())
    return torch.cat(outputs) if outputs else _empty(clip)
