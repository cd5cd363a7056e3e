"""HybridGL's visual side against literal, one-proposal-at-a-time computations written from SPEC-hybridgl 3-4."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from globallocal.errors import InputError
from globallocal.methods.hybridgl.visual import blurred, clip_inputs, hybrid_features, masked_block

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


pytestmark = pytest.mark.usefixtures("one_thread")


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


# ---- inputs (section 3) ----

def resize(tensor: torch.Tensor, size: int, antialias: bool = False) -> torch.Tensor:
    return F.interpolate(tensor[None], (size, size), mode="bilinear", align_corners=False, antialias=antialias)[0]


def literal_inputs(rgb8, masks, stats=IMAGENET, fill=CLIP[0], antialias=False):
    """The spec's computation, one full-resolution composite per proposal."""
    blur = cv2.GaussianBlur(rgb8, (15, 15), 0, borderType=cv2.BORDER_REFLECT_101)
    mean, std = (torch.tensor(s).view(3, 1, 1) for s in stats)
    x_in = (torch.from_numpy(rgb8).permute(2, 0, 1).float() / 255 - mean) / std
    fill = torch.tensor(fill).view(3, 1, 1).expand_as(x_in)
    global_inputs, local_inputs, token_masks = [], [], []
    for mask in masks.numpy():
        composite = np.where(mask[:, :, None], rgb8, blur)
        global_image = torch.from_numpy(composite).permute(2, 0, 1).float() / 255
        global_inputs.append((resize(global_image, 224) - mean) / std)
        local_inputs.append(resize(torch.where(torch.from_numpy(mask), x_in, fill), 224))
        token_masks.append(resize(torch.from_numpy(mask).float()[None], 14, antialias).flatten())
    return torch.stack(global_inputs), torch.stack(local_inputs), torch.stack(token_masks)


def point_sampled_row(height: int, width: int) -> int:
    """A row whose one-pixel line the non-antialiased 14 x 14 resize never reads."""
    for row in range(height):
        line = torch.zeros((1, height, width))
        line[0, row] = 1
        if resize(line, 14).sum() == 0:
            return row
    raise AssertionError("every row is read")


@pytest.fixture(params=[(37, 53), (301, 450)], ids=["enlarge", "shrink"])
def photo(request):
    height, width = request.param
    rng = np.random.default_rng(height)
    rgb8 = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    line = np.zeros((height, width), bool)
    line[point_sampled_row(height, width)] = True
    masks = np.stack([
        (yy - height / 2) ** 2 + (xx - width / 3) ** 2 < (height / 3) ** 2,  # a disc
        rng.random((height, width)) < 0.3,  # speckle
        np.zeros((height, width), bool),
        np.ones((height, width), bool),
        line,
    ])
    return rgb8, torch.from_numpy(masks)


@pytest.mark.parametrize("stats, normalization", [(IMAGENET, "imagenet"), (CLIP, "clip")])
def test_clip_inputs_equal_the_literal_composites(photo, stats, normalization):
    rgb8, masks = photo
    expected = literal_inputs(rgb8, masks, stats)
    actual = clip_inputs(Image.fromarray(rgb8), masks, input_normalization=normalization)
    for got, want in zip(actual, expected):
        assert got.shape == want.shape and got.dtype == torch.float32
        assert relative_error(got, want) < 1e-6
    assert torch.equal(actual[2] == 0, expected[2] == 0)  # which patches the class token may see
    assert actual[2][4].sum() == 0  # Q-mask-grid: the thin line vanishes from the token mask
    assert actual[2][3].eq(1).all() and actual[2][2].eq(0).all()


def test_clip_inputs_chunks_and_given_blur(photo):
    rgb8, masks = photo
    image = Image.fromarray(rgb8)
    full = clip_inputs(image, masks)
    for chunk in (range(1, 3), slice(3, None), range(0, 5, 2)):
        part = clip_inputs(image, masks, chunk=chunk, blur=blurred(rgb8))
        picked = range(5)[chunk] if isinstance(chunk, slice) else chunk
        for got, want in zip(part, full):
            assert torch.equal(got, want[list(picked)])


