"""The pictures the VLM sees: candidates drawn with their numbers, one candidate alone, its zoomed view.

Drawn with Pillow and OpenCV at the photo's size (the backend caps what the
model sees): each mask tinted in its colour and outlined, numbers in a box
of the mask's colour at the point of the mask farthest from its border
(moved aside when it would cover an earlier number). The numbers are digits
only, so Pillow's own font draws them; the text fonts of the pictures for
people live in ``globallocal.outputs`` and are not needed here.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ...proposals import tight_box

__all__ = ["COLORS", "ZOOM_SIDE", "candidate_image", "color_of", "label_point", "marks_image", "zoom_image"]

# Saturated colours far apart from each other; a number's box takes its mask's colour.
COLORS = (
    (255, 48, 48), (40, 120, 255), (40, 200, 70), (255, 160, 0), (170, 60, 255), (0, 200, 200),
    (255, 70, 190), (150, 210, 30), (140, 90, 40), (0, 90, 140), (255, 120, 110), (120, 120, 255),
)
FILL_ALPHA = 0.35
ZOOM_SIDE = 512
"""The long side of each panel of the zoomed view (small objects are enlarged to it)."""
_GAP = 8
MaskArray = torch.Tensor | np.ndarray
"""A bool mask (H, W), or masks (N, H, W), as a tensor or an array."""


def color_of(index: int) -> tuple[int, int, int]:
    """The colour of the ``index``-th mask (0-based) of a picture of marks."""
    return COLORS[index % len(COLORS)]


def _array(mask: MaskArray) -> np.ndarray:
    return (mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)).astype(bool)


def _thickness(width: int, height: int) -> int:
    return max(1, round(min(width, height) / 300))


@cache
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _tint(rgb: np.ndarray, mask: np.ndarray, color: Sequence[int]) -> None:
    rgb[mask] = (1 - FILL_ALPHA) * rgb[mask] + FILL_ALPHA * np.asarray(color, dtype=np.float32)


def _outline(rgb: np.ndarray, mask: np.ndarray, color: Sequence[int], thickness: int) -> None:
    """The mask's border in ``color``, ``thickness`` pixels inward, with a dark line just outside it."""
    kernel = np.ones((3, 3), np.uint8)
    mask8 = mask.astype(np.uint8)
    inner = cv2.erode(mask8, kernel, iterations=thickness).astype(bool)
    outer = cv2.dilate(mask8, kernel, iterations=1).astype(bool)
    rgb[outer & ~mask] = 0.0
    rgb[mask & ~inner] = np.asarray(color, dtype=np.float32)


def label_point(mask: MaskArray) -> tuple[int, int]:
    """(x, y) of the mask's pixel farthest from its border (the first such pixel; (0, 0) for an empty mask)."""
    padded = np.pad(_array(mask).astype(np.uint8), 1)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(x), int(y)


def _overlaps(box: tuple[int, int, int, int], others: Sequence[tuple[int, int, int, int]]) -> bool:
    return any(box[0] < o[2] and o[0] < box[2] and box[1] < o[3] and o[1] < box[3] for o in others)


