"""TCL's inference pieces against hand-computed values and slow independent routes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU, ResidualAttentionBlock
from PIL import Image

from globallocal.methods.tcl import TCLHead, TCLModel, layout, pamr_affinity, pamr_refine, patch_padding, slide_windows
from globallocal.methods.tcl.inputs import eval_size, resized_size, tcl_input
from globallocal.methods.tcl.network import self_only_attention, self_only_block
from globallocal.methods.tcl.pamr import pamr_offsets
from globallocal.methods.tcl.windows import Padding, Window

# -- the self-only last block ----------------------------------------------------------------


def test_self_only_attention_is_the_diagonal_masked_attention():
    torch.manual_seed(0)
    block = ResidualAttentionBlock(64, 4, act_layer=QuickGELU).eval()
    x = torch.randn(2, 10, 64)
    diagonal = torch.full((10, 10), float("-inf")).fill_diagonal_(0.0)
    with torch.no_grad():
        normed = block.ln_1(x)
        masked = block.attention(normed, attn_mask=diagonal)
        value = normed @ block.attn.in_proj_weight[128:].T + block.attn.in_proj_bias[128:]
        by_hand = block.attn.out_proj(value)
        assert torch.allclose(self_only_attention(block, normed), by_hand, atol=1e-6)
        assert torch.allclose(masked, by_hand, atol=1e-5)
        assert torch.allclose(self_only_block(block, x), block(x, attn_mask=diagonal), atol=1e-5)


# -- input sizes, windows and padding (values by hand) ---------------------------------------


def test_eval_and_demo_sizes():
    assert eval_size(480, 640) == (448, 597)  # 640 x 480 -> 597 x 448
    assert eval_size(640, 427) == (671, 448)  # 427 x 640 (portrait) -> 448 x 671
    assert eval_size(100, 3000) == (68, 2048)  # the long side is capped at 2048
    assert eval_size(30, 40) == (448, 597)  # small photos are enlarged
    assert resized_size("demo", 480, 640) == (224, 298)


def test_slide_windows_640x480():
    assert slide_windows(448, 597) == [Window(0, 0, 448, 448), Window(0, 149, 448, 448)]


def test_slide_windows_427x640():
    assert slide_windows(671, 448) == [Window(0, 0, 448, 448), Window(223, 0, 448, 448)]


def test_slide_windows_smaller_than_a_window():
    assert slide_windows(300, 200) == [Window(0, 0, 300, 200)]
    # 100 x 3000 photo: 68 rows (one window row, the whole side), nine columns, the last pushed back
    windows = slide_windows(68, 2048)
    assert [w.left for w in windows] == [0, 224, 448, 672, 896, 1120, 1344, 1568, 1600]
    assert {(w.top, w.height, w.width) for w in windows} == {(0, 68, 448)}


def test_padding_offsets():
    assert patch_padding(448, 448) == Padding(0, 0, 0, 0)
    assert patch_padding(448, 597) == Padding(0, 0, 5, 6)  # whole 640 x 480: 11 columns, 5 left
    assert patch_padding(224, 298) == Padding(0, 0, 3, 3)  # demo 640 x 480
    assert patch_padding(68, 448) == Padding(6, 6, 0, 0)
    plan = layout(480, 640, "whole", "eval")
    assert plan.padded == (448, 608) and plan.grid == (28, 38) and plan.mask_size == (112, 152)


def test_eval_input_is_opencv_bilinear_then_imagenet_normalised():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    tensor = tcl_input(Image.fromarray(array), "eval")
    resized = cv2.resize(array, (597, 448), interpolation=cv2.INTER_LINEAR).astype(np.float64)
    expected = (resized - [123.675, 116.28, 103.53]) / [58.395, 57.12, 57.375]
    assert tensor.shape == (3, 448, 597)
    assert np.allclose(tensor.permute(1, 2, 0).numpy(), expected, atol=1e-5)
    # the float route differs by at most one grey level
    floated = tcl_input(Image.fromarray(array), "eval-float")
    assert float((floated - tensor).abs().max()) <= 1 / 57.12 + 1e-6


# -- PAMR against a per-pixel loop -------------------------------------------------------------


def slow_pamr(guide: np.ndarray, masks: np.ndarray, iterations: int = 10) -> np.ndarray:
    """SPEC-tcl section 6 pixel by pixel, in float64."""
    channels, height, width = guide.shape
    offsets = [(dy, dx) for d in (1, 2, 4, 8, 12, 24) for dy in (-d, 0, d) for dx in (-d, 0, d) if dy or dx]

    def at(image, y, x):
        return image[..., min(max(y, 0), height - 1), min(max(x, 0), width - 1)]

    weights = np.zeros((len(offsets), height, width))
    for y in range(height):
        for x in range(width):
            logits = np.zeros(len(offsets))
            for c in range(channels):
                samples = [at(guide[c], y + dy, x + dx) for d in (1, 2, 4, 8, 12, 24)
                           for dy in (-d, 0, d) for dx in (-d, 0, d)]
                sigma = np.std(samples, ddof=1)
                for k, (dy, dx) in enumerate(offsets):
                    logits[k] -= abs(guide[c, y, x] - at(guide[c], y + dy, x + dx)) / (1e-8 + 0.1 * sigma) / 3
            weights[:, y, x] = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    for _ in range(iterations):
        refined = np.zeros_like(masks)
        for y in range(height):
            for x in range(width):
                for k, (dy, dx) in enumerate(offsets):
                    refined[:, y, x] += weights[k, y, x] * at(masks, y + dy, x + dx)
        masks = refined
    return masks


def test_pamr_matches_a_per_pixel_loop():
    torch.manual_seed(0)
    guide = torch.randn(2, 3, 9, 11)  # smaller than the largest dilation: borders replicate
    masks = torch.rand(2, 2, 9, 11)
    assert len(pamr_offsets()) == 48
    refined = pamr_refine(masks, pamr_affinity(guide))
    for b in range(2):
        expected = slow_pamr(guide[b].double().numpy(), masks[b].double().numpy())
        assert np.allclose(refined[b].numpy(), expected, atol=2e-6)


# -- the per-phrase half on crafted image features ---------------------------------------------


@pytest.fixture(scope="module")
def tiny_tcl(tiny_vit) -> TCLModel:
    torch.manual_seed(1)
    head = TCLHead(**TCLHead.dims_for(tiny_vit))
    for parameter in head.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    return TCLModel(tiny_vit, head)


def crafted_features(seed: int = 0) -> dict[str, torch.Tensor]:
    """Unit image features of a 448 x 448 photo in `whole` mode: 28 x 28 tokens, 112 x 112 pixels."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "pixels": F.normalize(torch.randn(1, 32, 112, 112, generator=generator), dim=1),
        "tokens": F.normalize(torch.randn(1, 32, 28, 28, generator=generator), dim=1),
    }


