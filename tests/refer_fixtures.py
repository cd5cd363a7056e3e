"""A synthetic REFER dataset, and a stand-in segmenter, for tests.

:func:`build_refer` writes, under a directory, the REFER layout for
refcoco/refcoco+ (unc), refcocog (umd and google) and a COCO-style images
folder. The annotations exercise every decoding path: single polygons, a
polygon whose parts overlap (some pixels covered twice, some three times),
compressed RLE with ``counts`` as a str, uncompressed RLE, and a crowd region.
The refs files are pickled at protocol 2 in three string styles, the way the
real files (written by Python 2) and re-saved copies come.
"""

from __future__ import annotations

import json
import pickle
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as coco_mask

from globallocal.data.refer import ImageRecord, ReferDataset
from globallocal.proposals import Proposals
from globallocal.segmenter import SegmentResult

# image_id -> (height, width, format)
IMAGES = {
    11: (30, 40, "PNG"),
    12: (24, 32, "JPEG"),
    13: (28, 36, "PNG"),
    14: (20, 20, "PNG"),
    15: (26, 30, "JPEG"),
    16: (22, 34, "PNG"),
}

# The overlapping-parts annotation (1102) on image 11: three rectangles. The
# part C lies across A and B, so some pixels are covered once, some twice
# (A and B) and some three times (A, B and C).
OVERLAP_PARTS = ((2, 2, 12, 10), (8, 6, 18, 14), (10, 8, 14, 12))  # (x0, y0, x1, y1)