def test_clip_inputs_options(photo):
    rgb8, masks = photo
    image = Image.fromarray(rgb8)
    # "mean" fill: the normalisation's mean, 0 in the normalised tensor; an empty mask leaves nothing else
    _, local, _ = clip_inputs(image, masks, local_fill="mean")
    assert local[2].eq(0).all()
    expected = literal_inputs(rgb8, masks, fill=(0.0, 0.0, 0.0))[1]
    assert relative_error(local, expected) < 1e-6
    # the antialiased token mask reads every pixel, so the thin line is seen
    _, _, token_masks = clip_inputs(image, masks, mask_antialias=True)
    assert relative_error(token_masks, literal_inputs(rgb8, masks, antialias=True)[2]) < 1e-6
    assert token_masks[4].sum() > 0


def test_clip_inputs_refuses_bad_input():
    image = Image.new("RGB", (20, 10))
    with pytest.raises(InputError, match="do not match"):
        clip_inputs(image, torch.zeros((2, 10, 21), dtype=torch.bool))
    with pytest.raises(InputError, match="unknown local fill"):
        clip_inputs(image, torch.zeros((1, 10, 20), dtype=torch.bool), local_fill="black")
    with pytest.raises(InputError, match="unknown input normalization"):
        clip_inputs(image, torch.zeros((1, 10, 20), dtype=torch.bool), input_normalization="none")
    empty = clip_inputs(image, torch.zeros((0, 10, 20), dtype=torch.bool))
    assert [tuple(t.shape) for t in empty] == [(0, 3, 224, 224), (0, 3, 224, 224), (0, 196)]


def test_blur_is_opencv_with_sigma_2_6():
    rgb8 = np.random.default_rng(1).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    expected = cv2.GaussianBlur(rgb8, (15, 15), 2.6, borderType=cv2.BORDER_REFLECT_101)
    assert np.array_equal(blurred(rgb8), expected)
    with pytest.raises(InputError, match="uint8"):
        blurred(rgb8.astype(np.float32))


# ---- masked attention and the hybrid features (section 4), written independently ----

def layer_norm(x, norm):
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def literal_block(block, z, mu=None):
    """B(z; mu) for one proposal's tokens (T, D): explicit heads, -inf logits, QuickGELU written out."""
    attn = block.attn
    heads, width = attn.num_heads, z.shape[-1]
    head_dim = width // heads
    q, k, v = (layer_norm(z, block.ln_1) @ attn.in_proj_weight.T + attn.in_proj_bias).split(width, dim=-1)
    merged = []
    for h in range(heads):
        part = slice(h * head_dim, (h + 1) * head_dim)
        logits = q[:, part] @ k[:, part].T / head_dim**0.5
        if mu is not None:
            logits[0, 1:] = torch.where(mu == 0, float("-inf"), logits[0, 1:])
        merged.append(torch.softmax(logits, dim=-1) @ v[:, part])
    z = z + torch.cat(merged, dim=-1) @ attn.out_proj.weight.T + attn.out_proj.bias
    hidden = layer_norm(z, block.ln_2) @ block.mlp.c_fc.weight.T + block.mlp.c_fc.bias
    hidden = hidden * torch.sigmoid(1.702 * hidden)
    return z + hidden @ block.mlp.c_proj.weight.T + block.mlp.c_proj.bias


def literal_stem(visual, image):
    patches = F.conv2d(image[None], visual.conv1.weight, stride=visual.conv1.stride)[0].flatten(1).T
    tokens = torch.cat([visual.class_embedding[None], patches]) + visual.positional_embedding
    return layer_norm(tokens, visual.ln_pre)


def tm(z, mu):
    return torch.cat([z[:1], z[1:] * mu[:, None]])


