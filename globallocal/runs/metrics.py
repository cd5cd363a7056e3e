"""Referring-segmentation metrics (SPEC section 7).

Per sentence, at the image's original resolution, I = |pred AND gt| and
U = |pred OR gt|. Over a split:

- oIoU = 100 * sum(I) / sum(U) (0 when sum(U) is 0, i.e. nothing to score);
- mIoU = 100 * mean(I / U), a sentence with U = 0 counting as IoU 0, as in
  the published code's ``Compute_IoU``;
- precision@t = percent of sentences with IoU >= t for t = 0.5 .. 0.9, the
  convention of LAVT's and most RIS evaluation code
  (``seg_correct += this_iou >= eval_seg_iou``). It is tested in integers
  (10 I >= 10 t U), which gives the same answers as LAVT's float test: I/U
  and t are both correctly rounded, so equality at the threshold survives.

A sentence whose image got no proposals is scored with an empty prediction
(I = 0, U = |gt|) and also counted in ``no_proposal_sentences``: the
published code skips it, which inflates both IoUs.

:func:`mask_counts` is where every answer meets its ground truth: the
predicted mask (empty, or None: the method answered that nothing is there),
the ground truth and the pixels a dataset leaves out (ReasonSeg's). The
metrics of gRefCOCO and ReasonSeg, computed from the same counts, are in
:mod:`globallocal.runs.benchmark_metrics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "PRECISION_THRESHOLDS",
    "UNDEFINED",
    "MetricAccumulator",
    "format_metric",
    "intersection_union",
    "mask_counts",
    "precision_hits",
    "sentence_iou",
]

# Thresholds in tenths, so the precision test stays in integers.
_THRESHOLD_TENTHS = (5, 6, 7, 8, 9)
PRECISION_THRESHOLDS = tuple(tenths / 10 for tenths in _THRESHOLD_TENTHS)


def _as_bool_array(mask: np.ndarray | torch.Tensor) -> np.ndarray:
    if hasattr(mask, "cpu"):  # a torch tensor (duck-typed: reading metrics needs no torch)
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask).astype(bool, copy=False)


def intersection_union(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> tuple[int, int]:
    """(I, U) pixel counts of two masks of the same (H, W) shape."""
    pred, gt = _as_bool_array(pred), _as_bool_array(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    return int(np.logical_and(pred, gt).sum()), int(np.logical_or(pred, gt).sum())


def mask_counts(
    pred: np.ndarray | torch.Tensor | None, gt: np.ndarray | torch.Tensor, ignore: np.ndarray | None = None
) -> dict[str, int]:
    """``I``, ``U``, ``pred_area`` and ``gt_area`` of a predicted mask against the ground truth (same (H, W)).

    ``pred`` None or empty: the answer is that nothing is there. Pixels under ``ignore`` count in neither I
    nor U (LISA's ``ignore_index``: the ground truth never holds them, so only the prediction loses them);
    ``pred_area`` is the whole prediction's.
    """
    gt = _as_bool_array(gt)
    pred = np.zeros_like(gt) if pred is None else _as_bool_array(pred)
    counted = pred
    if ignore is not None:
        kept = ~_as_bool_array(ignore)
        counted, gt = pred & kept, gt & kept
    intersection, union = intersection_union(counted, gt)
    return {"I": intersection, "U": union, "pred_area": int(np.count_nonzero(pred)),
            "gt_area": int(np.count_nonzero(gt))}


def precision_hits(intersection: int, union: int, tenths: tuple[int, ...]) -> list[bool]:
    """Whether I / U >= t for each threshold t (in tenths), tested in integers (see the module docstring)."""
    return [union > 0 and 10 * intersection >= tenth * union for tenth in tenths]


UNDEFINED = "undefined"
"""How a metric with no value (NaN in memory, null in report.json) is shown."""


def format_metric(value: float | None, digits: int | None = 2) -> float | str:
    """A metric for a table: ``digits`` after the point (None: the number itself), or "undefined"."""
    if value is None or math.isnan(value):
        return UNDEFINED
    return value if digits is None else f"{value:.{digits}f}"


def sentence_iou(intersection: int, union: int) -> float:
    """I / U, and 0 when U is 0 (both masks empty)."""
    return intersection / union if union else 0.0


@dataclass
class MetricAccumulator:
    """Running totals over sentences; :meth:`summary` gives the split's metrics.

    The mean IoU is summed with :func:`math.fsum`, so the result does not
    depend on the order sentences were added in (a resumed run adds them in
    a different grouping from an uninterrupted one).
    """

    sum_intersection: int = 0
    sum_union: int = 0
    sentences: int = 0
    no_proposal_sentences: int = 0
    correct: list[int] = field(default_factory=lambda: [0] * len(_THRESHOLD_TENTHS))
    _ious: list[float] = field(default_factory=list, repr=False)
    _refs: set[int] = field(default_factory=set, repr=False)
    _images: set[int] = field(default_factory=set, repr=False)
    _no_proposal_refs: set[int] = field(default_factory=set, repr=False)
    _no_proposal_images: set[int] = field(default_factory=set, repr=False)

    def add(
        self,
        intersection: int,
        union: int,
        *,
        ref_id: int | None = None,
        image_id: int | None = None,
        no_proposals: bool = False,
    ) -> None:
        """Count one sentence. ``ref_id``/``image_id`` feed the ref and image counts."""
        if intersection < 0 or union < intersection:
            raise ValueError(f"invalid counts I={intersection} U={union}")
        self.sum_intersection += intersection
        self.sum_union += union
        self.sentences += 1
        self._ious.append(sentence_iou(intersection, union))
        for k, hit in enumerate(precision_hits(intersection, union, _THRESHOLD_TENTHS)):
            self.correct[k] += hit
        if ref_id is not None:
            self._refs.add(ref_id)
        if image_id is not None:
            self._images.add(image_id)
        if no_proposals:
            self.no_proposal_sentences += 1
            if ref_id is not None:
                self._no_proposal_refs.add(ref_id)
            if image_id is not None:
                self._no_proposal_images.add(image_id)

    def add_record(self, record: dict[str, Any], referent: Any) -> None:
        """Count one sentence record (``referent``: the id of what it refers to)."""
        self.add(record["I"], record["U"], ref_id=referent, image_id=record["image_id"],
                 no_proposals=record["no_proposals"])

    @property
    def oiou(self) -> float:
        """100 sum I / sum U (0 before anything with a non-empty union was added)."""
        return 100.0 * self.sum_intersection / self.sum_union if self.sum_union else 0.0

    @property
    def miou(self) -> float:
        """100 mean(I / U) (0 before any sentence was added)."""
        return 100.0 * math.fsum(self._ious) / len(self._ious) if self._ious else 0.0

    def summary(self) -> dict:
        """The metrics and counts as a JSON-ready dict."""
        precision = {
            f"{threshold:.1f}": (100.0 * hits / self.sentences if self.sentences else 0.0)
            for threshold, hits in zip(PRECISION_THRESHOLDS, self.correct, strict=True)
        }
        return {
            "oIoU": self.oiou,
            "mIoU": self.miou,
            "precision": precision,
            "sentences": self.sentences,
            "refs": len(self._refs),
            "images": len(self._images),
            "no_proposal_sentences": self.no_proposal_sentences,
            "no_proposal_refs": len(self._no_proposal_refs),
            "no_proposal_images": len(self._no_proposal_images),
            "sum_intersection": self.sum_intersection,
            "sum_union": self.sum_union,
        }
