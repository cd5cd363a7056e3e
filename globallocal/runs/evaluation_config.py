"""What an evaluation run is: its configuration, the identity a resume is checked against, and the
checks that run before any model loads."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.datasets import check_dataset, check_dataset_files, images_folder
from ..data.images import check_writable_folder
from ..data.refer import DEFAULT_SPLIT_BY, OVERLAP_RULES
from ..errors import InputError
from .distributed import from_environment
from .runfolder import check_free
from .worker import run_description

if TYPE_CHECKING:
    from .cache import FeatureCache

# --save-masks: each mask as COCO RLE in its record, or as a PNG in the run folder's masks/ (any other value is
# a folder for the PNGs).
MASK_FORMATS = ("rle", "png")
MASKS_FOLDER = "masks"

# Bumped when the records or config layout changes, so that an old out dir is
# refused instead of misread. 2: per-proposal overlaps, cache, rank files. 3: weights by content.
_FORMAT = 3


@dataclass
class EvaluationConfig:
    """What is evaluated and where results go.

    ``split_by`` defaults per dataset (unc, unc, umd). ``limit`` keeps the
    first N images of the split (by image_id). ``save_masks`` keeps every
    predicted mask: ``rle`` (COCO RLE in the sentence's record), ``png`` (one
    PNG per sentence in the run folder's ``masks/``) or a folder for the PNGs.
    ``overlap`` is the ground-truth rule of
    :func:`globallocal.data.refer.decode_segmentation`. ``settings`` (model,
    alpha, beta, preset, parser model, ...) is copied into the report
    verbatim and takes part in the resume check; it must be
    JSON-serialisable (other values are stored as their ``str``).
    ``weights`` names every weights file used (``{"clip": path,
    "freesolo": path, ...}``): they are identified by content
    (:func:`~globallocal.models.weights.weights_identity`), and a resume with other
    content is refused.

    PhraseCut (``dataset="phrasecut"``): ``images_dir`` defaults to
    ``data_root/images``, ``subset`` is all, unseen or seen, and ``overlap``
    does not apply (its ground truth is the union of its polygons); nor does
    it to gRefCOCO (its official union) or ReasonSeg (``subset`` all, short
    or long; its photos lie beside their JSON files, no ``images_dir``).
    """

    dataset: str
    split: str
    data_root: str | Path
    images_dir: str | Path | None
    out_dir: str | Path
    split_by: str | None = None
    limit: int | None = None
    save_masks: str | Path | None = None
    overlap: str = "paper"
    settings: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, str | Path] = field(default_factory=dict)
    subset: str = "all"

    def images_folder(self) -> Path | None:
        """Where the photos are: ``images_dir``, or the dataset's own folder (PhraseCut's, ReasonSeg's)."""
        return images_folder(self.dataset, self.split, self.data_root, self.images_dir)

    @property
    def mask_format(self) -> str | None:
        """How predicted masks are kept: rle (in the records), png, or None."""
        if self.save_masks is None:
            return None
        return "rle" if str(self.save_masks) == "rle" else "png"

    def mask_folder(self) -> Path | None:
        """Where the PNG masks go: the run folder's masks/ (``png``) or the folder given."""
        if self.mask_format != "png":
            return None
        return Path(self.out_dir) / MASKS_FOLDER if str(self.save_masks) == "png" else Path(self.save_masks)

    def identity(self) -> dict[str, Any]:
        """The configuration as stored in config.json and compared on resume.

        The out dir itself is left out (moving a run directory is harmless);
        paths are made absolute so the same data named from another working
        directory still matches; split_by is resolved to its default. The
        limit is left out too: a run of the first N images is extended by
        running it again with a larger limit or none.
        """

        def absolute(path: str | Path | None) -> str | None:
            return None if path is None else str(Path(path).expanduser().resolve())

        identity = {
            "format": _FORMAT,
            "dataset": self.dataset,
            "split": self.split,
            "split_by": check_dataset(self.dataset, self.split, self.split_by, self.subset),
            "data_root": absolute(self.data_root),
            "images_dir": absolute(self.images_folder()),
            "save_masks": str(self.save_masks) if str(self.save_masks) in MASK_FORMATS else absolute(self.save_masks),
            "overlap": self.overlap,
            # Weights by content, not path: moved weights still resume, other weights at the same path do not.
            **run_description(self.settings, self.weights),
        }
        if self.dataset not in DEFAULT_SPLIT_BY:  # PhraseCut's, gRefCOCO's and ReasonSeg's ground truth is theirs
            identity.update(overlap=None, subset=self.subset)
        # Round-trip so that tuples/lists and key order compare as stored.
        return json.loads(json.dumps(identity, sort_keys=True, default=str))


def run_identity(
    config: EvaluationConfig, segmenter: Any, cache: FeatureCache | None, proposal_key: dict[str, Any] | None
) -> dict[str, Any]:
    """config.json: the configuration, plus where the cache is and what a sweep needs to replay the scores."""
    identity = config.identity()
    if cache is not None:
        identity["cache"] = {
            **cache.describe(),
            "proposals": "content" if proposal_key is None else proposal_key,
            "scoring": segmenter.method.describe(),
        }
    else:
        identity["cache"] = None
    return json.loads(json.dumps(identity, sort_keys=True, default=str))


def check_evaluation_inputs(config: EvaluationConfig, main: bool | None = None) -> None:
    """What can be checked in a second, before any model loads (seconds to minutes): options, paths, the run folder.

    Refuses a bad --limit, an unknown dataset, split or overlap rule, a data
    root without the split's files, a missing images folder, a run folder
    that is a file, read-only or in use, and a --save-masks folder that
    cannot be written. The run folder's lock is only probed by the main
    process (``main``; default: rank 0 of torchrun's environment), which
    takes it later.
    """
    if config.limit is not None and config.limit < 1:
        raise InputError(f"--limit must be at least 1, got {config.limit}")
    if config.overlap not in OVERLAP_RULES:
        raise InputError(f"unknown overlap rule {config.overlap!r}; use one of {', '.join(OVERLAP_RULES)}")
    split_by = check_dataset(config.dataset, config.split, config.split_by, config.subset)
    images_dir = config.images_folder()
    if images_dir is None:
        raise InputError(f"--images is required for {config.dataset}: the COCO train2014 image folder")
    check_dataset_files(config.dataset, config.split, config.data_root, split_by)
    if not images_dir.is_dir():
        raise InputError(f"images folder not found: {images_dir}")
    if main is None:
        main = from_environment().is_main
    if main:
        check_free(config.out_dir)
    else:
        check_writable_folder(config.out_dir, "run folder")
    if config.mask_folder() is not None and str(config.save_masks) != "png":
        check_writable_folder(config.mask_folder(), "--save-masks")
