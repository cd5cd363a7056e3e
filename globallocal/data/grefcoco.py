"""Reading gRefCOCO (GRES, Liu et al., CVPR 2023) for evaluation, as its official loader reads it.

Layout, as released::

    <data_root>/grefcoco/grefs(unc).p       refs (the official loader tries this first)
    <data_root>/grefcoco/grefs(unc).json    the same refs as JSON (read when there is no pickle)
    <data_root>/grefcoco/instances.json     COCO images, annotations, categories
    <images_dir>/COCO_train2014_<image_id, 12 digits>.jpg

A ref names a list of annotations (``ann_id``; a scalar is a list of one)
and its sentences; ``ann_id == [-1]`` means the expression refers to nothing
in the photo ("no target"). One sample per sentence, its text ``raw``.
Photos are found by ``image_id``: some entries of instances.json carry a
``file_name`` with a ``_<n>`` suffix that no COCO photo has.

Ground truth follows henghuiding/ReLA (``grefer.py``, ``grefcoco.py`` and the
dataset mapper): the union of the ref's annotations that are not crowd, each
annotation the union of its polygons, where polygons of fewer than 3 points
(or an odd count of numbers) are dropped and an annotation left without any
is dropped too; an RLE is decoded by pycocotools. A no-target ref's ground
truth is all zeros. The official models evaluate at their 480x480 input;
here the ground truth is at the photo's own size. A target ref left with no
mask at all (all its annotations crowd or without a usable polygon) would
stop the official loader; it is refused here, naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import InputError
from .bounded import read_json
from .coco_masks import checked_rle, decode, polygon_rles
from .plain_pickle import load_refs_pickle
from .refer import CocoPhotos, ImageRecord, Sentence, _parse_instances, groups_by_image, instance_stack

__all__ = ["GREFCOCO", "GREFCOCO_SPLITS", "GRef", "GRefCocoDataset", "refs_path"]

GREFCOCO = "grefcoco"
# The evaluated splits (train is left out: every method here is zero-shot).
GREFCOCO_SPLITS = ("val", "testA", "testB")
SPLIT_BY = "unc"
_NO_TARGET = [-1]
_MIN_POLYGON_NUMBERS = 6  # 3 points


@dataclass(frozen=True)
class GRef:
    """An expression's referred annotations (none for a no-target expression) and its sentences."""

    ref_id: int
    image_id: int
    split: str
    ann_ids: tuple[int, ...]
    sentences: tuple[Sentence, ...]

    @property
    def no_target(self) -> bool:
        """``ann_id == [-1]`` in the file: the expression refers to nothing in the photo."""
        return not self.ann_ids


def refs_path(data_root: str | Path) -> Path:
    """The refs file the official loader reads: the pickle when there is one, else the JSON."""
    folder = Path(data_root) / GREFCOCO
    pickled = folder / f"grefs({SPLIT_BY}).p"
    return pickled if pickled.is_file() else folder / f"grefs({SPLIT_BY}).json"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_gref(raw: Any, index: int, path: Path) -> GRef:
    """A ref of the file, checked; one line naming the file and the ref otherwise."""
    if not isinstance(raw, dict):
        raise InputError(f"refs file {path}: entry {index} is not an object")
    where = f"refs file {path}: " + (f"ref {raw['ref_id']!r}" if "ref_id" in raw else f"entry {index}")
    ann_ids = raw.get("ann_id")
    ann_ids = ann_ids if isinstance(ann_ids, list) else [ann_ids]
    for key in ("ref_id", "image_id"):
        if not _is_int(raw.get(key)):
            raise InputError(f"{where}: {key} must be an integer, got {raw.get(key)!r}")
    if not ann_ids or not all(_is_int(ann_id) for ann_id in ann_ids) or (-1 in ann_ids and ann_ids != _NO_TARGET):
        raise InputError(f"{where}: ann_id must be annotation ids, or [-1] for no target; got {raw.get('ann_id')!r}")
    sentences = raw.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        raise InputError(f"{where}: sentences must be a non-empty list")
    parsed = []
    for number, sentence in enumerate(sentences):
        if not isinstance(sentence, dict) or not _is_int(sentence.get("sent_id")) or not all(
            isinstance(sentence.get(key), str) for key in ("raw", "sent")
        ):
            raise InputError(f"{where}: sentence {number} needs an integer sent_id and the strings raw and sent")
        parsed.append(Sentence(sent_id=sentence["sent_id"], raw=sentence["raw"], sent=sentence["sent"]))
    return GRef(
        ref_id=raw["ref_id"], image_id=raw["image_id"], split=str(raw.get("split")),
        ann_ids=() if ann_ids == _NO_TARGET else tuple(ann_ids), sentences=tuple(parsed),
    )


