"""What several commands share beyond their options: the error console and output names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from typer._click.exceptions import BadParameter
from typer.core import TyperCommand, TyperGroup, TyperOption

from ..data.bounded import INT64
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


# --help groups the options by subject (Typer's rich_help_panel), one table each; the rest stay under "Options".
_PANELS = {
    "Outputs": ("output", "overlay", "overlay_all", "top_k_picture", "top_k", "json_path", "soft_mask", "heatmap",
                "save_masks", "overlays", "rle"),
    "Method and models": ("method", "clip_model", "clip_weights", "preset", "alpha", "beta", "masked_blocks",
                          "fusion_mode", "sticky_topk", "chunk_size", "device", "precision", "spacy_model",
                          "require_noun", "allow_split_phrases"),
    "Mask proposals": ("masks", "proposals", "freesolo_weights", "score_threshold", "max_proposals", "min_area",
                       "short_side", "sam_model", "sam_weights", "sam_settings", "points_per_side", "pred_iou_thresh",
                       "stability_thresh", "min_region_area", "box_nms_thresh", "crop_layers"),
}
_PANEL_OF = {name: panel for panel, names in _PANELS.items() for name in names}


def _tidy(param: Any) -> None:
    """A flag shows no '<bool>' type, and an off-by-default one no '--no-' form (it would change nothing) nor a
    default; an option without a panel of its own gets its subject's."""
    if getattr(param, "is_flag", False) and param.metavar is None:
        param.metavar = ""
        if param.default is False:
            param.secondary_opts, param.show_default = [], False
    if isinstance(param, TyperOption) and param.rich_help_panel is None:
        name = param.name or ""
        prefix = name.split("_", 1)[0]
        param.rich_help_panel = {"tcl": "TCL", "vlm": "VLM"}.get(prefix) or _PANEL_OF.get(name)


def _bound_integer(param: Any) -> None:
    """An integer option refuses a value beyond 64 bits as it is parsed: every count, size and id downstream is
    int64 (numpy, torch, the run's JSON), so a larger one would fail later, or be written where it cannot be read."""
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is None or descriptor.annotation is not int:
        return
    inner = param.callback

    def check(ctx: Any, option: Any, value: Any) -> Any:
        if isinstance(value, int) and value not in INT64:
            raise BadParameter(f"{value} does not fit in a 64-bit integer", ctx=ctx, param=option)
        return value if inner is None else inner(ctx, option, value)

    param.callback = check


class _TidyHelp:
    """Mixin for Typer's command classes: every parameter and the help option itself tidied by :func:`_tidy`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            _tidy(param)
            _bound_integer(param)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            _tidy(option)
        return option


class Command(_TidyHelp, TyperCommand):
    """A command whose --help is grouped by subject, with no '<bool>' types."""


class Group(_TidyHelp, TyperGroup):
    """The top level, likewise."""
