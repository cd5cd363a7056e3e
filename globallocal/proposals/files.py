"""Mask proposals supplied by the user: a folder of PNGs or a COCO-style RLE JSON.

Users score masks from any generator, or ground-truth masks for upper-bound
studies. ``globallocal proposals`` writes a folder this module reads back.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from ..coco_masks import checked_rle, decode, polygon_rles
from ..errors import ImageError, InputError
from ..images import load_mask, save_mask_png, save_text
from . import Proposals

INDEX_FILE = "proposals.json"
MASK_SUFFIXES = (".png",)


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _from_folder(folder: Path, size: tuple[int, int]) -> Proposals:
    index = folder / INDEX_FILE
    scores = None
    if index.is_file():
        listing = _read_json(index)
        try:
            entries = listing.get("proposals", [])
            files = [folder / str(entry["mask"]) for entry in entries]
            scores = torch.tensor([float(entry.get("score", 1.0)) for entry in entries], dtype=torch.float32)
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise InputError(f"{index} is not a proposals index ({error!r}); rewrite it with 'globallocal proposals'") \
                from None
    else:
        files = sorted((p for p in folder.iterdir() if p.suffix.lower() in MASK_SUFFIXES), key=_natural_key)
    if not files:
        raise InputError(f"no mask PNGs found in {folder}; put one PNG per mask there (non-zero pixels = mask)")
    return _masks_from_files(files, size, scores, index)


def _masks_from_files(
    files: list[Path], size: tuple[int, int], scores: torch.Tensor | None, index: Path | None = None
) -> Proposals:
    """Proposals from mask image files (``index``: the listing that named them, for messages)."""
    masks = []
    for path in files:
        if not path.is_file():
            raise InputError(f"mask file listed in {index} is missing: {path}")
        try:
            mask = load_mask(path, size)
        except ImageError as error:
            raise InputError(str(error)) from None
        masks.append(mask)
    return Proposals.from_masks(torch.from_numpy(np.stack(masks)), scores)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise InputError(f"cannot read {path} as JSON: {error}") from None


def _decode_segmentation(segmentation: Any, size: tuple[int, int], name: str) -> np.ndarray:
    height, width = size
    if isinstance(segmentation, list):  # polygons
        rles = polygon_rles(segmentation, height, width, f"mask {name}")
        if not rles:
            raise InputError(f"mask {name} is an empty polygon list")
        return decode(mask_utils.merge(rles)).astype(bool)
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        return decode(checked_rle(segmentation, height, width, f"mask {name}")).astype(bool)
    raise InputError(f"mask {name} is neither an RLE ({{'size', 'counts'}}) nor a polygon list")


def _from_json(path: Path, size: tuple[int, int]) -> Proposals:
    data = _read_json(path)
    if isinstance(data, dict):
        data = data.get("annotations", data.get("masks", [data]))
    if not isinstance(data, list):
        raise InputError(f"{path} must hold a list of RLE masks or COCO annotations")
    masks, scores = [], []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise InputError(f"entry {i} of {path} is not an RLE mask or annotation object")
        segmentation = item.get("segmentation", item)
        masks.append(_decode_segmentation(segmentation, size, f"{path.name}[{i}]"))
        score = item.get("score", 1.0)
        if not isinstance(score, (int, float)) or isinstance(score, bool):
            raise InputError(f"entry {i} of {path} has a score that is not a number: {score!r}")
        scores.append(float(score))
    if not masks:
        raise InputError(f"{path} holds no masks")
    return Proposals.from_masks(torch.from_numpy(np.stack(masks)), torch.tensor(scores, dtype=torch.float32))


def load_proposals(source: str | Path, image_size: tuple[int, int]) -> Proposals:
    """Read user masks for an image of ``image_size`` (H, W).

    ``source`` is a folder of PNG masks (non-zero = inside, natural name
    order; a ``proposals.json`` index written by ``globallocal proposals``
    supplies order and scores), a single PNG mask, or a JSON file of
    COCO-style RLE masks or annotations (``segmentation`` as RLE or
    polygons, optional ``score``).
    """
    path = Path(source)
    if path.is_dir():
        return _from_folder(path, image_size)
    if path.is_file() and path.suffix.lower() in MASK_SUFFIXES:
        return _masks_from_files([path], image_size, None)
    if path.is_file():
        return _from_json(path, image_size)
    raise InputError(f"mask source not found: {path}; give a folder of PNG masks or an RLE .json file")


def save_proposals(proposals: Proposals, folder: str | Path) -> list[Path]:
    """Write each mask as ``NNN.png`` plus a ``proposals.json`` index of scores and boxes.

    The index is written last, so a folder with an index is complete.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(len(proposals))))
    entries, paths = [], []
    for i in range(len(proposals)):
        name = f"{i:0{width}d}.png"
        save_mask_png(proposals.masks[i], folder / name)
        paths.append(folder / name)
        entries.append(
            {
                "mask": name,
                "score": round(float(proposals.scores[i]), 6),
                "box": [round(float(v), 3) for v in proposals.boxes[i]],
                "area": int(proposals.masks[i].sum()),
            }
        )
    height, width_px = proposals.image_size
    index = {"image_size": [height, width_px], "box_rule": "projection", "proposals": entries}
    save_text(json.dumps(index, indent=1) + "\n", folder / INDEX_FILE)
    return paths