def _polygons(segmentation: list, name: str) -> list[list]:
    """The polygons the official loader keeps: an even count of at least 6 numbers."""
    if not all(isinstance(part, list) for part in segmentation):
        raise InputError(f"{name}: a polygon segmentation must be a list of lists of numbers")
    return [part for part in segmentation if len(part) % 2 == 0 and len(part) >= _MIN_POLYGON_NUMBERS]


def _kept(ann: dict) -> bool:
    """Whether the official loader keeps an annotation: not crowd, and an RLE or a polygon of 3 points or more."""
    segmentation = ann["segmentation"]
    if ann.get("iscrowd", 0):
        return False
    if isinstance(segmentation, dict):
        return True
    return isinstance(segmentation, list) and any(
        isinstance(part, list) and len(part) % 2 == 0 and len(part) >= _MIN_POLYGON_NUMBERS for part in segmentation
    )


def annotation_mask(ann: dict, height: int, width: int, name: str) -> np.ndarray:
    """One kept annotation as GRES draws it, bool (H, W): the union of its polygons (or its RLE)."""
    segmentation = ann["segmentation"]
    if isinstance(segmentation, dict):
        return decode(checked_rle(segmentation, height, width, name)).astype(bool)
    if not isinstance(segmentation, list):
        raise InputError(f"{name}: unsupported segmentation format {type(segmentation).__name__}")
    return decode(polygon_rles(_polygons(segmentation, name), height, width, name)).any(axis=2)


