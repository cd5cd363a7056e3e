"""The gRefCOCO loader against the data the fixture wrote and each ref's ground truth drawn by hand."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from grefcoco_fixtures import EXPECTED, IMAGES, REFS, build_grefcoco, photo_name

from globallocal.data.datasets import check_dataset, open_dataset
from globallocal.data.grefcoco import GRefCocoDataset
from globallocal.errors import InputError

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture
def grefcoco(tmp_path):
    return build_grefcoco(tmp_path)


@pytest.mark.parametrize("split", ["val", "testA", "testB"])
def test_refs_sentences_and_photos_are_read_as_released(grefcoco, split):
    dataset = GRefCocoDataset(grefcoco.data_root, split, grefcoco.images_dir)
    expected = [plan for plan in REFS if plan[3] == split]
    refs = [ref for group in dataset.images() for ref in group.refs]
    assert [ref.ref_id for ref in refs] == [plan[0] for plan in sorted(expected, key=lambda plan: (plan[1], plan[0]))]
    for ref in refs:
        ref_id, image_id, ann_id, _, texts = next(plan for plan in REFS if plan[0] == ref.ref_id)
        assert ref.image_id == image_id
        assert ref.no_target == (ann_id == [-1])
        assert ref.ann_ids == (() if ann_id == [-1] else tuple(ann_id if isinstance(ann_id, list) else [ann_id]))
        assert [sentence.raw for sentence in ref.sentences] == texts
    for group in dataset.images():
        # Found by image_id: instances.json names photo 22 "..._1.jpg", which does not exist.
        assert dataset.image_path(group.image) == grefcoco.images_dir / photo_name(group.image.image_id)
        assert (group.image.height, group.image.width) == IMAGES[group.image.image_id]
        assert dataset.load_image(group.image).size == IMAGES[group.image.image_id][::-1]
    assert dataset.missing_images() == []


def test_ground_truth_is_the_union_of_the_kept_annotations(grefcoco):
    dataset = GRefCocoDataset(grefcoco.data_root, "val", grefcoco.images_dir)
    for group in dataset.images():
        for ref in group.refs:
            gt = dataset.gt_mask(ref)
            assert gt.dtype == bool and gt.shape == IMAGES[ref.image_id]
            np.testing.assert_array_equal(gt, EXPECTED[ref.ref_id], err_msg=f"ref {ref.ref_id}")
            assert dataset.ignore_mask(ref) is None
    # The oracle: every kept annotation of the photo, crowd left out.
    masks = dataset.instance_masks(22)
    h, w = IMAGES[22]
    assert len(masks) == 2 and not masks[:, :4].any()  # the crowd strip is in none
    np.testing.assert_array_equal(masks.any(axis=0), EXPECTED[4])


def test_a_refs_pickle_is_read_before_the_json(grefcoco):
    only_first = [dict(ref, sentences=ref["sentences"][:1]) for ref in grefcoco.refs]
    (grefcoco.refs_json.with_suffix(".p")).write_bytes(pickle.dumps(only_first, protocol=2))
    dataset = GRefCocoDataset(grefcoco.data_root, "val", grefcoco.images_dir)
    assert all(len(ref.sentences) == 1 for group in dataset.images() for ref in group.refs)


def test_the_dataset_is_opened_by_name(grefcoco):
    assert check_dataset("grefcoco", "testA") == "unc"
    dataset = open_dataset("grefcoco", "val", grefcoco.data_root, images_dir=grefcoco.images_dir)
    assert isinstance(dataset, GRefCocoDataset) and dataset.skips_missing_photos
    assert dataset.report_notes() == {"refs": 5, "no_target_refs": 2, "multi_target_refs": 2}
    group = dataset.images()[0]
    ref = group.refs[1]
    assert dataset.sentence_fields(ref, ref.sentences[0]) == {"ref_id": 2, "sent_id": 102, "no_target": True}
    assert dataset.mask_name(ref, ref.sentences[0]) == "2_102.png"
    for split in ("train", "test"):
        with pytest.raises(InputError, match="invalid grefcoco split"):
            check_dataset("grefcoco", split)


def _refused(grefcoco, *parts):
    with pytest.raises(InputError) as refused:
        GRefCocoDataset(grefcoco.data_root, "val", grefcoco.images_dir)
    message = str(refused.value)
    assert "\n" not in message and all(part in message for part in parts), message
    return message


def test_a_ref_naming_no_annotation_is_one_line(grefcoco):
    grefcoco.refs[0]["ann_id"] = [2101, 9999]
    grefcoco.write_refs(grefcoco.refs)
    _refused(grefcoco, "grefs(unc).json", "ref 1 names annotation 9999", "instances.json")


def test_a_target_left_without_any_polygon_is_one_line(grefcoco):
    # A polygon of one point is dropped, as the official loader drops it; a target with nothing else has no mask.
    grefcoco.instances["annotations"][0]["segmentation"] = [[4.0, 5.0]]
    grefcoco.refs[0]["ann_id"] = [2101]
    grefcoco.write_instances(grefcoco.instances)
    grefcoco.write_refs(grefcoco.refs)
    _refused(grefcoco, "grefs(unc).json", "ref 1", "fewer than 3 points")


@pytest.mark.parametrize(
    ("change", "parts"),
    [
        (lambda refs: refs[0].update(ann_id=[-1, 2101]), ("ref 1", "ann_id must be", "[-1] for no target")),
        (lambda refs: refs[0].update(ann_id=[]), ("ref 1", "ann_id must be")),
        (lambda refs: refs[1]["sentences"].append(dict(refs[0]["sentences"][0])), ("ref 2", "sent_id 100")),
        (lambda refs: refs[0].update(sentences=[{"sent_id": 1}]), ("ref 1", "sentence 0")),
        (lambda refs: refs.append(dict(refs[0])), ("ref 1 appears twice",)),
        (lambda refs: refs.append("nonsense"), ("entry 8 is not an object",)),
    ],
)
def test_a_malformed_ref_is_one_line_naming_it(grefcoco, change, parts):
    change(grefcoco.refs)
    grefcoco.write_refs(grefcoco.refs)
    _refused(grefcoco, "grefs(unc).json", *parts)


def test_a_deeply_nested_file_is_one_line(grefcoco):
    grefcoco.refs_json.write_text(DEEP)
    _refused(grefcoco, "grefs(unc).json", "nests containers")
    grefcoco.write_refs(grefcoco.refs)
    (grefcoco.data_root / "grefcoco" / "instances.json").write_text(json.dumps({"images": [], "annotations": []})[:-1]
                                                                       + ', "x": ' + DEEP + "}")
    _refused(grefcoco, "instances.json", "nests containers")


def test_a_bad_polygon_is_named_when_drawn(grefcoco):
    grefcoco.instances["annotations"][0]["segmentation"] = [[1.0, 2.0, 3.0, "x", 5.0, 6.0]]
    grefcoco.write_instances(grefcoco.instances)
    dataset = GRefCocoDataset(grefcoco.data_root, "val", grefcoco.images_dir)
    with pytest.raises(InputError, match=r"annotation 2101 \(image 21\) in .*instances.json: polygon part 0"):
        dataset.gt_mask(dataset.images()[0].refs[0])
