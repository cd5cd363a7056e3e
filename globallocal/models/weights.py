"""Weights files: identified by content, and read without running code.

:func:`weights_identity` is the one rule for "which weights are these": the
size and the SHA-256 of the whole file, never its path, so a checkpoint that
was moved or copied is still the same weights, and a different checkpoint at
the same path is not. Run folders record it for every weights file (CLIP,
FreeSOLO, SAM, TCL) and refuse to resume with other content; the feature
cache keys its entries with it.

Hashing a 1 GB checkpoint takes seconds, so results are remembered in
``$GLOBALLOCAL_CACHE_DIR/weights-identity.json`` (default
``$XDG_CACHE_HOME/globallocal``, i.e. ``~/.cache/globallocal``), keyed by the
file's resolved path, device, inode, size, and modification and change times
in nanoseconds. A file whose modification time is within two seconds of the
moment it was hashed is not remembered ("racily clean", as git calls it: a
rewrite in the same timestamp tick would keep the same key); it is simply
hashed again next time. The memo is only an accelerator: when it cannot be
read or written the hash is computed every time.

:func:`load_checkpoint_tensors` is the shared ``torch.load`` of the proposal
generators' checkpoints, with ``weights_only=True``; :func:`unsafe_checkpoint`
recognises torch's refusal so every loader says the same thing about it.

:func:`check_tensors` is the one rule every loader applies before a model
takes its weights (CLIP, FreeSOLO, SAM, SAM 2, TCL, SAM 3): the file's
tensors match the model's one to one, by name, shape and kind of dtype (a
floating tensor where the model has one: an integer tensor would be cast
silently), or the file is refused, naming the first offender of each kind.
A model that took a file with a tensor missing would answer with random
parameters where it lacks one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import pickletools
import re
import time
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from ..data.bounded import read_json
from ..data.images import save_text
from ..errors import InputError, WeightsError, first_line

__all__ = [
    "TensorInfo",
    "check_tensors",
    "dtype_kind",
    "identity_memo_path",
    "load_checkpoint_tensors",
    "tensor_mismatch",
    "unsafe_checkpoint",
    "unsafe_message",
    "weights_identity",
]

MEMO_FILE = "weights-identity.json"
_RACY_SECONDS = 2.0
_CHUNK = 1 << 22



def library_versions() -> dict[str, str]:
    """The versions of the libraries whose kernels decide a model's last bits (part of every cache key)."""
    return {name: metadata.version(name) for name in ("torch", "open_clip_torch")}

def identity_memo_path() -> Path:
    """Where hashes of weights files are remembered (see the module docstring)."""
    root = os.environ.get("GLOBALLOCAL_CACHE_DIR")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "globallocal")
    return Path(root) / MEMO_FILE


def _memo_key(path: Path, stat: os.stat_result) -> str:
    return f"{path}|{stat.st_dev}|{stat.st_ino}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}"


def _read_memo(memo: Path) -> dict[str, Any]:
    try:
        data = read_json(memo, what="weights memo")
    except (OSError, InputError):  # a damaged memo only costs a hash
        return {}
    return data if isinstance(data, dict) else {}


def _write_memo(memo: Path, entries: dict[str, Any]) -> None:
    """Best effort, atomically (a concurrent writer may win; that only costs a hash later)."""
    try:
        save_text(json.dumps(entries, sort_keys=True) + "\n", memo)
    except OSError:
        pass


def weights_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of a weights file's whole content (remembered, see the module doc)."""
    path = Path(path).expanduser().resolve()
    try:
        stat = path.stat()
    except OSError as error:
        raise WeightsError(f"cannot read weights file {path}: {error.strerror}") from None
    memo = identity_memo_path()
    entries = _read_memo(memo)
    key = _memo_key(path, stat)
    known = entries.get(key)
    if isinstance(known, dict) and set(known) == {"size", "sha256"}:
        return dict(known)
    digest = hashlib.sha256()
    hashed_at = time.time()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError as error:
        raise WeightsError(f"cannot read weights file {path}: {error.strerror}") from None
    identity = {"size": stat.st_size, "sha256": digest.hexdigest()}
    if stat.st_mtime < hashed_at - _RACY_SECONDS:
        # Forget entries of this path with an older key, so the memo does not grow with every rewrite.
        entries = {name: value for name, value in entries.items() if not name.startswith(f"{path}|")}
        entries[key] = identity
        _write_memo(memo, entries)
    return identity


