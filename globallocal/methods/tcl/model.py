"""TCL's soft masks for one image and many texts (SPEC-tcl sections 2 to 6).

:meth:`TCLModel.image_features` does everything that does not depend on the
text, once per image, for all windows in batches: the CLIP tokens, the
masker's pixel embeddings (unit length), CLIP's own token embeddings for the
KP branch (unit length) and the PAMR affinity. :meth:`TCLModel.soft_masks`
then turns any number of text embeddings into soft masks at the photo's size
in one batch: Sim2Mask, PAMR, the KP mix, back to each window, the window
average, and the resize to the photo.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from ...errors import InputError
from ...models.clip import ClipBundle
from .inputs import resized_size, tcl_input
from .network import TCLHead, clip_token_embeddings, clip_tokens
from .pamr import pamr_affinity, pamr_refine
from .settings import WINDOW_MODES
from .windows import Padding, Window, image_windows, patch_padding

KP_TEMPERATURE = 10.0
KP_OFFSET = 0.25
UNIT_EPS = 1e-6


@dataclass(frozen=True)
class Layout:
    """The geometry of one photo's pass: resized size, windows, their padding and token grid."""

    size: tuple[int, int]  # (H1, W1), the network's input image
    windows: list[Window]
    padding: Padding
    grid: tuple[int, int]  # (h, w) tokens per window

    @property
    def padded(self) -> tuple[int, int]:
        return self.padding.padded_size(self.windows[0].height, self.windows[0].width)

    @property
    def mask_size(self) -> tuple[int, int]:
        """(4h, 4w): the masker's output resolution."""
        return 4 * self.grid[0], 4 * self.grid[1]


def layout(height: int, width: int, window: str, preprocessing: str, patch: int = 16) -> Layout:
    """The layout for a height x width photo in a window mode."""
    if window not in WINDOW_MODES:
        raise InputError(f"unknown TCL window mode '{window}'; use one of {', '.join(WINDOW_MODES)}")
    size = resized_size(preprocessing, height, width)
    windows = image_windows(window, *size)
    padding = patch_padding(windows[0].height, windows[0].width, patch)
    hp, wp = padding.padded_size(windows[0].height, windows[0].width)
    return Layout(size, windows, padding, (hp // patch, wp // patch))


class TCLModel:
    """A frozen CLIP ViT and TCL's learned head, run as the released code runs them."""

    def __init__(self, clip: ClipBundle, head: TCLHead, window_batch: int = 4) -> None:
        if clip.family != "vit":
            raise InputError(f"TCL needs a CLIP ViT (its masker was trained on ViT-B/16), got {clip.name}")
        if not clip.uses_quick_gelu:
            raise InputError(
                "TCL was trained on OpenAI's CLIP, which uses QuickGELU; load it as ViT-B-16-quickgelu "
                "(--clip-model ViT-B-16-quickgelu) or with --clip-weights openai"
            )
        self.clip = clip
        self.head = head.to(device=clip.device, dtype=clip.dtype).eval().requires_grad_(False)
        self.head.sim2mask.float()  # the per-phrase half runs in float32 whatever CLIP's precision
        self.window_batch = window_batch
        size = clip.visual.conv1.kernel_size
        self.patch = int(size[0] if isinstance(size, tuple) else size)

    @property
    def device(self) -> torch.device:
        return self.clip.device

    def layout(self, height: int, width: int, window: str, preprocessing: str) -> Layout:
        return layout(height, width, window, preprocessing, self.patch)

    @torch.inference_mode()
    def image_features(
        self, image: Image.Image, window: str = "slide", preprocessing: str = "eval", pamr: bool = True
    ) -> dict[str, torch.Tensor]:
        """The text-independent side of an image: float32 tensors, one entry per window along dim 0.

        ``pixels`` (B, C, 4h, 4w) and ``tokens`` (B, C, h, w): the masker's and
        CLIP's embeddings, unit length; ``affinity``: PAMR's weights, per
        window at 4h x 4w, or (demo) of the whole resized image (1, 48, H1, W1).
        """
        plan = self.layout(image.height, image.width, window, preprocessing)
        full = tcl_input(image, preprocessing).to(self.device)
        pad = plan.padding
        crops = torch.stack([full[:, w.top : w.top + w.height, w.left : w.left + w.width] for w in plan.windows])
        crops = F.pad(crops, (pad.left, pad.right, pad.top, pad.bottom))  # 0: the ImageNet mean colour
        pixels, tokens = [], []
        for batch in crops.split(self.window_batch):
            z, patches = clip_tokens(self.clip, batch)
            pixels.append(F.normalize(self.head.pixel_embeddings(z, *plan.grid).float(), dim=1, eps=UNIT_EPS))
            tokens.append(F.normalize(clip_token_embeddings(self.clip, patches).float(), dim=1, eps=UNIT_EPS))
        features = {"pixels": torch.cat(pixels), "tokens": torch.cat(tokens)}
        if pamr:
            if window == "demo":
                guide = full[None]  # PAMR runs after the window, on the unpadded image
            else:
                guide = F.interpolate(crops, size=plan.mask_size, mode="bilinear", align_corners=True)
            features["affinity"] = pamr_affinity(guide)
        return features

    @torch.inference_mode()
    def soft_masks(
        self,
        features: dict[str, torch.Tensor],
        texts: torch.Tensor,
        image_size: tuple[int, int],
        window: str = "slide",
        preprocessing: str = "eval",
        pamr: bool = True,
        kp_weight: float = 0.3,
    ) -> torch.Tensor:
        """Soft masks (N, H0, W0) in [0, 1], float32, for text embeddings (N, C) about one image.

        ``features`` come from :meth:`image_features` with the same window,
        preprocessing and pamr; ``image_size`` is the photo's (H0, W0).
        """
        if pamr and "affinity" not in features:
            raise InputError("TCL image features were computed without PAMR; compute them again with pamr on")
        plan = self.layout(*image_size, window, preprocessing)
        pixels = features["pixels"].to(self.device)
        texts = F.normalize(texts.to(self.device, torch.float32), dim=-1, eps=UNIT_EPS)
        masks = self.head.sim2mask(torch.einsum("bchw,nc->bnhw", pixels, texts))
        if pamr and window != "demo":
            masks = pamr_refine(masks, features["affinity"].to(self.device))
        if kp_weight:
            similarity = torch.einsum("bchw,nc->bnhw", features["tokens"].to(self.device), texts)
            kp = torch.sigmoid(KP_TEMPERATURE * (similarity - KP_OFFSET))
            kp = F.interpolate(kp, size=plan.mask_size, mode="bilinear", align_corners=False)
            masks = kp_weight * kp + (1 - kp_weight) * masks
        masks = F.interpolate(masks, size=plan.padded, mode="bilinear", align_corners=False)
        first, pad = plan.windows[0], plan.padding
        masks = masks[..., pad.top : pad.top + first.height, pad.left : pad.left + first.width]
        total = masks.new_zeros((masks.shape[1], *plan.size))
        count = masks.new_zeros((1, *plan.size))
        for crop, w in zip(masks, plan.windows):
            total[:, w.top : w.top + w.height, w.left : w.left + w.width] += crop
            count[:, w.top : w.top + w.height, w.left : w.left + w.width] += 1
        masks = (total / count)[None]
        if pamr and window == "demo":
            masks = pamr_refine(masks, features["affinity"].to(self.device))
        return F.interpolate(masks, size=image_size, mode="bilinear", align_corners=False)[0].cpu()
