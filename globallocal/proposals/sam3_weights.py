"""SAM 3's weights: the gated hub repository ``facebook/sam3``, or a local folder in the transformers layout.

A folder holds ``config.json`` (model_type ``sam3``, or ``sam3_video`` as
``facebook/sam3`` has: its detector is the image model), ``model.safetensors``
and the processor's files; any other folder is refused, naming what is
missing. The weights are identified by the content of ``model.safetensors``
(:func:`~globallocal.models.weights.weights_identity`), wherever they lie.
Offline, or online without access to the gated repository, the one-line
error says how to get them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.bounded import read_json
from ..errors import InputError, WeightsError, first_line
from ..models.clip import precision_dtype, resolve_device
from ..models.hub import require_hub_files
from ..models.loading import without_loading_bars
from ..models.weights import weights_identity

__all__ = ["ACCESS_FIX", "SAM3_REPO", "Sam3Weights", "check_sam3_folder", "load_sam3"]

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


def check_sam3_folder(folder: Path) -> None:
    """Refuse, naming what is missing, a folder that is not a SAM 3 in the transformers layout."""
    fix = "pass --sam3-weights DIR holding a SAM 3 snapshot (config.json, model.safetensors, processor files)"
    if not folder.is_dir():
        raise WeightsError(f"SAM 3 weights folder {folder} does not exist or is not a folder; {fix}")
    missing = []
    config = folder / "config.json"
    if config.is_file():
        try:
            model_type = read_json(config, what="SAM 3 config", max_bytes=1 << 20).get("model_type")
        except (OSError, InputError, AttributeError) as error:
            raise WeightsError(f"cannot read {config} ({first_line(error)}); {fix}") from None
        if model_type not in SAM3_MODEL_TYPES:
            raise WeightsError(f"{folder} holds a {model_type or 'model of no model_type'} model, not SAM 3 "
                               f"(config.json model_type {', '.join(SAM3_MODEL_TYPES)}); {fix}")
    else:
        missing.append("config.json")
    if not (folder / WEIGHTS_FILE).is_file():
        missing.append(WEIGHTS_FILE)
    if not any((folder / name).is_file() for name in ("processor_config.json", "preprocessor_config.json")):
        missing.append("processor_config.json (or preprocessor_config.json)")
    if not (folder / "tokenizer.json").is_file() and not all(
        (folder / name).is_file() for name in ("vocab.json", "merges.txt")
    ):
        missing.append("tokenizer.json (or vocab.json and merges.txt)")
    if missing:
        raise WeightsError(f"{folder} is not a SAM 3 folder in the transformers layout: missing "
                           f"{', '.join(missing)}; {fix}")


def _hub_snapshot() -> Path:
    """facebook/sam3 from the hub cache, else downloaded there; one-line WeightsError when it cannot be had."""
    from huggingface_hub import snapshot_download

    try:
        cached = Path(snapshot_download(SAM3_REPO, allow_patterns=HUB_PATTERNS, local_files_only=True))
        check_sam3_folder(cached)
        return cached
    except Exception:  # not cached, or cached in part: download below
        pass
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
    folder in the transformers layout loads that copy.
    """
    from transformers import Sam3Model, Sam3Processor

    device = torch.device(resolve_device(str(device)))
    dtype = precision_dtype(precision, device)
    folder = _hub_snapshot() if weights is None else Path(weights).expanduser()
    check_sam3_folder(folder)
    identity = weights_identity(folder / WEIGHTS_FILE)
    try:
        model = Sam3Model.from_pretrained(folder, dtype=dtype)
        processor = Sam3Processor.from_pretrained(folder)
    except Exception as error:  # a folder that passed the layout check but does not load: name it, no traceback
        raise WeightsError(f"SAM 3 in {folder} does not load ({first_line(error)}); pass --sam3-weights DIR "
                           f"holding a SAM 3 snapshot") from None
    model = model.to(device).eval().requires_grad_(False)
    source = SAM3_REPO if weights is None else str(folder)
    return Sam3Weights(model, processor, source, identity, folder / WEIGHTS_FILE)
