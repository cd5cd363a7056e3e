"""SAM 3's weights: the gated hub repository ``facebook/sam3``, or a local folder in the transformers layout.

A folder holds ``config.json`` (model_type ``sam3``, or ``sam3_video`` as
``facebook/sam3`` has: its detector is the image model), ``model.safetensors``
and the processor's files; any other folder is refused, naming what is
missing. Before anything is built from it (torch-free, so the command line
checks a ``--sam3-weights`` folder at once) its files are checked as data
(:mod:`globallocal.models.model_folder`): the sizes ``config.json`` and the
processor's configuration give what gets allocated, within :data:`CONFIG_BOUNDS`
and :data:`PROCESSOR_BOUNDS`; the tokenizer's files are of a bounded size.
Then ``model.safetensors`` must hold the model's tensors one to one (names,
shapes, floating dtypes, :func:`~globallocal.models.weights.check_tensors`):
transformers would fill a missing tensor with random values and cast an
integer one silently. The weights are identified by the content of
``model.safetensors`` (:func:`~globallocal.models.weights.weights_identity`),
wherever they lie. Offline, or online without access to the gated
repository, the one-line error says how to get them.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import WeightsError, first_line
from ..models.hub import MissingFile
from ..models.loading import without_loading_bars
from ..models.model_folder import (
    CONFIG_MAX_BYTES,
    TOKENIZER_MAX_BYTES,
    Bound,
    check_bounds,
    check_file_size,
    read_config,
    safetensors_tensors,
)
from ..models.weights import check_tensors, weights_identity

if TYPE_CHECKING:
    import torch

__all__ = ["ACCESS_FIX", "SAM3_REPO", "Sam3Weights", "check_sam3_folder", "load_sam3", "missing_sam3_weights"]

SAM3_REPO = "facebook/sam3"
WEIGHTS_FILE = "model.safetensors"
# What a snapshot needs besides the weights (the hub repository also holds the original sam3.pt: not fetched).
HUB_PATTERNS = ["*.json", "*.txt", WEIGHTS_FILE]
SAM3_MODEL_TYPES = ("sam3", "sam3_video")
ACCESS_FIX = (
    f"{SAM3_REPO} is gated: accept its licence on https://huggingface.co/{SAM3_REPO} and run `hf auth login`, "
    "or pass --sam3-weights DIR (a local copy in the transformers layout: config.json, model.safetensors, "
    "processor files)"
)
FOLDER_FIX = "pass --sam3-weights DIR holding a SAM 3 snapshot (config.json, model.safetensors, processor files)"

# The sizes config.json gives what is built (SAM 3's own: 1008-pixel images in 14-pixel patches, widths up to
# 4736, 32 layers, 200 queries, 32 text positions), with room to spare; far larger ones allocate tens of GB
# before anything fails. The parameters' sizes are held by the weights file itself (check_tensors).
_SIZE, _WIDTH, _COUNT = Bound(1, 4096), Bound(1, 65536), Bound(1, 256)
CONFIG_BOUNDS = {
    "image_size": _SIZE, "pretrain_image_size": _SIZE, "backbone_feature_sizes": _SIZE, "window_size": Bound(0, 4096),
    "patch_size": _COUNT, "num_channels": Bound(1, 16), "hidden_size": _WIDTH, "fpn_hidden_size": _WIDTH,
    "projection_dim": _WIDTH, "intermediate_size": _WIDTH, "num_hidden_layers": _COUNT, "num_layers": _COUNT,
    "num_attention_heads": _COUNT, "num_queries": _SIZE, "roi_size": _COUNT, "num_upsampling_stages": Bound(1, 16),
    "vocab_size": Bound(1, 1 << 20), "max_position_embeddings": _SIZE, "global_attn_indexes": Bound(0, 255),
    "scale_factors": Bound(1 / 64, 64, whole=False),
}
# The processor's: the size a photo and its masks are resized to, and the normalisation.
PROCESSOR_BOUNDS = {
    "height": _SIZE, "width": _SIZE, "longest_edge": _SIZE, "shortest_edge": _SIZE, "size": _SIZE,
    "target_size": _SIZE, "image_mean": Bound(-10, 10, whole=False, count=3),
    "image_std": Bound(1e-3, 10, whole=False, count=3), "rescale_factor": Bound(1e-6, 1, whole=False),
    "resample": Bound(0, 5),
}
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
# Read whole by the tokenizer library: bounded in size (the configurations more tightly; they hold integers
# beyond 64 bits, transformers' "no limit" model_max_length, so they are not read as bounded JSON).
TOKENIZER_FILES = {"tokenizer.json": TOKENIZER_MAX_BYTES, "vocab.json": TOKENIZER_MAX_BYTES,
                   "merges.txt": TOKENIZER_MAX_BYTES, "tokenizer_config.json": CONFIG_MAX_BYTES,
                   "special_tokens_map.json": CONFIG_MAX_BYTES, "added_tokens.json": CONFIG_MAX_BYTES}


@dataclass(frozen=True)
class Sam3Weights:
    """A loaded SAM 3 and where its weights came from."""

    model: Any
    processor: Any
    source: str
    """The hub repository or the folder given."""
    identity: dict[str, Any]
    """``{"size", "sha256"}`` of model.safetensors."""
    weights_file: Path


def _missing_files(folder: Path) -> list[str]:
    """The files of the transformers layout that ``folder`` lacks."""
    missing = [name for name in ("config.json", WEIGHTS_FILE) if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in PROCESSOR_FILES):
        missing.append("processor_config.json (or preprocessor_config.json)")
    if not (folder / "tokenizer.json").is_file() and not all(
        (folder / name).is_file() for name in ("vocab.json", "merges.txt")
    ):
        missing.append("tokenizer.json (or vocab.json and merges.txt)")
    return missing


def _detector_config(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """The part of config.json the image model is built from: all of it, or a video model's ``detector_config``."""
    model_type = config.get("model_type")
    if model_type not in SAM3_MODEL_TYPES:
        raise WeightsError(f"{path.parent} holds a {model_type or 'model of no model_type'} model, not SAM 3 "
                           f"(config.json model_type {', '.join(SAM3_MODEL_TYPES)}); {FOLDER_FIX}")
    if model_type == "sam3":
        return config
    detector = config.get("detector_config")
    if not isinstance(detector, dict):
        raise WeightsError(f"{path}: a sam3_video config.json needs the detector_config object; {FOLDER_FIX}")
    return detector


