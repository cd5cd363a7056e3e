"""TCL's input tensors: the `eval` and `demo` preprocessing (SPEC-tcl section 2).

Both normalise with ImageNet statistics (TCL inherited them from GroupViT),
not CLIP's. `eval` follows mmsegmentation's test pipeline bit for bit:
OpenCV's 8-bit bilinear resize to short side 448 (long side at most 2048),
then (v - mean) * (1 / std) on 0..255 values. `eval-float` swaps OpenCV's
fixed-point resize for a float one (one grey level off on about a tenth of
the pixels: a named deviation for machines without OpenCV). `demo` is the
authors' notebook: PIL bicubic to short side 224, then /255 and normalise.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...data.images import IMAGENET_MEAN, IMAGENET_STD, short_side_size, to_normalized_tensor
from ...errors import InputError
from .settings import PREPROCESSINGS

EVAL_SHORT, EVAL_LONG = 448, 2048
DEMO_SHORT = 224


def eval_size(height: int, width: int, short: int = EVAL_SHORT, long: int = EVAL_LONG) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: the short side becomes ``short`` unless the long side would pass ``long``."""
    scale = min(long / max(height, width), short / min(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resized_size(preprocessing: str, height: int, width: int) -> tuple[int, int]:
    """(H1, W1): the size of the network's input image for a photo of height x width."""
    if preprocessing == "demo":
        return short_side_size(height, width, DEMO_SHORT)
    return eval_size(height, width)


def _opencv_resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    try:
        import cv2
    except ImportError:
        raise InputError(
            "TCL's eval preprocessing needs OpenCV, a dependency of globallocal: pip install opencv-python-headless "
            "(or, in Python, TCLSettings(preprocessing='eval-float'): a float resize, a grey level off on some pixels)"
        ) from None
    return cv2.resize(array, (width, height), interpolation=cv2.INTER_LINEAR)


def _float_resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear with half-pixel centres and no antialiasing, rounded back to 8 bits."""
    batch = torch.from_numpy(np.array(array)).permute(2, 0, 1)[None].float()
    resized = F.interpolate(batch, size=(height, width), mode="bilinear", align_corners=False)
    return resized[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def _normalize_255(array: np.ndarray) -> torch.Tensor:
    """(v - 255 mean) * (1 / (255 std)) in float32, as mmcv's imnormalize computes it."""
    values = torch.from_numpy(np.array(array)).permute(2, 0, 1).float()
    mean = torch.tensor([255 * m for m in IMAGENET_MEAN], dtype=torch.float32).view(3, 1, 1)
    inverse_std = torch.tensor([1 / (255 * s) for s in IMAGENET_STD], dtype=torch.float32).view(3, 1, 1)
    return (values - mean) * inverse_std


def tcl_input(image: Image.Image, preprocessing: str = "eval") -> torch.Tensor:
    """The normalised (3, H1, W1) float32 input of an RGB photo."""
    if preprocessing not in PREPROCESSINGS:
        raise InputError(f"unknown TCL preprocessing '{preprocessing}'; use one of {', '.join(PREPROCESSINGS)}")
    height, width = resized_size(preprocessing, image.height, image.width)
    if preprocessing == "demo":
        resized = image.resize((width, height), Image.BICUBIC)
        return to_normalized_tensor(resized, IMAGENET_MEAN, IMAGENET_STD)
    array = np.asarray(image, dtype=np.uint8)
    resize = _opencv_resize if preprocessing == "eval" else _float_resize
    return _normalize_255(resize(array, height, width))