_CODE_OPCODES = frozenset({"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "REDUCE", "BUILD"})


def _pickle_holds_objects(path: Path) -> bool:
    """Whether the file's pickle (torch's zip ``data.pkl``, or the pickles of a plain file) names classes or
    functions. Read with :mod:`pickletools`, which parses opcodes and runs nothing."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                data = archive.read(next(name for name in archive.namelist() if name.endswith("data.pkl")))
        else:
            data = Path(path).read_bytes()
        stream = io.BytesIO(data)
        while stream.tell() < len(data):  # a legacy torch file is several pickles in a row
            # Each pickle is parsed to its end first: random bytes often start like opcodes.
            names = {opcode.name for opcode, _, _ in pickletools.genops(stream)}
            if names & _CODE_OPCODES:
                return True
    except (OSError, ValueError, StopIteration, zipfile.BadZipFile):
        return False
    return False


def unsafe_checkpoint(error: BaseException, path: str | os.PathLike[str]) -> bool:
    """Whether ``torch.load(weights_only=True)`` refused ``path`` because its pickle holds Python objects (code),
    rather than because it is not a checkpoint at all."""
    refused = isinstance(error, pickle.UnpicklingError) and str(error).startswith("Weights only load failed")
    return refused and _pickle_holds_objects(Path(path))


def unsafe_message(path: str | os.PathLike[str], error: BaseException, fix: str) -> str:
    """The one-line refusal of a pickled checkpoint, the same for every loader (naming the object when known)."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    objects = f"Python objects ({found[1]})" if found else "Python objects"
    return (
        f"refusing to load {path}: it is a pickle holding {objects} besides tensors, that is code, "
        f"and it will not be loaded; {fix}"
    )


def load_checkpoint_tensors(path: Path, what: str, fix: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, any failure as one :class:`WeightsError` line.

    ``what`` names the weights ("FreeSOLO", "SAM 2 tiny"), ``fix`` says what to use instead.
    """
    import torch  # here: identifying weights files by hash needs no torch

    try:
        with warnings.catch_warnings():
            # torch's advice about pickle protocols, for a file about to be refused or read anyway.
            warnings.filterwarnings("ignore", message=r"Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if unsafe_checkpoint(error, path):
            raise WeightsError(unsafe_message(path, error, fix)) from None
        raise WeightsError(f"cannot read {what} weights {path}: not a PyTorch checkpoint") from None
    except (KeyError, IndexError, TypeError, AttributeError):
        # What the unpickler raises on bytes that are not a pickle at all.
        raise WeightsError(f"cannot read {what} weights {path}: not a PyTorch checkpoint") from None
    except (OSError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise WeightsError(f"cannot read {what} weights {path}: {first_line(error)}") from None


def weights_change(
    stored: dict[str, Any] | None, current: dict[str, Any] | None, paths: dict[str, str | os.PathLike[str]]
) -> str | None:
    """Why a run's recorded weights (``{role: identity}``) differ from the current ones, or None if they agree.

    ``paths`` names the current file of each role, for the message.
    """
    stored, current = stored or {}, current or {}
    for role in sorted(set(stored) | set(current)):
        before, now = stored.get(role), current.get(role)
        if before == now:
            continue
        where = paths.get(role, "(none)")

        def sha(identity: Any) -> str:
            return identity.get("sha256", "?") if isinstance(identity, dict) else "none"

        return (
            f"other {role} weights: the run used sha256 {sha(before)}, {where} has sha256 {sha(now)} "
            "(the weights must not change within a run)"
        )
    return None


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's name-less description, as a weights file's header gives it without reading the data."""

    shape: tuple[int, ...]
    dtype: str
    """torch's or safetensors' name of the dtype (``float32``, ``F32``, ``I64``, ...)."""


def dtype_kind(dtype: Any) -> str:
    """``floating``, ``complex``, ``bool`` or ``integer``: of a torch dtype or a safetensors dtype name."""
    name = str(dtype).removeprefix("torch.").lower()
    if name == "bool":
        return "bool"
    if name.startswith(("f", "bf", "half")):  # float32, bfloat16, float8_e4m3fn; F32, BF16, F8_E4M3
        return "floating"
    if name.startswith("c"):  # complex64; C64
        return "complex"
    return "integer"


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _listed(items: list[str], limit: int = 4) -> str:
    more = f", ... {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def tensor_mismatch(found: Mapping[str, Any], expected: Mapping[str, Any]) -> str | None:
    """How the tensors ``found`` in a weights file differ from those ``expected`` by the model, or None when they
    match one to one: every name present and no other, each of the expected shape and kind of dtype (a floating
    tensor for a floating parameter). Values are anything with ``shape`` and ``dtype`` (tensors, meta tensors,
    :class:`TensorInfo`). The description counts each kind of difference and names the first few, in the
    model's order: ``1 missing (a.weight); 2 of another dtype (b.bias int64 instead of floating, ...)``."""
    missing = [name for name in expected if name not in found]
    unexpected = [name for name in found if name not in expected]
    shared = [name for name in expected if name in found]
    shapes = [
        f"{name} {tuple(found[name].shape)} instead of {tuple(expected[name].shape)}"
        for name in shared if tuple(found[name].shape) != tuple(expected[name].shape)
    ]
    kinds = [
        f"{name} {_dtype_name(found[name].dtype)} instead of {dtype_kind(expected[name].dtype)}"
        for name in shared if dtype_kind(found[name].dtype) != dtype_kind(expected[name].dtype)
    ]
    parts = [
        f"{len(names)} {label} ({_listed(names)})"
        for names, label in ((missing, "missing"), (unexpected, "unexpected"), (shapes, "of the wrong shape"),
                             (kinds, "of the wrong dtype"))
        if names
    ]
    return "; ".join(parts) or None


def check_tensors(found: Mapping[str, Any], expected: Mapping[str, Any], refusal: str, fix: str = "") -> None:
    """Refuse (one-line :class:`WeightsError`) weights whose tensors do not match the model's one to one
    (:func:`tensor_mismatch`). ``refusal`` opens the message (``x.pth is not the SAM vit_b checkpoint``), ``fix``
    closes it (what to use instead)."""
    mismatch = tensor_mismatch(found, expected)
    if mismatch is not None:
        raise WeightsError(f"{refusal}: {mismatch}" + (f"; {fix}" if fix else ""))
