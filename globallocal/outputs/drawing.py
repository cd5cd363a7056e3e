"""Pictures for people: the answer tinted on the photo with a caption, all answers with a legend, the top proposals.

Every picture is returned as a uint8 (H, W, 3) array for :func:`globallocal.data.images.save_png`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..data.fonts import fonts
from ..data.overlay import PALETTE, fill, outline, tint
from ..plurals import counted

# The top-k tiles' width, and the least width a captioned picture shows a photo at (a tiny photo is scaled up
# to it, so that its caption is legible), unless that makes it taller than MAX_SHOWN_HEIGHT.
SHOWN_WIDTH = 320
MAX_SHOWN_HEIGHT = 2048
OUTLINE_GAP = 3  # pixels between the outlines of phrases that picked one mask


def shown_width(width: int, height: int) -> int:
    """The width a captioned picture draws a ``width`` x ``height`` photo at."""
    if width >= SHOWN_WIDTH:
        return width
    return round(width * max(1.0, min(SHOWN_WIDTH / width, MAX_SHOWN_HEIGHT / height)))


def resized(image: Image.Image, layers: Sequence[np.ndarray], width: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The photo (bilinear, as float32 RGB) and its masks (bool: nearest; float: bilinear) at ``width`` pixels,
    the height in proportion. The mask files stay at the photo's size: only the pictures are scaled."""
    if width == image.width:
        return np.asarray(image, dtype=np.float32).copy(), list(layers)
    size = (width, max(1, round(image.height * width / image.width)))
    rgb = np.asarray(image.resize(size, Image.BILINEAR), dtype=np.float32).copy()
    scaled = [
        np.asarray(Image.fromarray(layer).resize(size, Image.NEAREST if layer.dtype == bool else Image.BILINEAR))
        for layer in layers
    ]
    return rgb, scaled


def with_caption(picture: np.ndarray, lines: Sequence[tuple[str, Sequence[int] | None]]) -> np.ndarray:
    """The picture above a white band holding one text line per entry, each after a swatch of its colour.

    A line too long for the band is shortened with "…" (the phrase, not its score); a picture narrower than
    SHOWN_WIDTH is padded with white to it, so that the band holds a score.
    """
    if picture.shape[1] < SHOWN_WIDTH:
        padding = np.full((picture.shape[0], SHOWN_WIDTH - picture.shape[1], 3), 255, dtype=np.uint8)
        picture = np.concatenate([picture, padding], axis=1)
    width = picture.shape[1]
    size = max(12, min(28, width // 40))
    row = size + size // 2
    band = Image.new("RGB", (width, row * len(lines) + size // 2), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    text_fonts = fonts(size)
    for i, (text, color) in enumerate(lines):
        top = size // 4 + i * row
        left = size // 2
        if color is not None:
            draw.rectangle([left, top + 2, left + size - 2, top + size], fill=tuple(color), outline=(0, 0, 0))
            left += size + size // 2
        text_fonts.draw(band, (left, top), text_fonts.fit(text, width - left - size // 2), (0, 0, 0))
    return np.concatenate([picture, np.asarray(band)], axis=0)


def answer_picture(image: Image.Image, mask: np.ndarray, caption: str, color: Sequence[int] = PALETTE[0]) -> np.ndarray:
    """The photo (a tiny one scaled up) with ``mask`` tinted and outlined, and ``caption`` (phrase and score)
    under it."""
    rgb, (shown,) = resized(image, [mask], shown_width(image.width, image.height))
    tint(rgb, shown, color)
    return with_caption(np.round(rgb).astype(np.uint8), [(caption, color)])


def answers_picture(image: Image.Image, masks: Sequence[np.ndarray], captions: Sequence[str]) -> np.ndarray:
    """Every phrase's mask on one photo (a tiny one scaled up), tinted and outlined in its own colour, with a
    legend of phrases and scores.

    Where masks overlap, the later phrase's tint lies over the earlier's; the outlines are drawn after every
    tint, and phrases that picked the same mask get outlines one outside the other.
    """
    rgb, shown = resized(image, masks, shown_width(image.width, image.height))
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(masks))]
    for mask, color in zip(shown, colors):
        fill(rgb, mask, color)
    earlier: dict[bytes, int] = {}
    for mask, color in zip(shown, colors):
        key = mask.tobytes()
        same = earlier.get(key, 0)
        earlier[key] = same + 1
        outline(rgb, mask, color, OUTLINE_GAP * same)
    return with_caption(np.round(rgb).astype(np.uint8), list(zip(captions, colors)))


def top_k_picture(
    image: Image.Image, masks: np.ndarray, ranking: Sequence[tuple[int, float]], phrase: str, k: int = 5,
    label: str = "score", tile_width: int = SHOWN_WIDTH,
) -> np.ndarray:
    """The first ``k`` proposals of a result's ranking (the answer first) side by side, each captioned with its
    number and ``label`` value (the score the method chose with).

    Shows why the answer won: how close the runners-up scored and what they cover.
    """
    order = list(ranking[:k])
    small, shown = resized(image, [masks[index] for index, _ in order], tile_width)
    tiles = []
    for rank, ((index, value), mask) in enumerate(zip(order, shown)):
        rgb = small.copy()
        tint(rgb, mask, PALETTE[0] if rank == 0 else PALETTE[2])
        caption = f"{'answer: ' if rank == 0 else ''}proposal {index}, {label} {value:.4f}"
        tiles.append(with_caption(np.round(rgb).astype(np.uint8), [(caption, None)]))
    if not tiles:  # a phrase whose noun phrase got no candidate (phrase-dependent proposals)
        return with_caption(np.round(small).astype(np.uint8), [(f"{phrase!r}: no candidate proposals", None)])
    gap = np.full((tiles[0].shape[0], 8, 3), 255, dtype=np.uint8)
    row = np.concatenate([part for tile in tiles for part in (tile, gap)][:-1], axis=1)
    return with_caption(row, [(f"{phrase!r}: top {len(order)} of {counted(len(masks), 'proposal')}", None)])
