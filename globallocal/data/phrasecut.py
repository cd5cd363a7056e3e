"""Reading VGPhraseCut v0 (Wu et al., CVPR 2020) for evaluation.

Layout, as the dataset's downloader writes it::

    <root>/refer_<split>.json        tasks: task_id, image_id, phrase, phrase_structure, instance_boxes, Polygons
    <root>/image_data_split.json     images: image_id, width, height, split, ...
    <root>/images/<image_id>.jpg     Visual Genome photos

A task is one phrase and the region it describes: ``Polygons`` holds, per
referred instance, a list of polygons of ``[x, y]`` points. Ground truth is
drawn exactly as the dataset's own evaluation code draws it
(``utils/data_transfer.py polygons_to_mask``, also used by
Seonghoon-Yu/Zero-shot-RIS): each point is truncated to int, a polygon of
fewer than two points is skipped, each other polygon of every instance is
drawn on its own blank canvas by one ``ImageDraw.polygon(points, outline=1,
fill=1)`` call, and the canvases are summed and thresholded at > 0.

That one call draws no separate outline: Pillow (7.2 as well as 12) skips
the outline when its colour equals the fill's (``ink != fill_ink`` in
``ImageDraw.polygon``), so the official masks are Pillow's fill alone, which
leaves out a few outline pixels of sloped edges (a 4-point polygon of ~1000
pixels: 1060, where fill plus a separate outline pass would give 1085).

Split ``a_b`` reads ``refer_a.json`` and ``refer_b.json`` and keeps tasks on
images whose split is ``a`` or ``b``, as the dataset's ``RefVGLoader`` does;
like it, tasks without a ``phrase_structure`` are left out. Both are counted
in :meth:`PhraseCutDataset.report_notes`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image, ImageDraw

from ..errors import InputError
from .bounded import read_json
from .refer import ImageGroup, ImageRecord, Sentence, instance_stack, load_dataset_image, missing_images

__all__ = [
    "BREAKDOWN",
    "COCO_CATEGORY_NAMES",
    "PHRASECUT",
    "PHRASECUT_SPLITS",
    "SUBSETS",
    "PhraseCutDataset",
    "PhraseCutTask",
    "check_phrasecut_split",
    "rasterize_polygons",
]

PHRASECUT = "phrasecut"
PHRASECUT_SPLITS = ("val", "test", "miniv", "val_miniv")
IMAGES_FILE = "image_data_split.json"

# --subset: "unseen" is the paper's zero-shot setting (Figure 4): tasks whose
# category is not one of COCO's 80, on which FreeSOLO was trained.
SUBSETS = ("all", "unseen", "seen")

# The 80 COCO category names, as COCO's instances files write them.
COCO_CATEGORY_NAMES = frozenset({
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
})

# PhraseCut's own subsets (its utils/subset.py) that the report breaks mIoU down by:
# instance count (i_many is a part of i_multi) and the region's area relative to the image.
BREAKDOWN = ("i_single", "i_multi", "i_many", "s_small", "s_mid", "s_large")
_MANY_INSTANCES = 5
_SMALL_AREA, _LARGE_AREA = 0.02, 0.2

# A point may lie outside the photo (annotators draw past the edge), but not
# by more than the photo's own size: anything further is a broken file, and
# huge coordinates would only cost the rasteriser time and memory.
_MARGIN = 1.0

Polygon = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class PhraseCutTask:
    """One phrase and the instances it refers to (points truncated to int)."""

    task_id: str
    image_id: int
    phrase: str
    category: str
    instances: tuple[tuple[Polygon, ...], ...]

    @property
    def sentences(self) -> tuple[Sentence, ...]:
        """The evaluation loop answers sentences; a task has exactly one, its phrase."""
        return (Sentence(sent_id=0, raw=self.phrase, sent=self.phrase),)


def rasterize_polygons(polygons: list[Polygon] | tuple[Polygon, ...], height: int, width: int) -> np.ndarray:
    """The polygons as the dataset's ``polygons_to_mask`` draws them, bool (H, W) (see the module docstring)."""
    total = np.zeros((height, width), dtype=np.int32)
    for polygon in polygons:
        if len(polygon) < 2:
            continue  # Pillow cannot draw it; the dataset's code skips it too
        canvas = Image.new("L", (width, height), 0)
        # One call with outline == fill: Pillow then draws the fill only, and so do the official masks.
        ImageDraw.Draw(canvas).polygon([(int(x), int(y)) for x, y in polygon], outline=1, fill=1)
        total += np.asarray(canvas)
    return total > 0


def check_phrasecut_split(split: str) -> None:
    if split not in PHRASECUT_SPLITS:
        raise InputError(f"invalid phrasecut split {split!r}; use one of {', '.join(PHRASECUT_SPLITS)}")


