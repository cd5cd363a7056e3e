"""GEM (SPEC-hybridgl section 8) against loop implementations written in the test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from globallocal.errors import InputError
from globallocal.methods.hybridgl.gem import (
    gem_heat_map,
    gem_input,
    gem_tokens,
    resized_positional_embedding,
    self_self_attention,
)

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


pytestmark = pytest.mark.usefixtures("one_thread")


def unit(vector: torch.Tensor) -> torch.Tensor:
    return vector / max(float(vector.norm()), 1e-12)


def loop_self_self(q, k, v, theta, iterations=1):
    """One head, token by token: (T, d) projections -> mean over z in (v, k, q) of a_z (T, d)."""
    tokens = q.shape[0]
    outputs = []
    for z in (v, k, q):
        z = torch.stack([unit(z[t]) for t in range(tokens)])
        for _ in range(iterations):
            z = torch.stack([unit(torch.softmax(theta * (z @ z[t]), dim=0) @ z) for t in range(tokens)])
        outputs.append(torch.stack([torch.softmax(theta * (z @ z[t]), dim=0) @ v for t in range(tokens)]))
    return sum(outputs) / 3


@pytest.mark.parametrize("iterations", [1, 2])
def test_self_self_attention_equals_the_loop(iterations):
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 9, 8, generator=generator) for _ in range(3))
    theta = torch.tensor([1.7])
    out = self_self_attention(q, k, v, theta, iterations)
    assert out.shape == (1, 2, 9, 8)
    for head in range(2):
        expected = loop_self_self(q[0, head], k[0, head], v[0, head], 1.7, iterations)
        assert torch.allclose(out[0, head], expected, rtol=1e-5, atol=1e-6)


def layer_norm(x, norm):
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def literal_gem(clip, pixels, depth=7):
    """The spec's visual path for one image, the GEM stream with the per-token loop."""
    visual = clip.visual
    blocks = visual.transformer.resblocks
    patches = F.conv2d(pixels, visual.conv1.weight, stride=visual.conv1.stride)[0]
    grid, width = patches.shape[-1], patches.shape[0]
    old = int((visual.positional_embedding.shape[0] - 1) ** 0.5)
    grid_part = visual.positional_embedding[1:].T.reshape(1, width, old, old)
    grid_part = F.interpolate(grid_part, (grid, grid), mode="bicubic", align_corners=False, antialias=True)
    positions = torch.cat([visual.positional_embedding[:1], grid_part[0].flatten(1).T])
    tokens = torch.cat([visual.class_embedding[None], patches.flatten(1).T]) + positions
    o = layer_norm(tokens, visual.ln_pre)[None]
    first = len(blocks) - depth + 1
    for block in blocks[:first]:
        o = block(o)
    e = o
    for block in blocks[first:]:
        attn = block.attn
        heads = attn.num_heads
        head_dim = width // heads
        u = layer_norm(o[0], block.ln_1)
        theta = float(u.norm(dim=-1).mean()) / head_dim**0.5
        q, k, v = (u @ attn.in_proj_weight.T + attn.in_proj_bias).split(width, dim=-1)
        parts = [slice(h * head_dim, (h + 1) * head_dim) for h in range(heads)]
        merged = torch.cat([loop_self_self(q[:, p], k[:, p], v[:, p], theta) for p in parts], dim=-1)
        e = e + (merged @ attn.out_proj.weight.T + attn.out_proj.bias)[None]
        o = block(o)
    projected = layer_norm(e[0, 1:], visual.ln_post) @ visual.proj
    return torch.stack([unit(row) for row in projected])