class GRefCocoDataset(CocoPhotos):
    """One split of gRefCOCO, grouped by image, with the interface :mod:`globallocal.runs.evaluate` uses; its
    photos are read as REFER's are (no EXIF rotation: annotations are in the stored frame)."""

    skips_missing_photos: ClassVar[bool] = True

    def __init__(self, data_root: str | Path, split: str, images_dir: str | Path | None = None) -> None:
        if split not in GREFCOCO_SPLITS:
            raise InputError(f"invalid grefcoco split {split!r}; use one of {', '.join(GREFCOCO_SPLITS)}")
        self.dataset, self.split, self.split_by = GREFCOCO, split, SPLIT_BY
        self.images_dir = Path(images_dir) if images_dir is not None else None
        self.refs_path = refs_path(data_root)
        self.instances_path = Path(data_root) / GREFCOCO / "instances.json"
        if not self.refs_path.is_file():
            raise InputError(f"refs file not found: {self.refs_path} (nor its .p); is --data-root the folder holding "
                             "grefcoco/?")
        if self.refs_path.suffix == ".p":
            raw_refs: Any = load_refs_pickle(self.refs_path)
        else:
            raw_refs = read_json(self.refs_path, what="refs file")
            if not isinstance(raw_refs, list):
                raise InputError(f"refs file {self.refs_path} does not hold a list of refs")
        if not self.instances_path.is_file():
            raise InputError(f"instances file not found: {self.instances_path}")
        instances = read_json(self.instances_path, what="instances file")
        if not isinstance(instances, dict):
            raise InputError(f"instances file {self.instances_path} does not hold a COCO object")
        self._images, self._annotations = _parse_instances(instances, self.instances_path)
        self._image_annotations: dict[int, list[dict]] = {}
        for ann_id in sorted(self._annotations):
            ann = self._annotations[ann_id]
            self._image_annotations.setdefault(int(ann["image_id"]), []).append(ann)
        refs = [
            _parse_gref(raw, index, self.refs_path) for index, raw in enumerate(raw_refs)
            if not isinstance(raw, dict) or raw.get("split") == split
        ]
        if not refs:
            raise InputError(f"refs file {self.refs_path} has no refs in split {split!r}; is it the right file?")
        self._check(refs)
        self._groups = groups_by_image(refs, self._image)

    def _image(self, image_id: int) -> ImageRecord:
        """The photo of ``image_id``, named by its id: COCO train2014's own file name."""
        image = self._images[image_id]
        return ImageRecord(image_id, f"COCO_train2014_{image_id:012d}.jpg", image.height, image.width)

    def _check(self, refs: list[GRef]) -> None:
        """Refuse, naming them, refs that cannot be evaluated as the official code evaluates them."""
        ref_ids: set[int] = set()
        sentences: dict[int, int] = {}
        for ref in refs:
            where = f"refs file {self.refs_path}: ref {ref.ref_id}"
            if ref.ref_id in ref_ids:
                raise InputError(f"{where} appears twice in split {self.split}")
            ref_ids.add(ref.ref_id)
            if ref.image_id not in self._images:
                raise InputError(f"{where} names image {ref.image_id}, absent from {self.instances_path}")
            for ann_id in ref.ann_ids:
                ann = self._annotations.get(ann_id)
                if ann is None:
                    raise InputError(f"{where} names annotation {ann_id}, absent from {self.instances_path}")
                if int(ann["image_id"]) != ref.image_id:
                    raise InputError(f"{where} is on image {ref.image_id} but its annotation {ann_id} belongs to "
                                     f"image {ann['image_id']} in {self.instances_path}")
            if ref.ann_ids and not any(_kept(self._annotations[ann_id]) for ann_id in ref.ann_ids):
                raise InputError(f"{where} has a target but none of its annotations {list(ref.ann_ids)} has a mask "
                                 "(all are crowd, or their polygons have fewer than 3 points)")
            for sentence in ref.sentences:
                if sentence.sent_id in sentences:  # records and mask files are named by sent_id
                    raise InputError(f"{where}: sent_id {sentence.sent_id} is also used by ref "
                                     f"{sentences[sentence.sent_id]}; sentence ids must be unique")
                sentences[sentence.sent_id] = ref.ref_id

    def _mask(self, ann: dict) -> np.ndarray:
        image = self._images[int(ann["image_id"])]
        name = f"annotation {ann['id']} (image {ann['image_id']}) in {self.instances_path}"
        return annotation_mask(ann, image.height, image.width, name)

    def gt_mask(self, ref: GRef) -> np.ndarray:
        """The union of the ref's kept annotations, bool (H, W); all False for no target."""
        image = self._images[ref.image_id]
        mask = np.zeros((image.height, image.width), dtype=bool)
        for ann_id in ref.ann_ids:
            ann = self._annotations[ann_id]
            if _kept(ann):
                mask |= self._mask(ann)
        return mask

    def ignore_mask(self, ref: GRef) -> None:
        return None  # every pixel counts

    def instance_masks(self, image_id: int) -> np.ndarray:
        """The image's kept annotations (the ``gt`` oracle), bool (N, H, W), by annotation id; empty masks dropped."""
        image = self._images[image_id]
        anns = [ann for ann in self._image_annotations.get(image_id, []) if _kept(ann)]
        return instance_stack([self._mask(ann) for ann in anns], image.height, image.width)

    def sentence_fields(self, ref: GRef, sentence: Sentence) -> dict[str, Any]:
        return {"ref_id": ref.ref_id, "sent_id": sentence.sent_id, "no_target": ref.no_target}

    def sentence_label(self, ref: GRef, sentence: Sentence) -> str:
        return f"ref {ref.ref_id} sentence {sentence.sent_id}"

    def mask_name(self, ref: GRef, sentence: Sentence) -> str:
        return f"{ref.ref_id}_{sentence.sent_id}.png"

    def report_notes(self) -> dict[str, Any]:
        refs = [ref for group in self._groups for ref in group.refs]
        return {
            "refs": len(refs),
            "no_target_refs": sum(ref.no_target for ref in refs),
            "multi_target_refs": sum(len(ref.ann_ids) > 1 for ref in refs),
        }
