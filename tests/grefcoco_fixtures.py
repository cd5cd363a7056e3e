"""A synthetic gRefCOCO in its released layout, with each ref's ground truth drawn by hand, for tests.

:func:`build_grefcoco` writes ``grefcoco/grefs(unc).json``, ``grefcoco/instances.json`` and COCO-named photos.
The annotations exercise every rule of the official loader: a ref of several annotations (their union), one of
none (``ann_id == [-1]``), a scalar ``ann_id``, an annotation of two overlapping polygons (their plain union,
not REFER's "covered once"), a polygon of two points beside a good one (dropped), a compressed RLE, a crowd
annotation among a ref's (left out), and a photo whose ``file_name`` in instances.json carries a ``_1`` suffix.
:data:`EXPECTED` is each ref's ground truth by hand (:func:`rect` unions), the independent route.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask
from refer_fixtures import rect, rect_polygon

# image_id -> (height, width)
IMAGES = {21: (24, 32), 22: (20, 26), 23: (18, 22), 24: (16, 16)}


def photo_name(image_id: int) -> str:
    return f"COCO_train2014_{image_id:012d}.jpg"


def _rle(mask: np.ndarray) -> dict[str, Any]:
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _annotations() -> list[dict[str, Any]]:
    h22, w22 = IMAGES[22]
    crowd = rect(h22, w22, 0, 0, 26, 4)
    anns = [
        (2101, 21, [rect_polygon(2, 2, 10, 12)], 0),
        (2102, 21, [rect_polygon(14, 3, 24, 10), rect_polygon(20, 6, 30, 16)], 0),  # overlapping parts: union
        (2103, 21, [[5.0, 18.0, 9.0, 20.0], rect_polygon(3, 16, 12, 22)], 0),  # a 2-point polygon, dropped
        (2201, 22, _rle(rect(h22, w22, 4, 6, 12, 15)), 0),
        (2202, 22, _rle(crowd), 1),  # crowd: never ground truth
        (2203, 22, [rect_polygon(15, 8, 24, 18)], 0),
        (2301, 23, [rect_polygon(1, 1, 20, 16)], 0),
        (2401, 24, [rect_polygon(2, 2, 14, 14)], 0),
    ]
    return [{"id": ann_id, "image_id": image_id, "category_id": 1, "segmentation": segmentation,
             "iscrowd": iscrowd, "area": 0.0, "bbox": [0.0, 0.0, 1.0, 1.0]}
            for ann_id, image_id, segmentation, iscrowd in anns]


# (ref_id, image_id, ann_id as written, split, sentences)
REFS: list[tuple[int, int, Any, str, list[str]]] = [
    (1, 21, [2101, 2102], "val", ["the two boxes on the left", "both things"]),
    (2, 21, [-1], "val", ["the dog under the table"]),
    (3, 21, 2103, "val", ["the lower box"]),
    (4, 22, [2201, 2202, 2203], "val", ["everything that is not a crowd"]),
    (5, 22, [-1], "val", ["a giraffe", "the red car"]),
    (6, 23, [2301], "testA", ["the big box"]),
    (7, 24, [2401], "testB", ["the square"]),
    (8, 24, [-1], "train", ["training only"]),
]


def _expected() -> dict[int, np.ndarray]:
    h21, w21 = IMAGES[21]
    h22, w22 = IMAGES[22]
    return {
        1: rect(h21, w21, 2, 2, 10, 12) | rect(h21, w21, 14, 3, 24, 10) | rect(h21, w21, 20, 6, 30, 16),
        2: np.zeros((h21, w21), dtype=bool),
        3: rect(h21, w21, 3, 16, 12, 22),
        4: rect(h22, w22, 4, 6, 12, 15) | rect(h22, w22, 15, 8, 24, 18),
        5: np.zeros((h22, w22), dtype=bool),
        6: rect(*IMAGES[23], 1, 1, 20, 16),
        7: rect(*IMAGES[24], 2, 2, 14, 14),
    }


EXPECTED = _expected()


@dataclass
class GRefCocoFixture:
    data_root: Path
    images_dir: Path
    refs: list[dict[str, Any]]
    instances: dict[str, Any]

    @property
    def refs_json(self) -> Path:
        return self.data_root / "grefcoco" / "grefs(unc).json"

    def write_refs(self, refs: list[dict[str, Any]]) -> None:
        self.refs_json.write_text(json.dumps(refs))

    def write_instances(self, instances: dict[str, Any]) -> None:
        (self.data_root / "grefcoco" / "instances.json").write_text(json.dumps(instances))


def build_grefcoco(root: Path) -> GRefCocoFixture:
    """Write the dataset under ``root`` (data/grefcoco/ and train2014/)."""
    data_root, images_dir = root / "data", root / "train2014"
    (data_root / "grefcoco").mkdir(parents=True)
    images_dir.mkdir(parents=True)
    rng = np.random.default_rng(2)
    images = []
    for image_id, (height, width) in IMAGES.items():
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
            images_dir / photo_name(image_id), quality=95)
        listed = photo_name(image_id).replace(".jpg", "_1.jpg") if image_id == 22 else photo_name(image_id)
        images.append({"id": image_id, "file_name": listed, "height": height, "width": width})
    instances = {"images": images, "annotations": _annotations(), "categories": [{"id": 1, "name": "thing"}]}
    refs, sent_id = [], 100
    for ref_id, image_id, ann_id, split, texts in REFS:
        sentences = []
        for text in texts:
            sentences.append({"sent_id": sent_id, "sent": text.lower(), "raw": text, "tokens": text.lower().split()})
            sent_id += 1
        refs.append({"ref_id": ref_id, "image_id": image_id, "ann_id": ann_id, "split": split,
                     "category_id": [1], "sentences": sentences, "sent_ids": [s["sent_id"] for s in sentences],
                     "file_name": photo_name(image_id)})
    fixture = GRefCocoFixture(data_root, images_dir, refs, instances)
    fixture.write_refs(refs)
    fixture.write_instances(instances)
    return fixture
