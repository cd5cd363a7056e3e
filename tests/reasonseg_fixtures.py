"""A synthetic ReasonSeg in its released layout, and LISA's ground-truth rule written out with OpenCV, for tests.

:func:`build_reasonseg` writes ``val/`` and ``test/`` with a photo and a labelme JSON per sample. The shapes
exercise every step of ``get_mask_from_json``: a flag shape (with no points, never looked at), an ignore region
drawn over a target (and one under it, by area order), two shapes of equal area that overlap (so their order
is the tie order of ``numpy.argsort``), fractional and negative points (truncated towards zero), a two-point
shape (a line), a sample without shapes. One JSON is cp1252, not UTF-8; one photo carries an EXIF
orientation that turns it (OpenCV's imread applies it, and the canvas is the turned photo).

:func:`lisa_ground_truth` is the independent route: OpenCV's ``polylines`` and ``fillPoly`` called as LISA
calls them, straight from the JSON file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

# name -> (split, height, width as stored, EXIF orientation or None)
PHOTOS = {
    "alpha": ("val", 24, 32, None),
    "bravo": ("val", 20, 30, None),
    "charlie": ("val", 22, 18, 6),  # stored 18 wide, 22 high; imread turns it to 22 x 18
    "delta": ("val", 16, 16, None),
    "echo": ("test", 18, 20, None),
}


def _shape(label: str, points: list[list[float]]) -> dict[str, Any]:
    return {"label": label, "points": points, "group_id": None, "shape_type": "polygon", "flags": {}}


SAMPLES: dict[str, dict[str, Any]] = {
    "alpha": {
        "text": ["What would you use to cut the bread?", "the knife"],
        "is_sentence": True,
        "shapes": [
            _shape("flag", []),
            _shape("target", [[2.7, 3.2], [20.9, 3.0], [20.0, 15.5], [2.0, 15.0]]),
            _shape("ignore", [[10, 8], [26, 8], [26, 18], [10, 18]]),  # smaller: drawn after, over the target
            _shape("Target", [[-0.7, 18.0], [6.0, 23.9], [0.0, 23.0]]),  # -0.7 truncates to 0, not -1
            _shape("IGNORE me", [[1, 1], [30, 1], [30, 22], [1, 22]]),  # the largest: drawn first, overwritten
        ],
    },
    "bravo": {
        "text": ["the cat"],
        "is_sentence": False,
        "shapes": [
            _shape("target", [[3, 3], [12, 3], [12, 12], [3, 12]]),
            _shape("ignore", [[8, 8], [17, 8], [17, 17], [8, 17]]),  # the same area: argsort's tie order decides
            _shape("target", [[20, 2], [27, 16]]),  # two points: a line
        ],
    },
    "charlie": {
        "text": ["  something to sit on  "],
        "is_sentence": True,
        "shapes": [_shape("chair", [[2, 2], [15, 3], [12, 19], [4, 17]])],
    },
    "delta": {"text": ["nothing at all"], "is_sentence": False, "shapes": []},
    "echo": {"text": ["the café sign"], "is_sentence": False,
             "shapes": [_shape("target", [[1, 1], [10, 1], [10, 9]])]},
}
CP1252 = "echo"  # its JSON is written in cp1252 ("é" is one byte, not UTF-8)


@dataclass
class ReasonSegFixture:
    root: Path

    def json_path(self, name: str) -> Path:
        return self.root / PHOTOS[name][0] / f"{name}.json"

    def photo_path(self, name: str) -> Path:
        return self.root / PHOTOS[name][0] / f"{name}.jpg"

    def write(self, name: str, sample: Any) -> None:
        self.json_path(name).write_text(json.dumps(sample))


def build_reasonseg(root: Path) -> ReasonSegFixture:
    """Write the dataset under ``root`` (val/, test/)."""
    rng = np.random.default_rng(3)
    for name, (split, height, width, orientation) in PHOTOS.items():
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        photo = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        exif = Image.Exif()
        if orientation:
            exif[0x0112] = orientation
        photo.save(folder / f"{name}.jpg", quality=95, exif=exif)
        record = {"version": "4.5.6", "flags": {}, **SAMPLES[name], "imagePath": f"{name}.jpg",
                  "imageData": None, "imageHeight": height, "imageWidth": width}
        text = json.dumps(record, ensure_ascii=False)
        (folder / f"{name}.json").write_bytes(text.encode("cp1252" if name == CP1252 else "utf-8"))
    return ReasonSegFixture(root)


def lisa_ground_truth(json_path: Path, photo_path: Path) -> np.ndarray:
    """LISA's ``get_mask_from_json`` as its source reads, with OpenCV: uint8 (H, W) of 0, 1 and 255."""
    raw = json_path.read_bytes()
    try:
        annotation = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        annotation = json.loads(raw.decode("cp1252"))
    height, width = cv2.imread(str(photo_path)).shape[:2]  # imread applies the EXIF orientation
    shapes = [shape for shape in annotation["shapes"] if shape["label"].lower() != "flag"]
    areas = []
    for shape in shapes:
        alone = np.zeros((height, width), dtype=np.uint8)
        cv2.polylines(alone, np.array([shape["points"]], dtype=np.int32), True, 1, 1)
        cv2.fillPoly(alone, np.array([shape["points"]], dtype=np.int32), 1)
        areas.append(alone.sum())
    mask = np.zeros((height, width), dtype=np.uint8)
    for index in list(np.argsort(areas)[::-1].astype(np.int32)):
        shape = shapes[index]
        value = 255 if "ignore" in shape["label"].lower() else 1
        cv2.polylines(mask, np.array([shape["points"]], dtype=np.int32), True, value, 1)
        cv2.fillPoly(mask, np.array([shape["points"]], dtype=np.int32), value)
    return mask