def check_sam3_folder(folder: Path) -> None:
    """Refuse, naming what is wrong, a folder that is not a SAM 3 in the transformers layout, or whose
    configuration would build more than SAM 3 (torch-free: nothing is built)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"SAM 3 weights folder {folder} does not exist or is not a folder; {FOLDER_FIX}")
    config_path = folder / "config.json"
    if config_path.is_file():
        config = read_config(config_path, "SAM 3 config", FOLDER_FIX)
        check_bounds(_detector_config(config, config_path), CONFIG_BOUNDS, config_path, FOLDER_FIX)
    missing = _missing_files(folder)
    if missing:
        raise WeightsError(f"{folder} is not a SAM 3 folder in the transformers layout: missing "
                           f"{', '.join(missing)}; {FOLDER_FIX}")
    for name in PROCESSOR_FILES:
        if (folder / name).is_file():
            processor = read_config(folder / name, "SAM 3 processor config", FOLDER_FIX)
            check_bounds(processor, PROCESSOR_BOUNDS, folder / name, FOLDER_FIX)
    for name, max_bytes in TOKENIZER_FILES.items():
        if (folder / name).exists():
            check_file_size(folder / name, "tokenizer file", FOLDER_FIX, max_bytes)


def check_sam3_tensors(folder: Path, config: Any) -> None:
    """Refuse a ``model.safetensors`` whose tensors do not match, one to one, those of the image model ``config``
    builds (built on the meta device: nothing allocated). A video snapshot's detector tensors are named under the
    model's ``base_model_prefix``, and its tracker's, which the image model does not use, are left out, as
    transformers itself maps them."""
    import torch
    from transformers import Sam3Model

    with torch.device("meta"):
        expected = Sam3Model(copy.deepcopy(config)).state_dict()
    prefix = f"{Sam3Model.base_model_prefix}."
    unused = [re.compile(pattern) for pattern in Sam3Model._keys_to_ignore_on_load_unexpected or ()]
    found = {name.removeprefix(prefix): info for name, info in safetensors_tensors(folder / WEIGHTS_FILE,
                                                                                    FOLDER_FIX).items()
             if not any(pattern.search(name) for pattern in unused)}
    check_tensors(found, expected, f"{folder / WEIGHTS_FILE} does not hold SAM 3's tensors", FOLDER_FIX)


def _cached_snapshot() -> Path | None:
    """facebook/sam3 complete in the hub cache (without asking the hub), else None."""
    from ..models.hub import cached_snapshot

    return cached_snapshot(SAM3_REPO, HUB_PATTERNS, check_sam3_folder)


def missing_sam3_weights(weights: str | Path | None) -> MissingFile | None:
    """SAM 3's weights when they would have to be downloaded (None: a folder given, or the snapshot cached)."""
    if weights is not None or _cached_snapshot() is not None:
        return None
    return MissingFile(f"SAM 3's weights ({SAM3_REPO})", ACCESS_FIX)


