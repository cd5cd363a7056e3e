"""Where TCL looks: the resized image's windows and each window's padding (SPEC-tcl sections 3 and 4.1).

Everything here is integer geometry, so the per-phrase half of the pipeline
can recompute it from the photo's size instead of storing it with the image
features.
"""

from __future__ import annotations

from dataclasses import dataclass

SLIDE_SIZE = 448
SLIDE_STRIDE = 224


@dataclass(frozen=True)
class Window:
    """A window of the resized image: rows top .. top + height, columns left .. left + width."""

    top: int
    left: int
    height: int
    width: int


@dataclass(frozen=True)
class Padding:
    """Zero columns and rows around a window so that both sides are multiples of the patch size."""

    top: int
    bottom: int
    left: int
    right: int

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        return height + self.top + self.bottom, width + self.left + self.right


def _starts(length: int, size: int, stride: int) -> list[tuple[int, int]]:
    """(start, end) of the windows along one side: the last one is pushed back inside the image."""
    count = max(length - size + stride - 1, 0) // stride + 1
    spans = []
    for index in range(count):
        end = min(stride * index + size, length)
        spans.append((max(end - size, 0), end))
    return spans


def slide_windows(height: int, width: int, size: int = SLIDE_SIZE, stride: int = SLIDE_STRIDE) -> list[Window]:
    """mmsegmentation's sliding windows over a height x width image, row-major.

    A side shorter than ``size`` gets one window covering all of it, so every
    window has the same size: min(size, height) x min(size, width).
    """
    rows = _starts(height, size, stride)
    columns = _starts(width, size, stride)
    return [Window(y1, x1, y2 - y1, x2 - x1) for y1, y2 in rows for x1, x2 in columns]


def image_windows(mode: str, height: int, width: int) -> list[Window]:
    """The windows of a mode over the resized image: slide's overlapping ones, or the whole image."""
    if mode == "slide":
        return slide_windows(height, width)
    return [Window(0, 0, height, width)]


def patch_padding(height: int, width: int, patch: int = 16) -> Padding:
    """Pad each side to a multiple of ``patch``: half (rounded down) before, the rest after."""
    rows, columns = -height % patch, -width % patch
    return Padding(rows // 2, rows - rows // 2, columns // 2, columns - columns // 2)
