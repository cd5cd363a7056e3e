"""Metrics against hand-computed values."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from globallocal.runs.metrics import PRECISION_THRESHOLDS, MetricAccumulator, intersection_union, sentence_iou

# (I, U, no_proposals, ref_id, image_id); IoUs 0.75, 0 (U = 0), 0.5, 0 (no proposals), 0.9, 0.7.
SENTENCES = [
    (3, 4, False, 1, 10),
    (0, 0, False, 1, 10),
    (5, 10, False, 2, 10),
    (0, 6, True, 3, 20),
    (9, 10, False, 4, 30),
    (7, 10, False, 4, 30),
]


def _filled() -> MetricAccumulator:
    accumulator = MetricAccumulator()
    for intersection, union, no_proposals, ref_id, image_id in SENTENCES:
        accumulator.add(intersection, union, ref_id=ref_id, image_id=image_id, no_proposals=no_proposals)
    return accumulator


def test_hand_computed_summary():
    summary = _filled().summary()
    # oIoU = 100 * (3+0+5+0+9+7) / (4+0+10+6+10+10) = 100 * 24 / 40
    assert summary["oIoU"] == pytest.approx(60.0)
    # mIoU = 100 * (0.75 + 0 + 0.5 + 0 + 0.9 + 0.7) / 6
    assert summary["mIoU"] == pytest.approx(47.5)
    # IoU >= t, equality included (0.5, 0.7 and 0.9 sit exactly on a threshold);
    # the U = 0 sentence is IoU 0 and passes none.
    assert summary["precision"] == pytest.approx(
        {"0.5": 400 / 6, "0.6": 50.0, "0.7": 50.0, "0.8": 100 / 6, "0.9": 100 / 6}
    )
    assert summary["sentences"] == 6
    assert summary["refs"] == 4
    assert summary["images"] == 3
    assert summary["no_proposal_sentences"] == 1
    assert summary["no_proposal_refs"] == 1
    assert summary["no_proposal_images"] == 1
    assert (summary["sum_intersection"], summary["sum_union"]) == (24, 40)


def test_empty_accumulator_reports_zeros():
    summary = MetricAccumulator().summary()
    assert summary["oIoU"] == 0.0 and summary["mIoU"] == 0.0
    assert set(summary["precision"].values()) == {0.0}
    assert summary["sentences"] == summary["refs"] == summary["images"] == 0


def test_union_zero_counts_as_iou_zero():
    accumulator = MetricAccumulator()
    accumulator.add(0, 0)
    assert sentence_iou(0, 0) == 0.0
    summary = accumulator.summary()
    assert summary["mIoU"] == 0.0 and summary["oIoU"] == 0.0
    assert set(summary["precision"].values()) == {0.0}


def test_mean_does_not_depend_on_order():
    forward, backward = MetricAccumulator(), MetricAccumulator()
    pairs = [(1, 3), (2, 7), (1, 10), (5, 9), (3, 3)] * 50
    for intersection, union in pairs:
        forward.add(intersection, union)
    for intersection, union in reversed(pairs):
        backward.add(intersection, union)
    assert forward.miou == backward.miou
    assert forward.miou == pytest.approx(100 * math.fsum(i / u for i, u in pairs) / len(pairs))


def test_integer_precision_test_agrees_with_the_float_convention():
    # LAVT: seg_correct += (I / U >= threshold) in floats.
    rng = random.Random(0)
    pairs = [(rng.randint(0, u), u) for u in (rng.randint(1, 5000) for _ in range(5000))]
    pairs += [(k * m, 10 * m) for k in range(11) for m in (1, 3, 7, 123457)]  # IoU exactly on thresholds
    for intersection, union in pairs:
        accumulator = MetricAccumulator()
        accumulator.add(intersection, union)
        expected = [intersection / union >= threshold for threshold in PRECISION_THRESHOLDS]
        assert accumulator.correct == [int(hit) for hit in expected], (intersection, union)


def test_intersection_union_on_arrays_and_tensors():
    pred = np.zeros((4, 5), dtype=bool)
    pred[0:2, 0:3] = True  # 6 pixels
    gt = np.zeros((4, 5), dtype=bool)
    gt[1:3, 1:4] = True  # 6 pixels, 2 shared
    assert intersection_union(pred, gt) == (2, 10)
    assert intersection_union(torch.from_numpy(pred), gt) == (2, 10)
    assert intersection_union(pred, np.zeros_like(gt)) == (0, 6)
    with pytest.raises(ValueError, match="differ in shape"):
        intersection_union(pred, gt[:3])


def test_invalid_counts_are_rejected():
    with pytest.raises(ValueError):
        MetricAccumulator().add(5, 4)
    with pytest.raises(ValueError):
        MetricAccumulator().add(-1, 4)
