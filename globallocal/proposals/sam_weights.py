"""SAM 2 and SAM weights and models: Meta's packages imported on demand, checkpoints found, checked, loaded.

SAM 2.1 checkpoints come from the Hugging Face hub repositories the ``sam2``
package itself downloads from (``facebook/sam2.1-hiera-*``, into the hub
cache); the original SAM checkpoints are not on the hub and are read from
``sam_weights/`` at the repository root or from a given path. Checkpoints
are read with ``weights_only=True``. Importing this module imports neither
torch nor the packages: the command line checks a ``--sam-model`` name
(:func:`check_sam_model`) and lists the checkpoints that are missing
(:func:`missing_sam_weights`, :func:`missing_sam2_weights`) before any model loads.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError, WeightsError
from ..models.hub import MissingFile, cached_hub_file, require_hub_files, weights_folders
from ..models.weights import check_tensors, load_checkpoint_tensors

if TYPE_CHECKING:
    import torch
    from torch import nn


__all__ = [
    "DEFAULT_SAM2_MODEL",
    "DEFAULT_SAM_MODEL",
    "SAM2_MODELS",
    "SAM_MODELS",
    "SAM_WEIGHTS_URL",
    "check_sam_model",
    "default_sam_weights",
    "default_sam_weights_dirs",
    "load_sam",
    "load_sam2",
    "missing_sam2_weights",
    "missing_sam_weights",
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


def import_sam_package(module: str, what: str) -> Any:
    """``module`` imported, or an InputError telling how to install the optional extra."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing = f" (module {error.name!r} not found)" if error.name else ""
        raise InputError(f"{what} proposals need the optional [sam] packages{missing}; {INSTALL_HINT}") from None


@contextmanager
def quiet_package_warnings() -> Iterator[None]:
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
    import torch

    checkpoint = load_checkpoint_tensors(path, what, f"use the official {what} checkpoint")
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise WeightsError(f"{path} is not a {what} checkpoint: no state dict of tensors in it")
    return checkpoint


# Original SAM's image-encoder width per registry name: how a checkpoint of another size is recognised.
_SAM_WIDTHS = {1280: "vit_h", 1024: "vit_l", 768: "vit_b"}


def _sam_size_hint(checkpoint: dict[str, torch.Tensor], kind: str) -> str:
    """What to pass for an original SAM checkpoint of a known width: ``--sam-model NAME``, and under ``--proposals
    sam2`` (``kind``), which takes no original SAM, ``--proposals sam`` too."""
    embedding = checkpoint.get("image_encoder.pos_embed")
    name = _SAM_WIDTHS.get(int(embedding.shape[-1])) if embedding is not None and embedding.dim() else None
    if name is None:
        return ""
    switch = "--proposals sam " if kind == "sam2" else ""
    return f"it looks like original SAM {name}: pass {switch}--sam-model {name}"


def _load_strictly(model: nn.Module, path: Path, what: str, kind: str) -> None:
    """Load ``path`` into ``model`` (``kind``: sam or sam2), its tensors matching the model's one to one
    (:func:`~globallocal.models.weights.check_tensors`), or say which do not (and, for an original SAM file,
    what to pass for it)."""
    checkpoint = _read_checkpoint(path, what)
    check_tensors(checkpoint, model.state_dict(), f"{path} is not the {what} checkpoint",
                  _sam_size_hint(checkpoint, kind))
    model.load_state_dict(checkpoint, strict=True)


def _weights_file(weights: str | os.PathLike[str], what: str, official: str) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"{what} weights file not found: {path}; the official checkpoint is {official}")
    return path


def check_sam_model(kind: str, model: str | None) -> None:
    """Refuse, before anything loads, a ``--sam-model`` of the other family (original SAM's names with ``sam2``,
    SAM 2's with ``sam``) or unknown to original SAM, with the flags that would take it."""
    if model is None:
        return
    if kind == "sam2" and model in SAM_MODELS:
        raise InputError(f"--sam-model {model} is an original SAM model, which --proposals sam2 does not take: use "
                         f"--proposals sam --sam-model {model}, or SAM 2's {', '.join(SAM2_MODELS)}")
    if kind == "sam" and model not in SAM_MODELS:
        other = f"; SAM 2's {model} is --proposals sam2 --sam-model {model}" if model in SAM2_MODELS else ""
        raise InputError(f"unknown SAM model {model!r}; use {', '.join(SAM_MODELS)}{other}")


def _sam2_hub_id(model: str) -> str:
    """The hub repository of a short SAM 2.1 name, or of a full id the sam2 package knows."""
    check_sam_model("sam2", model)
    if model in SAM2_MODELS:
        return SAM2_MODELS[model]
    build_sam = import_sam_package("sam2.build_sam", "SAM 2")
    if model in build_sam.HF_MODEL_ID_TO_FILENAMES:
        return model
    raise InputError(
        f"unknown SAM 2 model {model!r}; use {', '.join(SAM2_MODELS)} (SAM 2.1) or one of "
        f"{', '.join(build_sam.HF_MODEL_ID_TO_FILENAMES)}"
    )


