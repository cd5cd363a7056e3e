"""SAM 2 and SAM mask proposals, through Meta's own packages (``sam2``, ``segment-anything``).

Both packages ship an automatic mask generator: a grid of point prompts,
three masks per point, filtered by the model's predicted IoU and by
stability, deduplicated by box NMS, optionally cleaned of small islands
and holes. :class:`SAM2Generator` and :class:`SAMGenerator` wrap them and
return :class:`~globallocal.proposals.Proposals` through
:func:`~globallocal.proposals.postprocess`, scored by the predicted IoU.

Weights and model loading: :mod:`.sam_weights`.
"""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..data.images import ImageInput, load_image
from ..errors import InputError
from . import Proposals, postprocess
from .sam_weights import INSTALL_HINT, import_sam_package, quiet_package_warnings

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "DEFAULT_SAM_SETTINGS",
    "SAM_OPTION_NAMES",
    "SAM_SETTINGS",
    "SAM2Generator",
    "SAMGenerator",
    "check_settings",
]

# Named generator settings. "paper-later" is what later zero-shot referring
# segmentation papers used when they swapped FreeSOLO for SAM: a sparse 8x8
# point grid, lenient quality thresholds, regions under 800 pixels removed.
# "hybridgl" and "hybridgl-phrasecut" are HybridGL's (SPEC-hybridgl section 2:
# RefCOCO/+/g and PhraseCut). The last two are the packages' own defaults, for comparison.
_PAPER_LATER: dict[str, int | float] = {
    "points_per_side": 8,
    "pred_iou_thresh": 0.7,
    "stability_score_thresh": 0.7,
    "min_mask_region_area": 800,
    "box_nms_thresh": 0.7,
    "crop_n_layers": 0,
    "crop_n_points_downscale_factor": 1,
}
SAM_SETTINGS: dict[str, dict[str, int | float]] = {
    "paper-later": _PAPER_LATER,
    # HybridGL's RefCOCO settings are the same numbers, kept under their own name (a run records which it used).
    "hybridgl": dict(_PAPER_LATER),
    "hybridgl-phrasecut": {
        "points_per_side": 64,
        "pred_iou_thresh": 0.86,
        "stability_score_thresh": 0.92,
        "min_mask_region_area": 100,
        "box_nms_thresh": 0.7,
        "crop_n_layers": 1,
        "crop_n_points_downscale_factor": 2,
    },
    "sam-default": {
        "points_per_side": 32,
        "pred_iou_thresh": 0.88,
        "stability_score_thresh": 0.95,
        "min_mask_region_area": 0,
        "box_nms_thresh": 0.7,
        "crop_n_layers": 0,
        "crop_n_points_downscale_factor": 1,
    },
    "sam2-default": {
        "points_per_side": 32,
        "pred_iou_thresh": 0.8,
        "stability_score_thresh": 0.95,
        "min_mask_region_area": 0,
        "box_nms_thresh": 0.7,
        "crop_n_layers": 0,
        "crop_n_points_downscale_factor": 1,
    },
}
DEFAULT_SAM_SETTINGS = "paper-later"

# Point prompts decoded at once: memory against speed, no effect on the masks.
POINTS_PER_BATCH = 64


def check_settings(name: str, options: Mapping[str, Any], max_proposals: int | None) -> None:
    """InputError for settings the packages would reject with a bare assert, or silently misuse."""
    for label in ("points_per_side", "points_per_batch"):
        if options[label] < 1:
            raise InputError(f"{name} {label} must be at least 1, got {options[label]}")
    for label in ("pred_iou_thresh", "stability_score_thresh"):
        if not 0.0 <= options[label] <= 1.0:
            raise InputError(f"{name} {label} must be in [0, 1], got {options[label]}")
    if not 0.0 < options["box_nms_thresh"] <= 1.0:
        raise InputError(f"{name} box_nms_thresh must be in (0, 1], got {options['box_nms_thresh']}")
    for label in ("min_mask_region_area", "crop_n_layers"):
        if options[label] < 0:
            raise InputError(f"{name} {label} must be at least 0, got {options[label]}")
    if options.get("crop_n_points_downscale_factor", 1) < 1:
        raise InputError(
            f"{name} crop_n_points_downscale_factor must be at least 1, got {options['crop_n_points_downscale_factor']}"
        )
    if max_proposals is not None and max_proposals < 1:
        raise InputError(f"max_proposals must be at least 1, got {max_proposals}")
    # Both packages remove small regions with OpenCV; segment-anything
    # imports it up front, sam2 only after the whole image has been prompted.
    if options["min_mask_region_area"] > 0 and importlib.util.find_spec("cv2") is None:
        raise InputError(
            f"{name} min_mask_region_area {options['min_mask_region_area']} needs OpenCV "
            f"(opencv-python-headless), which is not installed; {INSTALL_HINT}, or set the minimum region area to 0"
        )


_DEFAULTS = SAM_SETTINGS[DEFAULT_SAM_SETTINGS]


