"""Output file names checked before any work (torch-free): a folder, a suffix the tool does not write."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError


def check_output(path: Path, flag: str = "output") -> None:
    """Refuse an output file name that is a folder or has a suffix the tool does not write; ``-`` is stdout."""
    if str(path) == "-":
        return
    suffix = path.suffix.lower()
    if path.is_dir():
        # The file name suggested is one the flag writes: --json DIR wants DIR/scores.json, not a PNG.
        example = path / ("scores.json" if suffix == ".json" or flag == "--json" else "mask.png")
        raise InputError(f"{flag} {path} is a folder; give a file name such as {example}")
    if suffix not in (".png", ".json"):
        raise InputError(f"{flag} {path} must end in .png (masks, overlays) or .json (scores)")
    check_output_path(path, flag)


def check_output_path(path: Path, flag: str = "output") -> None:
    """Before any work: a file can be written at ``path`` (no file where a folder must be, the nearest existing
    folder writable), so a command never fails after writing some of its outputs."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"{flag} {path}: {folder} is a file, not a folder; choose another location")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: the folder {folder} is not writable; choose another location")


def check_soft_outputs(soft_mask: Path | None, heatmap_path: Path | None, available: bool, method: str) -> None:
    """Refuse --soft-mask / --heatmap before any work: ``method`` (a label) gives no soft mask, or a bad name."""
    for path, flag, suffix in ((soft_mask, "--soft-mask", ".npy"), (heatmap_path, "--heatmap", ".png")):
        if path is None:
            continue
        if not available:
            raise InputError(f"{flag} needs TCL's soft mask, which {method} does not give: "
                             "use --method tcl, or add --tcl-blend to blend TCL in")
        if path.suffix.lower() != suffix:
            raise InputError(f"{flag} {path} must end in {suffix}")
        if path.is_dir():
            raise InputError(f"{flag} {path} is a folder; give a file name ending in {suffix}")
        check_output_path(path, flag)
