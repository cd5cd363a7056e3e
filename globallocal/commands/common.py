"""What several commands share beyond their options: the error console and output names."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..errors import InputError

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")

stderr = Console(stderr=True, highlight=False, soft_wrap=True)
"""Messages, progress and warnings go to the standard error; the standard output carries data (``--json -``)."""


def numbered(path: Path, index: int, count: int) -> Path:
    """``path`` itself for one phrase, else ``stem_<i>.suffix``: 0-based, like proposal numbers and NNN.png."""
    return path if count == 1 else path.with_name(f"{path.stem}_{index}{path.suffix}")


def check_image_file(image: Path) -> None:
    """Refuse a photo argument that is a folder or missing, saying which."""
    if image.is_dir():
        photos = sorted(child.name for child in image.iterdir() if child.suffix.lower() in PHOTO_SUFFIXES)
        example = f" (e.g. {image / photos[0]})" if photos else ""
        raise InputError(f"{image} is a folder; give one photo{example}, or use `globallocal batch` for several")
    if not image.is_file():
        raise InputError(f"image not found: {image}")


def default_run_dir(
    dataset: str, split: str, method: str, preset: str, clip_model: str | None, proposals: str,
    alpha: float | None = None, beta: float | None = None,
) -> Path:
    """runs/DATASET_SPLIT_METHOD_PRESET_MODEL_PROPOSALS[_aALPHA][_bBETA]: what tells runs apart, so ablations
    do not share (and are not refused by) one folder. MODEL is left out for a method that uses no CLIP."""
    model_tag = None if clip_model is None else Path(clip_model).stem if clip_model.endswith(".json") else clip_model
    parts = [part for part in (dataset, split, method, preset, model_tag, proposals) if part is not None]
    parts += [f"{letter}{value:g}" for letter, value in (("a", alpha), ("b", beta)) if value is not None]
    return Path("runs") / "_".join(parts)
