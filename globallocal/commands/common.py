"""What several commands share beyond their options: the error console and output names."""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console

from ..errors import InputError

stderr = Console(stderr=True, highlight=False, soft_wrap=True)
"""Messages, progress and warnings go to the standard error; the standard output carries data (``--json -``)."""


def numbered(path: Path, index: int, count: int) -> Path:
    """``path`` itself for one phrase, else ``stem_<i>.suffix``: 0-based, like proposal numbers and NNN.png."""
    return path if count == 1 else path.with_name(f"{path.stem}_{index}{path.suffix}")


def check_output(path: Path) -> None:
    if str(path) == "-":
        return
    if path.exists() and path.is_dir():
        raise InputError(f"output {path} is a folder; give a file name such as {path / 'mask.png'}")
    if path.suffix.lower() != ".png" and path.suffix.lower() != ".json":
        raise InputError(f"output {path} must end in .png (masks, overlays) or .json (scores)")
    check_output_path(path)


def check_output_path(path: str | Path, what: str = "output") -> None:
    """Before any work: a file can be written at ``path`` (no file where a folder must be, the nearest existing
    folder writable), so a command never fails after writing some of its outputs."""
    path = Path(path)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"{what} {path}: {folder} is a file, not a folder; choose another location")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{what} {path}: the folder {folder} is not writable; choose another location")


def default_run_dir(
    dataset: str, split: str, method: str, preset: str, clip_model: str, proposals: str,
    alpha: float | None = None, beta: float | None = None,
) -> Path:
    """runs/DATASET_SPLIT_METHOD_PRESET_MODEL_PROPOSALS[_aALPHA][_bBETA]: what tells runs apart, so ablations
    do not share (and are not refused by) one folder."""
    model_tag = Path(clip_model).stem if clip_model.endswith(".json") else clip_model
    parts = [dataset, split, method, preset, model_tag, proposals]
    parts += [f"{letter}{value:g}" for letter, value in (("a", alpha), ("b", beta)) if value is not None]
    return Path("runs") / "_".join(parts)
