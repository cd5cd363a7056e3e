"""A synthetic dataset in the VGPhraseCut_v0 layout, and the dataset's own ground-truth rule, for tests.

The reference (:func:`expected_gt`) is the dataset's evaluation code as its
README and source describe it: points truncated to int, polygons of fewer
than two points skipped, every other polygon drawn on a canvas of its own by
one ``ImageDraw.polygon(points, outline=1, fill=1)`` call, the canvases
summed and thresholded at > 0. Points carry fractions, some negative, so that
truncation towards zero is exercised; some lie off the image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# image_id -> (height, width, split)
IMAGES = {
    101: (30, 40, "val"),
    102: (24, 32, "val"),
    103: (20, 20, "val"),
    104: (28, 36, "test"),
    105: (22, 26, "miniv"),
}


def rectangle(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def _task(task_id, image_id, phrase, name, instances, structure=True):
    return {
        "task_id": task_id,
        "image_id": image_id,
        "ann_ids": [int(part) for part in task_id.split("__")[1:]],
        "phrase": phrase,
        "phrase_structure": {"name": name, "attributes": [], "relation_ids": [], "type": "name"} if structure else None,
        "instance_boxes": [[0, 0, 1, 1] for _ in instances],
        "Polygons": instances,
    }


# refer_<split>.json contents. Categories: COCO (dog, person, dining table) and
# not (table, sky, fence; "Person" too: the match is exact, as in the paper's code).
TASKS = {
    "val": [
        # One instance of two polygons: a rectangle and a sloped triangle (fractions truncated).
        _task("101__1", 101, "the wooden table", "table",
              [[rectangle(2.9, 3.2, 10.7, 8.99), [[12.5, 2.0], [27.3, 6.8], [15.9, 12.2]]]]),
        # Two instances, overlapping; the second of three polygons, one 45-degree, one sloped.
        _task("101__2__3", 101, "two dogs", "dog",
              [[rectangle(5, 5, 15, 15)],
               [rectangle(12, 10, 25, 20), [[30, 2], [35, 7], [30, 7]], [[30, 12], [38, 15], [33, 24]]]]),
        # Negative fractions truncate to 0 (not -1), which moves the sloped edge; points off the image are clipped.
        _task("101__4", 101, "blue sky", "sky", [[[[-0.9, -3.0], [45.0, -3.0], [45.0, 4.5], [-0.9, 10.5]]]]),
        _task("102__5", 102, "a person", "person", [[[[10, 0], [20, 10], [10, 20], [0, 10]]]]),
        # Five instances: PhraseCut's "many" subset; a U-shaped (concave) one among them.
        _task("102__6__7__8__9__10", 102, "the fence posts", "fence", [
            [rectangle(1, 21, 2, 23)], [rectangle(5, 21, 6, 23)], [rectangle(9, 21, 10, 23)],
            [rectangle(13, 21, 14, 23)],
            [[[20, 12], [31, 12], [31, 23], [28, 23], [28, 15], [23, 15], [23, 23], [20, 23]]],
        ]),
        _task("102__11", 102, "no structure here", "thing", [[rectangle(0, 0, 3, 3)]], structure=False),
        _task("103__12", 103, "the dining table", "dining table", [[rectangle(0, 0, 19, 19)]]),
        _task("103__13", 103, "Person at the back", "Person", [[[[5, 5], [7, 7], [5, 7]]]]),
        # On an image of the test split: left out of val, as the dataset's loader does.
        _task("104__14", 104, "misplaced", "car", [[rectangle(0, 0, 5, 5)]]),
    ],
    "test": [_task("104__15", 104, "a car", "car", [[rectangle(3, 3, 30, 20)]])],
    "miniv": [_task("105__16", 105, "the grass", "grass", [[rectangle(0, 10, 25, 21)]])],
}

VAL_COUNTS = {"all": 7, "unseen": 4, "seen": 3}  # kept tasks of val per --subset
VAL_DROPPED = {"no_phrase_structure": 1, "other_split": 1}


@dataclass
class PhraseCutFixture:
    root: Path
    tasks: dict[str, list[dict]]

    def task(self, task_id: str) -> dict:
        return next(task for tasks in self.tasks.values() for task in tasks if task["task_id"] == task_id)

    def write_tasks(self, split: str, tasks: list) -> None:
        (self.root / f"refer_{split}.json").write_text(json.dumps(tasks))


def build_phrasecut(root: Path) -> PhraseCutFixture:
    """Write the dataset under ``root`` (refer_*.json, image_data_split.json, images/)."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    records = []
    for image_id, (height, width, split) in IMAGES.items():
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{image_id}.jpg", quality=95)
        records.append({"image_id": image_id, "width": width, "height": height, "split": split, "coco_id": None})
    (root / "image_data_split.json").write_text(json.dumps(records))
    fixture = PhraseCutFixture(root, json.loads(json.dumps(TASKS)))
    for split, tasks in fixture.tasks.items():
        fixture.write_tasks(split, tasks)
    return fixture


def expected_gt(task: dict, height: int, width: int) -> np.ndarray:
    """Every polygon of every instance, drawn as PhraseCut's ``polygons_to_mask`` does (module docstring)."""
    total = np.zeros((height, width))
    for instance in task["Polygons"]:
        for polygon in instance:
            if len(polygon) < 2:
                continue
            canvas = Image.new("L", (width, height), 0)
            ImageDraw.Draw(canvas).polygon([(int(x), int(y)) for x, y in polygon], outline=1, fill=1)
            total += np.array(canvas)
    return total > 0
