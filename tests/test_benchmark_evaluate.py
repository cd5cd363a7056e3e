"""The evaluation loop on gRefCOCO and ReasonSeg: set answers (several objects, none) reach the official metrics
unchanged, ignore pixels stay out, masks are kept (RLE or PNG), missing photos are counted, runs resume.

The metrics are recomputed here from the ground truth drawn by hand (gRefCOCO) or by OpenCV as LISA does
(ReasonSeg) and the stand-in's answers, with the official formulas written out, without the loop under test.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from grefcoco_fixtures import EXPECTED, IMAGES, REFS, build_grefcoco
from PIL import Image
from pycocotools import mask as coco_mask
from reasonseg_fixtures import PHOTOS, build_reasonseg, lisa_ground_truth
from refer_fixtures import StandInSegmenter, rect

from globallocal.data.grefcoco import GRefCocoDataset
from globallocal.data.images import load_mask
from globallocal.runs.evaluate import RECORDS_FILE, REPORT_MD, EvaluationConfig, EvaluationStopped, run_evaluation
from globallocal.segmenter import SegmentResult

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools


class AnswerTable:
    """A method that answers each phrase with the mask a table gives (a set of objects: several, one or none)."""

    method = SimpleNamespace(uses_proposals=False)

    def __init__(self, answers):
        self.answers = answers

    def set_image(self, image: Image.Image, proposals=None) -> None:
        self.size = (image.height, image.width)

    def predict(self, phrase: str) -> SegmentResult:
        mask = torch.as_tensor(self.answers(phrase, self.size))
        return SegmentResult(phrase=phrase, expression=phrase, noun_phrase=phrase, index=None, mask=mask,
                             scores=torch.zeros(0), truncated=False, has_noun=True)


def _grefcoco_answer(phrase, size):
    """Every branch: the exact set, a part of it, empty for no target (TP) and for a target (FP), pixels for no
    target (FN), the set plus a crowd."""
    h, w = size
    answers = {
        "the two boxes on the left": lambda: EXPECTED[1],
        "both things": lambda: rect(h, w, 2, 2, 10, 12),
        "everything that is not a crowd": lambda: EXPECTED[4] | rect(h, w, 0, 0, 26, 4),
        "a giraffe": lambda: rect(h, w, 0, 0, 5, 5),
    }  # the dog under the table (no target), the lower box (a target), the red car (no target): nothing
    return answers[phrase]() if phrase in answers else np.zeros(size, dtype=bool)


def _records(out_dir):
    lines = [json.loads(line) for line in (out_dir / RECORDS_FILE).read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "seconds"} for line in lines]


def _sentences(out_dir):
    return [line for line in _records(out_dir) if "image_done" not in line]


def _grefcoco_config(fixture, out_dir, **overrides):
    values = {"settings": {"method": "sam3", "answer": "union"}, **overrides}
    return EvaluationConfig(dataset="grefcoco", split="val", data_root=fixture.data_root,
                            images_dir=fixture.images_dir, out_dir=out_dir, **values)


def _gres_by_hand(samples):
    """GRES's evaluate() over (gt, answer, no_target), written out."""
    iou_sum, total_i, total_u, tp, fn, fp, tn, hits, targets = 0.0, 0, 0, 0, 0, 0, 0, [0, 0, 0], 0
    for gt, answer, no_target in samples:
        i, u = int((gt & answer).sum()), int((gt | answer).sum())
        if no_target:
            if not answer.any():
                tp, iou_sum = tp + 1, iou_sum + 1
            else:
                fn, total_u = fn + 1, total_u + u
            continue
        if not answer.any():
            fp, i = fp + 1, 0
        else:
            tn += 1
        iou = i / u if u else 0.0
        iou_sum, total_i, total_u, targets = iou_sum + iou, total_i + i, total_u + u, targets + 1
        hits = [count + (iou >= t) for count, t in zip(hits, (0.7, 0.8, 0.9))]
    return {"gIoU": 100 * iou_sum / len(samples), "cIoU": 100 * total_i / total_u,
            "N-acc": 100 * tp / (tp + fn), "T-acc": 100 * tn / (tn + fp),
            "precision": {t: 100 * count / targets for t, count in zip(("0.7", "0.8", "0.9"), hits)}}


