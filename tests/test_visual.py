"""Global and local visual features against independent computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from globallocal.methods.global_local.visual import (
    crop_boxes,
    local_crops,
    local_features,
    resnet_global_features,
    vit_global_features,
)
from globallocal.models.vit import soft_masks
from globallocal.proposals import Proposals, projection_boxes


def _image(clip, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, clip.image_size, clip.image_size, generator=generator)


def test_vit_all_ones_mask_equals_clip_image_feature(tiny_vit):
    image = _image(tiny_vit)
    masks = torch.ones(2, 48, 80, dtype=torch.bool)
    with torch.inference_mode():
        expected = tiny_vit.model.encode_image(image)
        got = vit_global_features(tiny_vit, image, masks, masked_blocks=3)
    assert got.shape == (2, 32)
    torch.testing.assert_close(got, expected.expand(2, -1), rtol=1e-5, atol=1e-5)


def test_vit_zero_masked_blocks_ignores_the_mask(tiny_vit):
    image = _image(tiny_vit, seed=1)
    masks = torch.zeros(3, 40, 40, dtype=torch.bool)
    masks[1, :20] = True
    with torch.inference_mode():
        expected = tiny_vit.model.encode_image(image)
        got = vit_global_features(tiny_vit, image, masks, masked_blocks=0)
    torch.testing.assert_close(got, expected.expand(3, -1), rtol=1e-5, atol=1e-5)


def test_vit_masking_changes_the_feature(tiny_vit):
    image = _image(tiny_vit, seed=2)
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, :32, :32] = True
    masks[1, 32:, 32:] = True
    with torch.inference_mode():
        got = vit_global_features(tiny_vit, image, masks, masked_blocks=2)
    assert not torch.allclose(got[0], got[1], atol=1e-4)


def test_vit_masked_blocks_out_of_range(tiny_vit):
    from globallocal.errors import InputError

    with pytest.raises(InputError, match="between 0 and 4"):
        vit_global_features(tiny_vit, _image(tiny_vit), torch.ones(1, 8, 8, dtype=torch.bool), masked_blocks=5)


def _hand_attention_pool(pool, feature_map):
    """CLIP's attention pool written out: mean query, positional embedding, softmax attention."""
    n, c, h, w = feature_map.shape
    tokens = feature_map.flatten(2).transpose(1, 2)  # (N, HW, C)
    tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1) + pool.positional_embedding
    heads = pool.num_heads
    head_dim = c // heads
    q = pool.q_proj(tokens[:, :1]).view(n, 1, heads, head_dim).transpose(1, 2)
    k = pool.k_proj(tokens).view(n, -1, heads, head_dim).transpose(1, 2)
    v = pool.v_proj(tokens).view(n, -1, heads, head_dim).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(n, c)
    return pool.c_proj(out)


def _layer4(clip, image):
    captured = {}
    handle = clip.visual.layer4.register_forward_hook(lambda module, args, out: captured.update(out=out))
    clip.model.encode_image(image)
    handle.remove()
    return captured["out"]


@torch.inference_mode()
def test_resnet_all_ones_mask_equals_hand_attention_pool(tiny_resnet):
    image = _image(tiny_resnet, seed=3)
    feature_map = _layer4(tiny_resnet, image)
    normalised = feature_map / feature_map.norm(dim=1, keepdim=True)
    expected = _hand_attention_pool(tiny_resnet.visual.attnpool, normalised)
    got = resnet_global_features(tiny_resnet, image, torch.ones(2, 30, 50, dtype=torch.bool))
    torch.testing.assert_close(got, expected.expand(2, -1), rtol=1e-4, atol=1e-5)


@torch.inference_mode()
def test_resnet_partial_mask_equals_hand_attention_pool(tiny_resnet):
    image = _image(tiny_resnet, seed=4)
    normalised = F.normalize(_layer4(tiny_resnet, image), dim=1)
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, :, :32] = True  # the left half: on a 2x2 grid, bilinear gives exactly [[1, 0], [1, 0]]
    weights = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    expected = _hand_attention_pool(tiny_resnet.visual.attnpool, normalised * weights)
    got = resnet_global_features(tiny_resnet, image, masks)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_soft_masks_are_bilinear_without_antialias():
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, :, :3] = True  # columns 0..2
    # Without antialias, output column 0 of a 2-wide grid samples x = 1.5: halfway between columns 1 and 2.
    # Output column 1 samples x = 5.5: columns 5 and 6, both outside.
    assert soft_masks(mask, 2).tolist() == [[[1.0, 0.0], [1.0, 0.0]]]
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, :, 2] = True
    assert soft_masks(mask, 2).tolist() == [[[0.5, 0.0], [0.5, 0.0]]]


