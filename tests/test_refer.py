"""The REFER loader against the data written by the fixture and pycocotools' own decoding."""

from __future__ import annotations

import os
import pickle
import pickletools
import shlex

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from refer_fixtures import IMAGES, OVERLAP_PARTS, build_refer, file_name, rect

from globallocal.data.images import load_image
from globallocal.data.refer import VALID_SPLITS, ReferDataset, instance_stack, load_refs_pickle, resolve_split
from globallocal.errors import ImageError, InputError
from globallocal.proposals import Proposals

# COCO.annToMask (the independent route) triggers pycocotools' NumPy 2 DeprecationWarning.
ANN_TO_MASK_WARNING = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture
def refer(tmp_path):
    return build_refer(tmp_path)


COMBOS = [
    (dataset, split_by, split) for (dataset, split_by), splits in VALID_SPLITS.items() for split in splits
]


@pytest.mark.parametrize(("dataset", "split_by", "split"), COMBOS)
def test_refs_and_images_match_the_written_data(refer, dataset, split_by, split):
    loaded = ReferDataset(refer.data_root, dataset, split, split_by, refer.images_dir)
    expected = refer.refs_of(dataset, split_by, split)
    expected.sort(key=lambda ref: (ref["image_id"], ref["ref_id"]))
    assert expected, "the fixture must put refs in every valid split"
    groups = loaded.images()
    image_ids = [group.image.image_id for group in groups]
    assert image_ids == sorted({ref["image_id"] for ref in expected})
    refs = [ref for group in groups for ref in group.refs]
    assert len(refs) == len(expected)
    for ref, want in zip(refs, expected, strict=True):
        assert ref.ref_id == want["ref_id"]
        assert ref.ann_id == want["ann_id"]
        assert ref.image_id == want["image_id"]
        assert ref.split == want["split"] == split
        assert ref.category_id == want["category_id"]
        assert [(s.sent_id, s.raw, s.sent) for s in ref.sentences] == [
            (s["sent_id"], s["raw"], s["sent"]) for s in want["sentences"]
        ]
        assert all(type(s.raw) is str for s in ref.sentences)
    for group in groups:
        height, width, _ = IMAGES[group.image.image_id]
        assert (group.image.height, group.image.width) == (height, width)
        assert group.image.file_name == file_name(group.image.image_id)
        assert loaded.image_path(group.image) == refer.images_dir / file_name(group.image.image_id)
        assert all(ref.image_id == group.image.image_id for ref in group.refs)


def _opcodes(path):
    return {op.name for op, _, _ in pickletools.genops(path.read_bytes())}


def test_fixture_refs_files_cover_the_string_styles(refer):
    # Guards the fixture: the three storage styles really are in the files.
    py2 = _opcodes(refer.data_root / "refcoco" / "refs(unc).p")
    assert {"SHORT_BINSTRING", "BINUNICODE"} <= py2 and "SHORT_BINBYTES" not in py2
    as_str = _opcodes(refer.data_root / "refcoco+" / "refs(unc).p")
    assert "BINUNICODE" in as_str and not as_str & {"SHORT_BINSTRING", "SHORT_BINBYTES"}
    as_bytes = _opcodes(refer.data_root / "refcocog" / "refs(umd).p")
    assert "SHORT_BINBYTES" in as_bytes and "BINUNICODE" not in as_bytes
    py2_utf8 = _opcodes(refer.data_root / "refcocog" / "refs(google).p")
    assert "SHORT_BINSTRING" in py2_utf8 and not py2_utf8 & {"BINUNICODE", "SHORT_BINBYTES"}


def test_non_ascii_sentences_survive_every_style(refer):
    py2 = ReferDataset(refer.data_root, "refcoco", "val", images_dir=refer.images_dir)
    raws = {s.raw for group in py2.images() for ref in group.refs for s in ref.sentences}
    assert "café table" in raws
    utf8_bytes = ReferDataset(refer.data_root, "refcocog", "test", images_dir=refer.images_dir)
    raws = {s.raw for group in utf8_bytes.images() for ref in group.refs for s in ref.sentences}
    assert "the box on the left, naïve" in raws
    # A Python 2 str holding UTF-8: latin1 decoding would give "dÃ©jÃ  vu box".
    py2_utf8 = ReferDataset(refer.data_root, "refcocog", "val", "google", refer.images_dir)
    sentences = [s for group in py2_utf8.images() for ref in group.refs for s in ref.sentences]
    assert "déjà vu box" in {s.raw for s in sentences} and "déjà vu box" in {s.sent for s in sentences}