def _read_json_list(path: Path) -> list:
    if not path.exists():
        raise InputError(f"PhraseCut file not found: {path}; is --data-root the VGPhraseCut_v0 folder?")
    data = read_json(path, what="PhraseCut file")
    if not isinstance(data, list):
        raise InputError(f"{path} does not hold a list of records")
    return data


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _parse_image(raw: Any, index: int, path: Path) -> tuple[ImageRecord, str]:
    where = f"{path}: image record {index}"
    if not isinstance(raw, dict):
        raise InputError(f"{where} is not an object")
    for key in ("image_id", "width", "height"):
        if not _positive_int(raw.get(key)):
            raise InputError(f"{where}: {key} must be a positive integer, got {raw.get(key)!r}")
    if not isinstance(raw.get("split"), str):
        raise InputError(f"{where} (image_id {raw['image_id']}): split must be a string")
    image_id = raw["image_id"]
    record = ImageRecord(image_id=image_id, file_name=f"{image_id}.jpg", height=raw["height"], width=raw["width"])
    return record, raw["split"]


def _parse_point(point: Any, image: ImageRecord) -> tuple[int, int]:
    if (
        not isinstance(point, (list, tuple))
        or len(point) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in point)
    ):
        raise ValueError(f"a point must be [x, y] of two finite numbers, got {point!r}")
    x, y = point
    if not (-_MARGIN * image.width <= x <= (1 + _MARGIN) * image.width) or not (
        -_MARGIN * image.height <= y <= (1 + _MARGIN) * image.height
    ):
        raise ValueError(f"point {[x, y]} is far outside the {image.width}x{image.height} image")
    return int(x), int(y)  # truncation towards zero, as the dataset's code does


def _parse_task(raw: Any, index: int, path: Path, images: dict[int, ImageRecord]) -> PhraseCutTask | None:
    """A validated task, or None when it has no phrase structure (left out, as RefVGLoader does)."""
    if not isinstance(raw, dict):
        raise InputError(f"{path}: task record {index} is not an object")
    where = f"{path}: task record {index} (task_id {raw.get('task_id')!r})"
    task_id, image_id, phrase = raw.get("task_id"), raw.get("image_id"), raw.get("phrase")
    if not isinstance(task_id, str) or not task_id:
        raise InputError(f"{where}: task_id must be a non-empty string")
    if "/" in task_id or task_id in (".", ".."):
        raise InputError(f"{where}: task_id cannot name a mask file")
    if not _positive_int(image_id):
        raise InputError(f"{where}: image_id must be a positive integer, got {image_id!r}")
    if image_id not in images:
        raise InputError(f"{where}: image {image_id} is not in {path.parent / IMAGES_FILE}")
    if not isinstance(phrase, str) or not phrase.strip():
        raise InputError(f"{where}: phrase must be a non-empty string")
    structure = raw.get("phrase_structure")
    if not structure:
        return None
    if not isinstance(structure, dict) or not isinstance(structure.get("name"), str):
        raise InputError(f"{where}: phrase_structure must be an object with a string 'name'")
    boxes, polygons = raw.get("instance_boxes"), raw.get("Polygons")
    if not isinstance(boxes, list) or not isinstance(polygons, list) or not polygons:
        raise InputError(f"{where}: instance_boxes and Polygons must be lists, Polygons not empty")
    if len(boxes) != len(polygons):
        raise InputError(f"{where}: {len(polygons)} instances in Polygons but {len(boxes)} instance_boxes")
    image = images[image_id]
    try:
        instances = []
        for instance in polygons:
            if not isinstance(instance, list):
                raise ValueError("each instance must be a list of polygons")
            if not all(isinstance(polygon, list) for polygon in instance):
                raise ValueError("each polygon must be a list of [x, y] points")
            instances.append(tuple(tuple(_parse_point(p, image) for p in polygon) for polygon in instance))
    except ValueError as error:
        raise InputError(f"{where}: {error}") from None
    return PhraseCutTask(task_id, image_id, phrase, structure["name"], tuple(instances))


