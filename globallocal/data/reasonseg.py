"""Reading ReasonSeg (LISA, Lai et al., CVPR 2024) for evaluation, as LISA's own evaluation reads it.

Layout, as released::

    <data_root>/{train,val,test}/<name>.jpg
    <data_root>/{train,val,test}/<name>.json    labelme: text (a list), is_sentence, shapes (label, points)

One sample per photo; its query is ``text[0]`` (stripped), as LISA's
``ValDataset`` takes it; ``is_sentence`` true makes it a long query (the
``long`` subset), false a short one (``short``). A JSON file that is not
UTF-8 is read as cp1252, as LISA's ``get_mask_from_json`` falls back to.

Ground truth, exactly as ``get_mask_from_json`` (dvlab-research/LISA,
``utils/data_processing.py``) draws it, with OpenCV itself: shapes labelled
``flag`` (any case) are dropped; each other shape's area is measured by
drawing it alone (a closed outline of thickness 1, then filled; points cast
to int32, i.e. truncated towards zero); the shapes are drawn in the order
``numpy.argsort(areas)[::-1]`` gives (largest first, ties as that call leaves
them) with the value 1, or 255 where the label contains ``ignore`` (any
case), later shapes overwriting earlier ones. Pixels of value 255 count in
neither the intersection nor the union. The canvas is the photo as OpenCV's
``imread`` decodes it, EXIF orientation applied (labelme applies it too).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from ..errors import ImageError, InputError
from .bounded import MAX_JSON_BYTES, open_regular, parse_json, read_regular
from .images import load_image, open_checked
from .refer import ImageGroup, ImageRecord, Sentence, instance_stack, missing_images

__all__ = [
    "REASONSEG",
    "REASONSEG_SPLITS",
    "REASONSEG_SUBSETS",
    "ReasonSegDataset",
    "ReasonSegSample",
    "Shape",
    "label_map",
]

REASONSEG = "reasonseg"
REASONSEG_SPLITS = ("val", "test")  # train is left out: every method here is zero-shot
REASONSEG_SUBSETS = ("all", "short", "long")
TARGET, IGNORED = 1, 255
# A point may lie a little outside the photo, but not by more than the photo's own size: further is a broken file
# (and would overflow int32, as LISA casts the points).
_MARGIN = 1.0
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


@dataclass(frozen=True)
class Shape:
    """A labelled polygon, its points as LISA casts them (int32: truncated towards zero)."""

    label: str
    points: tuple[tuple[int, int], ...]

    @property
    def value(self) -> int:
        """255 (ignored in the metrics) where the label contains "ignore", else 1 (target)."""
        return IGNORED if "ignore" in self.label.lower() else TARGET

    def draw(self, canvas: np.ndarray, value: int) -> None:
        """LISA's two calls: the closed outline (thickness 1), then the fill."""
        import cv2  # on first use: reading the split (and `report`) needs no OpenCV

        points = np.array([self.points], dtype=np.int32)
        cv2.polylines(canvas, points, True, value, 1)
        cv2.fillPoly(canvas, points, value)


@dataclass(frozen=True)
class ReasonSegSample:
    """One photo of the split, its query and its shapes (those labelled flag left out), in file order."""

    name: str
    image_id: int
    query: str
    is_sentence: bool
    shapes: tuple[Shape, ...]

    @property
    def subset(self) -> str:
        return "long" if self.is_sentence else "short"

    @property
    def sentences(self) -> tuple[Sentence, ...]:
        """The evaluation loop answers sentences; a sample has exactly one, its query."""
        return (Sentence(sent_id=0, raw=self.query, sent=self.query),)


def label_map(shapes: tuple[Shape, ...] | list[Shape], height: int, width: int) -> np.ndarray:
    """The ground truth as ``get_mask_from_json`` draws it, uint8 (H, W): 0, 1 (target) or 255 (ignored)."""
    areas = []
    for shape in shapes:
        alone = np.zeros((height, width), dtype=np.uint8)
        shape.draw(alone, TARGET)
        areas.append(alone.sum())
    labels = np.zeros((height, width), dtype=np.uint8)
    for index in np.argsort(areas)[::-1]:  # largest first, ties exactly as LISA's own call orders them
        shapes[index].draw(labels, shapes[index].value)
    return labels


