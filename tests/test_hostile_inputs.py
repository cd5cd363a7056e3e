"""Malformed and hostile inputs end in one `error:` line and exit 2, before native code or models see them."""

from __future__ import annotations

import json
import pickle
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask
from refer_fixtures import IMAGES, build_refer

from globallocal.data.coco_masks import checked_rle, decode_rle_string, polygon_rles
from globallocal.data.images import MAX_PIXELS, load_image, load_mask
from globallocal.data.plain_pickle import load_refs_pickle
from globallocal.errors import ImageError, InputError


def _assert_clean_error(result, pattern):
    assert result.code == 2, result.err
    assert "Traceback" not in result.err
    lines = [line for line in result.err.splitlines() if line.strip()]
    # The progress bar of an evaluation stopped by the error may stand above it.
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.err
    assert pattern in errors[0], result.err


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height (1-bit grey) followed by a token of pixel data: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def _run_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed counts, column-major, starting with a run of zeros (the slow, obvious way)."""
    flat = mask.flatten(order="F").tolist()
    counts, current, length = [], 0, 0
    for value in flat:
        if value == current:
            length += 1
        else:
            counts.append(length)
            current, length = value, 1
    counts.append(length)
    return counts


# ---- polygons and RLE -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("polygons", "pattern"),
    [
        ([[0, 0, 1e12, 0, 5, 5]], "more than one image size outside"),
        ([[0, 0, 1e7, 1e7, 5, 5]], "refused rather than clipped"),
        ([[0, 0, float("nan"), 0, 5, 5]], "not a finite number"),
        ([[0, 0, 10, 0, 5]], "even count of at least 6"),
        ([[1, 2]], "even count of at least 6"),
        ([[0, 0, 10, 10], [1, 2, 3]], "the first has 4 (a box)"),
        (["0 0 10 0 5 5"], "list of lists of numbers"),
        ([[0, 0, 10, 10], [0, 0, 1e12, 1]], "more than one image size outside"),
        ([[0, "1", 10, 0, 5, 5]], "not a finite number"),
    ],
)
def test_bad_polygons_are_refused_before_pycocotools(polygons, pattern):
    with pytest.raises(InputError, match=pattern.replace("(", r"\(").replace(")", r"\)")):
        polygon_rles(polygons, 30, 40, "annotation 7")


def test_good_polygons_and_the_box_quirk_pass():
    inside = [[2, 3, 20, 3, 20, 25, 2, 25]]
    assert polygon_rles(inside, 30, 40, "a") == coco_mask.frPyObjects(inside, 30, 40)
    box = [[2, 3, 10, 10]]  # read as x, y, w, h by pycocotools, as the published code does
    assert polygon_rles(box, 30, 40, "a") == coco_mask.frPyObjects(np.array(box, dtype=np.float64), 30, 40)
    stray = [[-1.5, 0, 41, 0, 41, 31]]  # COCO-like stray by a pixel or two
    assert len(polygon_rles(stray, 30, 40, "a")) == 1


def test_compressed_counts_decode_as_pycocotools_encodes():
    rng = np.random.default_rng(0)
    for _ in range(20):
        height, width = rng.integers(1, 60, size=2)
        mask = np.asfortranarray(rng.random((height, width)) < rng.random())
        encoded = coco_mask.encode(mask.astype(np.uint8))
        assert decode_rle_string(encoded["counts"]) == _run_counts(mask)


@pytest.mark.parametrize(
    ("rle", "pattern"),
    [
        ({"size": [30, 40], "counts": [100, 50]}, "cover 150 pixels but a 40x30 mask has 1200"),
        ({"size": [30, 40], "counts": [1199, 2]}, "cover 1201 pixels"),
        ({"size": [30, 40], "counts": "PT1"}, "cover"),
        ({"size": [30, 40], "counts": [2**40, 0]}, "overflows"),
        ({"size": [30, 40], "counts": [600, -1, 601]}, "non-negative integers"),
        ({"size": [30, 40], "counts": [600.0, 600]}, "non-negative integers"),
        ({"size": [30, 40], "counts": 1200}, "must be a list of integers or a string"),
        ({"size": [30, 40], "counts": "Ω0"}, "must be ASCII"),
        ({"size": [30, 40], "counts": "0\x7f"}, "malformed"),
        ({"size": [30, 40], "counts": "h"}, "ends inside a count"),
        ({"size": [30], "counts": [1200]}, "two integers"),
        ({"size": ["30", 40], "counts": [1200]}, "two integers"),
        ({"size": [12000, 12000], "counts": [144_000_000]}, "12000x12000 but the image is 40x30"),
    ],
)
def test_bad_rles_are_refused_before_decoding(rle, pattern):
    with pytest.raises(InputError, match=pattern):
        checked_rle(rle, 30, 40, "mask m.json[0]")


def test_good_rles_pass_unchanged():
    mask = np.zeros((30, 40), dtype=np.uint8, order="F")
    mask[3:9, 5:20] = 1
    encoded = coco_mask.encode(mask)
    for counts in (encoded["counts"].decode(), _run_counts(mask)):
        rle = {"size": [30, 40], "counts": counts}
        assert np.array_equal(coco_mask.decode(checked_rle(rle, 30, 40, "m")), mask)


# ---- refs pickles, images and masks -----------------------------------------------------------------------------


def test_a_refs_pickle_bomb_is_refused_within_a_second(tmp_path):
    nested: list = []
    for _ in range(40):  # 2**40 leaves once expanded, a few hundred bytes pickled
        nested = [nested, nested]
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"sentences": nested}], protocol=2))
    assert path.stat().st_size < 1000
    started = time.perf_counter()
    with pytest.raises(InputError, match="expands to more data than its"):
        load_refs_pickle(path)
    assert time.perf_counter() - started < 1.0


def test_a_cyclic_refs_pickle_is_refused(tmp_path):
    loop: list = []
    loop.append(loop)
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"sentences": loop}], protocol=2))
    with pytest.raises(InputError, match="nested more than"):
        load_refs_pickle(path)


def test_decompression_bombs_are_refused_by_their_header(tmp_path, monkeypatch):
    bomb = _png_header(tmp_path / "bomb.png", 30000, 30000)
    with pytest.raises(ImageError, match=f"more than {MAX_PIXELS} pixels; memory grows with the pixels"):
        load_image(bomb)
    with pytest.raises(ImageError, match=f"more than {MAX_PIXELS} pixels.*set GLOBALLOCAL_MAX_PIXELS to raise"):
        load_mask(bomb)
    between = _png_header(tmp_path / "between.png", 6000, 6000)  # Pillow would only warn here
    with pytest.raises(ImageError, match=f"6000x6000, more than {MAX_PIXELS} pixels"):
        load_mask(between)
    # Below the limit but not the image's size: refused before a single pixel is decoded.
    big = _png_header(tmp_path / "big.png", 5000, 4000)
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded"))
    with pytest.raises(ImageError, match="big.png is 5000x4000 but the image is 640x480"):
        load_mask(big, (480, 640))


# ---- through the command line ------------------------------------------------------------------------------------


@pytest.fixture
def tiny_args(tiny_config_paths, tiny_checkpoints):
    return ["--clip-model", tiny_config_paths["vit"], "--clip-weights", tiny_checkpoints["vit"]]


@pytest.mark.parametrize(
    ("masks", "pattern"),
    [
        ([{"size": [480, 640], "counts": [2**40]}], "overflows"),
        ([{"size": [480, 640], "counts": "Ωmega"}], "must be ASCII"),
        ([{"size": [480, 640], "counts": 307200}], "must be a list of integers or a string"),
        ([{"size": [480, 640], "counts": [100, 200]}], "cover 300 pixels"),
        ([{"size": "480x640", "counts": [307200]}], "two integers"),
        ([{"segmentation": [[10, 10]]}], "even count of at least 6"),
        ([{"segmentation": [[0, 0, 1e12, 0, 5, 5]]}], "more than one image size outside"),
        ([{"segmentation": [[0, 0, 100, 0, 5, 5]], "score": "high"}], "score that is not a number"),
    ],
)
def test_bad_mask_json_is_one_error_line(cli, example, tiny_args, tmp_path, masks, pattern):
    path = tmp_path / "masks.json"
    path.write_text(json.dumps(masks, ensure_ascii=False))
    out = tmp_path / "m.png"
    _assert_clean_error(cli("segment", example["image"], "the chair", "--masks", path, "-o", out, *tiny_args), pattern)
    assert not out.exists()


def test_a_bomb_image_is_one_error_line(cli, tiny_args, tmp_path):
    bomb = _png_header(tmp_path / "bomb.png", 30000, 30000)
    _assert_clean_error(cli("segment", bomb, "the chair", "-o", tmp_path / "m.png", *tiny_args), "more than")


def _mutate_instances(refer, change) -> None:
    path = refer.data_root / "refcoco" / "instances.json"
    instances = json.loads(path.read_text())
    change(instances)
    path.write_text(json.dumps(instances))


def _image(instances, image_id):
    return next(image for image in instances["images"] if image["id"] == image_id)


def _ann(instances, ann_id):
    return next(ann for ann in instances["annotations"] if ann["id"] == ann_id)


INSTANCE_DAMAGE = {
    "missing height": (lambda i: _image(i, 11).pop("height"), "image record 0 is malformed (no 'height')"),
    "text height": (lambda i: _image(i, 11).update(height="tall"), "image record 0 is malformed"),
    "images as a dict": (lambda i: i.update(images={"11": i["images"][0]}), "must be lists"),
    "missing segmentation": (lambda i: _ann(i, 1101).pop("segmentation"), "annotation record 0 is malformed"),
    "string polygon": (lambda i: _ann(i, 1101).update(segmentation=["2 3 20 3 20 25"]), "annotation 1101"),
    "huge polygon": (lambda i: _ann(i, 1101).update(segmentation=[[0, 0, 1e12, 0, 5, 5]]), "annotation 1101"),
    "huge rle": (lambda i: _ann(i, 1202).update(segmentation={"size": [12000, 12000], "counts": [144_000_000]}),
                 "RLE is 12000x12000 but the image is 32x24"),
    "short rle": (lambda i: _ann(i, 1202).update(segmentation={"size": [24, 32], "counts": [10, 20]}),
                  "cover 30 pixels but a 32x24 mask has 768"),
}


@pytest.mark.parametrize("damage", sorted(INSTANCE_DAMAGE))
def test_bad_instances_are_one_error_line(cli, tmp_path, tiny_config_paths, tiny_checkpoints, damage):
    refer = build_refer(tmp_path / "dataset")
    change, pattern = INSTANCE_DAMAGE[damage]
    _mutate_instances(refer, change)
    result = cli(
        "evaluate", "--dataset", "refcoco", "--split", "val", "--data-root", refer.data_root,
        "--images", refer.images_dir, "--proposals", "gt", "--out", tmp_path / "run",
        "--clip-model", tiny_config_paths["vit"], "--clip-weights", tiny_checkpoints["vit"],
    )
    _assert_clean_error(result, pattern)
    assert IMAGES[12][:2] == (24, 32)  # the size the messages above name
