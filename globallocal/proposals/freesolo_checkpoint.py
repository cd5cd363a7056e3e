"""FreeSOLO's released checkpoint: where it is found or downloaded, and how it loads (SPEC section 2).

The released checkpoint ``FreeSOLO_R101_30k_pl.pth`` is a detectron2
checkpoint; :func:`checkpoint_key_map` is the documented map from its
names to :class:`~globallocal.proposals.solov2.FreeSOLONet`'s, and
:func:`load_freesolo` loads it strictly (every tensor used, every model
tensor filled, shapes equal) or raises :class:`WeightsError` naming the
offending keys. Checkpoints are read with ``weights_only=True``: a weights
file can never run code.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import WeightsError
from ..models.hub import MissingFile, cached_hub_file, download_hub_file, weights_folders
from ..models.weights import check_tensors, load_checkpoint_tensors, weights_identity
from .solov2 import FreeSOLONet

__all__ = [
    "FREESOLO_FILENAME",
    "FREESOLO_REPO_ID",
    "FREESOLO_URL",
    "checkpoint_key_map",
    "default_weights_dirs",
    "load_freesolo",
    "missing_freesolo_weights",
    "module_key_to_checkpoint_key",
    "resolve_freesolo_weights",
]

FREESOLO_REPO_ID = "xinlongwang/FreeSOLO"
FREESOLO_FILENAME = "FreeSOLO_R101_30k_pl.pth"
FREESOLO_URL = f"https://huggingface.co/{FREESOLO_REPO_ID}/resolve/main/{FREESOLO_FILENAME}"
WEIGHTS_ENV = "GLOBALLOCAL_FREESOLO_WEIGHTS"
# The released file, pinned: a download is checked against it.
FREESOLO_SHA256 = "434184b432dc8faaedd552b2f456ad7b4e0e154b65d4d0e92e5bc7c24112d348"
FREESOLO_SIZE = 526_827_156

# Checkpoint entries that are not model weights: detectron2's training iteration counter.
IGNORED_CHECKPOINT_KEYS = frozenset({"_iter"})

# FreeSOLONet name -> detectron2 checkpoint name, first match wins. ResNet:
# torchvision's conv1+bn1 / layer1..layer4 / bn{j} / downsample.{0,1} are
# detectron2's stem.conv1(+.norm) / res2..res5 / conv{j}.norm / shortcut(+.norm).
# FPN: torchvision's inner_blocks.{i} and layer_blocks.{i} (i = 0..3) are
# detectron2's fpn_lateral{i+2} and fpn_output{i+2}. The SOLOv2 heads carry
# the checkpoint's own names.
_KEY_RULES: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (re.compile(r"backbone\.body\.conv1\.weight"), lambda m: "backbone.bottom_up.stem.conv1.weight"),
    (re.compile(r"backbone\.body\.bn1\.(\w+)"), lambda m: f"backbone.bottom_up.stem.conv1.norm.{m[1]}"),
    (
        re.compile(r"backbone\.body\.layer([1-4])\.(\d+)\.conv([1-3])\.weight"),
        lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.weight",
    ),
    (
        re.compile(r"backbone\.body\.layer([1-4])\.(\d+)\.bn([1-3])\.(\w+)"),
        lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}",
    ),
    (
        re.compile(r"backbone\.body\.layer([1-4])\.(\d+)\.downsample\.0\.weight"),
        lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.shortcut.weight",
    ),
    (
        re.compile(r"backbone\.body\.layer([1-4])\.(\d+)\.downsample\.1\.(\w+)"),
        lambda m: f"backbone.bottom_up.res{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}",
    ),
    (
        re.compile(r"backbone\.fpn\.inner_blocks\.([0-3])\.0\.(weight|bias)"),
        lambda m: f"backbone.fpn_lateral{int(m[1]) + 2}.{m[2]}",
    ),
    (
        re.compile(r"backbone\.fpn\.layer_blocks\.([0-3])\.0\.(weight|bias)"),
        lambda m: f"backbone.fpn_output{int(m[1]) + 2}.{m[2]}",
    ),
    (re.compile(r"(?:ins_head|mask_head)\..+"), lambda m: m[0]),
)


def module_key_to_checkpoint_key(module_key: str) -> str:
    """The detectron2 checkpoint name of a FreeSOLONet state-dict entry.

    Examples::

        backbone.body.bn1.running_var -> backbone.bottom_up.stem.conv1.norm.running_var
        backbone.body.layer3.22.conv2.weight -> backbone.bottom_up.res4.22.conv2.weight
        backbone.body.layer1.0.downsample.1.bias -> backbone.bottom_up.res2.0.shortcut.norm.bias
        backbone.fpn.inner_blocks.1.0.weight -> backbone.fpn_lateral3.weight
        backbone.fpn.layer_blocks.3.0.bias -> backbone.fpn_output5.bias
        ins_head.kernel_tower.0.weight -> ins_head.kernel_tower.0.weight
    """
    for pattern, target in _KEY_RULES:
        match = pattern.fullmatch(module_key)
        if match:
            return target(match)
    raise KeyError(f"no checkpoint name for model tensor {module_key}")


def checkpoint_key_map(model: FreeSOLONet) -> dict[str, str]:
    """The explicit key map: detectron2 checkpoint name -> ``model``'s state-dict name.

    One entry per model tensor (590 for ResNet-101); the checkpoint's only
    other entry, ``_iter`` (detectron2's iteration counter), is ignored.
    """
    return {module_key_to_checkpoint_key(key): key for key in model.state_dict()}


def default_weights_dirs() -> list[Path]:
    """Folders searched for ``FreeSOLO_R101_30k_pl.pth``: ``./freesolo_weights``, then the clone's."""
    return weights_folders("freesolo_weights")


def _freesolo_download_fix(folder: Path) -> str:
    return (
        f"run `hf download {FREESOLO_REPO_ID} {FREESOLO_FILENAME}` on a connected machine (the Hugging Face "
        f"cache is searched), or download {FREESOLO_URL} into {folder}/, or pass --freesolo-weights PATH"
    )


def _local_weights(path: str | os.PathLike[str] | None) -> Path | None:
    """The checkpoint on this machine, in the order of :func:`resolve_freesolo_weights`; None: not here."""
    for given, origin in ((path, "FreeSOLO weights"), (os.environ.get(WEIGHTS_ENV) or None, WEIGHTS_ENV)):
        if given is None:
            continue
        candidate = Path(given).expanduser()
        if not candidate.is_file():
            raise WeightsError(f"{origin} file not found: {candidate}")
        return candidate
    for folder in default_weights_dirs():
        if (folder / FREESOLO_FILENAME).is_file():
            return folder / FREESOLO_FILENAME
    return cached_hub_file(FREESOLO_REPO_ID, [FREESOLO_FILENAME])


def _missing() -> MissingFile:
    folders = default_weights_dirs()
    searched = " or ".join(str(folder) for folder in folders)
    return MissingFile(f"FreeSOLO weights {FREESOLO_FILENAME} (not in {searched} nor the Hugging Face cache)",
                       _freesolo_download_fix(folders[0]))


def missing_freesolo_weights(path: str | os.PathLike[str] | None = None) -> MissingFile | None:
    """What :func:`resolve_freesolo_weights` would have to download (None: the checkpoint is here), without
    downloading; a ``path`` or ``GLOBALLOCAL_FREESOLO_WEIGHTS`` that names no file is refused at once."""
    return None if _local_weights(path) is not None else _missing()


def resolve_freesolo_weights(path: str | os.PathLike[str] | None = None) -> Path:
    """The FreeSOLO checkpoint file to use, downloading it if needed.

    In order: an explicit ``path`` (must exist), the file named by the
    ``GLOBALLOCAL_FREESOLO_WEIGHTS`` environment variable (must exist),
    ``freesolo_weights/FreeSOLO_R101_30k_pl.pth`` in the working folder or
    at the clone's root (:func:`default_weights_dirs`), the Hugging Face
    cache (used without asking the hub, as for SAM 2), or else a download
    into that cache (with a progress bar), whose SHA-256 is checked against
    the released file's. Offline (``HF_HUB_OFFLINE=1``) or on any download
    failure it raises :class:`WeightsError` within seconds, naming the file,
    where to put it and where to get it.
    """
    found = _local_weights(path)
    if found is not None:
        return found
    missing = _missing()
    downloaded = download_hub_file(FREESOLO_REPO_ID, FREESOLO_FILENAME, missing.what, missing.fix)
    if not _is_released_file(downloaded):
        downloaded.unlink(missing_ok=True)
        raise WeightsError(
            f"the downloaded {FREESOLO_FILENAME} is not the released file (SHA-256 differs) and was deleted; "
            f"try again, or download {FREESOLO_URL} by hand and pass --freesolo-weights PATH"
        )
    return downloaded


def _is_released_file(path: Path) -> bool:
    """Whether ``path`` is byte for byte the released checkpoint (size first: hashing 527 MB takes seconds)."""
    return path.stat().st_size == FREESOLO_SIZE and weights_identity(path)["sha256"] == FREESOLO_SHA256


def _load_released_tensors(path: Path) -> dict:
    """The released checkpoint's entries, read with the full unpickler and reduced to tensors.

    Only for the file whose SHA-256 is pinned: its content is known, so
    unpickling it cannot run anything unexpected; whatever is not a tensor
    (optimizer or scheduler state) is dropped.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    model = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else {}
    return {"model": {key: value for key, value in model.items() if isinstance(value, torch.Tensor)}}


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a detectron2 checkpoint ({"model": state_dict, ...}) or of a bare state dict."""
    try:
        checkpoint = load_checkpoint_tensors(
            path, "FreeSOLO", f"use the released {FREESOLO_FILENAME} or a state dict saved with torch.save"
        )
    except WeightsError:
        # The released file holds Python objects besides its tensors; its content is pinned, so it is read.
        if not _is_released_file(path):
            raise
        checkpoint = _load_released_tensors(path)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise WeightsError(
            f"{path} is not a FreeSOLO checkpoint: no state dict under 'model' or at the top level"
        )
    not_tensors = [key for key, value in checkpoint.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise WeightsError(
            f"{path} is not a FreeSOLO checkpoint: {len(not_tensors)} entries are not tensors "
            f"(e.g. {', '.join(map(str, not_tensors[:3]))})"
        )
    return checkpoint


def _map_state_dict(
    checkpoint: dict[str, torch.Tensor], model: FreeSOLONet, path: Path
) -> dict[str, torch.Tensor]:
    """The checkpoint under the model's names (floating tensors as float32), or WeightsError naming every mismatch
    (:func:`~globallocal.models.weights.check_tensors`, under the checkpoint's names)."""
    key_map = checkpoint_key_map(model)
    model_state = model.state_dict()
    found = {key: tensor for key, tensor in checkpoint.items() if key not in IGNORED_CHECKPOINT_KEYS}
    check_tensors(found, {key: model_state[target] for key, target in key_map.items()},
                  f"{path} is not the FreeSOLO R101 checkpoint", f"expected {FREESOLO_FILENAME} from {FREESOLO_URL}")
    return {key_map[key]: tensor.float() if tensor.is_floating_point() else tensor for key, tensor in found.items()}


def load_freesolo(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", fold_batchnorm: bool = True
) -> FreeSOLONet:
    """FreeSOLONet with the checkpoint at ``path`` loaded strictly, in eval mode on ``device``.

    The model is built on the meta device and takes the checkpoint's tensors
    as they are, so nothing is initialised only to be overwritten. With
    ``fold_batchnorm`` the frozen batch norms are folded into their convs
    after loading (see :meth:`FreeSOLONet.fold_frozen_batchnorm`). On the
    CPU the weights are stored channels-last, like the generator's inputs.
    """
    path = Path(path)
    checkpoint = _read_state_dict(path)
    with torch.device("meta"):
        model = FreeSOLONet()
    model.load_state_dict(_map_state_dict(checkpoint, model, path), strict=True, assign=True)
    model.eval().requires_grad_(False)
    if fold_batchnorm:
        model.fold_frozen_batchnorm()
    if torch.device(device).type == "cpu":
        # oneDNN runs these convolutions about a fifth faster on NHWC tensors.
        return model.to(memory_format=torch.channels_last)
    return model.to(device)
