"""What the evaluation loop needs of a benchmark, and opening one by name.

Four kinds of benchmark satisfy :class:`EvaluationDataset`: the REFER
datasets (:class:`~globallocal.data.refer.ReferDataset`: RefCOCO, RefCOCO+,
RefCOCOg), PhraseCut (:class:`~globallocal.data.phrasecut.PhraseCutDataset`),
gRefCOCO (:class:`~globallocal.data.grefcoco.GRefCocoDataset`: several
targets or none) and ReasonSeg (:class:`~globallocal.data.reasonseg.ReasonSegDataset`:
queries that need reasoning). The loop iterates images, each with its
referred things ("refs": a REFER or gRefCOCO ref, a PhraseCut task, a
ReasonSeg sample), each with its sentences, and asks the dataset how to name
a sentence in a record, an error and a mask file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from ..errors import InputError
from .grefcoco import GREFCOCO, GREFCOCO_SPLITS, GRefCocoDataset, refs_path
from .phrasecut import BREAKDOWN, IMAGES_FILE, PHRASECUT, SUBSETS, PhraseCutDataset, check_phrasecut_split
from .reasonseg import REASONSEG, REASONSEG_SPLITS, REASONSEG_SUBSETS, ReasonSegDataset
from .refer import DEFAULT_SPLIT_BY, ImageGroup, ImageRecord, ReferDataset, resolve_split

__all__ = [
    "DATASETS",
    "SUBSET_ORDER",
    "EvaluationDataset",
    "check_dataset",
    "check_dataset_files",
    "dataset_label",
    "images_folder",
    "open_dataset",
]

DATASETS = (*DEFAULT_SPLIT_BY, PHRASECUT, GREFCOCO, REASONSEG)
# The subsets a report breaks the metrics down by, in the order it lists them (PhraseCut's, ReasonSeg's).
SUBSET_ORDER = (*BREAKDOWN, "short", "long")
# What --data-root is, per dataset, for the messages.
_LAYOUT = {PHRASECUT: "the VGPhraseCut_v0 folder", GREFCOCO: "the folder holding grefcoco/",
           REASONSEG: "the ReasonSeg folder holding val/ and test/"}


class EvaluationDataset(Protocol):
    """A split grouped by image (:class:`~globallocal.data.refer.ImageGroup`: ``image``, ``refs``
    with ``sentences``)."""

    skips_missing_photos: bool
    """True: a missing photo is left out of the run and counted in its report; False: it stops the run."""

    def images(self) -> list[ImageGroup]: ...

    def load_image(self, image: ImageRecord) -> Image.Image: ...

    def missing_images(self, groups: list[ImageGroup] | None = None) -> list[Path]: ...

    def gt_mask(self, ref: Any) -> np.ndarray:
        """The ref's ground truth, bool (H, W); all False when the sentence refers to nothing."""

    def ignore_mask(self, ref: Any) -> np.ndarray | None:
        """Pixels that count in neither intersection nor union, bool (H, W); None when every pixel counts."""

    def instance_masks(self, image_id: int) -> np.ndarray:
        """The image's annotated instances (the ``gt`` proposal oracle), bool (N, H, W); none: (0, H, W)."""

    def sentence_fields(self, ref: Any, sentence: Any) -> dict[str, Any]:
        """What a record says about the sentence besides the image and the phrase: its ids first."""

    def sentence_label(self, ref: Any, sentence: Any) -> str:
        """The sentence named in an error message."""

    def mask_name(self, ref: Any, sentence: Any) -> str:
        """The file name of the sentence's predicted mask under ``--save-masks``."""

    def report_notes(self) -> dict[str, Any]:
        """What the report says about the selection of the split (empty when there is nothing to say)."""


def _subsets(dataset: str) -> tuple[str, ...]:
    return {PHRASECUT: SUBSETS, REASONSEG: REASONSEG_SUBSETS}.get(dataset, ("all",))


