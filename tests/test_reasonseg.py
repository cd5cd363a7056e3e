"""The ReasonSeg loader: samples as released, and ground truth pixel for pixel as OpenCV draws LISA's rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
from reasonseg_fixtures import CP1252, PHOTOS, SAMPLES, build_reasonseg, lisa_ground_truth

from globallocal.data.datasets import check_dataset, open_dataset
from globallocal.data.reasonseg import ReasonSegDataset, label_map, sample_id
from globallocal.errors import InputError


@pytest.fixture
def reasonseg(tmp_path):
    return build_reasonseg(tmp_path)


def _samples(dataset):
    return [sample for group in dataset.images() for sample in group.refs]


@pytest.mark.parametrize("split", ["val", "test"])
def test_samples_are_read_as_released(reasonseg, split):
    dataset = ReasonSegDataset(reasonseg.root, split)
    names = sorted(name for name, (where, *_) in PHOTOS.items() if where == split)
    samples = _samples(dataset)
    assert [sample.name for sample in samples] == names
    for sample in samples:
        raw = SAMPLES[sample.name]
        assert sample.query == raw["text"][0].strip()  # text[0], as LISA's evaluation takes it
        assert sample.subset == ("long" if raw["is_sentence"] else "short")
        assert [shape.label for shape in sample.shapes] == [s["label"] for s in raw["shapes"] if s["label"] != "flag"]
        assert sample.image_id == sample_id(sample.name) and sample.sentences[0].raw == sample.query
    assert dataset.missing_images() == []


@pytest.mark.parametrize("name", list(PHOTOS))
def test_ground_truth_is_lisas_pixel_for_pixel(reasonseg, name):
    split = PHOTOS[name][0]
    dataset = ReasonSegDataset(reasonseg.root, split)
    sample = next(sample for sample in _samples(dataset) if sample.name == name)
    expected = lisa_ground_truth(reasonseg.json_path(name), reasonseg.photo_path(name))
    np.testing.assert_array_equal(dataset.gt_mask(sample), expected == 1)
    np.testing.assert_array_equal(dataset.ignore_mask(sample), expected == 255)
    group = next(group for group in dataset.images() if group.refs[0] is sample)
    assert dataset.load_image(group.image).size == expected.shape[::-1]


def test_the_rule_by_hand(reasonseg):
    dataset = ReasonSegDataset(reasonseg.root, "val")
    by_name = {sample.name: sample for sample in _samples(dataset)}
    bravo = label_map(by_name["bravo"].shapes, 20, 30)
    # Outline and fill of the 4-corner square cover x and y in [3, 12] inclusive; the ignore square of the same
    # area overlaps it on [8, 12]; which of the two wins there is numpy.argsort's order of the tie.
    first, second = (shape.draw(canvas := np.zeros((20, 30), np.uint8), 1) or canvas.sum()
                     for shape in by_name["bravo"].shapes[:2])
    assert first == second == 100
    order = list(np.argsort([first, second, 1])[::-1])
    assert bravo[10, 10] == (255 if order.index(1) > order.index(0) else 1)
    assert (bravo[3:8, 3:8] == 1).all() and (bravo[13:18, 13:18] == 255).all()
    assert bravo[2, 20] == 1 and bravo[16, 27] == 1 and bravo[9, 23] == 1  # the two-point shape is a line
    alpha = label_map(by_name["alpha"].shapes, 24, 32)
    assert alpha[18, 0] == 1 and alpha[23, 6] == 1  # -0.7 truncated to 0
    assert alpha[12, 15] == 255 and alpha[5, 5] == 1 and alpha[21, 29] == 255 and alpha[0, 0] == 0
    charlie = by_name["charlie"]
    assert dataset.gt_mask(charlie).shape == (18, 22)  # the photo turned by its EXIF orientation
    assert charlie.query == "something to sit on"
    delta = by_name["delta"]
    assert not dataset.gt_mask(delta).any() and not dataset.ignore_mask(delta).any()


def test_a_cp1252_file_is_read_as_lisa_reads_it(reasonseg):
    assert not reasonseg.json_path(CP1252).read_bytes().decode("latin-1").isascii()
    with pytest.raises(UnicodeDecodeError):
        reasonseg.json_path(CP1252).read_bytes().decode("utf-8")
    [sample] = _samples(ReasonSegDataset(reasonseg.root, "test"))
    assert sample.query == "the café sign"


@pytest.mark.parametrize(("subset", "names"), [("all", ["alpha", "bravo", "charlie", "delta"]),
                                                ("long", ["alpha", "charlie"]), ("short", ["bravo", "delta"])])
def test_subsets_select_by_is_sentence(reasonseg, subset, names):
    dataset = open_dataset("reasonseg", "val", reasonseg.root, subset=subset)
    assert [sample.name for sample in _samples(dataset)] == names
    assert dataset.report_notes() == {"subset": subset, "samples_in_split": 4, "samples": len(names)}
    sample = _samples(dataset)[0]
    assert dataset.sentence_fields(sample, sample.sentences[0]) == {"name": sample.name, "subsets": [sample.subset]}
    assert dataset.mask_name(sample, sample.sentences[0]) == f"{sample.name}.png"


def test_options_are_checked_without_reading_files(reasonseg):
    assert check_dataset("reasonseg", "test", subset="long") is None
    for args, message in ((("train",), "invalid reasonseg split"), (("val", None, "unseen"), "unknown --subset"),
                          (("val", "unc"), "--split-by applies to refcoco")):
        with pytest.raises(InputError, match=message):
            check_dataset("reasonseg", *args)
    with pytest.raises(InputError, match="--images does not apply to reasonseg"):
        open_dataset("reasonseg", "val", reasonseg.root, images_dir=reasonseg.root)


def test_a_missing_photo_is_counted_not_fatal(reasonseg):
    reasonseg.photo_path("bravo").unlink()
    dataset = ReasonSegDataset(reasonseg.root, "val")
    assert dataset.missing_images() == [reasonseg.photo_path("bravo")] and dataset.skips_missing_photos


def _refused(reasonseg, *parts, split="val"):
    with pytest.raises(InputError) as refused:
        ReasonSegDataset(reasonseg.root, split)
    message = str(refused.value)
    assert "\n" not in message and all(part in message for part in parts), message


def _with(name, **changes):
    return {**SAMPLES[name], **changes}


@pytest.mark.parametrize(
    ("sample", "parts"),
    [
        (_with("bravo", shapes=[{"label": "target", "points": []}]), ("shapes[0] (label 'target') has no points",)),
        (_with("bravo", shapes=[{"label": "target"}]), ("shapes[0] (label 'target') has no points",)),
        (_with("bravo", shapes=[{"label": "t", "points": [[1, 2, 3]]}]), ("shapes[0]", "[x, y] of two finite")),
        (_with("bravo", shapes=[{"label": "t", "points": [[1, 2], [900, 2]]}]), ("shapes[0]", "far outside")),
        (_with("bravo", shapes=[{"points": [[1, 2]]}]), ("shapes[0] must be an object with a string label",)),
        (_with("bravo", text="the cat"), ("text must be a list",)),
        (_with("bravo", text=[]), ("text must be a list",)),
        (_with("bravo", is_sentence="no"), ("is_sentence must be true or false",)),
        ([1, 2], ("does not hold an object",)),
    ],
)
def test_a_bad_file_is_one_line_naming_it(reasonseg, sample, parts):
    reasonseg.write("bravo", sample)
    _refused(reasonseg, "bravo.json", *parts)


def test_bad_bytes_and_layouts_are_one_line(reasonseg):
    reasonseg.json_path("bravo").write_text("[" * 100_000 + "]" * 100_000)
    _refused(reasonseg, "bravo.json", "nests containers")
    reasonseg.json_path("bravo").write_bytes(b'{"text": ["\x81"]}')  # 0x81 is neither UTF-8 nor cp1252
    _refused(reasonseg, "bravo.json", "neither UTF-8 nor cp1252")
    reasonseg.json_path("bravo").unlink()
    _refused(reasonseg, "bravo.jpg has no annotation bravo.json")
    for path in (reasonseg.root / "test").iterdir():
        path.unlink()
    _refused(reasonseg, "no ReasonSeg annotation", split="test")


def test_records_of_the_file_are_unchanged_by_reading(reasonseg):
    before = json.loads(reasonseg.json_path("alpha").read_text())
    ReasonSegDataset(reasonseg.root, "val")
    assert json.loads(reasonseg.json_path("alpha").read_text()) == before
