"""Reading RefCOCO, RefCOCO+ and RefCOCOg in the REFER layout (SPEC section 7).

Layout::

    <data_root>/<dataset>/refs(<split_by>).p    pickle: list of refs
    <data_root>/<dataset>/instances.json        COCO images, annotations, categories
    <images_dir>/<file_name>                    COCO train2014 images

Ground truth follows the published code (``refer/refer.py`` ``getMask`` and
``data/dataset_refer_bert.py`` of Seonghoon-Yu/Zero-shot-RIS): all polygon
parts of an annotation go through ``pycocotools.mask.frPyObjects`` as one
list, each part is decoded to its own binary map, the maps are summed, the sum
is cast to uint8, and the target is the set of pixels whose value is exactly 1.
So where two parts of one object overlap, the overlap is *not* part of the
object (and neither is anything covered 3, 4, ... times). That is the
``overlap="paper"`` rule; ``overlap="union"`` is the plain union that
``pycocotools.coco.COCO.annToMask`` gives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ImageError, InputError
from .bounded import INT64, read_json
from .coco_masks import checked_rle, decode, polygon_rles
from .images import open_checked
from .plain_pickle import load_refs_pickle

__all__ = [
    "DEFAULT_SPLIT_BY",
    "CocoPhotos",
    "OVERLAP_RULES",
    "VALID_SPLITS",
    "ImageGroup",
    "ImageRecord",
    "Ref",
    "ReferDataset",
    "Sentence",
    "decode_segmentation",
    "groups_by_image",
    "instance_stack",
    "load_refs_pickle",
    "resolve_split",
]

# (dataset, split_by) -> splits that are evaluated. Training splits are left
# out on purpose: the method is zero-shot and only these are reported.
VALID_SPLITS: dict[tuple[str, str], tuple[str, ...]] = {
    ("refcoco", "unc"): ("val", "testA", "testB"),
    ("refcoco+", "unc"): ("val", "testA", "testB"),
    ("refcocog", "umd"): ("val", "test"),
    ("refcocog", "google"): ("val",),
}

# The published script forces these (umd for RefCOCOg, unc otherwise).
DEFAULT_SPLIT_BY: dict[str, str] = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}

OVERLAP_RULES = ("paper", "union")


@dataclass(frozen=True)
class Sentence:
    """One referring expression; ``raw`` is the text that is scored (SPEC 5)."""

    sent_id: int
    raw: str
    sent: str


@dataclass(frozen=True)
class Ref:
    """A referred object: one COCO annotation and the sentences describing it."""

    ref_id: int
    ann_id: int
    image_id: int
    split: str
    category_id: int
    sentences: tuple[Sentence, ...]


@dataclass(frozen=True)
class ImageRecord:
    """A COCO image entry of instances.json; height/width are the annotation frame."""

    image_id: int
    file_name: str
    height: int
    width: int


@dataclass(frozen=True)
class ImageGroup:
    """An image and the refs of the split on it, in ref_id order."""

    image: ImageRecord
    refs: tuple[Ref, ...]

    @property
    def sentence_count(self) -> int:
        return sum(len(ref.sentences) for ref in self.refs)


def groups_by_image(refs: list[Any], image: Callable[[int], ImageRecord]) -> list[ImageGroup]:
    """The refs (anything with ``image_id`` and ``ref_id``) on each image, as :class:`ImageGroup` of ``image(id)``:
    images in image_id order, each one's refs in ref_id order, the order a run visits and records them."""
    by_image: dict[int, list[Any]] = {}
    for ref in refs:
        by_image.setdefault(ref.image_id, []).append(ref)
    return [ImageGroup(image(image_id), tuple(sorted(by_image[image_id], key=lambda ref: ref.ref_id)))
            for image_id in sorted(by_image)]


def _valid_combinations() -> str:
    return "; ".join(
        f"{dataset} {split_by}: {', '.join(splits)}" for (dataset, split_by), splits in VALID_SPLITS.items()
    )


def resolve_split(dataset: str, split: str, split_by: str | None = None) -> str:
    """Check a (dataset, split_by, split) combination and return the split_by to use.

    ``split_by`` defaults per dataset (unc, unc, umd). Raises :class:`InputError`
    listing the valid combinations otherwise.
    """
    if split_by is None:
        if dataset not in DEFAULT_SPLIT_BY:
            raise InputError(
                f"unknown dataset {dataset!r}; valid (dataset split_by: splits) are {_valid_combinations()}"
            )
        split_by = DEFAULT_SPLIT_BY[dataset]
    if split not in VALID_SPLITS.get((dataset, split_by), ()):
        raise InputError(
            f"invalid combination dataset={dataset!r} split_by={split_by!r} split={split!r}; "
            f"valid (dataset split_by: splits) are {_valid_combinations()}"
        )
    return split_by