class _AutomaticMaskSource(ABC):
    """A package's automatic mask generator, its settings checked, its records turned into Proposals.

    Settings (defaults: ``paper-later`` in :data:`SAM_SETTINGS`):
    ``points_per_side`` 8 (a grid of 8 x 8 point prompts, three masks each),
    ``pred_iou_thresh`` 0.7 (keep masks whose predicted IoU exceeds it),
    ``stability_score_thresh`` 0.7 (keep masks at least this stable under a
    shift of the binarisation cutoff), ``min_mask_region_area`` 800 (remove
    islands and holes under 800 pixels, with OpenCV; 0 turns it off),
    ``box_nms_thresh`` 0.7 (box IoU above which the lower-scored duplicate
    goes), ``crop_n_layers`` 0 (no extra passes on image crops).
    ``points_per_batch`` (64) only trades memory for speed.
    ``max_proposals`` (None: all) keeps the best by score. ``keep_order``
    keeps the package's order instead of sorting by score (see
    :func:`~globallocal.proposals.postprocess`). ``model_name`` is recorded
    in :attr:`settings`.
    """

    family = ""  # "SAM 2" or "SAM", for messages

    def __init__(
        self,
        model: nn.Module,
        points_per_side: int = int(_DEFAULTS["points_per_side"]),
        pred_iou_thresh: float = _DEFAULTS["pred_iou_thresh"],
        stability_score_thresh: float = _DEFAULTS["stability_score_thresh"],
        min_mask_region_area: int = int(_DEFAULTS["min_mask_region_area"]),
        box_nms_thresh: float = _DEFAULTS["box_nms_thresh"],
        crop_n_layers: int = int(_DEFAULTS["crop_n_layers"]),
        crop_n_points_downscale_factor: int = int(_DEFAULTS["crop_n_points_downscale_factor"]),
        points_per_batch: int = POINTS_PER_BATCH,
        max_proposals: int | None = None,
        model_name: str = "",
        keep_order: bool = False,
    ) -> None:
        options = {
            "points_per_side": points_per_side,
            "pred_iou_thresh": pred_iou_thresh,
            "stability_score_thresh": stability_score_thresh,
            "min_mask_region_area": min_mask_region_area,
            "box_nms_thresh": box_nms_thresh,
            "crop_n_layers": crop_n_layers,
            "crop_n_points_downscale_factor": crop_n_points_downscale_factor,
            "points_per_batch": points_per_batch,
        }
        check_settings(self.family, options, max_proposals)
        with quiet_package_warnings():
            self.generator = self._package_generator(model, options)
        self.max_proposals = max_proposals
        self.keep_order = keep_order
        self.settings: dict[str, object] = {"model": model_name, **options, "max_proposals": max_proposals}
        if keep_order:
            # Recorded only when on, so that the caches and runs made before the option keep their keys.
            self.settings["keep_order"] = True

    @abstractmethod
    def _package_generator(self, model: nn.Module, options: dict[str, Any]) -> Any:
        """The package's automatic mask generator for ``model`` with ``options``."""

    def generate(self, image: ImageInput) -> Proposals:
        """Proposals for an image (path, PIL image or uint8 array), masks at the image's size.

        Each proposal's score is the model's predicted IoU of its mask.
        Finding nothing is a normal outcome: an empty set.
        """
        rgb = load_image(image)
        with quiet_package_warnings():
            records = self.generator.generate(np.array(rgb))
        if records:
            masks = torch.from_numpy(np.stack([record["segmentation"] for record in records]))
        else:
            masks = torch.zeros((0, rgb.height, rgb.width), dtype=torch.bool)
        scores = torch.tensor([record["predicted_iou"] for record in records], dtype=torch.float32)
        return postprocess(Proposals.from_masks(masks, scores), self.max_proposals, keep_order=self.keep_order)

    def __call__(self, image: ImageInput) -> Proposals:
        """Same as :meth:`generate`, so a generator can serve as a segmenter's proposal source."""
        return self.generate(image)

    def segment_box(self, image: ImageInput, box: Sequence[float]) -> torch.Tensor:
        """The mask of one box prompt (x0, y0, x1, y1 in the image's pixels), bool (H, W): the package's
        predictor on the generator's model, one mask out (``multimask_output=False``)."""
        rgb = load_image(image)
        predictor = self.generator.predictor
        with quiet_package_warnings():
            predictor.set_image(np.array(rgb))
            masks, _, _ = predictor.predict(box=np.asarray(box, dtype=np.float32), multimask_output=False)
        return torch.from_numpy(np.asarray(masks[0]) > 0)


class SAM2Generator(_AutomaticMaskSource):
    """Mask proposals from SAM 2's ``SAM2AutomaticMaskGenerator`` (``model``: see :func:`load_sam2`)."""

    family = "SAM 2"

    def _package_generator(self, model: nn.Module, options: dict[str, Any]) -> Any:
        amg = import_sam_package("sam2.automatic_mask_generator", self.family)
        return amg.SAM2AutomaticMaskGenerator(model, **options)


class SAMGenerator(_AutomaticMaskSource):
    """Mask proposals from the original SAM's ``SamAutomaticMaskGenerator`` (``model``: see :func:`load_sam`)."""

    family = "SAM"

    def _package_generator(self, model: nn.Module, options: dict[str, Any]) -> Any:
        return import_sam_package("segment_anything", self.family).SamAutomaticMaskGenerator(model, **options)


SAM_OPTION_NAMES = frozenset(SAM_SETTINGS[DEFAULT_SAM_SETTINGS]) | {"points_per_batch"}