def test_grefcoco_set_answers_reach_the_official_metrics(tmp_path):
    fixture = build_grefcoco(tmp_path / "data")
    report = run_evaluation(_grefcoco_config(fixture, tmp_path / "run", save_masks="rle"), AnswerTable(
        _grefcoco_answer), None, progress=False)
    samples = [(EXPECTED[ref_id], _grefcoco_answer(text, IMAGES[image_id]), ann_id == [-1])
               for ref_id, image_id, ann_id, split, texts in REFS if split == "val" for text in texts]
    expected = _gres_by_hand(samples)
    metrics = report["metrics"]
    for key in ("gIoU", "cIoU", "N-acc", "T-acc"):
        assert metrics[key] == pytest.approx(expected[key], rel=1e-12), key
    assert metrics["precision"] == pytest.approx(expected["precision"])
    assert metrics["outcomes"] == {"TP": 2, "FN": 1, "FP": 1, "TN": 3}
    assert report["answers"] == "none, one or several"  # sam3 union, from its registry entry
    assert report["missing_photos"] == {"images": 0, "sentences": 0, "first": None}
    for record in _sentences(tmp_path / "run"):
        answer = _grefcoco_answer(record["phrase"], IMAGES[record["image_id"]])
        kept = coco_mask.decode({**record["mask"], "counts": record["mask"]["counts"].encode()}).astype(bool)
        np.testing.assert_array_equal(kept, answer)  # --save-masks rle: the answer as given
        assert record["pred_area"] == answer.sum() and record["no_target"] == (record["ref_id"] in (2, 5))
    markdown = (tmp_path / "run" / REPORT_MD).read_text()
    assert "| answer | gIoU | cIoU | N-acc | T-acc | Pr@0.7 | Pr@0.8 | Pr@0.9 |" in markdown
    assert "TP: 2" in markdown and "answers with none, one or several object(s)" in markdown


def test_a_one_proposal_method_is_scored_as_a_one_element_set(tmp_path):
    """The oracle's instances, one chosen per sentence: never empty, so every no-target sentence is a FN and N-acc
    is 0, reported as such."""
    fixture = build_grefcoco(tmp_path / "data")
    report = run_evaluation(_grefcoco_config(fixture, tmp_path / "run", settings={"method": "global-local"}),
                            StandInSegmenter(), "gt", progress=False)
    records = _sentences(tmp_path / "run")
    assert all(record["pred_area"] > 0 for record in records)
    assert report["metrics"]["N-acc"] == 0.0 and report["metrics"]["outcomes"]["TP"] == 0
    assert report["answers"] == "exactly one"


def test_a_missing_photo_is_counted_then_evaluated_once_there(tmp_path):
    fixture = build_grefcoco(tmp_path / "data")
    photo = fixture.images_dir / "COCO_train2014_000000000022.jpg"
    kept = photo.read_bytes()
    photo.unlink()
    config = _grefcoco_config(fixture, tmp_path / "run")
    report = run_evaluation(config, AnswerTable(_grefcoco_answer), None, progress=False)
    assert report["missing_photos"] == {"images": 1, "sentences": 3, "first": str(photo)}
    assert report["metrics"]["sentences"] == 4 and report["metrics"]["images"] == 1
    assert "photos missing, left out of the metrics: 1 (3 sentences)" in (tmp_path / "run" / REPORT_MD).read_text()
    photo.write_bytes(kept)
    whole = run_evaluation(config, AnswerTable(_grefcoco_answer), None, progress=False)
    assert whole["missing_photos"]["images"] == 0 and whole["metrics"]["sentences"] == 7


def test_a_killed_run_resumes_to_identical_records_and_pngs(tmp_path):
    fixture = build_grefcoco(tmp_path / "data")
    run_evaluation(_grefcoco_config(fixture, tmp_path / "whole", save_masks="png"), AnswerTable(_grefcoco_answer),
                   None, progress=False)
    config = _grefcoco_config(fixture, tmp_path / "resumed", save_masks="png")
    with pytest.raises(EvaluationStopped):
        run_evaluation(config, AnswerTable(_grefcoco_answer), None, progress=False, stop_after_images=1)
    assert 0 < len(_sentences(tmp_path / "resumed")) < 7
    run_evaluation(config, AnswerTable(_grefcoco_answer), None, progress=False)
    assert _records(tmp_path / "resumed") == _records(tmp_path / "whole")
    for record in _sentences(tmp_path / "whole"):
        name = f"{record['ref_id']}_{record['sent_id']}.png"
        np.testing.assert_array_equal(load_mask(tmp_path / "resumed" / "masks" / name),
                                      _grefcoco_answer(record["phrase"], IMAGES[record["image_id"]]))


