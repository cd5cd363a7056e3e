"""The feature cache's two stores: per-image entries (proposals and image features) and text features, each
entry read back as data (:mod:`globallocal.runs.cache` explains the keys).

A cache entry is a file anybody can damage, copy or replace, so it is
checked before it is used: read without blocking and without allocating more
than the file holds (:mod:`globallocal.data.npz`); every array of the dtype
and shape its meaning needs (one row per proposal, the image's size within
the pixel limit, RLE counts that decode to exactly that size and to the
stored areas, the method's feature tensors of the shapes it computes, a JSON
object of extra information); a name from a file (a record's ``cache_entry``)
never reaching outside the store's folder. An entry copied under another
name is simply a miss; a damaged one is a :class:`DamagedEntry`, which
:meth:`VisualStore.load` and :meth:`TextStore.load` report in one warning
line and treat as missing (the evaluation computes it again), and which a
sweep, which cannot compute anything, refuses.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as coco_mask

from ..data.bounded import MAX_PIXELS, check_shape, parse_json
from ..data.coco_masks import checked_rle, decode
from ..data.images import atomic_write
from ..data.npz import NpzError, read_npz
from ..errors import InputError
from ..proposals import Proposals

__all__ = ["DamagedEntry", "FeatureShapes", "ImageEntry", "TextStore", "VisualStore", "check_features"]

# Stored arrays holding the method's tensors are named with this prefix.
_TENSOR_PREFIX = "tensor_"
# What an entry's name may hold (entry_name writes "<image id>-<hex digest>"): no separator, no dot.
_ENTRY_NAME = re.compile(r"[A-Za-z0-9_-]{1,200}")

FeatureShapes = Mapping[str, tuple[int | None, ...]]
"""The shape of each named feature tensor an entry must hold (None: any size along that axis)."""


class DamagedEntry(InputError):
    """A cache entry that is there but cannot be used; the message names its file and what is wrong."""


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays as .npz under a temporary name, then rename it into place (no fsync: a cache can be rebuilt)."""
    atomic_write(path, lambda handle: np.savez(handle, **arrays), sync=False)


def _read_npz(path: Path, label: str) -> dict[str, np.ndarray] | None:
    """Every array of an entry file (``label`` names it); None when it is absent, :class:`DamagedEntry` when it
    is not a readable one."""
    try:
        return read_npz(path, what="cache entry")
    except FileNotFoundError:
        return None
    except NpzError as error:
        raise DamagedEntry(f"{label} is damaged: {error}") from None
    except InputError as error:  # a FIFO or folder where the entry should be
        raise DamagedEntry(str(error)) from None


def _array(data: dict[str, np.ndarray], key: str, dtype: Any, shape: tuple[int | None, ...]) -> np.ndarray:
    """``data[key]``, refused (ValueError saying why) unless it has that dtype and shape (None: any size)."""
    if key not in data:
        raise ValueError(f"it has no {key}")
    value = data[key]
    if value.dtype != dtype or value.ndim != len(shape) or any(
        size is not None and size != actual for size, actual in zip(shape, value.shape)
    ):
        wanted = "x".join("N" if size is None else str(size) for size in shape) or "a scalar"
        raise ValueError(f"its array {key} is {value.dtype} {value.shape}, not {np.dtype(dtype)} of shape {wanted}")
    return value


def check_features(tensors: Mapping[str, Any], shapes: FeatureShapes) -> None:
    """Refuse (ValueError saying which) feature tensors without the names and shapes ``shapes`` gives."""
    for name, shape in shapes.items():
        if name not in tensors:
            raise ValueError(f"it has no {name} features")
        actual = tuple(tensors[name].shape)
        if len(actual) != len(shape) or any(size is not None and size != got for size, got in zip(shape, actual)):
            wanted = "x".join("N" if size is None else str(size) for size in shape)
            raise ValueError(f"its {name} features are {actual}, not of shape {wanted}")


def _decode_masks(counts: list[bytes], height: int, width: int) -> torch.Tensor:
    if not counts:
        return torch.zeros((0, height, width), dtype=torch.bool)
    masks = decode([{"size": [height, width], "counts": c} for c in counts])
    return torch.from_numpy(masks).permute(2, 0, 1).contiguous().bool()