@ANN_TO_MASK_WARNING
def test_ground_truth_matches_pycocotools_ann_to_mask(refer):
    # Independent route: COCO.annToMask merges the parts (a union). On
    # annotations without overlapping parts both rules must agree with it.
    coco = COCO(str(refer.data_root / "refcoco" / "instances.json"))
    kinds = set()
    for overlap in ("union", "paper"):
        loaded = ReferDataset(refer.data_root, "refcoco", "val", images_dir=refer.images_dir, overlap=overlap)
        for group in loaded.images():
            for ref in group.refs:
                segmentation = refer.annotation(ref.ann_id)["segmentation"]
                is_polygon = isinstance(segmentation, list)
                kinds.add("polygon" if is_polygon else type(segmentation["counts"]).__name__)
                mask = loaded.gt_mask(ref)
                assert mask.dtype == bool
                assert mask.shape == (group.image.height, group.image.width)
                expected = coco.annToMask(coco.anns[ref.ann_id]).astype(bool)
                assert expected.any()
                if overlap == "union" or ref.ann_id != 1102:
                    np.testing.assert_array_equal(mask, expected)
    assert kinds == {"polygon", "str", "list"}  # polygons, compressed and uncompressed RLE


def test_overlapping_parts_keep_pixels_covered_exactly_once(refer):
    height, width, _ = IMAGES[11]
    counts = sum(rect(height, width, *part).astype(int) for part in OVERLAP_PARTS)
    # By hand: |A| = 80, |B| = 80, |C| = 16, |AB| = 16, |AC| = 4, |BC| = 16, |ABC| = 4.
    # Once: 176 - 2 * 36 + 3 * 4 = 116; union: 176 - 36 + 4 = 144; three times: 4.
    assert (counts == 1).sum() == 116 and (counts >= 1).sum() == 144 and (counts == 3).sum() == 4

    def mask(overlap):
        loaded = ReferDataset(refer.data_root, "refcoco", "val", images_dir=refer.images_dir, overlap=overlap)
        (ref,) = [ref for group in loaded.images() for ref in group.refs if ref.ann_id == 1102]
        return loaded.gt_mask(ref)

    paper, union = mask("paper"), mask("union")
    np.testing.assert_array_equal(paper, counts == 1)
    np.testing.assert_array_equal(union, counts >= 1)
    assert paper.sum() == 116 and union.sum() == 144
    assert paper[3, 3] and union[3, 3]  # in A only
    assert not paper[7, 9] and union[7, 9]  # in A and B
    assert not paper[9, 11] and union[9, 11]  # in A, B and C: odd count, still dropped


@ANN_TO_MASK_WARNING
def test_instance_masks_are_the_image_annotations(refer):
    loaded = ReferDataset(refer.data_root, "refcoco", "val", images_dir=refer.images_dir)
    coco = COCO(str(refer.data_root / "refcoco" / "instances.json"))
    masks = loaded.instance_masks(11)
    # 1101 and 1102; the crowd region 1103 is left out, order is by annotation id.
    assert masks.shape == (2, 30, 40) and masks.dtype == bool
    np.testing.assert_array_equal(masks[0], coco.annToMask(coco.anns[1101]).astype(bool))
    refs = {ref.ann_id: ref for group in loaded.images() for ref in group.refs}
    np.testing.assert_array_equal(masks[1], loaded.gt_mask(refs[1102]))

    with_crowd = ReferDataset(
        refer.data_root, "refcoco", "val", images_dir=refer.images_dir, include_crowd=True
    )
    masks = with_crowd.instance_masks(11)
    assert masks.shape == (3, 30, 40)
    np.testing.assert_array_equal(masks[2], coco.annToMask(coco.anns[1103]).astype(bool))


def test_instances_stack_without_the_empty_ones_and_become_proposals_with_their_boxes():
    box = rect(6, 8, 2, 1, 5, 4)
    stack = instance_stack([np.zeros((6, 8), dtype=bool), box], 6, 8)
    assert stack.shape == (1, 6, 8) and stack.dtype == bool and np.array_equal(stack[0], box)
    proposals = Proposals.from_arrays(stack)
    # Columns 2..4 and rows 1..3: the projection box, centred on (3, 2), three pixels wide and high.
    assert proposals.boxes.tolist() == [[1.5, 0.5, 4.5, 3.5]] and proposals.scores.tolist() == [1.0]
    none = Proposals.from_arrays(instance_stack([np.zeros((6, 8), dtype=bool)], 6, 8))
    assert len(none) == 0 and none.image_size == (6, 8)


def test_hostile_pickle_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Hostile:
        def __reduce__(self):
            return os.system, (f"touch {shlex.quote(str(marker))}",)

    payload = pickle.dumps([{"ref_id": 1, "evil": Hostile()}], protocol=2)
    path = tmp_path / "refs(unc).p"
    path.write_bytes(payload)
    with pytest.raises(InputError, match=r"contains objects other than plain data; refusing to load it"):
        load_refs_pickle(path)
    assert not marker.exists()
    # The payload is real: an ordinary unpickler runs it.
    pickle.loads(payload)
    assert marker.exists()