def sample_id(name: str) -> int:
    """A stable integer id of a sample's name (48 bits of its SHA-256): records are keyed by integers, and an
    id that does not move when files are added keeps a resumed run aligned."""
    return int(hashlib.sha256(name.encode("utf-8")).hexdigest()[:12], 16)


def read_annotation(path: Path) -> Any:
    """A sample's JSON: UTF-8, or cp1252 when it is not (LISA's fallback); bounded and checked as data."""
    data = read_regular(path, MAX_JSON_BYTES, what="ReasonSeg file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = data.decode("cp1252")
        except UnicodeDecodeError as error:
            raise InputError(f"ReasonSeg file {path} is neither UTF-8 nor cp1252 text (byte {error.start})") from None
    return parse_json(text, f"ReasonSeg file {path}")


def _point(point: Any, size: tuple[int, int] | None) -> tuple[int, int]:
    if (
        not isinstance(point, list)
        or len(point) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in point)
    ):
        raise ValueError(f"a point must be [x, y] of two finite numbers, got {point!r}")
    x, y = point
    if size is not None:
        height, width = size
        if not (-_MARGIN * width <= x <= (1 + _MARGIN) * width and -_MARGIN * height <= y <= (1 + _MARGIN) * height):
            raise ValueError(f"point {point} is far outside the {width}x{height} photo")
    return int(x), int(y)  # truncation towards zero, as numpy's cast to int32


def parse_sample(value: Any, path: Path, size: tuple[int, int] | None) -> ReasonSegSample:
    """A sample's JSON checked (points against the photo's (H, W) ``size`` when known); one line naming the file
    and the entry otherwise."""
    where = f"ReasonSeg file {path}"
    if not isinstance(value, dict):
        raise InputError(f"{where} does not hold an object")
    text, is_sentence, shapes = value.get("text"), value.get("is_sentence"), value.get("shapes")
    if not isinstance(text, list) or not text or not isinstance(text[0], str) or not text[0].strip():
        raise InputError(f"{where}: text must be a list whose first entry is the query, got {text!r:.60}")
    if not isinstance(is_sentence, bool):
        raise InputError(f"{where}: is_sentence must be true or false, got {is_sentence!r}")
    if not isinstance(shapes, list):
        raise InputError(f"{where}: shapes must be a list")
    kept = []
    for index, shape in enumerate(shapes):
        if not isinstance(shape, dict) or not isinstance(shape.get("label"), str):
            raise InputError(f"{where}: shapes[{index}] must be an object with a string label")
        label, points = shape["label"], shape.get("points")
        if label.lower() == "flag":  # "meaningless deprecated annotations", skipped by LISA before anything else
            continue
        entry = f"{where}: shapes[{index}] (label {label!r})"
        if not isinstance(points, list) or not points:
            raise InputError(f"{entry} has no points")
        try:
            kept.append(Shape(label, tuple(_point(point, size) for point in points)))
        except ValueError as error:
            raise InputError(f"{entry}: {error}") from None
    name = path.stem
    return ReasonSegSample(name, sample_id(name), text[0].strip(), is_sentence, tuple(kept))


def photo_size(path: Path) -> tuple[int, int]:
    """(H, W) of a photo as OpenCV's imread gives it (EXIF orientation applied), from its header alone."""
    try:
        with os.fdopen(open_regular(path, what="photo"), "rb") as handle, open_checked(handle, path, "photo") as image:
            width, height = image.size
            orientation = image.getexif().get(ExifTags.Base.Orientation)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"cannot read photo {path}: {error}") from None
    return (width, height) if orientation in _ROTATED else (height, width)