def literal_feature(clip, global_image, local_image, mu, mode, first):
    visual = clip.visual
    blocks = visual.transformer.resblocks
    x, g = literal_stem(visual, local_image), literal_stem(visual, global_image)
    for block in blocks[:first]:
        x, g = literal_block(block, x), literal_block(block, g)
    hl, hg = x, g
    for block in blocks[first:]:
        if mode == "G2L":
            x, g = literal_block(block, x + 2 * tm(g, mu)), literal_block(block, g, mu)
        elif mode == "L2G":
            x, g = literal_block(block, x), literal_block(block, x + 2 * g, mu)
        else:
            x, g, hl, hg = (literal_block(block, x), literal_block(block, g, mu),
                            literal_block(block, hl + 2 * tm(g, mu)), literal_block(block, x + 2 * hg, mu))

    def project(z):
        return layer_norm(z[0], visual.ln_post) @ visual.proj

    return {"G2L": lambda: project(x), "L2G": lambda: project(g), "G2L&L2G": lambda: project(hl) + project(hg)}[mode]()


def token_mask_cases(patches: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    fractional = torch.rand(patches, generator=generator)
    fractional[::3] = 0
    return torch.stack([
        torch.ones(patches),
        torch.zeros(patches),
        fractional,
        (torch.rand(patches, generator=generator) < 0.5).float(),
        torch.full((patches,), 0.25),
    ])


@torch.no_grad()
def test_masked_block_restricts_only_the_class_token(tiny_vit12):
    block = tiny_vit12.visual.transformer.resblocks[9]
    x = torch.randn(5, 17, 64, generator=torch.Generator().manual_seed(0))
    masks = token_mask_cases(16)
    # nothing blocked: exactly the plain block
    assert torch.equal(masked_block(block, x, torch.ones(5, 16)), block(x))
    assert torch.equal(masked_block(block, x, None), block(x))
    out = masked_block(block, x, masks)
    for i in range(5):
        assert relative_error(out[i], literal_block(block, x[i], masks[i])) < 1e-5
    plain = block(x)
    assert relative_error(out[:, 1:], plain[:, 1:]) < 1e-6  # other queries see every key
    # the class token's weights on blocked keys are zero: changing those tokens does not move it
    blocked = (masks[2] == 0).nonzero().flatten() + 1
    moved = x.clone()
    moved[2, blocked] += 5 * torch.randn(len(blocked), 64)
    assert torch.allclose(masked_block(block, moved, masks)[2, 0], out[2, 0], rtol=0, atol=1e-6)
    assert not torch.allclose(block(moved)[2, 0], plain[2, 0], atol=1e-3)
    # an all-zero mask: the class token attends only to itself, as if it were alone
    assert relative_error(out[1, 0], block(x[1:2, :1])[0, 0]) < 1e-6


@torch.no_grad()
def test_class_token_attention_weights_vanish_on_blocked_keys(tiny_vit12, monkeypatch):
    """The weights, computed independently of the code, of the class row the block's attention gets."""
    import torch.nn.functional as F

    block = tiny_vit12.visual.transformer.resblocks[10]
    x = torch.randn(1, 17, 64, generator=torch.Generator().manual_seed(1))
    mu = token_mask_cases(16)[2]
    u = block.ln_1(x)
    captured = {}
    original = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        logits = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5 + (0 if attn_mask is None else attn_mask)
        captured["weights"] = torch.softmax(logits, dim=-1)  # (B, heads, queries, keys)
        return original(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    masked_block(block, x, mu[None])
    weights = captured["weights"][0, :, 0]  # (heads, keys) of the class-token query
    assert weights[:, 1:][:, mu == 0].eq(0).all()
    width, head_dim = 64, 32
    q, k, _ = (u[0] @ block.attn.in_proj_weight.T + block.attn.in_proj_bias).split(width, dim=-1)
    for h in range(2):
        logits = q[0, h * head_dim:(h + 1) * head_dim] @ k[:, h * head_dim:(h + 1) * head_dim].T / head_dim**0.5
        keep = torch.cat([torch.tensor([True]), mu != 0])
        expected = torch.zeros(17)
        expected[keep] = torch.softmax(logits[keep], dim=0)
        assert torch.allclose(weights[h], expected, atol=1e-6)


@pytest.mark.parametrize("mode", ["G2L", "L2G", "G2L&L2G"])
@torch.no_grad()
def test_fusion_modes_equal_the_literal_formulas(tiny_vit12, mode):
    generator = torch.Generator().manual_seed(2)
    global_inputs = torch.randn(5, 3, 64, 64, generator=generator)
    local_inputs = torch.randn(5, 3, 64, 64, generator=generator)
    masks = token_mask_cases(16)
    features = hybrid_features(tiny_vit12, global_inputs, local_inputs, masks, fusion_mode=mode, chunk_size=2)
    assert features.shape == (5, 32) and features.dtype == torch.float32
    for i in range(5):
        expected = literal_feature(tiny_vit12, global_inputs[i], local_inputs[i], masks[i], mode, 9)
        assert relative_error(features[i], expected) < 1e-5
    in_one_chunk = hybrid_features(tiny_vit12, global_inputs, local_inputs, masks, fusion_mode=mode, chunk_size=8)
    assert relative_error(in_one_chunk, features) < 1e-6


@torch.no_grad()
def test_masking_block_and_weight_follow_the_settings(tiny_vit):
    generator = torch.Generator().manual_seed(4)
    global_inputs, local_inputs = torch.randn(2, 3, 64, 64, generator=generator), torch.randn(2, 3, 64, 64)
    masks = token_mask_cases(16)[2:4]
    features = hybrid_features(tiny_vit, global_inputs, local_inputs, masks, masking_block=2)
    for i in range(2):
        expected = literal_feature(tiny_vit, global_inputs[i], local_inputs[i], masks[i], "G2L", 2)
        assert relative_error(features[i], expected) < 1e-5
    # masking block = depth: no hybrid block, G2L is CLIP's own feature of the local image
    local_only = hybrid_features(tiny_vit, global_inputs, local_inputs, masks, masking_block=4)
    assert relative_error(local_only, tiny_vit.model.encode_image(local_inputs)) < 1e-5
    # weight 0 in L2G: the global stream restarts from the local one
    unweighted = hybrid_features(tiny_vit, global_inputs, local_inputs, masks, fusion_mode="L2G", hybrid_weight=0.0,
                                  masking_block=2)
    assert not torch.allclose(unweighted, hybrid_features(tiny_vit, global_inputs, local_inputs, masks,
                                                          fusion_mode="L2G", masking_block=2), atol=1e-4)


def test_hybrid_features_refuse_bad_settings(tiny_vit12, tiny_resnet):
    inputs = torch.zeros(1, 3, 64, 64)
    masks = torch.ones(1, 16)
    with pytest.raises(InputError, match="masking block 13 is outside"):
        hybrid_features(tiny_vit12, inputs, inputs, masks, masking_block=13)
    with pytest.raises(InputError, match="masking block -1"):
        hybrid_features(tiny_vit12, inputs, inputs, masks, masking_block=-1)
    with pytest.raises(InputError, match="unknown fusion mode 'L2L'"):
        hybrid_features(tiny_vit12, inputs, inputs, masks, fusion_mode="L2L")
    with pytest.raises(InputError, match="needs a ViT"):
        hybrid_features(tiny_resnet, inputs, inputs, masks)
    with pytest.raises(InputError, match="token masks have 196 values"):
        hybrid_features(tiny_vit12, inputs, inputs, torch.ones(1, 196))
    assert hybrid_features(tiny_vit12, inputs[:0], inputs[:0], masks[:0]).shape == (0, 32)