def rect(height: int, width: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Bool mask of the pixels x in [x0, x1), y in [y0, y1).

    pycocotools rasterises the integer polygon (x0,y0)(x1,y0)(x1,y1)(x0,y1)
    to exactly these pixels, so it is the by-hand expectation for a
    rectangle polygon.
    """
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def rect_polygon(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    return [float(x0), float(y0), float(x1), float(y0), float(x1), float(y1), float(x0), float(y1)]


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """Column-major run lengths starting with a run of zeros (COCO's iscrowd format)."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _compressed_rle(mask: np.ndarray) -> dict[str, Any]:
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(x) for x in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _blob(height: int, width: int, cy: float, cx: float, r: float) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    return (ys - cy) ** 2 + (xs - cx) ** 2 <= r * r


def _annotations() -> list[dict[str, Any]]:
    h11, w11, _ = IMAGES[11]
    h12, w12, _ = IMAGES[12]
    anns = [
        (1101, 11, 1, [rect_polygon(2, 3, 20, 25)], 0),
        (1102, 11, 2, [rect_polygon(*part) for part in OVERLAP_PARTS], 0),
        (1103, 11, 1, _uncompressed_rle(rect(h11, w11, 25, 5, 38, 28)), 1),
        (1201, 12, 3, _compressed_rle(_blob(h12, w12, 10, 10, 6)), 0),
        (1202, 12, 3, _uncompressed_rle(_blob(h12, w12, 14, 24, 5)), 0),
        (1203, 12, 4, [[1.0, 22.0, 12.0, 22.0, 6.5, 15.0]], 0),
        (1301, 13, 1, [rect_polygon(3, 3, 15, 20)], 0),
        (1302, 13, 2, [rect_polygon(18, 5, 34, 26), rect_polygon(20, 1, 24, 4)], 0),
        (1401, 14, 1, [rect_polygon(4, 4, 16, 16)], 0),
        (1501, 15, 1, [rect_polygon(5, 2, 25, 20)], 0),
        (1601, 16, 1, [rect_polygon(1, 1, 30, 20)], 0),
    ]
    return [
        {
            "id": ann_id,
            "image_id": image_id,
            "category_id": category_id,
            "segmentation": segmentation,
            "iscrowd": iscrowd,
            "area": 0.0,
            "bbox": [0.0, 0.0, 1.0, 1.0],
        }
        for ann_id, image_id, category_id, segmentation, iscrowd in anns
    ]


def file_name(image_id: int) -> str:
    extension = "jpg" if IMAGES[image_id][2] == "JPEG" else "png"
    return f"COCO_train2014_{image_id:012d}.{extension}"


# (ann_id, split, sentences); refs are numbered per dataset.
_REF_PLAN: dict[tuple[str, str], list[tuple[int, str, list[str]]]] = {
    ("refcoco", "unc"): [
        (1101, "val", ["Left man", "the man on the left", "guy in red shirt"]),
        (1102, "val", ["overlapping thing", "the blocks in the middle"]),
        (1201, "val", ["round blob top left", "blob"]),
        (1202, "val", ["small blob right", "right circle", "café table"]),
        (1203, "val", ["triangle at the bottom"]),
        (1302, "val", ["tall box right", "the right one"]),
        (1301, "val", ["left box"]),
        (1401, "testA", ["square", "the square"]),
        (1501, "testB", ["wide box", "box"]),
        (1601, "train", ["training only"]),
    ],
    ("refcoco+", "unc"): [
        (1101, "val", ["man left", "red shirt"]),
        (1201, "val", ["blob"]),
        (1401, "testA", ["square"]),
        (1501, "testB", ["box"]),
        (1601, "train", ["training only"]),
    ],
    ("refcocog", "umd"): [
        (1102, "val", ["the overlapping parts", "blocks"]),
        (1202, "val", ["a small blob on the right side"]),
        (1301, "test", ["the box on the left, naïve", "left box"]),
        (1401, "test", ["a square"]),
        (1601, "train", ["training only"]),
    ],
    ("refcocog", "google"): [
        (1101, "val", ["a man standing on the left"]),
        (1501, "val", ["the wide box", "déjà vu box"]),
        (1601, "train", ["training only"]),
    ],
}

# How each refs file stores its strings:
#   "py2": ASCII as Python 2 str (SHORT_BINSTRING), non-ASCII as unicode (BINUNICODE)
#   "py2utf8": every string as a Python 2 str holding UTF-8 bytes (SHORT_BINSTRING)
#   "str": Python 3 str (BINUNICODE)
#   "bytes": every string as UTF-8 bytes (SHORT_BINBYTES; needs protocol 3)
STRING_STYLES = {
    ("refcoco", "unc"): "py2",
    ("refcoco+", "unc"): "str",
    ("refcocog", "umd"): "bytes",
    ("refcocog", "google"): "py2utf8",
}


class _Py2StylePickler(pickle._Pickler):
    """Writes bytes the way Python 2 pickled its str: (SHORT_)BINSTRING."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _encode_strings(value: Any, ascii_only: bool) -> Any:
    if isinstance(value, dict):
        return {_encode_strings(k, ascii_only): _encode_strings(v, ascii_only) for k, v in value.items()}
    if isinstance(value, list):
        return [_encode_strings(item, ascii_only) for item in value]
    if isinstance(value, str) and (not ascii_only or value.isascii()):
        return value.encode("utf-8")
    return value


def dump_refs(refs: list[dict[str, Any]], path: Path, style: str) -> None:
    """Pickle refs in one of :data:`STRING_STYLES`' styles."""
    if style in ("py2", "py2utf8"):
        with open(path, "wb") as handle:
            _Py2StylePickler(handle, protocol=2).dump(_encode_strings(refs, ascii_only=style == "py2"))
    elif style == "str":
        path.write_bytes(pickle.dumps(refs, protocol=2))
    elif style == "bytes":
        path.write_bytes(pickle.dumps(_encode_strings(refs, ascii_only=False), protocol=3))
    else:
        raise ValueError(style)


@dataclass
class ReferFixture:
    """Paths of a built dataset and the plain (str) data written into it."""

    data_root: Path
    images_dir: Path
    instances: dict[str, Any]
    refs: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)

    def refs_of(self, dataset: str, split_by: str, split: str) -> list[dict[str, Any]]:
        return [ref for ref in self.refs[(dataset, split_by)] if ref["split"] == split]

    def annotation(self, ann_id: int) -> dict[str, Any]:
        return next(ann for ann in self.instances["annotations"] if ann["id"] == ann_id)


def build_refer(root: Path) -> ReferFixture:
    """Write the synthetic dataset under ``root`` (data/ and train2014/)."""
    data_root, images_dir = root / "data", root / "train2014"
    images_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = []
    for image_id, (height, width, fmt) in IMAGES.items():
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images_dir / file_name(image_id), format=fmt)
        images.append({"id": image_id, "file_name": file_name(image_id), "height": height, "width": width})
    instances = {
        "images": images,
        "annotations": _annotations(),
        "categories": [{"id": i, "name": f"category{i}"} for i in range(1, 5)],
    }
    category = {ann["id"]: ann["category_id"] for ann in instances["annotations"]}
    image_of = {ann["id"]: ann["image_id"] for ann in instances["annotations"]}
    fixture = ReferFixture(data_root, images_dir, instances)
    for (dataset, split_by), plan in _REF_PLAN.items():
        refs, sent_id = [], 1
        for number, (ann_id, split, texts) in enumerate(plan, start=1):
            sentences = []
            for text in texts:
                tokens = text.lower().split()
                sentence = {"sent_id": sent_id, "raw": text, "sent": " ".join(tokens), "tokens": tokens}
                sentences.append(sentence)
                sent_id += 1
            refs.append(
                {
                    "ref_id": 100 * number + len(dataset),
                    "ann_id": ann_id,
                    "image_id": image_of[ann_id],
                    "split": split,
                    "category_id": category[ann_id],
                    "sent_ids": [s["sent_id"] for s in sentences],
                    "sentences": sentences,
                    "file_name": file_name(image_of[ann_id]),
                }
            )
        folder = data_root / dataset
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "instances.json").write_text(json.dumps(instances))
        dump_refs(refs, folder / f"refs({split_by}).p", STRING_STYLES[(dataset, split_by)])
        fixture.refs[(dataset, split_by)] = refs
    return fixture


