"""SAM 2 and SAM mask proposals, through Meta's own packages (``sam2``, ``segment-anything``).

Both packages ship an automatic mask generator: a grid of point prompts,
three masks per point, filtered by the model's predicted IoU and by
stability, deduplicated by box NMS, optionally cleaned of small islands
and holes. :class:`SAM2Generator` and :class:`SAMGenerator` wrap them and
return :class:`~globallocal.proposals.Proposals` through
:func:`~globallocal.proposals.postprocess`, scored by the predicted IoU.

Weights: SAM 2.1 checkpoints come from the Hugging Face hub repositories
the ``sam2`` package itself downloads from (``facebook/sam2.1-hiera-*``,
into the hub cache); the original SAM checkpoints are not on the hub and
are read from ``sam_weights/`` at the repository root or from a given
path. Checkpoints are read with ``weights_only=True``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..data.images import ImageInput, load_image
from ..errors import InputError, WeightsError
from ..models.hub import cached_hub_file, require_hub_files, weights_folders
from ..models.weights import load_checkpoint_tensors
from . import Proposals, postprocess

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "DEFAULT_SAM2_MODEL",
    "DEFAULT_SAM_MODEL",
    "DEFAULT_SAM_SETTINGS",
    "SAM2_MODELS",
    "SAM2Generator",
    "SAMGenerator",
    "SAM_MODELS",
    "SAM_SETTINGS",
    "SAM_WEIGHTS_URL",
    "default_sam_weights",
    "default_sam_weights_dirs",
    "load_sam",
    "load_sam2",
]

INSTALL_HINT = "run `make install`, or `SAM2_BUILD_CUDA=0 pip install --no-build-isolation -e '.[sam]'`"

# Short names of the SAM 2.1 checkpoints -> their hub repositories (the ids
# the sam2 package's own build_sam2_hf accepts).
SAM2_MODELS = {
    "tiny": "facebook/sam2.1-hiera-tiny",
    "small": "facebook/sam2.1-hiera-small",
    "base-plus": "facebook/sam2.1-hiera-base-plus",
    "large": "facebook/sam2.1-hiera-large",
}
DEFAULT_SAM2_MODEL = "large"

# segment-anything's registry names -> the official checkpoint files.
SAM_MODELS = {
    "vit_h": "sam_vit_h_4b8939.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_b": "sam_vit_b_01ec64.pth",
}
DEFAULT_SAM_MODEL = "vit_h"
SAM_WEIGHTS_URL = "https://dl.fbaipublicfiles.com/segment_anything/"

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


def _import(module: str, what: str) -> Any:
    """``module`` imported, or an InputError telling how to install the optional extra."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing = f" (module {error.name!r} not found)" if error.name else ""
        raise InputError(f"{what} proposals need the optional [sam] packages{missing}; {INSTALL_HINT}") from None


@contextmanager
def _quiet_package_warnings() -> Iterator[None]:
    """Silence two package warnings that repeat on every call and need no action.

    sam2 builds its image transforms with ``torch.jit.script``, which current
    torch deprecates; and without sam2's optional CUDA extension (installed
    with SAM2_BUILD_CUDA=0) its predictor skips filling small holes, warning
    once per point batch that the result is barely affected.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r"(?s).*Skipping the post-processing step", category=UserWarning)
        yield


def _read_checkpoint(path: Path, what: str) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (bare, or under "model" as SAM 2 saves it)."""
    checkpoint = load_checkpoint_tensors(path, what, f"use the official {what} checkpoint")
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise WeightsError(f"{path} is not a {what} checkpoint: no state dict of tensors in it")
    return checkpoint


# Original SAM's image-encoder width per registry name: how a checkpoint of another size is recognised.
_SAM_WIDTHS = {1280: "vit_h", 1024: "vit_l", 768: "vit_b"}


def _sam_size_hint(checkpoint: dict[str, torch.Tensor]) -> str:
    """'; it looks like SAM vit_b: pass --sam-model vit_b' for an original SAM checkpoint of a known width."""
    embedding = checkpoint.get("image_encoder.pos_embed")
    name = _SAM_WIDTHS.get(int(embedding.shape[-1])) if embedding is not None and embedding.dim() else None
    return f"; it looks like SAM {name}: pass --sam-model {name}" if name else ""


def _load_strictly(model: nn.Module, path: Path, what: str) -> None:
    """Load ``path`` into ``model``, every tensor present and of the right shape, or say which are not (and,
    for original SAM, which size the file looks like)."""
    checkpoint = _read_checkpoint(path, what)
    expected = model.state_dict()
    missing = [key for key in expected if key not in checkpoint]
    unexpected = [key for key in checkpoint if key not in expected]
    wrong = [key for key in expected if key in checkpoint and checkpoint[key].shape != expected[key].shape]
    if missing or unexpected or wrong:
        counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of the wrong shape"
        example = (missing or unexpected or wrong)[0]
        raise WeightsError(f"{path} is not the {what} checkpoint: {counts} tensors (e.g. {example})"
                           f"{_sam_size_hint(checkpoint)}")
    model.load_state_dict(checkpoint, strict=True)


def _weights_file(weights: str | os.PathLike[str], what: str, official: str) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"{what} weights file not found: {path}; the official checkpoint is {official}")
    return path


def _sam2_hub_id(model: str) -> str:
    """The hub repository of a short SAM 2.1 name, or of a full id the sam2 package knows."""
    if model in SAM2_MODELS:
        return SAM2_MODELS[model]
    build_sam = _import("sam2.build_sam", "SAM 2")
    if model in build_sam.HF_MODEL_ID_TO_FILENAMES:
        return model
    raise InputError(
        f"unknown SAM 2 model {model!r}; use {', '.join(SAM2_MODELS)} (SAM 2.1) or one of "
        f"{', '.join(build_sam.HF_MODEL_ID_TO_FILENAMES)}"
    )


