"""A mask marked on its photo: tinted in a colour of the palette and outlined, the one rule every picture
follows (``batch``'s overlays, the pictures of :mod:`globallocal.outputs.drawing`, the page of ``serve``).

The marks work in place on a float32 RGB (H, W, 3) array of the photo; :func:`overlay_picture` is the photo
with one mask marked, as uint8 for :func:`~globallocal.data.images.png_bytes` and
:func:`~globallocal.data.images.save_png`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

__all__ = ["PALETTE", "TINT_ALPHA", "fill", "outline", "overlay_picture", "tint"]

# Colours far apart from each other and from skin and sky tones (after Trubetskoy's list of distinct colours).
PALETTE = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
)
TINT_ALPHA = 0.5


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask."""
    padded = np.pad(mask, 1, mode="constant", constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _grow(mask: np.ndarray) -> np.ndarray:
    """The mask grown by one pixel (4-neighbourhood)."""
    padded = np.pad(mask, 1, mode="constant", constant_values=False)
    return padded[1:-1, 1:-1] | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]


def fill(rgb: np.ndarray, mask: np.ndarray, color: Sequence[int]) -> None:
    """Tint ``mask`` in place, ``TINT_ALPHA`` of ``color`` over the photo."""
    rgb[mask] = (1 - TINT_ALPHA) * rgb[mask] + TINT_ALPHA * np.asarray(color, dtype=np.float32)


def tint(rgb: np.ndarray, mask: np.ndarray, color: Sequence[int]) -> None:
    """Tint ``mask`` in place and outline it white on black, which stands out on the tint and on any photo."""
    fill(rgb, mask, color)
    edge = _boundary(mask)
    rgb[_grow(edge) & ~mask] = 0.0
    rgb[edge] = 255.0


def outline(rgb: np.ndarray, mask: np.ndarray, color: Sequence[int], distance: int) -> None:
    """A two-pixel outline of ``color`` on black around ``mask`` grown by ``distance`` pixels."""
    for _ in range(distance):
        mask = _grow(mask)
    edge = _grow(_boundary(mask)) & mask
    rgb[_grow(edge) & ~mask] = 0.0
    rgb[edge] = np.asarray(color, dtype=np.float32)


def overlay_picture(image: Image.Image, mask: np.ndarray, color: Sequence[int] = PALETTE[0]) -> np.ndarray:
    """The photo with ``mask`` tinted and outlined (uint8 (H, W, 3), the photo's size)."""
    rgb = np.asarray(image, dtype=np.float32).copy()
    tint(rgb, mask, color)
    return np.round(rgb).astype(np.uint8)