@torch.no_grad()
def test_gem_tokens_equal_the_literal_path(tiny_vit12):
    pixels = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(1))  # 6 x 6 patches from a 4 x 4 grid
    tokens = gem_tokens(tiny_vit12, pixels)
    assert tokens.shape == (36, 32) and tokens.dtype == torch.float32
    expected = literal_gem(tiny_vit12, pixels)
    assert torch.allclose(tokens, expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(tokens.norm(dim=-1), torch.ones(36))
    assert not torch.allclose(tokens, gem_tokens(tiny_vit12, pixels, depth=3), atol=1e-3)


@torch.no_grad()
def test_gem_depth_one_is_clips_own_tokens(tiny_vit):
    """No GEM block and no resize: the model's own projected patch tokens, normalised."""
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    visual = tiny_vit.visual
    own = visual.ln_post(visual.transformer(visual._embeds(pixels)))[0, 1:] @ visual.proj
    assert torch.allclose(gem_tokens(tiny_vit, pixels, depth=1), F.normalize(own, dim=-1), atol=1e-6)


def test_positional_embedding_resize_is_antialiased_bicubic():
    generator = torch.Generator().manual_seed(3)
    embedding = torch.randn(1 + 14 * 14, 8, generator=generator)
    resized = resized_positional_embedding(embedding, 28)
    assert resized.shape == (1 + 28 * 28, 8)
    assert torch.equal(resized[0], embedding[0])  # the class row is kept
    grid = embedding[1:].T.reshape(1, 8, 14, 14)
    plain = F.interpolate(grid, (28, 28), mode="bicubic", align_corners=False)[0].flatten(1).T
    smooth = F.interpolate(grid, (28, 28), mode="bicubic", align_corners=False, antialias=True)[0].flatten(1).T
    assert torch.equal(resized[1:], smooth)
    assert (resized[1:] - plain).abs().max() > 1e-3  # antialias changes the numbers even when enlarging
    assert resized_positional_embedding(embedding, 14) is embedding


def test_heat_map_is_min_max_normalised():
    generator = torch.Generator().manual_seed(4)
    tokens = F.normalize(torch.randn(16, 8, generator=generator), dim=-1)
    text = torch.randn(8, generator=generator) * 7  # raw text feature: normalised inside
    heat = gem_heat_map(tokens, text, size=32)
    assert heat.shape == (32, 32)
    assert heat.min() == 0 and heat.max() == 1
    scores = (tokens @ (text / text.norm())).view(1, 1, 4, 4)
    expected = F.interpolate(scores, (32, 32), mode="bilinear", align_corners=False)[0, 0]
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    assert torch.allclose(heat, expected, atol=1e-6)
    # the grid is row-major: a token on row 0, column 3 lights the top-right corner
    peak = torch.zeros(16, 8)
    peak[3, 0] = 1
    assert gem_heat_map(peak, torch.eye(8)[0], size=32)[0, -1] == 1


def test_constant_heat_map_is_nan():
    """Q-double-minmax: no guard, 0 / 0.

    At the grid's own size the resize copies the map, so it stays exactly constant (an enlarged constant map
    can differ from itself in the last bit, depending on the kernel torch picks).
    """
    tokens = torch.ones(16, 8) / 8**0.5
    assert gem_heat_map(tokens, torch.randn(8), size=4).isnan().all()


def test_gem_input_is_bicubic_square_with_clip_statistics():
    rgb8 = np.random.default_rng(5).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    image = Image.fromarray(rgb8)
    pixels = gem_input(image, size=20)
    assert pixels.shape == (1, 3, 20, 20)
    square = np.asarray(image.resize((20, 20), Image.BICUBIC), dtype=np.float32) / 255
    expected = (square - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    assert np.allclose(pixels[0].permute(1, 2, 0).numpy(), expected, atol=1e-6)
    assert gem_input(image).shape == (1, 3, 448, 448)


def test_gem_refuses_bad_input(tiny_vit12, tiny_resnet):
    pixels = torch.zeros(1, 3, 64, 64)
    with pytest.raises(InputError, match="GEM depth 14 does not fit"):
        gem_tokens(tiny_vit12, pixels, depth=14)
    with pytest.raises(InputError, match="GEM depth 0"):
        gem_tokens(tiny_vit12, pixels, depth=0)
    with pytest.raises(InputError, match="needs a ViT"):
        gem_tokens(tiny_resnet, pixels)
    with pytest.raises(InputError, match=r"one image as a \(1, 3, S, S\)"):
        gem_tokens(tiny_vit12, torch.zeros(2, 3, 64, 64))
    with pytest.raises(InputError, match="square patch grid"):
        gem_heat_map(torch.zeros(15, 8), torch.ones(8))