def test_kp_mix(tiny_tcl):
    features, texts = crafted_features(), torch.randn(3, 32)

    def soft(kp_weight):
        return tiny_tcl.soft_masks(features, texts, (448, 448), "whole", "eval", pamr=False, kp_weight=kp_weight)

    unit = F.normalize(texts, dim=-1)
    kp = torch.sigmoid(10 * (torch.einsum("chw,nc->nhw", features["tokens"][0], unit) - 0.25))
    kp_alone = F.interpolate(F.interpolate(kp[None], size=(112, 112), mode="bilinear"), size=(448, 448),
                             mode="bilinear")[0]
    w, b = tiny_tcl.head.sim2mask.w, tiny_tcl.head.sim2mask.b
    sim = torch.sigmoid(w * torch.einsum("chw,nc->nhw", features["pixels"][0], unit) + b)
    sim_alone = F.interpolate(sim[None], size=(448, 448), mode="bilinear")[0]
    assert torch.allclose(soft(1.0), kp_alone, atol=1e-6)
    assert torch.allclose(soft(0.0), sim_alone, atol=1e-6)
    assert torch.allclose(soft(0.3), 0.3 * kp_alone + 0.7 * sim_alone, atol=1e-6)


def test_each_text_is_decided_by_its_own_embedding(tiny_tcl):
    features, texts = crafted_features(), torch.randn(3, 32)
    together = tiny_tcl.soft_masks(features, texts, (300, 300), "whole", "eval", pamr=False)
    alone = tiny_tcl.soft_masks(features, texts[1:2], (300, 300), "whole", "eval", pamr=False)
    assert together.shape == (3, 300, 300) and torch.allclose(together[1], alone[0], atol=1e-6)


@pytest.mark.parametrize("window", ["slide", "whole", "demo"])
def test_end_to_end_shapes(tiny_tcl, window):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    preprocessing = "demo" if window == "demo" else "eval"
    features = tiny_tcl.image_features(image, window, preprocessing, pamr=True)
    windows = {"slide": 2, "whole": 1, "demo": 1}[window]
    assert features["pixels"].shape[0] == windows and features["pixels"].dtype == torch.float32
    masks = tiny_tcl.soft_masks(features, torch.randn(2, 32), (48, 64), window, preprocessing, pamr=True)
    assert masks.shape == (2, 48, 64) and masks.dtype == torch.float32
    assert 0 <= float(masks.min()) and float(masks.max()) <= 1
    assert not math.isnan(float(masks.sum()))


def test_slide_averages_overlapping_windows(tiny_tcl):
    """Constant per-window masks: the overlap of the two 640 x 480 windows holds their mean."""
    features = {
        "pixels": torch.zeros(2, 32, 112, 112),
        "tokens": torch.zeros(2, 32, 28, 28),
    }
    features["pixels"][0, 0], features["pixels"][1, 1] = 1.0, -1.0
    texts = torch.zeros(1, 32)
    texts[0, 0], texts[0, 1] = 1.0, 1.0  # cosine +/- 1/sqrt(2) with the two windows
    masks = tiny_tcl.soft_masks(features, texts, (448, 597), "slide", "eval", pamr=False, kp_weight=0.0)[0]
    w, b = float(tiny_tcl.head.sim2mask.w), float(tiny_tcl.head.sim2mask.b)
    first, second = (1 / (1 + math.exp(-(w * s / math.sqrt(2) + b))) for s in (1, -1))
    assert masks[:, :149].allclose(torch.tensor(first), atol=1e-6)
    assert masks[:, 149:448].allclose(torch.tensor((first + second) / 2), atol=1e-6)
    assert masks[:, 448:].allclose(torch.tensor(second), atol=1e-6)
