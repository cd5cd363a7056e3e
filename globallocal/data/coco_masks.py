"""COCO segmentations (polygons, RLE) checked before pycocotools sees them.

pycocotools is native code that trusts its input: a polygon coordinate of
1e12 crashes the process (and 1e7 costs gigabytes for a triangle), and an RLE
whose counts do not add up to height x width pixels is "decoded" with the
rest of the mask taken from uninitialised memory, so masks and metrics change
from run to run. Every segmentation read from a file (instances.json, a
``--masks`` JSON) goes through :func:`polygon_rles` or :func:`checked_rle`
first; anything malformed is refused with one line naming the record.

Polygons whose coordinates lie more than one image size outside the image
are *refused*, not clipped: clipping would silently change the object's
shape, and no real annotation strays that far (COCO's stray by a pixel or
two, which pycocotools handles).
"""

from __future__ import annotations

import math
import warnings
from numbers import Real
from typing import TYPE_CHECKING, Any

import numpy as np
from pycocotools import mask as coco_mask

from ..errors import InputError
from .images import wrong_size

if TYPE_CHECKING:
    import torch

__all__ = ["checked_rle", "decode", "decode_rle_string", "mask_rle", "polygon_rles"]

_MAX_COUNT = (1 << 32) - 1  # pycocotools stores counts as uint32


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def polygon_rles(polygons: Any, height: int, width: int, name: str) -> list[dict[str, Any]]:
    """``frPyObjects`` of a checked polygon list: one RLE per part.

    Keeps pycocotools' reading of a list whose first part has exactly four
    numbers as [x, y, w, h] boxes (the published code's quirk), with every
    part then required to be a box. Otherwise each part needs an even count
    of at least 6 numbers (3 points). Every number must be finite and within
    one image size of the image (``name`` is used in the messages).
    """
    if not isinstance(polygons, list) or not all(isinstance(part, list) for part in polygons):
        raise InputError(f"{name}: a polygon segmentation must be a list of lists of numbers")
    if not polygons:
        return []
    boxes = len(polygons[0]) == 4
    margin = max(height, width)
    for index, part in enumerate(polygons):
        if not all(_is_number(value) and math.isfinite(value) for value in part):
            raise InputError(f"{name}: polygon part {index} holds a value that is not a finite number")
        if boxes and len(part) != 4:
            raise InputError(f"{name}: part {index} has {len(part)} numbers, but the first has 4 (a box)")
        if not boxes and (len(part) < 6 or len(part) % 2):
            raise InputError(
                f"{name}: polygon part {index} has {len(part)} numbers; a polygon needs an even count of at "
                "least 6 (x, y of 3 or more points)"
            )
        xs, ys = part[0::2], part[1::2]
        if boxes:
            xs, ys = [part[0], part[0] + part[2]], [part[1], part[1] + part[3]]
        if min(xs) < -margin or max(xs) > width + margin or min(ys) < -margin or max(ys) > height + margin:
            raise InputError(
                f"{name}: polygon part {index} reaches ({max(map(abs, xs)):g}, {max(map(abs, ys)):g}), more than "
                f"one image size outside the {width}x{height} image; refused rather than clipped"
            )
    if boxes:
        # pycocotools reads a first part of 4 numbers as boxes, but only accepts boxes as an array.
        return coco_mask.frPyObjects(np.asarray(polygons, dtype=np.float64), height, width)
    return coco_mask.frPyObjects(polygons, height, width)


def decode_rle_string(counts: bytes) -> list[int]:
    """The run lengths of COCO's compressed RLE string (pycocotools' ``rleFrString``, checked).

    Each count is 5 bits per character (``'0'`` + value, bit 0x20 meaning
    "more follows", bit 0x10 of the last character the sign) and, from the
    third count on, a difference to the count two before.
    """
    values: list[int] = []
    position = 0
    while position < len(counts):
        value = shift = 0
        while True:
            if position >= len(counts):
                raise ValueError("the string ends inside a count")
            code = counts[position] - 48
            if not 0 <= code < 64:
                raise ValueError(f"character {chr(counts[position])!r} is not an RLE digit")
            value |= (code & 0x1F) << shift
            position += 1
            shift += 5
            if not code & 0x20:
                if code & 0x10:
                    value -= 1 << shift
                break
        if len(values) > 2:
            value += values[-2]
        values.append(value)
    return values


def checked_rle(rle: Any, height: int, width: int, name: str) -> dict[str, Any]:
    """A compressed RLE ``{"size", "counts": bytes}`` for pycocotools, from a checked COCO RLE.

    ``size`` must be ``[height, width]`` of the image; ``counts`` a list of
    non-negative integers or a compressed ASCII string; either way the counts
    must add up to exactly height x width pixels.
    """
    if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
        raise InputError(f"{name}: an RLE must be an object with 'size' and 'counts'")
    size = rle["size"]
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(value, int) and not isinstance(value, bool) for value in size)
    ):
        raise InputError(f"{name}: RLE size must be [height, width] as two integers, got {size!r}")
    if tuple(size) != (height, width):
        raise InputError(wrong_size(f"{name}: RLE is", tuple(size), (height, width)))
    counts = rle["counts"]
    if isinstance(counts, list):
        if not all(isinstance(value, int) and not isinstance(value, bool) and value >= 0 for value in counts):
            raise InputError(f"{name}: RLE counts must be non-negative integers")
        if any(value > _MAX_COUNT for value in counts):
            raise InputError(f"{name}: an RLE count overflows (more than {_MAX_COUNT})")
        values = counts
    elif isinstance(counts, (str, bytes)):
        data = counts.encode("utf-8") if isinstance(counts, str) else counts
        if not data.isascii():
            raise InputError(f"{name}: compressed RLE counts must be ASCII")
        try:
            values = decode_rle_string(data)
        except ValueError as error:
            raise InputError(f"{name}: compressed RLE counts are malformed ({error})") from None
        if any(value < 0 or value > _MAX_COUNT for value in values):
            raise InputError(f"{name}: compressed RLE counts decode to a negative or overflowing run length")
    else:
        raise InputError(f"{name}: RLE counts must be a list of integers or a string, got {type(counts).__name__}")
    if sum(values) != height * width:
        raise InputError(
            f"{name}: RLE counts cover {sum(values)} pixels but a {width}x{height} mask has {height * width}"
        )
    if isinstance(counts, list):
        return coco_mask.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    return {"size": [height, width], "counts": data}


def decode(rles: Any) -> np.ndarray:
    """``pycocotools.mask.decode`` without its NumPy 2 ``copy=False`` DeprecationWarning.

    The warning is about pycocotools' own array wrapper, not about the call;
    left alone it would fire once per mask and turn fatal under ``-W error``.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"pycocotools\.")
        return coco_mask.decode(rles)


def mask_rle(mask: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """A bool (H, W) mask as compressed COCO RLE with a text ``counts`` (what ``segment --json`` and evaluation
    records under ``--save-masks rle`` hold; :func:`checked_rle` reads it back)."""
    if hasattr(mask, "cpu"):  # a torch tensor (duck-typed: reading a dataset needs no torch)
        mask = mask.cpu().numpy()
    with warnings.catch_warnings():
        # pycocotools' compiled code trips NumPy 2's __array__ copy-keyword deprecation; the result is right.
        warnings.simplefilter("ignore", DeprecationWarning)
        rle = coco_mask.encode(np.asfortranarray(np.asarray(mask).astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
