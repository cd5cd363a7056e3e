"""The last block on the class-token row only: the same features as the plain passes, to float rounding."""

from __future__ import annotations

import torch

from globallocal.methods.global_local.visual import local_features, vit_global_features
from globallocal.models.attention import class_token_block
from globallocal.models.vit import run_blocks, soft_masks, vit_image_features


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@torch.no_grad()
def test_class_token_block_is_the_class_row_of_the_block(tiny_vit12):
    block = tiny_vit12.visual.transformer.resblocks[11]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 17, 64, generator=generator)
    out = class_token_block(block, x)
    assert out.shape == (3, 1, 64)
    assert _relative(out, block(x)[:, :1]) < 1e-6
    # An additive mask: only its class-token row matters (here it blocks half the keys of the class query).
    mask = torch.zeros(3 * block.attn.num_heads, 17, 17)
    mask[:, 0, 1:9] = float("-inf")
    mask[:, 5, 2] = float("-inf")  # another query's row: no effect on the class token
    plain = block(x, attn_mask=mask)[:, :1]
    assert _relative(class_token_block(block, x, mask), plain) < 1e-6
    assert _relative(class_token_block(block, x, mask[:, :1]), plain) < 1e-6
    assert _relative(plain, out) > 1e-3  # the mask did change the class token


@torch.no_grad()
def test_image_features_equal_open_clips_encode_image(tiny_vit):
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    assert _relative(vit_image_features(tiny_vit, images), tiny_vit.model.encode_image(images)) < 1e-6


@torch.no_grad()
def test_masked_global_features_equal_the_plain_masked_blocks(tiny_vit):
    """SPEC 3 written plainly: every block whole, each mask on its own, then CLIP's pool and projection."""
    visual = tiny_vit.visual
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    masks = torch.zeros(3, 40, 48, dtype=torch.bool)
    masks[0, :20, :30] = True
    masks[1, 10:, 20:] = True
    masks[2] = True
    blocks = visual.transformer.resblocks
    for k in (1, 2, 4):
        got = vit_global_features(tiny_vit, image, masks, masked_blocks=k, chunk_size=2)
        weights = soft_masks(masks, 4).flatten(1)
        for i in range(3):
            x = run_blocks(tiny_vit, blocks[: 4 - k], visual._embeds(image))
            for block in blocks[4 - k:]:
                x = block(torch.cat([x[:, :1], x[:, 1:] * weights[i, :, None]], dim=1))
            expected = visual._pool(x)[0] @ visual.proj
            assert _relative(got[i], expected[0]) < 1e-5, (k, i)


@torch.no_grad()
def test_local_features_equal_encode_image_of_the_crops(tiny_vit):
    image = torch.randn(3, 40, 48, generator=torch.Generator().manual_seed(3))
    masks = torch.zeros(2, 40, 48, dtype=torch.bool)
    masks[0, 5:30, 4:20] = True
    masks[1, 20:, 30:] = True
    windows = [(4, 5, 20, 30), (30, 20, 48, 40)]
    fill = torch.tensor([0.1, -0.2, 0.3])
    got = local_features(tiny_vit, image, masks, windows, fill)
    crops = []
    for mask, (x0, y0, x1, y1) in zip(masks, windows):
        masked = torch.where(mask, image, fill.view(3, 1, 1))[:, y0:y1, x0:x1]
        crops.append(torch.nn.functional.interpolate(masked[None], size=(64, 64), mode="bilinear")[0])
    assert _relative(got, tiny_vit.model.encode_image(torch.stack(crops))) < 1e-6
