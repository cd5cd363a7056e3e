"""TCL's released checkpoint: where it is, downloading it, and loading it strictly (SPEC-tcl section 1).

``tcl.pth`` holds only the learned masker (37 tensors under ``masker.``, in
its "model" entry); the frozen CLIP comes from open_clip. The file is read
with ``weights_only=True``: a checkpoint that holds code is refused, never
unpickled.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ...errors import WeightsError, first_line
from ...models.clip import ClipBundle
from ...models.hub import MissingFile, download_url_file, package_root
from ...models.weights import check_tensors
from .network import CHECKPOINT_PREFIXES, TCLHead

TCL_FILENAME = "tcl.pth"
TCL_URL = f"https://github.com/kakaobrain/tcl/releases/download/v1.0.0/{TCL_FILENAME}"
WEIGHTS_ENV = "GLOBALLOCAL_TCL_WEIGHTS"
WEIGHTS_DIRNAME = "tcl_weights"


def default_weights_dir() -> Path:
    """``tcl_weights/`` at the repository root, where the checkpoint is downloaded to."""
    return package_root() / WEIGHTS_DIRNAME


def _download_fix(folder: Path) -> str:
    return f"download {TCL_URL} into {folder}/ or pass --tcl-checkpoint PATH (or set {WEIGHTS_ENV})"


def _local_tcl_weights(path: str | os.PathLike[str] | None) -> Path | None:
    """The checkpoint on this machine: ``path``, else ``GLOBALLOCAL_TCL_WEIGHTS`` (either must exist), else
    ``tcl_weights/tcl.pth`` at the repository root or in the working folder; None when it must be downloaded."""
    for given, origin in ((path, "TCL weights"), (os.environ.get(WEIGHTS_ENV) or None, WEIGHTS_ENV)):
        if given is not None:
            candidate = Path(given).expanduser()
            if not candidate.is_file():
                raise WeightsError(f"{origin} file not found: {candidate}; the official checkpoint is {TCL_URL}")
            return candidate
    for candidate in (default_weights_dir() / TCL_FILENAME, Path.cwd() / WEIGHTS_DIRNAME / TCL_FILENAME):
        if candidate.is_file():
            return candidate
    return None


def _missing() -> MissingFile:
    folder = default_weights_dir()
    return MissingFile(f"TCL weights {TCL_FILENAME} (not in {folder})", _download_fix(folder))


def missing_tcl_weights(path: str | os.PathLike[str] | None = None) -> MissingFile | None:
    """The checkpoint :func:`resolve_tcl_weights` would have to download (None: it is here), without downloading."""
    return None if _local_tcl_weights(path) is not None else _missing()


def missing_method_files(options: Mapping[str, Any] | None) -> list[MissingFile]:
    """``--method tcl``'s checkpoint when it would have to be downloaded (its builder's ``weights`` option)."""
    missing = missing_tcl_weights((options or {}).get("weights"))
    return [missing] if missing is not None else []


def resolve_tcl_weights(path: str | os.PathLike[str] | None = None) -> Path:
    """The TCL checkpoint to use, downloading it if needed.

    In order: an explicit ``path`` (must exist), the file named by
    ``GLOBALLOCAL_TCL_WEIGHTS`` (must exist), ``tcl_weights/tcl.pth`` at the
    repository root or in the working folder, else a download into the
    repository's ``tcl_weights/`` with a progress bar. Offline
    (``HF_HUB_OFFLINE=1`` or no network) a one-line :class:`WeightsError`
    names the file, the folder and the URL within seconds.
    """
    found = _local_tcl_weights(path)
    if found is not None:
        return found
    missing = _missing()
    return download_url_file(TCL_URL, default_weights_dir() / TCL_FILENAME, missing.what, missing.fix)


def read_tcl_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict under the file's "model" entry (or a bare state dict), tensors only."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only refuses pickled classes and functions ("globals"): those could run code
        refused = re.search(r"GLOBAL ([\w.]+)", str(error))
        if refused is None:
            raise WeightsError(f"cannot read TCL weights {path}: not a PyTorch checkpoint") from None
        raise WeightsError(
            f"refusing to load {path}: it holds code ({refused[1]}) besides tensors and will not be loaded; "
            f"use the released {TCL_FILENAME} from {TCL_URL}"
        ) from None
    except KeyError:  # the weights-only unpickler's answer to some non-pickle bytes
        raise WeightsError(f"cannot read TCL weights {path}: not a PyTorch checkpoint") from None
    except (OSError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise WeightsError(f"cannot read TCL weights {path}: {first_line(error)}") from None
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise WeightsError(f"{path} is not a TCL checkpoint: no state dict of tensors under 'model'")
    return checkpoint


def checkpoint_key(head_key: str) -> str:
    """The released checkpoint's name of a :class:`TCLHead` state-dict entry."""
    for short, released in CHECKPOINT_PREFIXES:
        if head_key.startswith(short):
            return released + head_key[len(short) :]
    raise KeyError(f"no checkpoint name for TCL head tensor {head_key}")


def head_state_dict(checkpoint: dict[str, torch.Tensor], head: TCLHead, path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint under the head's names, float32; WeightsError naming every missing, extra, misshapen or
    non-floating tensor (:func:`~globallocal.models.weights.check_tensors`, under the checkpoint's names)."""
    names = {checkpoint_key(key): key for key in head.state_dict()}
    expected = {released: head.state_dict()[key] for released, key in names.items()}
    check_tensors(checkpoint, expected, f"{path} is not the TCL checkpoint", f"expected {TCL_FILENAME} from {TCL_URL}")
    return {name: checkpoint[released].float() for released, name in names.items()}


def load_tcl_head(path: str | os.PathLike[str], clip: ClipBundle | None = None) -> TCLHead:
    """TCL's learned head with the checkpoint at ``path`` loaded strictly (float32, CPU).

    ``clip``: the CLIP ViT the head is for (its shapes); None: OpenAI's ViT-B/16.
    """
    path = Path(path)
    checkpoint = read_tcl_checkpoint(path)
    with torch.device("meta"):
        head = TCLHead(**TCLHead.dims_for(clip)) if clip is not None else TCLHead()
    head.load_state_dict(head_state_dict(checkpoint, head, path), strict=True, assign=True)
    return head.eval().requires_grad_(False)