def _encode_masks(masks: torch.Tensor) -> list[bytes]:
    if len(masks) == 0:
        return []
    fortran = np.asfortranarray(masks.permute(1, 2, 0).numpy().astype(np.uint8))
    return [rle["counts"] for rle in coco_mask.encode(fortran)]


@dataclass
class ImageEntry:
    """One image's cached proposals and the method's image features (float32, CPU)."""

    image_size: tuple[int, int]
    rle_counts: list[bytes]
    boxes: torch.Tensor
    scores: torch.Tensor
    areas: np.ndarray
    tensors: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)
    """What else the source said of these proposals (phrase-dependent ones: the step that found them, its prompt)."""

    def proposals(self) -> Proposals:
        """The proposals, masks decoded."""
        return Proposals(_decode_masks(self.rle_counts, *self.image_size), self.boxes, self.scores)


def _image_entry(data: dict[str, np.ndarray], shapes: Callable[[int], FeatureShapes] | None,
                 image_size: tuple[int, int] | None, check_info: Callable[[dict[str, Any]], None] | None) -> ImageEntry:
    """The entry the arrays hold, checked (ValueError saying what is wrong)."""
    height, width = (int(value) for value in _array(data, "image_size", np.int64, (2,)))
    if not (0 < height and 0 < width and height * width <= MAX_PIXELS):
        raise ValueError(f"its image size {height}x{width} is not a picture's the tool reads")
    if image_size is not None and (height, width) != tuple(image_size):
        raise ValueError(f"its image size {height}x{width} is not the photo's {image_size[0]}x{image_size[1]}")
    lengths = _array(data, "rle_lengths", np.int64, (None,))
    blob = _array(data, "rle", np.uint8, (None,)).tobytes()
    count = len(lengths)
    if (lengths < 0).any() or int(lengths.sum()) != len(blob):
        raise ValueError("its RLE lengths do not add up to its RLE bytes")
    boxes = _array(data, "boxes", np.float32, (count, 4))
    scores = _array(data, "scores", np.float32, (count,))
    areas = _array(data, "areas", np.int64, (count,))
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ValueError("its boxes or scores are not finite")
    ends = np.cumsum(lengths)
    counts = [blob[end - length : end] for length, end in zip(lengths, ends)]
    rles = []
    for index, rle in enumerate(counts):
        try:  # counts that do not add up to the image's pixels would be decoded from uninitialised memory
            rles.append(checked_rle({"size": [height, width], "counts": rle}, height, width, f"mask {index}"))
        except InputError as error:
            raise ValueError(f"its {error}") from None
    if rles and not np.array_equal(coco_mask.area(rles), areas):
        raise ValueError("its areas are not those of its masks")
    tensors = {key.removeprefix(_TENSOR_PREFIX): value for key, value in data.items() if key.startswith(_TENSOR_PREFIX)}
    for key, value in tensors.items():
        if value.dtype != np.float32:
            raise ValueError(f"its {key} features are {value.dtype}, not float32")
    if shapes is not None and count:
        check_features(tensors, shapes(count))
    info: Any = {}
    if "info" in data:
        try:
            info = parse_json(_array(data, "info", np.uint8, (None,)).tobytes(), "its information")
            check_shape(info, {}, "its information")
        except InputError as error:
            raise ValueError(str(error)) from None
    if check_info is not None:
        check_info(info)
    return ImageEntry(
        image_size=(height, width),
        rle_counts=counts,
        boxes=torch.from_numpy(boxes),
        scores=torch.from_numpy(scores),
        areas=areas,
        tensors={key: torch.from_numpy(value) for key, value in tensors.items()},
        info=info,
    )