def _integer(item: dict, key: str) -> int:
    """``item[key]`` as the int64 it must be (an infinite or 30-digit id would overflow downstream)."""
    value = item[key]
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):  # NaN, infinity, text
        number = None
    if number is None or number not in INT64:
        raise ValueError(f"{key} is {value!r}, not a 64-bit integer")
    return number


def _parse_ref(raw: dict, path: Path) -> Ref:
    try:
        sentences = tuple(
            Sentence(sent_id=_integer(item, "sent_id"), raw=str(item["raw"]), sent=str(item["sent"]))
            for item in raw["sentences"]
        )
        return Ref(
            ref_id=_integer(raw, "ref_id"),
            ann_id=_integer(raw, "ann_id"),
            image_id=_integer(raw, "image_id"),
            split=str(raw["split"]),
            category_id=_integer(raw, "category_id"),
            sentences=sentences,
        )
    except (KeyError, TypeError) as error:
        raise InputError(f"refs file {path}: malformed ref {raw.get('ref_id', '?')} ({error!r})") from None
    except ValueError as error:
        raise InputError(f"refs file {path}: ref {raw.get('ref_id', '?')}: {error}") from None


def _decode_parts(segmentation: Any, height: int, width: int, name: str) -> np.ndarray:
    """Per-pixel count of annotation parts covering it, (H, W) int64.

    Polygons: the whole list goes through ``frPyObjects`` as the published
    code does (so its quirks, such as a first part of exactly 4 numbers being
    read as a box, are kept). RLE: compressed (``counts`` a string) is decoded
    directly; uncompressed (``counts`` a list) is compressed first. An RLE is
    a single part. Both are checked first (:mod:`globallocal.data.coco_masks`).
    """
    if isinstance(segmentation, list):
        rles = polygon_rles(segmentation, height, width, name)
        if not rles:
            return np.zeros((height, width), dtype=np.int64)
        return decode(rles).sum(axis=2, dtype=np.int64)  # (H, W, K) uint8 summed
    if isinstance(segmentation, dict) and "counts" in segmentation:
        return decode(checked_rle(segmentation, height, width, name)).astype(np.int64)
    raise InputError(f"{name}: unsupported segmentation format {type(segmentation).__name__}")


def decode_segmentation(
    segmentation: Any, height: int, width: int, overlap: str = "paper", name: str = "segmentation"
) -> np.ndarray:
    """A COCO segmentation as a bool (H, W) mask under an overlap rule.

    ``paper``: pixels covered by exactly one part. The published code sums
    the parts and casts to uint8 before testing ``== 1``, so a pixel under
    257 parts would also pass; no real annotation comes close, so plain
    ``count == 1`` is used. ``union``: pixels covered by any part.
    ``name`` says where the segmentation comes from in error messages.
    """
    counts = _decode_parts(segmentation, height, width, name)
    if overlap == "paper":
        return counts == 1
    if overlap == "union":
        return counts >= 1
    raise InputError(f"unknown overlap rule {overlap!r}; use one of {', '.join(OVERLAP_RULES)}")


def instance_stack(masks: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """A photo's annotated instances (the ``gt`` oracle) as one bool (N, H, W) array, empty masks dropped: every
    dataset's one form of them (``Proposals.from_arrays`` turns them into proposals)."""
    kept = [mask for mask in masks if mask.any()]
    return np.stack(kept) if kept else np.zeros((0, height, width), dtype=bool)


def load_dataset_image(path: Path, image: ImageRecord, sizes_file: str, hint: str = "") -> Image.Image:
    """A dataset's photo as RGB (no EXIF rotation), refused when it is not the size ``sizes_file`` records."""
    if not path.is_file():
        raise InputError(f"image {image.image_id} not found: {path}")
    decoded = _decode_coco_image(path)
    if (decoded.height, decoded.width) != (image.height, image.width):
        raise ImageError(
            f"image {path} is {decoded.width}x{decoded.height} but {sizes_file} says {image.width}x{image.height}"
            f"{hint}"
        )
    return decoded


def missing_images(image_path: Callable[[ImageRecord], Path], groups: list[ImageGroup]) -> list[Path]:
    """The image files of ``groups`` that do not exist, ``image_path`` naming each."""
    return [path for path in (image_path(group.image) for group in groups) if not path.is_file()]


def _decode_coco_image(path: Path) -> Image.Image:
    """Decode a dataset image to RGB *without* applying EXIF orientation.

    COCO annotations are in the stored pixel frame, and the published code
    opens images with ``Image.open(...).convert("RGB")``; rotating by EXIF
    would misalign the few COCO images that carry an orientation tag with
    their ground truth. The pixels are copied into a fresh image without
    metadata, so that code downstream that honours EXIF (``load_image``,
    which ``Segmenter.set_image`` applies) cannot rotate it either.
    """
    try:
        with open_checked(path, path) as image:
            image.load()
            pixels = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"cannot decode image {path}: {error}") from None
    return Image.fromarray(pixels)