def _sam2_checkpoint(model: str) -> tuple[str, str, str]:
    """(hub repository, package config, checkpoint file name) of a SAM 2 model name."""
    hub_id = _sam2_hub_id(model)
    config, filename = import_sam_package("sam2.build_sam", "SAM 2").HF_MODEL_ID_TO_FILENAMES[hub_id]
    return hub_id, config, filename


def _sam2_missing(model: str, hub_id: str, filename: str) -> MissingFile:
    """The SAM 2 checkpoint as a missing file: where it comes from, how to put it where it is found offline."""
    return MissingFile(
        f"SAM 2 {model} checkpoint {filename} ({hub_id})",
        f"on a connected machine run `hf download {hub_id} {filename}` (it goes to the Hugging Face cache, where it "
        "is found offline), or pass --sam-weights PATH to a copy of that file",
    )


def missing_sam2_weights(model: str | None, weights: str | os.PathLike[str] | None) -> MissingFile | None:
    """SAM 2's checkpoint when it would have to be downloaded (None: a file given, or in the hub cache)."""
    if weights is not None:
        return None
    model = model or DEFAULT_SAM2_MODEL
    hub_id, _, filename = _sam2_checkpoint(model)
    return None if cached_hub_file(hub_id, [filename]) is not None else _sam2_missing(model, hub_id, filename)


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
    hub_id, config, filename = _sam2_checkpoint(model)
    build_sam = import_sam_package("sam2.build_sam", "SAM 2")
    what = f"SAM 2 {model}"
    official = f"{filename} from https://huggingface.co/{hub_id}"
    if weights is None:
        path = _sam2_hub_checkpoint(model, hub_id, filename)
    elif str(weights) == "random":
        path = None
    else:
        path = _weights_file(weights, what, official)
    # Built without a checkpoint, then loaded here: the package's own loader
    # reports a mismatch as a bare RuntimeError after logging the key lists.
    sam = build_sam.build_sam2(config, ckpt_path=None, device="cpu", mode="eval")
    if path is not None:
        _load_strictly(sam, path, what, "sam2")
    return sam.to(device).eval()


def _sam2_hub_checkpoint(model: str, hub_id: str, filename: str) -> Path:
    """The cached checkpoint, else downloaded into the hub cache; WeightsError within seconds when offline.

    A cached file is used without asking the hub: huggingface_hub would
    otherwise check for a newer revision and, with the network down but
    HF_HUB_OFFLINE unset, retry for about 20 s.
    """
    cached = cached_hub_file(hub_id, [filename])
    if cached is not None:
        return cached
    missing = _sam2_missing(model, hub_id, filename)
    require_hub_files(hub_id, [filename], missing.what, missing.fix)
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=hub_id, filename=filename))
    except Exception as error:  # any network or hub failure is the same problem to the user
        raise WeightsError(f"downloading {missing.what} failed ({type(error).__name__}); {missing.fix}") from None


def default_sam_weights_dirs() -> list[Path]:
    """Folders searched for the official SAM checkpoints: ``./sam_weights``, then the clone's."""
    return weights_folders("sam_weights")


def default_sam_weights(model: str) -> Path | None:
    """The official checkpoint of ``model`` in :func:`default_sam_weights_dirs`, if there."""
    for folder in default_sam_weights_dirs():
        if (folder / SAM_MODELS[model]).is_file():
            return folder / SAM_MODELS[model]
    return None


def missing_sam_weights(model: str | None, weights: str | os.PathLike[str] | None) -> MissingFile | None:
    """The official SAM checkpoint when it is in none of :func:`default_sam_weights_dirs` (None: a file given, or
    found). It is never downloaded: the file says where to get it."""
    model = model or DEFAULT_SAM_MODEL
    check_sam_model("sam", model)
    if weights is not None or default_sam_weights(model) is not None:
        return None
    folders = default_sam_weights_dirs()
    return MissingFile(
        f"SAM {model} weights {SAM_MODELS[model]} (not in {' or '.join(map(str, folders))})",
        f"download {SAM_WEIGHTS_URL + SAM_MODELS[model]} into {folders[0]}/ or pass --sam-weights PATH",
        downloadable=False,
    )


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
    missing = missing_sam_weights(model, weights)
    if missing is not None:
        raise WeightsError(f"{missing.what} is not on this machine; {missing.fix}")
    registry = import_sam_package("segment_anything", "SAM").sam_model_registry
    url = SAM_WEIGHTS_URL + SAM_MODELS[model]
    what = f"SAM {model}"
    if weights is None:
        path: Path | None = default_sam_weights(model)
    elif str(weights) == "random":
        path = None
    else:
        path = _weights_file(weights, what, url)
    sam = registry[model](checkpoint=None)
    if path is not None:
        _load_strictly(sam, path, what, "sam")
    return sam.to(device).eval()