def stand_in_index(phrase: str, count: int) -> int:
    """The proposal the stand-in picks: CRC32 of the phrase mod N (stable across processes)."""
    return zlib.crc32(phrase.encode("utf-8")) % count


class StandInSegmenter:
    """Deterministic, model-free segmenter with the Segmenter interface.

    Records every ``set_image`` call (the image's size) so tests can check
    images are paid for once; ``delay`` slows ``predict`` down for the
    kill-and-resume test.
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.set_image_sizes: list[tuple[int, int]] = []
        self.proposals: Proposals | None = None

    def set_image(self, image: Image.Image, proposals: Proposals) -> None:
        self.set_image_sizes.append(image.size)
        self.proposals = proposals

    def predict(self, phrase: str) -> SegmentResult:
        if self.delay:
            time.sleep(self.delay)
        assert self.proposals is not None
        count = len(self.proposals)
        index = stand_in_index(phrase, count)
        scores = torch.linspace(0.0, 1.0, count).roll(index + 1)
        return SegmentResult(
            phrase=phrase,
            expression=phrase.lower(),
            noun_phrase=phrase.lower().split()[-1],
            index=index,
            mask=self.proposals.masks[index],
            scores=scores,
            truncated=len(phrase) > 20,
            has_noun=True,
        )


def shifted_proposals(instance_masks: np.ndarray, shift: int = 2) -> Proposals:
    """Each instance mask (a dataset's ``instance_masks``, bool (N, H, W)) and a copy moved ``shift`` pixels right,
    so IoUs are fractional."""
    masks = torch.from_numpy(instance_masks)
    moved = torch.zeros_like(masks)
    moved[:, :, shift:] = masks[:, :, :-shift]
    return Proposals.from_masks(torch.cat([masks, moved]))


class ShiftedOracleSource:
    """Proposal source for the loop tests: :func:`shifted_proposals` of the image's instances.

    Images in ``empty`` get no proposals at all. ``calls`` lists the image
    ids asked for, to check each image is asked once.
    """

    def __init__(self, dataset: ReferDataset, empty: frozenset[int] = frozenset()) -> None:
        self.dataset = dataset
        self.empty = empty
        self.calls: list[int] = []

    def __call__(self, image: Image.Image, record: ImageRecord) -> Proposals:
        self.calls.append(record.image_id)
        assert image.size == (record.width, record.height)
        if record.image_id in self.empty:
            return Proposals.from_masks(torch.zeros((0, record.height, record.width), dtype=torch.bool))
        return shifted_proposals(self.dataset.instance_masks(record.image_id))
