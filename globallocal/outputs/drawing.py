"""Pictures for people: the answer tinted on the photo with a caption, all answers with a legend, the top proposals.

Every picture is returned as a uint8 (H, W, 3) array for :func:`globallocal.data.images.save_png`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Colours far apart from each other and from skin and sky tones (after Trubetskoy's list of distinct colours).
PALETTE = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
)
TINT_ALPHA = 0.5


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask."""
    padded = np.pad(mask, 1, mode="constant", constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _grow(mask: np.ndarray) -> np.ndarray:
    """The mask grown by one pixel (4-neighbourhood)."""
    padded = np.pad(mask, 1, mode="constant", constant_values=False)
    return padded[1:-1, 1:-1] | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]


def tint(rgb: np.ndarray, mask: np.ndarray, color: Sequence[int]) -> None:
    """Tint ``mask`` in place and outline it white on black, which stands out on the tint and on any photo."""
    rgb[mask] = (1 - TINT_ALPHA) * rgb[mask] + TINT_ALPHA * np.asarray(color, dtype=np.float32)
    edge = _boundary(mask)
    rgb[_grow(edge) & ~mask] = 0.0
    rgb[edge] = 255.0


def _with_caption(picture: np.ndarray, lines: Sequence[tuple[str, Sequence[int] | None]]) -> np.ndarray:
    """The picture above a white band holding one text line per entry, each after a swatch of its colour."""
    width = picture.shape[1]
    size = max(12, min(28, width // 40))
    row = size + size // 2
    band = Image.new("RGB", (width, row * len(lines) + size // 2), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    font = _font(size)
    for i, (text, color) in enumerate(lines):
        top = size // 4 + i * row
        left = size // 2
        if color is not None:
            draw.rectangle([left, top + 2, left + size - 2, top + size], fill=tuple(color), outline=(0, 0, 0))
            left += size + size // 2
        draw.text((left, top), text, fill=(0, 0, 0), font=font)
    return np.concatenate([picture, np.asarray(band)], axis=0)


def overlay_picture(image: Image.Image, mask: np.ndarray, color: Sequence[int] = PALETTE[0]) -> np.ndarray:
    """The photo with ``mask`` tinted and outlined (uint8 (H, W, 3))."""
    rgb = np.asarray(image, dtype=np.float32).copy()
    tint(rgb, mask, color)
    return np.round(rgb).astype(np.uint8)


def answer_picture(image: Image.Image, mask: np.ndarray, caption: str, color: Sequence[int] = PALETTE[0]) -> np.ndarray:
    """The photo with ``mask`` tinted and outlined, and ``caption`` (phrase and score) under it."""
    return _with_caption(overlay_picture(image, mask, color), [(caption, color)])


def answers_picture(image: Image.Image, masks: Sequence[np.ndarray], captions: Sequence[str]) -> np.ndarray:
    """Every phrase's mask on one photo in its own colour, with a legend of phrases and scores.

    Where masks overlap, the later phrase's tint lies over the earlier's.
    """
    rgb = np.asarray(image, dtype=np.float32).copy()
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(masks))]
    for mask, color in zip(masks, colors):
        tint(rgb, mask, color)
    return _with_caption(np.round(rgb).astype(np.uint8), list(zip(captions, colors)))


def top_k_picture(
    image: Image.Image, masks: np.ndarray, ranking: Sequence[tuple[int, float]], phrase: str, k: int = 5,
    label: str = "score", tile_width: int = 320,
) -> np.ndarray:
    """The first ``k`` proposals of a result's ranking (the answer first) side by side, each captioned with its
    number and ``label`` value (the score the method chose with).

    Shows why the answer won: how close the runners-up scored and what they cover.
    """
    order = list(ranking[:k])
    scale = tile_width / image.width
    size = (tile_width, max(1, round(image.height * scale)))
    small = image.resize(size, Image.BILINEAR)
    tiles = []
    for rank, (index, value) in enumerate(order):
        rgb = np.asarray(small, dtype=np.float32).copy()
        mask = np.asarray(Image.fromarray(masks[index]).resize(size, Image.NEAREST))
        tint(rgb, mask, PALETTE[0] if rank == 0 else PALETTE[2])
        caption = f"{'answer: ' if rank == 0 else ''}proposal {index}, {label} {value:.4f}"
        tiles.append(_with_caption(np.round(rgb).astype(np.uint8), [(caption, None)]))
    if not tiles:  # a phrase whose noun phrase got no candidate (phrase-dependent proposals)
        return _with_caption(np.asarray(small), [(f"{phrase!r}: no candidate proposals", None)])
    gap = np.full((tiles[0].shape[0], 8, 3), 255, dtype=np.uint8)
    row = np.concatenate([part for tile in tiles for part in (tile, gap)][:-1], axis=1)
    return _with_caption(row, [(f"{phrase!r}: top {len(order)} of {len(masks)} proposals", None)])
