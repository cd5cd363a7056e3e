"""What the evaluation loop needs of a benchmark, and opening one by name.

Two benchmarks satisfy :class:`EvaluationDataset`: the REFER datasets
(:class:`~globallocal.data.refer.ReferDataset`: RefCOCO, RefCOCO+, RefCOCOg) and
PhraseCut (:class:`~globallocal.data.phrasecut.PhraseCutDataset`). The loop
iterates images, each with its referred things ("refs": a REFER ref, a
PhraseCut task), each with its sentences, and asks the dataset how to name
a sentence in a record, an error and a mask file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from ..errors import InputError
from .phrasecut import IMAGES_FILE, PHRASECUT, SUBSETS, PhraseCutDataset, check_phrasecut_split
from .refer import DEFAULT_SPLIT_BY, ImageGroup, ImageRecord, ReferDataset, resolve_split

if TYPE_CHECKING:
    from ..proposals import Proposals

__all__ = ["DATASETS", "EvaluationDataset", "check_dataset", "dataset_files", "dataset_label", "open_dataset"]

DATASETS = (*DEFAULT_SPLIT_BY, PHRASECUT)


class EvaluationDataset(Protocol):
    """A split grouped by image (:class:`~globallocal.data.refer.ImageGroup`: ``image``, ``refs``
    with ``sentences``)."""

    def images(self) -> list[ImageGroup]: ...

    def load_image(self, image: ImageRecord) -> Image.Image: ...

    def missing_images(self, groups: list[ImageGroup] | None = None) -> list[Path]: ...

    def gt_mask(self, ref: Any) -> np.ndarray:
        """The ref's ground truth, bool (H, W)."""

    def instance_masks(self, image_id: int) -> Proposals:
        """The image's annotated instances (the ``gt`` proposal oracle)."""

    def sentence_fields(self, ref: Any, sentence: Any) -> dict[str, Any]:
        """What a record says about the sentence besides the image and the phrase: its ids first."""

    def sentence_label(self, ref: Any, sentence: Any) -> str:
        """The sentence named in an error message."""

    def mask_name(self, ref: Any, sentence: Any) -> str:
        """The file name of the sentence's predicted mask under ``--save-masks``."""

    def report_notes(self) -> dict[str, Any]:
        """What the report says about the selection of the split (empty when there is nothing to say)."""


def check_dataset(dataset: str, split: str, split_by: str | None = None, subset: str = "all") -> str | None:
    """Check a benchmark, split and options without reading any file; the split_by to use (None for PhraseCut)."""
    if dataset == PHRASECUT:
        check_phrasecut_split(split)
        if split_by is not None:
            raise InputError("--split-by applies to refcoco, refcoco+ and refcocog, not phrasecut")
        if subset not in SUBSETS:
            raise InputError(f"unknown --subset {subset!r}; use one of {', '.join(SUBSETS)}")
        return None
    if dataset not in DEFAULT_SPLIT_BY:
        raise InputError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASETS)}")
    if subset != "all":
        raise InputError(f"--subset applies to phrasecut only, not {dataset}")
    return resolve_split(dataset, split, split_by)


def dataset_files(dataset: str, split: str, data_root: str | Path, split_by: str | None) -> list[Path]:
    """The annotation files a split is read from (for a check before any model loads)."""
    root = Path(data_root)
    if dataset == PHRASECUT:
        return [root / IMAGES_FILE, *(root / f"refer_{part}.json" for part in split.split("_"))]
    return [root / dataset / f"refs({split_by}).p", root / dataset / "instances.json"]


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
    """The benchmark's split; ``images_dir`` is required for REFER (COCO train2014), optional for PhraseCut."""
    split_by = check_dataset(dataset, split, split_by, subset)
    if dataset == PHRASECUT:
        return PhraseCutDataset(data_root, split, subset=subset, images_dir=images_dir)
    return ReferDataset(data_root, dataset, split, split_by=split_by, images_dir=images_dir, overlap=overlap)


def dataset_label(config: dict[str, Any]) -> str:
    """A run's benchmark in words, from its config.json: ``refcoco val (unc)``, ``phrasecut val (unseen)``."""
    if config["dataset"] == PHRASECUT:
        return f"{PHRASECUT} {config['split']} ({config.get('subset', 'all')})"
    return f"{config['dataset']} {config['split']} ({config['split_by']})"
