"""Soft masks for people and for programs: a colour map over the photo, and float32 arrays.

:func:`heatmap` draws a soft mask in [0, 1] over the photo with a colour
scale and a legend bar (no plotting library needed); :func:`save_soft_mask`
writes the mask itself as a float32 ``.npy`` array, atomically, for
comparisons at full precision.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..data.fonts import fonts
from ..data.images import atomic_write, save_png
from .drawing import resized, shown_width, with_caption
from .paths import check_soft_outputs

# A perceptually ordered dark-blue -> green -> yellow scale (viridis's end and middle points).
_STOPS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32
)


def colour_map(values: np.ndarray) -> np.ndarray:
    """RGB (..., 3) float32 for values in [0, 1], linearly between the scale's stops."""
    position = np.clip(values, 0.0, 1.0) * (len(_STOPS) - 1)
    low = np.minimum(position.astype(np.int64), len(_STOPS) - 2)
    weight = (position - low)[..., None]
    return (1 - weight) * _STOPS[low] + weight * _STOPS[low + 1]


def heatmap(
    image: Image.Image, soft: np.ndarray | torch.Tensor, alpha: float = 0.6, caption: str | None = None
) -> np.ndarray:
    """The photo (a tiny one scaled up) with ``soft`` (H, W) in [0, 1] blended over it as a colour map,
    ``caption`` (the phrase) under it and a legend bar below."""
    if isinstance(soft, torch.Tensor):
        soft = soft.float().cpu().numpy()
    photo, (soft,) = resized(image, [np.asarray(soft, dtype=np.float32)], shown_width(image.width, image.height))
    picture = np.round((1 - alpha) * photo + alpha * colour_map(soft)).astype(np.uint8)
    if caption is not None:
        picture = with_caption(picture, [(caption, None)])
    width = picture.shape[1]
    bar_height, margin = 14, 6
    legend = Image.new("RGB", (width, bar_height + 2 * margin + 12), (255, 255, 255))
    left, right = margin + 16, max(width - margin - 16, margin + 17)
    scale = colour_map(np.linspace(0.0, 1.0, right - left))[None].repeat(bar_height, axis=0)
    legend.paste(Image.fromarray(np.round(scale).astype(np.uint8)), (left, margin))
    draw = ImageDraw.Draw(legend)
    for value in (0.0, 0.5, 1.0):
        x = left + round(value * (right - left - 1))
        draw.line([(x, margin + bar_height), (x, margin + bar_height + 3)], fill=(0, 0, 0))
        draw.text((x - 6, margin + bar_height + 3), f"{value:g}", fill=(0, 0, 0), font=fonts(11).primary)
    return np.concatenate([picture, np.asarray(legend)], axis=0)


def save_soft_mask(soft: np.ndarray | torch.Tensor, path: str | os.PathLike) -> None:
    """``soft`` as a float32 (H, W) ``.npy`` array, written atomically."""
    if isinstance(soft, torch.Tensor):
        soft = soft.detach().cpu().numpy()
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(soft, dtype=np.float32))
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


def save_soft_outputs(
    image: Image.Image,
    results: Sequence,
    soft_mask: Path | None,
    heatmap_path: Path | None,
    numbered: Callable[[Path, int, int], Path],
) -> None:
    """``segment``'s --soft-mask and --heatmap: one file per phrase, named by ``numbered(path, i, count)``.

    The results must carry a ``soft_mask`` (TCL's answers and blends do); each heatmap is captioned with its
    phrase.
    """
    if soft_mask is None and heatmap_path is None:
        return
    available = all(hasattr(result, "soft_mask") for result in results)
    check_soft_outputs(soft_mask, heatmap_path, available, "this method")
    count = len(results)
    for index, result in enumerate(results):
        if soft_mask is not None:
            save_soft_mask(result.soft_mask, numbered(soft_mask, index, count))
        if heatmap_path is not None:
            save_png(heatmap(image, result.soft_mask, caption=f"{result.phrase!r}: soft mask"),
                     numbered(heatmap_path, index, count))
