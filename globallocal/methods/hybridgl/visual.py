"""HybridGL's visual side (SPEC-hybridgl sections 3 and 4): per-proposal CLIP inputs and hybrid features.

Pure functions: :func:`clip_inputs` builds each proposal's global (blurred
context) and local (grey outside) 224 x 224 images and its token mask;
:func:`hybrid_features` runs them through the CLIP ViT with the hybrid last
blocks; :func:`masked_block` is one block with the class token's attention
restricted to the mask.
"""

from __future__ import annotations

import numpy as np
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image

from ...data.images import IMAGENET_MEAN, IMAGENET_STD
from ...errors import InputError
from ...models.attention import class_token_block, residual_block
from ...models.clip import ClipBundle
from ...models.vit import soft_masks
from .settings import FUSION_MODES

# Q-imagenet-stats: the reference normalises both CLIP inputs with ImageNet's statistics.
INPUT_NORMALIZATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "clip": (OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)}
# Q-fill: "paper" writes CLIP's mean numbers into the normalised tensor; "mean" fills with the normalisation's mean (0).
LOCAL_FILLS = {"paper": OPENAI_DATASET_MEAN, "mean": (0.0, 0.0, 0.0)}
BLUR_KERNEL = 15
_MASKS_AT_ONCE = 16  # proposals composited together in clip_inputs: ~2.4 MB each at 224


def blurred(rgb8: np.ndarray) -> np.ndarray:
    """OpenCV's 15 x 15 Gaussian blur of an (H, W, 3) uint8 image, sigma 0 (-> 2.6), BORDER_REFLECT_101.

    OpenCV's 8-bit path is fixed-point; a float blur differs by a grey level at
    some pixels, so the reference's library is called.
    """
    try:
        import cv2
    except ImportError:
        raise InputError("HybridGL needs OpenCV for its blur; install it: pip install opencv-python-headless") from None
    if rgb8.dtype != np.uint8 or rgb8.ndim != 3 or rgb8.shape[2] != 3:
        raise InputError(f"the blur needs an (H, W, 3) uint8 image, got {rgb8.dtype} {rgb8.shape}")
    return cv2.GaussianBlur(np.ascontiguousarray(rgb8), (BLUR_KERNEL, BLUR_KERNEL), 0,
                            borderType=cv2.BORDER_REFLECT_101)


