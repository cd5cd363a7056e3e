"""gRefCOCO's and ReasonSeg's metrics on cases computed by hand, every branch of the official code.

GRES (ReLA's refer_evaluation.py after its August 2023 fix), with an empty answer as "no target predicted":
no-target answered empty (TP: +1 to the IoU sum, nothing to I or U), no-target answered with pixels (FN: +0,
its area to U), target answered empty (FP: I = 0, U = |G|), target answered (TN: I / U), and U = 0. LISA's
validate: ignore pixels in neither I nor U, I / (U + 1e-5), +1 when U = 0, cIoU with 1e-10.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from globallocal.runs.benchmark_metrics import (
    GRES,
    LISA,
    REFERRING,
    GresAccumulator,
    ReasonSegAccumulator,
    family_of,
    metric_values,
)
from globallocal.runs.metrics import mask_counts


def _record(intersection, union, pred_area, no_target=None, image_id=1):
    record = {"image_id": image_id, "I": intersection, "U": union, "pred_area": pred_area, "no_proposals": False}
    if no_target is not None:
        record["no_target"] = no_target
    return record


def test_mask_counts_leave_ignored_pixels_out_of_both():
    gt = np.zeros((4, 5), dtype=bool)
    gt[0, :3] = True  # 3 target pixels
    ignore = np.zeros_like(gt)
    ignore[1:, :] = True  # 10 pixels LISA leaves out
    pred = np.zeros_like(gt)
    pred[0, 1:] = True  # 4 pixels: 2 on the target, 2 beside it
    pred[1:, 0] = True  # 3 pixels on the ignored region
    assert mask_counts(pred, gt, ignore) == {"I": 2, "U": 5, "pred_area": 7, "gt_area": 3}
    assert mask_counts(pred, gt) == {"I": 2, "U": 8, "pred_area": 7, "gt_area": 3}
    assert mask_counts(None, gt) == {"I": 0, "U": 3, "pred_area": 0, "gt_area": 3}
    assert mask_counts(np.zeros_like(gt), np.zeros_like(gt)) == {"I": 0, "U": 0, "pred_area": 0, "gt_area": 0}


def _gres(*records):
    tally = GresAccumulator()
    for number, record in enumerate(records):
        tally.add_record(record, number)
    return tally.summary()


def test_gres_every_branch_by_hand():
    summary = _gres(
        _record(0, 0, 0, no_target=True),    # TP: IoU 1, I and U + 0
        _record(0, 5, 5, no_target=True),    # FN: IoU 0, U + 5
        _record(0, 10, 0, no_target=False),  # FP: I = 0, U = |G| = 10, IoU 0
        _record(8, 10, 9, no_target=False),  # TN: IoU 0.8
        _record(0, 0, 0, no_target=False),   # a target whose U is 0: IoU 0 (FP, as an empty answer)
        _record(19, 20, 20, no_target=False),  # TN: IoU 0.95
    )
    assert summary["outcomes"] == {"TP": 1, "FN": 1, "FP": 2, "TN": 2}
    assert summary["gIoU"] == pytest.approx(100 * (1 + 0 + 0 + 0.8 + 0 + 0.95) / 6)
    assert summary["cIoU"] == pytest.approx(100 * (8 + 19) / (5 + 10 + 10 + 20))
    assert summary["N-acc"] == pytest.approx(100 * 1 / 2)
    assert summary["T-acc"] == pytest.approx(100 * 2 / 4)
    # Over the four target samples only: IoUs 0, 0.8, 0, 0.95.
    assert summary["precision"] == pytest.approx({"0.7": 50.0, "0.8": 50.0, "0.9": 25.0})
    assert summary["sentences"] == 6 and summary["no_target_sentences"] == 2
    assert (summary["sum_intersection"], summary["sum_union"]) == (27, 45)


def test_gres_precision_at_the_threshold_itself():
    summary = _gres(_record(7, 10, 7, no_target=False), _record(4, 5, 5, no_target=False))
    assert summary["precision"] == {"0.7": 100.0, "0.8": 50.0, "0.9": 0.0}  # 0.7 >= 0.7 and 0.8 >= 0.8 count


def test_gres_undefined_metrics_are_null_never_nan():
    only_targets = _gres(_record(8, 10, 9, no_target=False))
    assert only_targets["N-acc"] is None and only_targets["T-acc"] == 100.0
    only_empty = _gres(_record(0, 0, 0, no_target=True))
    assert only_empty["T-acc"] is None and only_empty["precision"] == {"0.7": None, "0.8": None, "0.9": None}
    assert only_empty["cIoU"] is None and only_empty["gIoU"] == 100.0 and only_empty["N-acc"] == 100.0
    nothing = GresAccumulator().summary()
    assert nothing["gIoU"] is None
    text = json.dumps([only_targets, only_empty, nothing], allow_nan=False)  # raises on a NaN
    assert "null" in text and "NaN" not in text


def test_reasonseg_by_hand():
    tally = ReasonSegAccumulator()
    for number, record in enumerate([_record(8, 10, 9), _record(0, 0, 0), _record(0, 5, 5), _record(3, 3, 3)]):
        tally.add_record(record, number)
    summary = tally.summary()
    per_image = [8 / (10 + 1e-5), 0 / (0 + 1e-5) + 1.0, 0.0, 3 / (3 + 1e-5)]
    assert summary["gIoU"] == pytest.approx(100 * math.fsum(per_image) / 4, rel=1e-12)
    assert summary["cIoU"] == pytest.approx(100 * 11 / (18 + 1e-10), rel=1e-12)
    empty = ReasonSegAccumulator()
    empty.add_record(_record(0, 0, 0), 0)
    assert empty.summary()["gIoU"] == pytest.approx(100 * 1.0) and empty.summary()["cIoU"] == 0.0
    assert ReasonSegAccumulator().summary()["gIoU"] is None


def test_each_dataset_has_its_own_family():
    assert family_of("grefcoco") is GRES and family_of("reasonseg") is LISA
    assert all(family_of(name) is REFERRING for name in ("refcoco", "refcoco+", "refcocog", "phrasecut"))
    summary = _gres(_record(8, 10, 9, no_target=False))
    assert list(metric_values(GRES, summary)) == ["gIoU", "cIoU", "N-acc", "T-acc", "Pr@0.7", "Pr@0.8", "Pr@0.9"]
    assert GRES.headline == LISA.headline == ("gIoU", "cIoU") and REFERRING.headline == ("oIoU", "mIoU")


def test_the_docs_say_what_each_method_can_answer():
    """docs/evaluation.md's table of answer kinds holds every registered method's, as its registry entry says."""
    from pathlib import Path

    from globallocal.methods import available_methods, get_method

    page = (Path(__file__).resolve().parents[1] / "docs" / "evaluation.md").read_text()
    table = page[page.index("| method | setting | an answer holds |"):].split("\n\n")[0]
    rows = [[cell.strip().strip("`") for cell in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    for name in available_methods():
        spec = get_method(name)
        kinds = {spec.answers} if isinstance(spec.answers, str) else set(spec.answers.values())
        if spec.uses_proposals:  # among phrase-dependent candidates too
            kinds |= {spec.answer_kind(phrase_dependent=True)}
        assert {kind for method, _, kind in rows if method == name} == kinds, (
            f"method {name}: its MethodSpec's answers ({kinds}) and docs/evaluation.md's table must agree: set "
            "answers= in its registry entry and give it a row in the table")
    assert get_method("sam3").answer_kind({"answer": "union"}) == "none, one or several"
    assert get_method("global-local").answer_kind() == "exactly one"
    assert get_method("hybridgl").answer_kind(phrase_dependent=True) == "none or one"