def _hub_snapshot() -> Path:
    """facebook/sam3 from the hub cache, else downloaded there; one-line WeightsError when it cannot be had."""
    from huggingface_hub import snapshot_download

    from ..models.hub import require_hub_files

    cached = _cached_snapshot()
    if cached is not None:
        return cached
    require_hub_files(SAM3_REPO, [WEIGHTS_FILE], f"SAM 3's weights ({SAM3_REPO})", ACCESS_FIX)
    try:
        return Path(snapshot_download(SAM3_REPO, allow_patterns=HUB_PATTERNS))
    except Exception as error:  # gated without access, or any hub failure: the same fix
        raise WeightsError(f"SAM 3's weights could not be downloaded ({first_line(error)}); {ACCESS_FIX}") from None


@without_loading_bars()
def load_sam3(
    weights: str | Path | None = None, device: str | torch.device = "cpu", precision: str = "fp32"
) -> Sam3Weights:
    """SAM 3 (model in eval mode on ``device`` at ``precision``, and its processor).

    ``weights``: None takes ``facebook/sam3`` from the Hugging Face cache or
    downloads it there (gated: accept its licence, ``hf auth login``); a
    folder in the transformers layout loads that copy. The folder is checked
    (:func:`check_sam3_folder`, :func:`check_sam3_tensors`) before anything
    is built from it.
    """
    import torch
    from transformers import Sam3Model, Sam3Processor

    from ..models.clip import precision_dtype, resolve_device

    device = torch.device(resolve_device(str(device)))
    dtype = precision_dtype(precision, device)
    folder = _hub_snapshot() if weights is None else Path(weights).expanduser()
    check_sam3_folder(folder)
    identity = weights_identity(folder / WEIGHTS_FILE)
    try:
        config = Sam3Model.config_class.from_pretrained(folder)
    except Exception as error:  # a config.json transformers cannot read: name it, no traceback
        raise WeightsError(f"SAM 3's config.json in {folder} does not load ({first_line(error)}); {FOLDER_FIX}") \
            from None
    check_sam3_tensors(folder, config)
    try:
        model = Sam3Model.from_pretrained(folder, config=config, dtype=dtype)
        processor = Sam3Processor.from_pretrained(folder)
    except Exception as error:  # a folder that passed the checks but does not load: name it, no traceback
        raise WeightsError(f"SAM 3 in {folder} does not load ({first_line(error)}); {FOLDER_FIX}") from None
    model = model.to(device).eval().requires_grad_(False)
    source = SAM3_REPO if weights is None else str(folder)
    return Sam3Weights(model, processor, source, identity, folder / WEIGHTS_FILE)