def test_persistent_ids_are_refused(tmp_path):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(b"\x80\x02Pabc\n.")
    with pytest.raises(InputError, match="refusing to load it"):
        load_refs_pickle(path)


def test_broken_refs_files_are_clear_errors(tmp_path):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 1}], protocol=2)[:-5])
    with pytest.raises(InputError, match="not a readable pickle"):
        load_refs_pickle(path)
    path.write_bytes(pickle.dumps({"ref_id": 1}, protocol=2))
    with pytest.raises(InputError, match="list of refs"):
        load_refs_pickle(path)
    with pytest.raises(InputError, match="refs file not found"):
        load_refs_pickle(tmp_path / "absent.p")


def test_split_table():
    assert resolve_split("refcoco", "testA") == "unc"
    assert resolve_split("refcoco+", "testB") == "unc"
    assert resolve_split("refcocog", "test") == "umd"
    assert resolve_split("refcocog", "val", "google") == "google"
    for dataset, split, split_by in [
        ("refcocog", "testA", None),
        ("refcocog", "test", "google"),
        ("refcoco", "test", None),
        ("refcoco", "val", "google"),
        ("refclef", "val", None),
    ]:
        with pytest.raises(InputError) as error:
            resolve_split(dataset, split, split_by)
        message = str(error.value)
        assert "refcoco unc: val, testA, testB" in message and "refcocog google: val" in message


def test_missing_files_are_named(refer, tmp_path):
    (refer.data_root / "refcocog" / "refs(google).p").unlink()
    with pytest.raises(InputError, match=r"refs file not found: .*refcocog.refs\(google\)\.p"):
        ReferDataset(refer.data_root, "refcocog", "val", "google", refer.images_dir)
    (refer.data_root / "refcoco+" / "instances.json").unlink()
    with pytest.raises(InputError, match=r"instances file not found: .*refcoco\+.instances\.json"):
        ReferDataset(refer.data_root, "refcoco+", "val", images_dir=refer.images_dir)
    loaded = ReferDataset(refer.data_root, "refcoco", "val", images_dir=tmp_path / "elsewhere")
    image = loaded.images()[0].image
    expected = [tmp_path / "elsewhere" / group.image.file_name for group in loaded.images()]
    assert loaded.missing_images() == expected
    with pytest.raises(InputError, match=f"image 11 not found: .*{image.file_name}"):
        loaded.load_image(image)


def test_ref_naming_an_absent_annotation_is_refused(refer):
    refs = refer.refs[("refcoco+", "unc")]
    refs[0]["ann_id"] = 999999
    (refer.data_root / "refcoco+" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    with pytest.raises(InputError, match="annotation 999999"):
        ReferDataset(refer.data_root, "refcoco+", "val", images_dir=refer.images_dir)


@pytest.mark.parametrize(("key", "value"), [("ref_id", float("inf")), ("image_id", 10**30), ("ann_id", float("nan")),
                                            ("sent_id", -(2**70))])
def test_ids_that_are_not_64_bit_integers_are_refused_naming_the_ref(refer, key, value):
    refs = refer.refs[("refcoco", "unc")]
    target = refs[0]["sentences"][0] if key == "sent_id" else refs[0]
    target[key] = value
    (refer.data_root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    with pytest.raises(InputError) as refused:
        ReferDataset(refer.data_root, "refcoco", "val", images_dir=refer.images_dir)
    message = str(refused.value)
    assert "\n" not in message and "refs(unc).p" in message and f"{key} is {value!r}" in message, message


def test_images_load_in_the_stored_frame_ignoring_exif(refer):
    # COCO annotations are in the stored pixel frame; an EXIF rotation must
    # not be applied, here or by load_image downstream.
    path = refer.images_dir / file_name(11)
    pixels = np.asarray(Image.open(path).convert("RGB"))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(pixels).save(path, format="PNG", exif=exif)
    assert load_image(path).size == (30, 40)  # the EXIF tag is live

    loaded = ReferDataset(refer.data_root, "refcoco", "val", images_dir=refer.images_dir)
    image = loaded.load_image(loaded.images()[0].image)
    assert image.size == (40, 30) and image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), pixels)
    assert load_image(image).size == (40, 30)


def test_image_of_the_wrong_size_is_refused(refer):
    Image.new("RGB", (41, 30)).save(refer.images_dir / file_name(11))
    loaded = ReferDataset(refer.data_root, "refcoco", "val", images_dir=refer.images_dir)
    with pytest.raises(ImageError, match="41x30 but .* says 40x30"):
        loaded.load_image(loaded.images()[0].image)