def _reasonseg_answer(phrase, size):
    """A box over the middle of the photo: on target, ignored and background pixels alike; nothing for one."""
    h, w = size
    return np.zeros(size, dtype=bool) if phrase == "nothing at all" else rect(h, w, w // 4, h // 4, w - 2, h - 2)


def test_reasonseg_ignore_pixels_stay_out_and_lisas_metrics_result(tmp_path):
    fixture = build_reasonseg(tmp_path / "data")
    config = EvaluationConfig(dataset="reasonseg", split="val", data_root=fixture.root, images_dir=None,
                              out_dir=tmp_path / "run", settings={"method": "tcl"})
    report = run_evaluation(config, AnswerTable(_reasonseg_answer), None, progress=False)
    records = {record["name"]: record for record in _sentences(tmp_path / "run")}
    assert sorted(records) == sorted(name for name, (split, *_) in PHOTOS.items() if split == "val")
    per_image, total_i, total_u = {}, 0, 0
    for name, record in records.items():
        labels = lisa_ground_truth(fixture.json_path(name), fixture.photo_path(name))
        answer = _reasonseg_answer(record["phrase"], labels.shape)
        answer_counted = answer & (labels != 255)  # LISA: output[target == 255] = 255
        i, u = int((answer_counted & (labels == 1)).sum()), int((answer_counted | (labels == 1)).sum())
        assert (record["I"], record["U"], record["pred_area"]) == (i, u, answer.sum()), name
        per_image[name] = i / (u + 1e-5) + (1.0 if u == 0 else 0.0)
        total_i, total_u = total_i + i, total_u + u
    assert records["alpha"]["pred_area"] > records["alpha"]["U"] - records["alpha"]["gt_area"]  # some were ignored
    assert records["delta"]["U"] == 0  # no target, nothing answered: LISA's +1
    assert report["metrics"]["gIoU"] == pytest.approx(100 * math.fsum(per_image.values()) / 4, rel=1e-12)
    assert report["metrics"]["cIoU"] == pytest.approx(100 * total_i / (total_u + 1e-10), rel=1e-12)
    long = [per_image[name] for name in ("alpha", "charlie")]
    assert report["subsets"]["long"]["gIoU"] == pytest.approx(100 * sum(long) / 2, rel=1e-12)
    assert list(report["subsets"]) == ["short", "long"] and report["answers"] == "none, one or several"
    assert report["selection"] == {"subset": "all", "samples_in_split": 4, "samples": 4}


def test_a_reasonseg_sample_without_a_photo_is_counted(tmp_path):
    fixture = build_reasonseg(tmp_path / "data")
    fixture.photo_path("bravo").unlink()
    config = EvaluationConfig(dataset="reasonseg", split="val", data_root=fixture.root, images_dir=None,
                              out_dir=tmp_path / "run", subset="short")
    report = run_evaluation(config, AnswerTable(_reasonseg_answer), None, progress=False)
    assert report["missing_photos"] == {"images": 1, "sentences": 1, "first": str(fixture.photo_path("bravo"))}
    assert [record["name"] for record in _sentences(tmp_path / "run")] == ["delta"]


def test_grefcoco_ground_truth_in_records_is_the_loaders(tmp_path):
    fixture = build_grefcoco(tmp_path / "data")
    run_evaluation(_grefcoco_config(fixture, tmp_path / "run"), AnswerTable(_grefcoco_answer), None, progress=False)
    dataset = GRefCocoDataset(fixture.data_root, "val", fixture.images_dir)
    gts = {ref.ref_id: dataset.gt_mask(ref) for group in dataset.images() for ref in group.refs}
    for record in _sentences(tmp_path / "run"):
        assert record["gt_area"] == gts[record["ref_id"]].sum() == EXPECTED[record["ref_id"]].sum()


def test_a_grefcoco_run_is_not_swept_with_refcocos_metrics(tmp_path):
    from globallocal.errors import InputError
    from globallocal.runs.sweep import run_sweep

    fixture = build_grefcoco(tmp_path / "data")
    run_evaluation(_grefcoco_config(fixture, tmp_path / "run"), AnswerTable(_grefcoco_answer), None, progress=False)
    with pytest.raises(InputError, match="is a grefcoco run: sweeps replay oIoU, mIoU and precision"):
        run_sweep(tmp_path / "run", [0.5])