def _reason(error: Exception) -> str:
    return f"no {error.args[0]!r}" if isinstance(error, KeyError) else f"{type(error).__name__}: {error}"


def _parse_instances(instances: Any, path: Path) -> tuple[dict[int, ImageRecord], dict[int, dict]]:
    """The image records and annotations of instances.json, each checked (the record named when not)."""
    if not isinstance(instances.get("images"), list) or not isinstance(instances.get("annotations"), list):
        raise InputError(f"instances file {path}: 'images' and 'annotations' must be lists")
    images: dict[int, ImageRecord] = {}
    for index, image in enumerate(instances["images"]):
        try:
            record = ImageRecord(
                image_id=int(image["id"]),
                file_name=str(image["file_name"]),
                height=int(image["height"]),
                width=int(image["width"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"instances file {path}: image record {index} is malformed ({_reason(error)})") from None
        if record.height < 1 or record.width < 1:
            raise InputError(f"instances file {path}: image {record.image_id} has no pixels")
        images[record.image_id] = record
    annotations: dict[int, dict] = {}
    for index, ann in enumerate(instances["annotations"]):
        try:
            ann_id, _ = int(ann["id"]), int(ann["image_id"])
            if "segmentation" not in ann:
                raise KeyError("segmentation")
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(
                f"instances file {path}: annotation record {index} is malformed ({_reason(error)})"
            ) from None
        annotations[ann_id] = ann
    return images, annotations


class CocoPhotos:
    """The COCO train2014 photos of a split read from an instances.json (REFER's, gRefCOCO's): ``images_dir``,
    ``instances_path`` and ``_groups`` are the dataset's."""

    images_dir: Path | None
    instances_path: Path
    _groups: list[ImageGroup]

    def images(self) -> list[ImageGroup]:
        """The split's images, by increasing image_id, each with its refs."""
        return list(self._groups)

    def image_path(self, image: ImageRecord) -> Path:
        """Where the image file is expected (``images_dir / file_name``)."""
        if self.images_dir is None:
            raise InputError("no images directory given (the COCO train2014 folder)")
        return self.images_dir / image.file_name

    def load_image(self, image: ImageRecord) -> Image.Image:
        """The image as RGB, checked against the size instances.json gives."""
        return load_dataset_image(
            self.image_path(image), image, f"{self.instances_path}", "; is it the COCO train2014 file?"
        )

    def missing_images(self, groups: list[ImageGroup] | None = None) -> list[Path]:
        """Image files of ``groups`` (default: all) that do not exist."""
        return missing_images(self.image_path, self._groups if groups is None else groups)


class ReferDataset(CocoPhotos):
    """One split of a REFER dataset, grouped by image.

    ``include_crowd`` only affects :meth:`instance_masks` (the ``gt``
    proposal oracle): crowd regions are groups ("a crowd of people"), never
    the target of a ref, so they are left out of the oracle by default.
    """

    def __init__(
        self,
        data_root: str | Path,
        dataset: str,
        split: str,
        split_by: str | None = None,
        images_dir: str | Path | None = None,
        overlap: str = "paper",
        include_crowd: bool = False,
    ) -> None:
        if overlap not in OVERLAP_RULES:
            raise InputError(f"unknown overlap rule {overlap!r}; use one of {', '.join(OVERLAP_RULES)}")
        self.dataset = dataset
        self.split = split
        self.split_by = resolve_split(dataset, split, split_by)
        self.overlap = overlap
        self.include_crowd = include_crowd
        self.data_dir = Path(data_root) / dataset
        self.images_dir = Path(images_dir) if images_dir is not None else None
        self.refs_path = self.data_dir / f"refs({self.split_by}).p"
        self.instances_path = self.data_dir / "instances.json"

        raw_refs = load_refs_pickle(self.refs_path)
        self._images, self._annotations = _parse_instances(self._load_instances(), self.instances_path)
        self._image_annotations: dict[int, list[dict]] = {}
        for ann_id in sorted(self._annotations):
            ann = self._annotations[ann_id]
            self._image_annotations.setdefault(int(ann["image_id"]), []).append(ann)

        # The published code filters by substring ("A" in split for testA,
        # "test" in split for test); on these datasets' split values
        # (train, val, testA, testB, test) that equals exact matching.
        refs = [_parse_ref(raw, self.refs_path) for raw in raw_refs if raw.get("split") == split]
        if not refs:
            raise InputError(f"refs file {self.refs_path} has no refs in split {split!r}; is it the right file?")
        self._check_refs(refs)
        self._groups = groups_by_image(refs, self._images.__getitem__)

    def _check_refs(self, refs: list[Ref]) -> None:
        """Refuse refs that cannot be evaluated as they stand, naming them."""
        ref_ids: set[int] = set()
        sentences: dict[int, int] = {}
        for ref in refs:
            if ref.ref_id in ref_ids:
                raise InputError(f"ref {ref.ref_id} appears twice in split {self.split} of {self.refs_path}")
            ref_ids.add(ref.ref_id)
            ann = self._annotations.get(ref.ann_id)
            if ann is None:
                raise InputError(f"ref {ref.ref_id} names annotation {ref.ann_id}, absent from {self.instances_path}")
            if ref.image_id not in self._images:
                raise InputError(f"ref {ref.ref_id} names image {ref.image_id}, absent from {self.instances_path}")
            if int(ann["image_id"]) != ref.image_id:
                raise InputError(
                    f"ref {ref.ref_id} is on image {ref.image_id} but its annotation {ref.ann_id} belongs to image "
                    f"{ann['image_id']} in {self.instances_path}; the refs and instances files do not match"
                )
            for sentence in ref.sentences:
                if sentence.sent_id in sentences:
                    # Records and --save-masks files are named by sent_id: they would collide.
                    raise InputError(
                        f"sent_id {sentence.sent_id} is used by ref {sentences[sentence.sent_id]} and ref "
                        f"{ref.ref_id} in {self.refs_path}; sentence ids must be unique"
                    )
                sentences[sentence.sent_id] = ref.ref_id

    def _load_instances(self) -> dict:
        if not self.instances_path.exists():
            raise InputError(f"instances file not found: {self.instances_path}")
        instances = read_json(self.instances_path, what="instances file")
        if not isinstance(instances, dict):
            raise InputError(f"instances file {self.instances_path} does not hold a COCO object")
        missing = [key for key in ("images", "annotations") if key not in instances]
        if missing:
            raise InputError(f"instances file {self.instances_path} lacks {', '.join(missing)}")
        return instances

    def _name(self, ann: dict) -> str:
        return f"annotation {ann['id']} (image {ann['image_id']}) in {self.instances_path}"

    def gt_mask(self, ref: Ref) -> np.ndarray:
        """The ref's ground truth, bool (H, W), under the dataset's overlap rule."""
        image = self._images[ref.image_id]
        ann = self._annotations[ref.ann_id]
        return decode_segmentation(ann["segmentation"], image.height, image.width, self.overlap, self._name(ann))

    def instance_masks(self, image_id: int) -> np.ndarray:
        """All annotated instances of an image (the ``gt`` oracle), bool (N, H, W).

        Masks follow the dataset's overlap rule so that the oracle can hit a
        ref's ground truth exactly; crowd regions are left out unless
        ``include_crowd``; empty masks are dropped. Order: annotation id.
        """
        image = self._images[image_id]
        masks = [
            decode_segmentation(ann["segmentation"], image.height, image.width, self.overlap, self._name(ann))
            for ann in self._image_annotations.get(image_id, [])
            if self.include_crowd or not ann.get("iscrowd", 0)
        ]
        return instance_stack(masks, image.height, image.width)

    def sentence_fields(self, ref: Ref, sentence: Sentence) -> dict[str, Any]:
        return {"ref_id": ref.ref_id, "sent_id": sentence.sent_id}

    def sentence_label(self, ref: Ref, sentence: Sentence) -> str:
        return f"ref {ref.ref_id} sentence {sentence.sent_id}"

    def mask_name(self, ref: Ref, sentence: Sentence) -> str:
        return f"{ref.ref_id}_{sentence.sent_id}.png"

    def report_notes(self) -> dict[str, Any]:
        return {}

    # A missing photo stops the run (the published numbers are over every image).
    skips_missing_photos: ClassVar[bool] = False

    def ignore_mask(self, ref: Ref) -> None:
        return None  # every pixel counts