def check_dataset(dataset: str, split: str, split_by: str | None = None, subset: str = "all") -> str | None:
    """Check a benchmark, split and options without reading any file; the split_by to use (None where a dataset
    has no choice of it: PhraseCut, ReasonSeg)."""
    if dataset not in DATASETS:
        raise InputError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASETS)}")
    if subset not in _subsets(dataset):
        if subset != "all" and _subsets(dataset) == ("all",):
            raise InputError(f"--subset applies to phrasecut and reasonseg, not {dataset}")
        raise InputError(f"unknown --subset {subset!r} for {dataset}; use one of {', '.join(_subsets(dataset))}")
    if dataset in DEFAULT_SPLIT_BY:
        return resolve_split(dataset, split, split_by)
    if split_by is not None and (dataset, split_by) != (GREFCOCO, "unc"):
        raise InputError(f"--split-by applies to refcoco, refcoco+ and refcocog, not {dataset}")
    if dataset == PHRASECUT:
        check_phrasecut_split(split)
        return None
    splits = GREFCOCO_SPLITS if dataset == GREFCOCO else REASONSEG_SPLITS
    if split not in splits:
        raise InputError(f"invalid {dataset} split {split!r}; use one of {', '.join(splits)}")
    return "unc" if dataset == GREFCOCO else None


def images_folder(dataset: str, split: str, data_root: str | Path, images_dir: str | Path | None) -> Path | None:
    """Where a dataset's photos are: ``images_dir`` (--images), by default ``data_root/images`` for PhraseCut and
    the split's own folder for ReasonSeg (whose photos lie beside their JSON files); None when it must be given."""
    if dataset == REASONSEG:
        if images_dir is not None:
            raise InputError("--images does not apply to reasonseg: its photos lie beside their JSON files")
        return Path(data_root) / split
    if images_dir is None and dataset == PHRASECUT:
        return Path(data_root) / "images"
    return None if images_dir is None else Path(images_dir)


def check_dataset_files(dataset: str, split: str, data_root: str | Path, split_by: str | None) -> None:
    """Refuse, naming it, a data root without the files a split is read from (before any model loads)."""
    root = Path(data_root)
    layout = _LAYOUT.get(dataset, f"the REFER folder holding {dataset}/")
    if not root.is_dir():
        raise InputError(f"data root not found: {data_root}; give {layout}")
    if dataset == PHRASECUT:
        needed = [root / IMAGES_FILE, *(root / f"refer_{part}.json" for part in split.split("_"))]
    elif dataset == GREFCOCO:
        needed = [refs_path(root), root / GREFCOCO / "instances.json"]
    elif dataset == REASONSEG:
        needed = [root / split]
    else:
        needed = [root / dataset / f"refs({split_by}).p", root / dataset / "instances.json"]
    for path in needed:
        if not path.exists():
            raise InputError(f"{path} not found; is {data_root} {layout}?")


def open_dataset(
    dataset: str,
    split: str,
    data_root: str | Path,
    *,
    split_by: str | None = None,
    images_dir: str | Path | None = None,
    overlap: str = "paper",
    subset: str = "all",
) -> EvaluationDataset:
    """The benchmark's split; ``images_dir`` is required for REFER and gRefCOCO (COCO train2014), optional for
    PhraseCut, and does not apply to ReasonSeg."""
    split_by = check_dataset(dataset, split, split_by, subset)
    if dataset == PHRASECUT:
        return PhraseCutDataset(data_root, split, subset=subset, images_dir=images_dir)
    if dataset == GREFCOCO:
        return GRefCocoDataset(data_root, split, images_dir=images_dir)
    if dataset == REASONSEG:
        images_folder(dataset, split, data_root, images_dir)  # refuses --images
        return ReasonSegDataset(data_root, split, subset=subset)
    return ReferDataset(data_root, dataset, split, split_by=split_by, images_dir=images_dir, overlap=overlap)


def dataset_label(config: dict[str, Any]) -> str:
    """A run's benchmark in words, from its config.json: ``refcoco val (unc)``, ``phrasecut val (unseen)``,
    ``grefcoco val``, ``reasonseg test (long)``."""
    dataset = config["dataset"]
    if dataset in (PHRASECUT, REASONSEG):
        return f"{dataset} {config['split']} ({config.get('subset', 'all')})"
    if dataset == GREFCOCO:
        return f"{dataset} {config['split']}"
    return f"{dataset} {config['split']} ({config['split_by']})"