class VisualStore:
    """Per-image entries of one visual key's folder."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path(self, name: str) -> Path:
        """The entry's file; a name that could reach outside the folder (read from a record) is refused."""
        if not isinstance(name, str) or not _ENTRY_NAME.fullmatch(name):
            raise InputError(f"{name!r} is not the name of a cache entry (letters, digits, - and _ only)")
        return self.directory / f"{name}.npz"

    def read(self, name: str, shapes: Callable[[int], FeatureShapes] | None = None,
             image_size: tuple[int, int] | None = None,
             check_info: Callable[[dict[str, Any]], None] | None = None) -> ImageEntry | None:
        """The entry; None when it is absent or another's (a copy under this name); :class:`DamagedEntry` when
        it is damaged or not what is expected: ``shapes(N)``, the features of its N proposals; ``image_size``,
        the photo's (H, W); ``check_info(info)`` raises ValueError for information that is not the source's."""
        path = self.path(name)
        data = _read_npz(path, f"cache entry {path}")
        # The stored name guards against an entry copied or renamed to another image's name.
        if data is None or "key" not in data or data["key"].tobytes() != name.encode("utf-8"):
            return None
        try:
            return _image_entry(data, shapes, image_size, check_info)
        except ValueError as error:
            raise DamagedEntry(f"cache entry {path} is damaged: {error}") from None

    def load(self, name: str, shapes: Callable[[int], FeatureShapes] | None = None,
             image_size: tuple[int, int] | None = None,
             check_info: Callable[[dict[str, Any]], None] | None = None) -> ImageEntry | None:
        """:meth:`read`, with a damaged entry told in one warning line and taken as missing (it is computed and
        written again)."""
        try:
            return self.read(name, shapes, image_size, check_info)
        except DamagedEntry as error:
            warnings.warn(f"{error}; computing it again", stacklevel=2)
            return None

    def save(
        self, name: str, proposals: Proposals, tensors: dict[str, torch.Tensor], info: dict[str, Any] | None = None
    ) -> None:
        counts = _encode_masks(proposals.masks)
        text = json.dumps(info, sort_keys=True).encode("utf-8")
        extra = {"info": np.frombuffer(text, dtype=np.uint8)} if info else {}
        _write_npz(
            self.path(name),
            {
                "key": np.frombuffer(name.encode("utf-8"), dtype=np.uint8),
                "image_size": np.array(proposals.image_size, dtype=np.int64),
                "rle": np.frombuffer(b"".join(counts), dtype=np.uint8),
                "rle_lengths": np.array([len(c) for c in counts], dtype=np.int64),
                "boxes": proposals.boxes.numpy(),
                "scores": proposals.scores.numpy(),
                "areas": proposals.masks.flatten(1).sum(dim=1).numpy().astype(np.int64),
                **{
                    _TENSOR_PREFIX + key: value.detach().float().cpu().numpy()
                    for key, value in tensors.items()
                },
                **extra,
            },
        )


class TextStore:
    """Raw text features of one text key's folder, one file per string."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path(self, text: str) -> Path:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return self.directory / digest[:2] / f"{digest}.npz"

    def read(self, texts: list[str], width: int | None = None) -> dict[str, torch.Tensor]:
        """The features (``width``,) of those ``texts`` that are cached (a file copied to another string's name
        is not); :class:`DamagedEntry` for the first that is damaged."""
        found = {}
        for text in texts:
            label = f"cache entry {self.path(text)} (the text features of {text!r:.60})"
            data = _read_npz(self.path(text), label)
            # The stored string guards against a file copied to the wrong name.
            if data is None or "text" not in data or data["text"].tobytes() != text.encode("utf-8"):
                continue
            try:
                feature = _array(data, "feature", np.float32, (width,))
                if set(data) != {"text", "feature"} or not np.isfinite(feature).all():
                    raise ValueError("it holds other arrays or numbers that are not finite")
            except ValueError as error:
                raise DamagedEntry(f"{label} is damaged: {error}") from None
            found[text] = torch.from_numpy(feature)
        return found

    def load(self, texts: list[str], width: int | None = None) -> dict[str, torch.Tensor]:
        """:meth:`read`, each damaged entry told in one warning line and taken as missing."""
        found: dict[str, torch.Tensor] = {}
        for text in texts:
            try:
                found.update(self.read([text], width))
            except DamagedEntry as error:
                warnings.warn(f"{error}; computing it again", stacklevel=2)
        return found

    def save(self, text: str, feature: torch.Tensor) -> None:
        _write_npz(
            self.path(text),
            {
                "text": np.frombuffer(text.encode("utf-8"), dtype=np.uint8),
                "feature": feature.detach().float().cpu().numpy(),
            },
        )