def load_sam2(
    model: str = DEFAULT_SAM2_MODEL, weights: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """A SAM 2 model (``SAM2Base``) in eval mode on ``device``, built from the package's own config.

    ``model`` is ``tiny``, ``small``, ``base-plus`` or ``large`` (SAM 2.1), or
    any hub id in ``sam2.build_sam.HF_MODEL_ID_TO_FILENAMES`` (e.g.
    ``facebook/sam2-hiera-large`` for SAM 2.0). ``weights``: None takes the
    checkpoint from the Hugging Face cache, downloading it there as the sam2
    package does (failing within seconds when offline); a path loads that
    file strictly; ``"random"`` keeps the random initialisation (tests,
    benchmarks).
    """
    hub_id = _sam2_hub_id(model)
    build_sam = _import("sam2.build_sam", "SAM 2")
    config, filename = build_sam.HF_MODEL_ID_TO_FILENAMES[hub_id]
    what = f"SAM 2 {model}"
    official = f"{filename} from https://huggingface.co/{hub_id}"
    if weights is None:
        path = _sam2_hub_checkpoint(hub_id, filename, what)
    elif str(weights) == "random":
        path = None
    else:
        path = _weights_file(weights, what, official)
    # Built without a checkpoint, then loaded here: the package's own loader
    # reports a mismatch as a bare RuntimeError after logging the key lists.
    sam = build_sam.build_sam2(config, ckpt_path=None, device="cpu", mode="eval")
    if path is not None:
        _load_strictly(sam, path, what)
    return sam.to(device).eval()


def _sam2_hub_checkpoint(hub_id: str, filename: str, what: str) -> Path:
    """The cached checkpoint, else downloaded into the hub cache; WeightsError within seconds when offline.

    A cached file is used without asking the hub: huggingface_hub would
    otherwise check for a newer revision and, with the network down but
    HF_HUB_OFFLINE unset, retry for about 20 s.
    """
    fix = (
        f"on a connected machine run `hf download {hub_id} {filename}` (it goes to the Hugging Face cache, "
        "where it is found offline), or pass --sam-weights PATH to a copy of that file"
    )
    cached = cached_hub_file(hub_id, [filename])
    if cached is not None:
        return cached
    require_hub_files(hub_id, [filename], f"{what} checkpoint {filename} ({hub_id})", fix)
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=hub_id, filename=filename))
    except Exception as error:  # any network or hub failure is the same problem to the user
        raise WeightsError(f"downloading {what} checkpoint {filename} failed ({type(error).__name__}); {fix}") from None


def default_sam_weights_dirs() -> list[Path]:
    """Folders searched for the official SAM checkpoints: ``./sam_weights``, then the clone's."""
    return weights_folders("sam_weights")


def default_sam_weights(model: str) -> Path | None:
    """The official checkpoint of ``model`` in :func:`default_sam_weights_dirs`, if there."""
    for folder in default_sam_weights_dirs():
        if (folder / SAM_MODELS[model]).is_file():
            return folder / SAM_MODELS[model]
    return None


def load_sam(
    model: str = DEFAULT_SAM_MODEL, weights: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """An original SAM model (``Sam``) in eval mode on ``device``, built by segment-anything's registry.

    ``model`` is ``vit_h``, ``vit_l`` or ``vit_b``. ``weights``: a path to the
    official checkpoint, loaded strictly; None looks for its official file
    name in :func:`default_sam_weights_dirs` and otherwise raises a
    :class:`WeightsError` with the download address (these files are not on
    the hub, so nothing is downloaded); ``"random"`` keeps the random
    initialisation (tests, benchmarks).
    """
    if model not in SAM_MODELS:
        raise InputError(f"unknown SAM model {model!r}; use {', '.join(SAM_MODELS)}")
    registry = _import("segment_anything", "SAM").sam_model_registry
    filename = SAM_MODELS[model]
    url = SAM_WEIGHTS_URL + filename
    what = f"SAM {model}"
    if weights is None:
        path: Path | None = default_sam_weights(model)
        if path is None:
            folders = default_sam_weights_dirs()
            raise WeightsError(
                f"{what} weights {filename} not found in {' or '.join(map(str, folders))}; download {url} into "
                f"{folders[0]}/ or pass --sam-weights PATH"
            )
    elif str(weights) == "random":
        path = None
    else:
        path = _weights_file(weights, what, url)
    sam = registry[model](checkpoint=None)
    if path is not None:
        _load_strictly(sam, path, what)
    return sam.to(device).eval()


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
        with _quiet_package_warnings():
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
        with _quiet_package_warnings():
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


class SAM2Generator(_AutomaticMaskSource):
    """Mask proposals from SAM 2's ``SAM2AutomaticMaskGenerator`` (``model``: see :func:`load_sam2`)."""

    family = "SAM 2"

    def _package_generator(self, model: nn.Module, options: dict[str, Any]) -> Any:
        amg = _import("sam2.automatic_mask_generator", self.family)
        return amg.SAM2AutomaticMaskGenerator(model, **options)


class SAMGenerator(_AutomaticMaskSource):
    """Mask proposals from the original SAM's ``SamAutomaticMaskGenerator`` (``model``: see :func:`load_sam`)."""

    family = "SAM"

    def _package_generator(self, model: nn.Module, options: dict[str, Any]) -> Any:
        return _import("segment_anything", self.family).SamAutomaticMaskGenerator(model, **options)


SAM_OPTION_NAMES = frozenset(SAM_SETTINGS[DEFAULT_SAM_SETTINGS]) | {"points_per_batch"}