class PhraseCutDataset:
    """The tasks of a PhraseCut split, grouped by image, with the interface :mod:`globallocal.runs.evaluate` uses.

    ``subset``: ``all``, ``unseen`` (tasks whose category is not a COCO
    category) or ``seen`` (only those). ``images_dir`` defaults to
    ``<data_root>/images``.
    """

    def __init__(
        self, data_root: str | Path, split: str, subset: str = "all", images_dir: str | Path | None = None
    ) -> None:
        check_phrasecut_split(split)
        if subset not in SUBSETS:
            raise InputError(f"unknown --subset {subset!r}; use one of {', '.join(SUBSETS)}")
        self.dataset, self.split, self.subset = PHRASECUT, split, subset
        self.data_root = Path(data_root)
        self.images_dir = Path(images_dir) if images_dir is not None else self.data_root / "images"
        images_path = self.data_root / IMAGES_FILE
        self._images: dict[int, ImageRecord] = {}
        splits_of: dict[int, str] = {}
        for index, raw in enumerate(_read_json_list(images_path)):
            record, image_split = _parse_image(raw, index, images_path)
            if record.image_id in self._images:
                raise InputError(f"{images_path}: image {record.image_id} is listed twice")
            self._images[record.image_id], splits_of[record.image_id] = record, image_split

        parts = split.split("_")
        self._dropped = {"no_phrase_structure": 0, "other_split": 0, "subset": 0}
        self._all_tasks: dict[int, list[PhraseCutTask]] = {}
        kept: dict[int, list[PhraseCutTask]] = {}
        seen_ids: dict[str, tuple[Path, int]] = {}
        total = 0
        for part in parts:
            path = self.data_root / f"refer_{part}.json"
            for index, raw in enumerate(_read_json_list(path)):
                total += 1
                task = _parse_task(raw, index, path, self._images)
                task_id = raw["task_id"]
                if task_id in seen_ids:
                    first_path, first_index = seen_ids[task_id]
                    raise InputError(
                        f"{path}: task record {index}: task_id {task_id!r} is also task record {first_index} of "
                        f"{first_path.name}; task ids name mask files and must be unique"
                    )
                seen_ids[task_id] = (path, index)
                if task is None:
                    self._dropped["no_phrase_structure"] += 1
                    continue
                self._all_tasks.setdefault(task.image_id, []).append(task)
                if splits_of[task.image_id] not in parts:
                    self._dropped["other_split"] += 1
                elif not self._selected(task):
                    self._dropped["subset"] += 1
                else:
                    kept.setdefault(task.image_id, []).append(task)
        self._tasks_in_files = total
        # Images by increasing id; tasks in file order, as RefVGLoader gives them.
        self._groups = [ImageGroup(self._images[image_id], tuple(kept[image_id])) for image_id in sorted(kept)]
        if not self._groups:
            raise InputError(
                f"no task of PhraseCut {split} is left with --subset {subset} "
                f"({total} in the files, dropped: {self._dropped})"
            )

    def _selected(self, task: PhraseCutTask) -> bool:
        if self.subset == "all":
            return True
        return (task.category in COCO_CATEGORY_NAMES) == (self.subset == "seen")

    def images(self) -> list[ImageGroup]:
        """The split's images (those with a selected task), by increasing image_id."""
        return list(self._groups)

    def image_path(self, image: ImageRecord) -> Path:
        return self.images_dir / image.file_name

    def load_image(self, image: ImageRecord) -> Image.Image:
        """The photo as RGB (no EXIF rotation: polygons are in the stored frame), checked against its record."""
        return load_dataset_image(self.image_path(image), image, f"{self.data_root / IMAGES_FILE}")

    def missing_images(self, groups: list[ImageGroup] | None = None) -> list[Path]:
        return missing_images(self.image_path, self._groups if groups is None else groups)

    def gt_mask(self, task: PhraseCutTask) -> np.ndarray:
        """Every polygon of every instance, drawn as the dataset's code draws them, bool (H, W)."""
        image = self._images[task.image_id]
        return rasterize_polygons([p for instance in task.instances for p in instance], image.height, image.width)

    def instance_masks(self, image_id: int) -> np.ndarray:
        """Every distinct instance of the image's tasks (the ``gt`` oracle), bool (N, H, W), in file order."""
        image = self._images[image_id]
        masks: list[np.ndarray] = []
        for task in self._all_tasks.get(image_id, []):
            for instance in task.instances:
                mask = rasterize_polygons(instance, image.height, image.width)
                if mask.any() and not any(np.array_equal(mask, other) for other in masks):
                    masks.append(mask)
        return instance_stack(masks, image.height, image.width)

    def subsets(self, task: PhraseCutTask) -> list[str]:
        """The task's subsets among :data:`BREAKDOWN`, by PhraseCut's rules (utils/subset.py)."""
        image = self._images[task.image_id]
        count = len(task.instances)
        names = ["i_single" if count == 1 else "i_multi"]
        if count >= _MANY_INSTANCES:
            names.append("i_many")
        relative = self.gt_mask(task).sum() / (image.width * image.height)
        names.append("s_small" if relative < _SMALL_AREA else "s_large" if relative > _LARGE_AREA else "s_mid")
        return names

    def sentence_fields(self, task: PhraseCutTask, sentence: Sentence) -> dict[str, Any]:
        return {"task_id": task.task_id, "category": task.category, "subsets": self.subsets(task)}

    def sentence_label(self, task: PhraseCutTask, sentence: Sentence) -> str:
        return f"task {task.task_id}"

    def mask_name(self, task: PhraseCutTask, sentence: Sentence) -> str:
        return f"{task.task_id}.png"

    def report_notes(self) -> dict[str, Any]:
        """What was selected: the subset, and how many tasks of the files were left out and why."""
        return {
            "subset": self.subset,
            "tasks_in_files": self._tasks_in_files,
            "tasks": sum(len(group.refs) for group in self._groups),
            "tasks_dropped": sum(self._dropped.values()),
            "dropped_by_reason": dict(self._dropped),
        }

    # A missing photo stops the run (the published numbers are over every image).
    skips_missing_photos: ClassVar[bool] = False

    def ignore_mask(self, task: PhraseCutTask) -> None:
        return None  # every pixel counts