class ReasonSegDataset:
    """The samples of a ReasonSeg split (by name), one photo each, with the interface of
    :mod:`globallocal.runs.evaluate`. ``subset``: all, short or long."""

    skips_missing_photos: ClassVar[bool] = True

    def __init__(self, data_root: str | Path, split: str, subset: str = "all") -> None:
        if split not in REASONSEG_SPLITS:
            raise InputError(f"invalid reasonseg split {split!r}; use one of {', '.join(REASONSEG_SPLITS)}")
        if subset not in REASONSEG_SUBSETS:
            raise InputError(f"unknown --subset {subset!r} for reasonseg; use one of {', '.join(REASONSEG_SUBSETS)}")
        self.dataset, self.split, self.subset = REASONSEG, split, subset
        self.folder = Path(data_root) / split
        if not self.folder.is_dir():
            raise InputError(f"ReasonSeg folder not found: {self.folder}; is --data-root the folder holding val/ "
                             "and test/?")
        files = sorted(path for path in self.folder.iterdir() if path.suffix in (".json", ".jpg"))
        annotations = {path.stem for path in files if path.suffix == ".json"}
        orphan = next((path for path in files if path.suffix == ".jpg" and path.stem not in annotations), None)
        if orphan is not None:
            raise InputError(f"photo {orphan} has no annotation {orphan.stem}.json beside it")
        if not annotations:
            raise InputError(f"no ReasonSeg annotation (NAME.json beside NAME.jpg) in {self.folder}")
        self._samples: dict[int, ReasonSegSample] = {}
        self._records: dict[int, ImageRecord] = {}
        groups = []
        total = 0
        for path in (path for path in files if path.suffix == ".json"):
            photo = path.with_suffix(".jpg")
            size = photo_size(photo) if photo.is_file() else None
            sample = parse_sample(read_annotation(path), path, size)
            total += 1
            if sample.image_id in self._samples:
                raise InputError(f"{path.name} and {self._samples[sample.image_id].name}.json share an id; rename one")
            if subset not in ("all", sample.subset):
                continue
            self._samples[sample.image_id] = sample
            height, width = size or (0, 0)  # a missing photo is counted and left out, never drawn
            self._records[sample.image_id] = ImageRecord(sample.image_id, photo.name, height, width)
            groups.append(ImageGroup(self._records[sample.image_id], (sample,)))
        self._groups = groups
        self._in_split = total
        if not groups:
            raise InputError(f"no sample of ReasonSeg {split} is a {subset} query ({total} in {self.folder})")
        self._labels: tuple[int, np.ndarray] | None = None  # the last sample's label map (mask and ignore share it)

    def images(self) -> list[ImageGroup]:
        """The selected samples, one photo each, by name."""
        return list(self._groups)

    def image_path(self, image: ImageRecord) -> Path:
        return self.folder / image.file_name

    def load_image(self, image: ImageRecord) -> Image.Image:
        """The photo as RGB with its EXIF orientation applied (as OpenCV's imread, which LISA reads it with)."""
        path = self.image_path(image)
        if not path.is_file():
            raise InputError(f"photo not found: {path}")
        photo = load_image(path)
        if (photo.height, photo.width) != (image.height, image.width):
            raise ImageError(f"photo {path} is {photo.width}x{photo.height} but was {image.width}x{image.height} "
                             "when the split was read; was it replaced during the run?")
        return photo

    def missing_images(self, groups: list[ImageGroup] | None = None) -> list[Path]:
        return missing_images(self.image_path, self._groups if groups is None else groups)

    def _label_map(self, sample: ReasonSegSample) -> np.ndarray:
        if self._labels is None or self._labels[0] != sample.image_id:
            image = self._records[sample.image_id]
            self._labels = sample.image_id, label_map(sample.shapes, image.height, image.width)
        return self._labels[1]

    def gt_mask(self, sample: ReasonSegSample) -> np.ndarray:
        """The target pixels (value 1), bool (H, W)."""
        return self._label_map(sample) == TARGET

    def ignore_mask(self, sample: ReasonSegSample) -> np.ndarray:
        """The pixels of value 255, which count in neither the intersection nor the union."""
        return self._label_map(sample) == IGNORED

    def instance_masks(self, image_id: int) -> np.ndarray:
        """Each target shape drawn alone (the ``gt`` oracle), bool (N, H, W), in file order; empty ones dropped."""
        sample, image = self._samples[image_id], self._records[image_id]
        height, width = image.height, image.width
        masks = []
        for shape in sample.shapes:
            if shape.value == TARGET:
                alone = np.zeros((height, width), dtype=np.uint8)
                shape.draw(alone, TARGET)
                masks.append(alone.astype(bool))
        return instance_stack(masks, height, width)

    def sentence_fields(self, sample: ReasonSegSample, sentence: Sentence) -> dict[str, Any]:
        return {"name": sample.name, "subsets": [sample.subset]}

    def sentence_label(self, sample: ReasonSegSample, sentence: Sentence) -> str:
        return f"sample {sample.name}"

    def mask_name(self, sample: ReasonSegSample, sentence: Sentence) -> str:
        return f"{sample.name}.png"

    def report_notes(self) -> dict[str, Any]:
        return {"subset": self.subset, "samples_in_split": self._in_split, "samples": len(self._groups)}
