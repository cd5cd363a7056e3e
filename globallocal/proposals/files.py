"""Mask proposals supplied by the user: a folder of PNGs or a COCO-style RLE JSON.

Users score masks from any generator, or ground-truth masks for upper-bound
studies. ``globallocal proposals`` writes a folder this module reads back.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from ..data.bounded import NUMBER, check_shape, read_json
from ..data.coco_masks import checked_rle, decode, polygon_rles
from ..data.images import load_mask, save_mask_png, save_text, umask_mode
from ..errors import ImageError, InputError
from ..plurals import counted
from . import Proposals
from .boxes_json import BOX_FORMAT, PROJECTION_BOX_FORMAT, box_json, pixel_box_json, size_json

INDEX_FILE = "proposals.json"
# What _from_folder reads of an index (globallocal proposals writes more).
_INDEX_SHAPE = {"proposals?": [{"mask": str, "score?": NUMBER}], "image_size?": {"height": int, "width": int}}
MASK_SUFFIXES = (".png",)


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _from_folder(folder: Path, size: tuple[int, int] | None) -> Proposals:
    index = folder / INDEX_FILE
    scores = None
    if index.is_file():
        listing = read_json(index, what="proposals index")
        check_shape(listing, _INDEX_SHAPE, f"proposals index {index}", "; rewrite it with 'globallocal proposals'")
        if size is None and "image_size" in listing:  # the photo's size as `globallocal proposals` recorded it
            size = (listing["image_size"]["height"], listing["image_size"]["width"])
        entries = listing.get("proposals", [])
        files = [_inside(folder, entry["mask"], index) for entry in entries]
        names = [entry["mask"] for entry in entries]
        scores = torch.tensor([float(entry.get("score", 1.0)) for entry in entries], dtype=torch.float32)
    else:
        index = None
        files = sorted((p for p in folder.iterdir() if p.suffix.lower() in MASK_SUFFIXES), key=_natural_key)
        others = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() not in MASK_SUFFIXES)
        if others:
            shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            warnings.warn(f"{folder}: {counted(len(others), 'file')} left out, not PNG masks: {shown}", stacklevel=2)
        names = [path.name for path in files]
    if not files:
        raise InputError(f"no mask PNGs found in {folder}; put one PNG per mask there (non-zero pixels = mask)")
    if size is None:
        raise InputError(f"no {INDEX_FILE} in {folder} records the photo's size; give image_size=(height, width)")
    return _masks_from_files(files, size, scores, index, names)


def _inside(folder: Path, name: str, index: Path) -> Path:
    """The mask file an index names, refused when the name leads out of the folder the user gave."""
    path = folder / name
    if not path.resolve().is_relative_to(folder.resolve()):
        raise InputError(f"{index} names {name!r}, which is outside {folder}; an index may only name files in its "
                         "own folder")
    return path


def _masks_from_files(
    files: list[Path], size: tuple[int, int], scores: torch.Tensor | None, index: Path | None, names: list[str]
) -> Proposals:
    """Proposals from mask image files (``index``: the listing that named them, for messages), each named as the
    user gave it (``names``: relative to the folder, or the path of a single file)."""
    masks = []
    for path in files:
        if not path.is_file():
            where = f"listed in {index} " if index is not None else ""
            raise InputError(f"mask file {where}is missing or not a file: {path}")
        try:
            mask = load_mask(path, size)
        except ImageError as error:
            raise InputError(str(error)) from None
        masks.append(mask)
    return Proposals.from_masks(torch.from_numpy(np.stack(masks)), scores, tuple(names))


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
    data = read_json(path, what="mask file")
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


def load_proposals(source: str | Path, image_size: tuple[int, int] | None = None) -> Proposals:
    """Read user masks for an image of ``image_size`` (H, W); None: the size a folder's ``proposals.json``
    records (``globallocal proposals`` writes it), required otherwise.

    ``source`` is a folder of PNG masks (non-zero = inside, natural name
    order; a ``proposals.json`` index written by ``globallocal proposals``
    supplies order and scores), a single PNG mask, or a JSON file of
    COCO-style RLE masks or annotations (``segmentation`` as RLE or
    polygons, optional ``score``). Empty masks are dropped, as every
    proposal source does, with a warning saying how many. Proposals are
    numbered in that order; masks read from PNGs keep their file's name in
    ``Proposals.files`` (relative to the folder; a single PNG: as given).
    """
    path = Path(source)
    if path.is_dir():
        proposals = _from_folder(path, image_size)
    elif path.is_file() and image_size is None:
        raise InputError(f"the size of the photo {path} belongs to is needed: give image_size=(height, width)")
    elif path.is_file() and path.suffix.lower() in MASK_SUFFIXES:
        proposals = _masks_from_files([path], image_size, None, None, [str(source)])
    elif path.is_file():
        proposals = _from_json(path, image_size)
    else:
        raise InputError(f"mask source not found: {path}; give a folder of PNG masks or an RLE .json file")
    return _drop_empty(proposals, path)


def _drop_empty(proposals: Proposals, source: Path) -> Proposals:
    empty = ~proposals.masks.flatten(1).any(dim=1)
    count = int(empty.sum())
    if count == len(proposals):
        raise InputError(f"every mask is empty ({counted(count, 'mask')} in {source}), so there is nothing to "
                         "choose from")
    if count:
        positions = torch.nonzero(empty).flatten()[:5].tolist()
        if proposals.files is not None:
            which = ", ".join(proposals.files[i] for i in positions)
        else:
            which = "source positions " + ", ".join(str(i) for i in positions) + " (0-based)"
        warnings.warn(
            f"{count} of {len(proposals)} masks in {source} are empty and were dropped ({which}"
            f"{', ...' if count > 5 else ''}); proposal numbers count the remaining masks",
            stacklevel=3,
        )
    return proposals.drop_empty()


def check_replaceable(folder: Path) -> None:
    """Refuse an output folder that holds anything but an earlier set of proposals (which is replaced)."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"output {folder} is a file; give a folder")
    if not folder.is_dir():
        return
    entries = list(folder.iterdir())
    earlier_set = (folder / INDEX_FILE).is_file() and all(
        entry.name == INDEX_FILE or (entry.is_file() and entry.suffix.lower() in MASK_SUFFIXES) for entry in entries
    )
    if entries and not earlier_set:
        strangers = [entry.name for entry in entries if entry.name != INDEX_FILE]
        raise InputError(
            f"output folder {folder} is not empty and does not hold an earlier set of proposals "
            f"(e.g. {strangers[0]}); give a new or empty folder"
        )