def test_projection_boxes_follow_spec():
    masks = torch.zeros(2, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:7] = True  # a solid block: columns 3..6, rows 2..4
    masks[1, 4, 1] = True  # columns 1 and 9, row 4 (a mask with a gap)
    masks[1, 4, 9] = True
    boxes = projection_boxes(masks)
    # Solid block: w = 4, cx = 4.5; h = 3, cy = 3.
    assert boxes[0].tolist() == [2.5, 1.5, 6.5, 4.5]
    # Gap: w = 2 columns, cx = 5; h = 1, cy = 4. Not the min/max box (1..9).
    assert boxes[1].tolist() == [4.0, 3.5, 6.0, 4.5]


def test_crop_windows_truncate_like_the_reference():
    boxes = torch.tensor([[2.5, 1.5, 6.5, 4.5], [-0.5, -0.5, 0.5, 0.5], [4.0, 3.5, 6.0, 4.5]])
    # int() truncates toward zero; the empty window of a one-pixel mask at (0, 0) grows to one pixel.
    assert crop_boxes(boxes, 10, 12) == [(2, 1, 6, 4), (0, 0, 1, 1), (4, 3, 6, 4)]


def test_local_crop_is_the_masked_image_cropped_and_resized():
    generator = torch.Generator().manual_seed(5)
    image = torch.randn(3, 20, 30, generator=generator)
    masks = torch.zeros(1, 20, 30, dtype=torch.bool)
    masks[0, 4:15, 6:20] = True
    masks[0, 8, 6:10] = False
    fill = torch.tensor([0.485, 0.456, 0.406])
    windows = crop_boxes(projection_boxes(masks), 20, 30)
    got = local_crops(image, masks, windows, fill, 16)
    # The reference's order: mask the whole image, then crop the window, then resize.
    masked = image * masks[0] + (~masks[0]) * fill.view(3, 1, 1)
    x0, y0, x1, y1 = windows[0]
    expected = F.interpolate(masked[None, :, y0:y1, x0:x1], size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, expected)


@torch.inference_mode()
def test_local_feature_ignores_pixels_outside_the_mask(tiny_clip):
    generator = torch.Generator().manual_seed(6)
    image = torch.randn(3, 48, 64, generator=generator)
    masks = torch.zeros(2, 48, 64, dtype=torch.bool)
    masks[0, 10:30, 5:25] = True
    masks[1, 20:40, 30:60] = True
    proposals = Proposals.from_masks(masks)
    windows = crop_boxes(proposals.boxes, 48, 64)
    fill = torch.tensor([0.485, 0.456, 0.406])
    before = local_features(tiny_clip, image, masks, windows, fill)
    changed = image.clone()
    changed[:, ~masks[0]] = torch.randn(3, int((~masks[0]).sum()), generator=generator)
    after = local_features(tiny_clip, changed, masks, windows, fill)
    torch.testing.assert_close(after[0], before[0])
    assert not torch.allclose(after[1], before[1])  # mask 1 sees pixels that mask 0 does not cover


@torch.inference_mode()
def test_local_features_chunked_equal_unchunked(tiny_clip):
    generator = torch.Generator().manual_seed(7)
    image = torch.randn(3, 40, 40, generator=generator)
    masks = torch.rand(5, 40, 40, generator=generator) > 0.5
    windows = crop_boxes(projection_boxes(masks), 40, 40)
    fill = torch.zeros(3)
    whole = local_features(tiny_clip, image, masks, windows, fill, chunk_size=5)
    chunked = local_features(tiny_clip, image, masks, windows, fill, chunk_size=2)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_global_features_chunked_equal_unchunked(tiny_clip):
    image = _image(tiny_clip, seed=8)
    generator = torch.Generator().manual_seed(8)
    masks = torch.rand(7, 50, 70, generator=generator) > 0.6
    function = resnet_global_features if tiny_clip.family == "resnet" else vit_global_features
    whole = function(tiny_clip, image, masks, chunk_size=7)
    chunked = function(tiny_clip, image, masks, chunk_size=3)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)


@torch.inference_mode()
def test_masked_attention_pool_equals_clips_pool_on_masked_maps(tiny_resnet):
    from globallocal.methods.global_local.visual import masked_attention_pool

    generator = torch.Generator().manual_seed(9)
    pool = tiny_resnet.visual.attnpool
    channels = pool.k_proj.in_features
    feature_map = F.normalize(torch.randn(1, channels, 2, 2, generator=generator), dim=1)
    weights = torch.rand(6, 4, generator=generator)
    weights[0] = 1.0
    weights[1] = 0.0
    expected = pool(feature_map * weights.view(6, 1, 2, 2))  # open_clip's own pool, one masked map each
    got = masked_attention_pool(pool, feature_map[0], weights)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