def _label_box(center: tuple[int, int], size: tuple[int, int], image: tuple[int, int],
               placed: Sequence[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    """A box of ``size`` centred at ``center``, inside the image, moved down then up a box at a time (at most
    ten each way) until it covers no earlier box."""
    (w, h), (width, height) = size, image

    def at(dy: int) -> tuple[int, int, int, int]:
        x0 = min(max(center[0] - w // 2, 0), max(width - w, 0))
        y0 = min(max(center[1] - h // 2 + dy, 0), max(height - h, 0))
        return x0, y0, x0 + w, y0 + h

    for step in range(11):
        for dy in ((0,) if step == 0 else (step * h, -step * h)):
            if not _overlaps(at(dy), placed):
                return at(dy)
    return at(0)


def _draw_numbers(picture: Image.Image, masks: Sequence[np.ndarray], numbers: Sequence[int],
                  colors: Sequence[Sequence[int]]) -> None:
    draw = ImageDraw.Draw(picture)
    font = _font(max(12, round(min(picture.size) / 22)))
    pad = max(2, getattr(font, "size", 12) // 6)
    placed: list[tuple[int, int, int, int]] = []
    for mask, number, color in zip(masks, numbers, colors):
        text = str(number)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        size = (right - left + 2 * pad, bottom - top + 2 * pad)
        box = _label_box(label_point(mask), size, picture.size, placed)
        placed.append(box)
        dark = sum(c * w for c, w in zip(color, (0.299, 0.587, 0.114))) < 150
        draw.rectangle(box, fill=tuple(color), outline=(0, 0, 0))
        draw.text((box[0] + pad - left, box[1] + pad - top), text, font=font,
                  fill=(255, 255, 255) if dark else (0, 0, 0))


def marks_image(photo: Image.Image, masks: MaskArray, numbers: Sequence[int] | None = None) -> Image.Image:
    """The photo with every mask (N, H, W) tinted and outlined in its own colour and labelled with its number
    (``numbers``, default 1..N); the i-th mask takes the i-th colour."""
    arrays = [_array(mask) for mask in masks]
    numbers = list(range(1, len(arrays) + 1)) if numbers is None else list(numbers)
    colors = [color_of(i) for i in range(len(arrays))]
    rgb = np.asarray(photo.convert("RGB"), dtype=np.float32).copy()
    for mask, color in zip(arrays, colors):
        _tint(rgb, mask, color)
    thickness = _thickness(photo.width, photo.height)
    for mask, color in zip(arrays, colors):
        _outline(rgb, mask, color, thickness)
    picture = Image.fromarray(np.round(rgb).astype(np.uint8))
    _draw_numbers(picture, arrays, numbers, colors)
    return picture


def _drawn(photo: Image.Image, mask: np.ndarray, color: Sequence[int]) -> Image.Image:
    rgb = np.asarray(photo.convert("RGB"), dtype=np.float32).copy()
    _tint(rgb, mask, color)
    _outline(rgb, mask, color, _thickness(photo.width, photo.height))
    return Image.fromarray(np.round(rgb).astype(np.uint8))


def candidate_image(photo: Image.Image, mask: MaskArray, color: Sequence[int] = COLORS[0]) -> Image.Image:
    """The photo with one mask tinted and outlined, no number."""
    return _drawn(photo, _array(mask), color)


def _grown(box: tuple[int, int, int, int], factor: float, least: int, width: int, height: int) -> tuple[int, ...]:
    """The box grown on every side by ``factor`` of its size (at least ``least`` pixels), inside the image."""
    x0, y0, x1, y1 = box
    dx, dy = max(least, round(factor * (x1 - x0))), max(least, round(factor * (y1 - y0)))
    return max(0, x0 - dx), max(0, y0 - dy), min(width, x1 + dx), min(height, y1 + dy)


def _fit(panel: Image.Image) -> Image.Image:
    scale = ZOOM_SIDE / max(panel.size)
    return panel.resize((max(1, round(panel.width * scale)), max(1, round(panel.height * scale))), Image.BICUBIC)


def zoom_image(photo: Image.Image, mask: MaskArray, color: Sequence[int] = COLORS[0]) -> Image.Image:
    """Two panels, each enlarged (or reduced) to a long side of :data:`ZOOM_SIDE`: the area around the mask with
    its box drawn, and the masked object close up, tinted and outlined. Side by side when the object is taller
    than wide, else one above the other; an empty mask gives the whole photo."""
    array = _array(mask)
    box = tight_box(array)
    if box is None:
        return _fit(photo.convert("RGB"))
    width, height = photo.size
    around = _grown(box, 1.0, 32, width, height)
    context = photo.convert("RGB").crop(around)
    left, top = around[:2]
    ImageDraw.Draw(context).rectangle(
        (box[0] - left, box[1] - top, box[2] - left - 1, box[3] - top - 1), outline=tuple(color),
        width=_thickness(width, height) + 1,
    )
    detail = _drawn(photo, array, color).crop(_grown(box, 0.15, 8, width, height))
    first, second = _fit(context), _fit(detail)
    beside = (box[3] - box[1]) > (box[2] - box[0])
    if beside:
        size = (first.width + _GAP + second.width, max(first.height, second.height))
        offset = (first.width + _GAP, 0)
    else:
        size = (max(first.width, second.width), first.height + _GAP + second.height)
        offset = (0, first.height + _GAP)
    picture = Image.new("RGB", size, (255, 255, 255))
    picture.paste(first, (0, 0))
    picture.paste(second, offset)
    return picture