def _linear_taps(in_size: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Source indices (2, out) and weights (2, out) of PyTorch's bilinear resize along one axis.

    align_corners False, no antialias: output i reads source pixels i0 and i1
    around (i + 0.5) * in / out - 0.5 (clamped at 0), the arithmetic of
    ``F.interpolate`` in float32.
    """
    scale = (torch.tensor(in_size, dtype=torch.float32) / out_size).double()
    # One rounding to float32 after the multiply-add, as PyTorch's compiled kernels (fused multiply-add) round.
    source = (scale * (torch.arange(out_size, dtype=torch.float64) + 0.5) - 0.5).float().clamp(min=0)
    first = source.floor().clamp(max=in_size - 1)
    weight = (source - first).clamp(0, 1)
    first = first.long()
    second = first + (first < in_size - 1).long()
    return torch.stack([first, second]).to(device), torch.stack([1 - weight, weight]).to(device)


class _BilinearTaps:
    """A non-antialiased bilinear resize H x W -> S x S as a gather of 2 x 2 source pixels and a weighted sum.

    Each output pixel reads only four source pixels, so compositing a
    proposal's image at those pixels and then weighting gives the resize of
    the full-resolution composite without ever forming it.
    """

    def __init__(self, height: int, width: int, size: int, device: torch.device):
        self.size = size
        rows, self.row_weights = _linear_taps(height, size, device)
        cols, self.col_weights = _linear_taps(width, size, device)
        self.index = (rows.reshape(-1, 1), cols.reshape(1, -1))

    def gather(self, source: torch.Tensor) -> torch.Tensor:
        """(..., H, W) -> (..., 2S, 2S): row a*S + i, column b*S + j holds tap (a, b) of output (i, j)."""
        return source[(..., *self.index)]

    def gather_image(self, rgb8: np.ndarray) -> torch.Tensor:
        """An (H, W, 3) uint8 array's taps as a (3, 2S, 2S) uint8 tensor on the taps' device."""
        rows, cols = (index.cpu().numpy() for index in self.index)
        return torch.from_numpy(rgb8[rows, cols]).to(self.index[0].device).permute(2, 0, 1)

    def resize(self, taps: torch.Tensor) -> torch.Tensor:
        """(..., 2S, 2S) gathered values (float) -> (..., S, S), along the width first as PyTorch does."""
        size = self.size
        taps = taps.unflatten(-1, (2, size))  # (..., 2S, 2, S)
        along_width = taps[..., 0, :] * self.col_weights[0] + taps[..., 1, :] * self.col_weights[1]
        along_width = along_width.unflatten(-2, (2, size))  # (..., 2, S, S)
        row_weights = self.row_weights[:, :, None]
        return along_width[..., 0, :, :] * row_weights[0] + along_width[..., 1, :, :] * row_weights[1]


def _selected(masks: torch.Tensor, chunk: range | slice | None) -> torch.Tensor:
    if chunk is None:
        return masks
    if isinstance(chunk, range):
        chunk = slice(chunk.start, chunk.stop, chunk.step)
    return masks[chunk]


def _stats(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device).view(3, 1, 1)


def clip_inputs(
    image: Image.Image,
    masks: torch.Tensor,
    *,
    blur: np.ndarray | None = None,
    size: int = 224,
    grid: int = 14,
    input_normalization: str = "imagenet",
    local_fill: str = "paper",
    mask_antialias: bool = False,
    chunk: range | slice | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Global inputs G (n, 3, size, size), local inputs L (n, 3, size, size), token masks mu (n, grid * grid).

    SPEC-hybridgl section 3 for the bool masks (N, H, W), or for
    ``masks[chunk]`` only. G: the uint8 composite of the image inside the
    mask and ``blur`` (default :func:`blurred` of the image) outside, / 255,
    resized, normalised. L: the normalised image with ``local_fill`` outside,
    resized. mu: the mask resized to the patch grid (Q-mask-grid: no
    antialias unless ``mask_antialias``). All resizes are bilinear,
    align_corners false; without antialias they are computed from the four
    source pixels each output reads, so memory does not grow with the photo.
    """
    if input_normalization not in INPUT_NORMALIZATIONS:
        raise InputError(f"unknown input normalization '{input_normalization}'; use one of "
                         f"{', '.join(INPUT_NORMALIZATIONS)}")
    if local_fill not in LOCAL_FILLS:
        raise InputError(f"unknown local fill '{local_fill}'; use one of {', '.join(LOCAL_FILLS)}")
    rgb8 = np.asarray(image.convert("RGB"))
    height, width = rgb8.shape[:2]
    masks = torch.as_tensor(masks)
    if masks.dim() != 3 or tuple(masks.shape[1:]) != (height, width):
        raise InputError(f"masks of shape {tuple(masks.shape)} do not match the {width}x{height} image; "
                         "give one (N, H, W) mask per proposal at the image's size")
    blur = blurred(rgb8) if blur is None else blur
    if blur.shape != rgb8.shape or blur.dtype != np.uint8:
        raise InputError(f"the blurred image ({blur.dtype} {blur.shape}) must match the image ({rgb8.shape}, uint8)")
    selected = _selected(masks, chunk).bool()
    device = selected.device
    mean, std = (_stats(values, device) for values in INPUT_NORMALIZATIONS[input_normalization])
    fill = _stats(LOCAL_FILLS[local_fill], device)

    taps = _BilinearTaps(height, width, size, device)
    sharp, soft = taps.gather_image(rgb8), taps.gather_image(blur)  # (3, 2S, 2S) uint8
    normalised = (sharp.float() / 255 - mean) / std  # x_in at the taps
    global_inputs, local_inputs = [], []
    for part in selected.split(_MASKS_AT_ONCE):
        inside = taps.gather(part)[:, None]  # (n, 1, 2S, 2S)
        composite = torch.where(inside, sharp, soft).float() / 255
        global_inputs.append((taps.resize(composite) - mean) / std)
        local_inputs.append(taps.resize(torch.where(inside, normalised, fill)))
    if mask_antialias:
        token_masks = soft_masks(selected, grid, antialias=True)
    else:
        grid_taps = _BilinearTaps(height, width, grid, device)
        token_masks = grid_taps.resize(grid_taps.gather(selected).float())
    empty = selected.new_zeros((0, 3, size, size), dtype=torch.float32)
    return (
        torch.cat(global_inputs) if global_inputs else empty,
        torch.cat(local_inputs) if local_inputs else empty.clone(),
        token_masks.flatten(1),
    )


def _attention_mask(token_mask: torch.Tensor | None, heads: int, dtype: torch.dtype, queries: int | None = None
                    ) -> torch.Tensor | None:
    """Additive mask (B * heads, queries, T): -inf where the class-token query meets a patch key with mu == 0.

    ``queries``: the query rows (default T, every token; 1: the class token's alone). None when nothing is
    blocked, so that the block is exactly the plain block.
    """
    if token_mask is None or not bool((token_mask == 0).any()):
        return None
    batch, patches = token_mask.shape
    mask = token_mask.new_zeros((batch, queries or patches + 1, patches + 1), dtype=dtype)
    mask[:, 0, 1:] = torch.where(token_mask == 0, float("-inf"), 0.0)
    return mask.repeat_interleave(heads, dim=0)


def masked_block(block: torch.nn.Module, x: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """One residual attention block B(x; mu) on batch-first tokens (B, 1 + P, D) (SPEC-hybridgl section 4).

    The class-token query attends only to itself and to the patch keys whose
    mask value is not exactly zero; every other query attends to all keys.
    ``token_mask`` (B, P) or None (the plain block). The block runs with its
    own modules (layer norms, attention, layer scales, MLP and activation).
    """
    mask = None if token_mask is None else token_mask.to(x.device)
    return residual_block(block, x, _attention_mask(mask, block.attn.num_heads, x.dtype))


def _token_masked(tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """tm(z; mu): the class token unchanged, each patch token times its mask value."""
    return torch.cat([tokens[:, :1], tokens[:, 1:] * token_mask[:, :, None]], dim=1)


def _masked_class_token(block: torch.nn.Module, x: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """The class-token row (B, 1, D) of :func:`masked_block`: the last block of a stream that is only pooled."""
    mask = None if token_mask is None else token_mask.to(x.device)
    return class_token_block(block, x, _attention_mask(mask, block.attn.num_heads, x.dtype, queries=1))


def _hybrid_blocks(blocks, x: torch.Tensor, g: torch.Tensor, mu: torch.Tensor, fusion_mode: str, weight: float):
    """The hybrid blocks on local tokens x and global tokens g; returns the class-token streams to project.

    Only the projected streams' class tokens leave the last block, so that
    block forms those rows alone, and not at all the streams that are not
    projected (G2L's g, L2G's x): the same features up to float rounding.
    """
    if len(blocks) == 0:
        return {"G2L": [x], "L2G": [g], "G2L&L2G": [x, g]}[fusion_mode]
    *middle, last = blocks
    if fusion_mode == "G2L":
        for block in middle:
            x, g = masked_block(block, x + weight * _token_masked(g, mu), None), masked_block(block, g, mu)
        return [_masked_class_token(last, x + weight * _token_masked(g, mu), None)]
    if fusion_mode == "L2G":
        for block in middle:
            x, g = masked_block(block, x, None), masked_block(block, x + weight * g, mu)
        return [_masked_class_token(last, x + weight * g, mu)]
    local, global_ = x, g  # hl, hg
    for block in middle:
        x, g, local, global_ = (
            masked_block(block, x, None),
            masked_block(block, g, mu),
            masked_block(block, local + weight * _token_masked(g, mu), None),
            masked_block(block, x + weight * global_, mu),
        )
    return [_masked_class_token(last, local + weight * _token_masked(g, mu), None),
            _masked_class_token(last, x + weight * global_, mu)]


@torch.no_grad()
def hybrid_features(
    clip: ClipBundle,
    global_inputs: torch.Tensor,
    local_inputs: torch.Tensor,
    token_masks: torch.Tensor,
    *,
    fusion_mode: str = "G2L",
    masking_block: int = 9,
    hybrid_weight: float = 2.0,
    chunk_size: int = 8,
) -> torch.Tensor:
    """Hybrid visual features f (N, D) float32, not normalised (SPEC-hybridgl section 4).

    Both images of each proposal go through the stem and the plain blocks
    0 .. masking_block - 1; the remaining blocks mix them as ``fusion_mode``
    says (G2L, L2G or G2L&L2G; each step uses the values from before it),
    and the class token is projected: ln_post, then proj. ``chunk_size``
    proposals at a time.
    """
    visual = clip.visual
    if clip.family != "vit" or not hasattr(visual, "transformer"):
        raise InputError(f"HybridGL needs a ViT image tower; {clip.name} has a {clip.family} tower")
    if fusion_mode not in FUSION_MODES:
        raise InputError(f"unknown fusion mode '{fusion_mode}'; use one of {', '.join(FUSION_MODES)}")
    blocks = visual.transformer.resblocks
    if not 0 <= masking_block <= len(blocks):
        raise InputError(f"masking block {masking_block} is outside {clip.name}'s {len(blocks)} blocks; "
                         f"use 0 to {len(blocks)}")
    if chunk_size < 1:
        raise InputError(f"chunk size must be at least 1, got {chunk_size}")
    count = global_inputs.shape[0]
    if local_inputs.shape[0] != count or token_masks.shape[0] != count:
        raise InputError(f"{count} global inputs, {local_inputs.shape[0]} local inputs and "
                         f"{token_masks.shape[0]} token masks: give one of each per proposal")
    outputs = []
    for start in range(0, count, chunk_size):
        stop = start + chunk_size
        images = torch.cat([local_inputs[start:stop], global_inputs[start:stop]]).to(clip.device, clip.dtype)
        tokens = visual._embeds(images)  # patch conv, class token, positional embedding, patch dropout, ln_pre
        if token_masks.shape[1] != tokens.shape[1] - 1:
            raise InputError(f"token masks have {token_masks.shape[1]} values but {clip.name} makes "
                             f"{tokens.shape[1] - 1} patch tokens; resize the masks to its patch grid")
        for block in blocks[:masking_block]:
            tokens = masked_block(block, tokens, None)
        x, g = tokens.chunk(2)
        mu = token_masks[start:stop].to(clip.device, clip.dtype)
        streams = _hybrid_blocks(blocks[masking_block:], x, g, mu, fusion_mode, hybrid_weight)
        projected = [visual.ln_post(stream[:, 0]) for stream in streams]
        if visual.proj is not None:
            projected = [feature @ visual.proj for feature in projected]
        outputs.append(sum(projected[1:], projected[0]).float())
    if not outputs:
        return torch.zeros((0, clip.model.text_projection.shape[-1]), device=clip.device)
    return torch.cat(outputs)