def save_proposals(proposals: Proposals, folder: str | Path, about: dict[str, Any] | None = None) -> list[Path]:
    """Write each mask as ``NNN.png`` (0-based) plus a ``proposals.json`` index of scores, boxes and areas, and
    ``about``'s fields (`globallocal proposals`: the photo and what made the masks).

    The set is written into a temporary folder beside ``folder`` and then
    swapped in, so an earlier set there is replaced as a whole (no stale
    ``NNN.png`` of a larger earlier set survives) and a reader never sees a
    mix. A folder holding anything else is refused.
    """
    folder = Path(folder)
    check_replaceable(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        names = _write_set(proposals, staging, about or {})
        os.chmod(staging, umask_mode(0o777))
        if folder.exists():
            retired = staging.with_suffix(".old")
            os.rename(folder, retired)
            os.rename(staging, folder)
            shutil.rmtree(retired)
        else:
            os.rename(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [folder / name for name in names]


def _write_set(proposals: Proposals, folder: Path, about: dict[str, Any]) -> list[str]:
    width = max(3, len(str(len(proposals))))
    entries, names = [], []
    for i in range(len(proposals)):
        name = f"{i:0{width}d}.png"
        save_mask_png(proposals.masks[i], folder / name)
        names.append(name)
        entries.append(
            {
                "mask": name,
                "score": float(proposals.scores[i]),
                "box": pixel_box_json(proposals.masks[i]),
                "projection_box": box_json(proposals.boxes[i]),
                "area": int(proposals.masks[i].sum()),
            }
        )
    index = {
        **about,
        "image_size": size_json(*proposals.image_size),
        "box_format": BOX_FORMAT,
        "projection_box_format": PROJECTION_BOX_FORMAT,
        "numbering": "0-based",
        "proposals": entries,
    }
    save_text(json.dumps(index, indent=1) + "\n", folder / INDEX_FILE)
    return names
