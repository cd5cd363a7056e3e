"""Each benchmark's own metrics, from a run's sentence records alone: one home per dataset's official rule.

Three families of metrics, never mixed (a report names its family by the
run's dataset):

- ``referring`` (RefCOCO, RefCOCO+, RefCOCOg, PhraseCut): oIoU, mIoU and
  P@0.5-0.9, :class:`~globallocal.runs.metrics.MetricAccumulator`.
- ``gres`` (gRefCOCO): GRES's evaluation after its August 2023 fix
  (henghuiding/ReLA, ``gres_model/evaluation/refer_evaluation.py``), where
  "predicted no target" is an empty answer. A no-target sample answered
  empty is a TP and adds 1 to the IoU sum (nothing to I or U); answered with
  pixels, a FN adding 0 and its area to U. A target sample answered empty is
  a FP (I = 0, U = |G|), otherwise a TN; its IoU (I / U, 0 when U = 0) is
  added, its I and U to the totals, and Pr@0.7/0.8/0.9 count target samples
  only. gIoU = 100 x IoU sum / samples, cIoU = 100 x sum I / sum U,
  N-acc = 100 x TP / (TP + FN), T-acc = 100 x TN / (TN + FP).
- ``reasonseg`` (ReasonSeg): LISA's ``validate`` (``train_ds.py``): pixels the
  ground truth marks 255 count in neither I nor U (left out of the record's
  I and U already); per sample IoU = I / (U + 1e-5), plus 1 when U = 0;
  gIoU = 100 x their mean, cIoU = 100 x sum I / (sum U + 1e-10). LISA sums
  in float32, here in double precision.

Every family reads the record fields every run writes: ``I``, ``U``,
``pred_area`` (0: the method answered that nothing is there, whatever it is:
one proposal, a set, or none), ``no_target`` (gRefCOCO) and the counts. All
metrics are percentages. One that is undefined (N-acc without a no-target
sample, Pr@ without a target one, cIoU over no pixel at all) is None, JSON
null, never NaN; GRES's own code writes 0 for N-acc and T-acc then.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..data.grefcoco import GREFCOCO
from ..data.reasonseg import REASONSEG
from .metrics import PRECISION_THRESHOLDS, MetricAccumulator, precision_hits, sentence_iou

__all__ = [
    "FAMILIES",
    "GRES",
    "LISA",
    "REFERRING",
    "GresAccumulator",
    "MetricFamily",
    "ReasonSegAccumulator",
    "Tally",
    "family_of",
    "metric_values",
]


_GRES_TENTHS = (7, 8, 9)
_LISA_EPSILON, _LISA_TOTAL_EPSILON = 1e-5, 1e-10
# What every family's summary keeps of the sentence, ref and image counts.
_COUNTS = ("sentences", "refs", "images", "no_proposal_sentences", "no_proposal_refs", "no_proposal_images",
           "sum_intersection", "sum_union")


class Tally(Protocol):
    """Running totals of one family over sentence records."""

    sentences: int

    def add_record(self, record: dict[str, Any], referent: Any) -> None: ...

    def summary(self) -> dict[str, Any]: ...


def _percent(part: float, whole: float) -> float | None:
    return 100.0 * part / whole if whole else None


@dataclass
class _SampleTally:
    """The counts every family reports, and the per-sample scores whose mean is its gIoU."""

    counts: MetricAccumulator = field(default_factory=MetricAccumulator)
    scores: list[float] = field(default_factory=list)

    @property
    def sentences(self) -> int:
        return self.counts.sentences

    def _counted(self, record: dict[str, Any], referent: Any, score: float) -> None:
        self.counts.add_record(record, referent)
        self.scores.append(score)

    def _giou(self) -> float | None:
        return _percent(math.fsum(self.scores), len(self.scores))

    def _counts(self) -> dict[str, int]:
        summary = self.counts.summary()
        return {key: summary[key] for key in _COUNTS}


@dataclass
class GresAccumulator(_SampleTally):
    """gRefCOCO's metrics, as GRES's evaluation computes them (module docstring)."""

    outcomes: dict[str, int] = field(default_factory=lambda: {"TP": 0, "FN": 0, "FP": 0, "TN": 0})
    hits: list[int] = field(default_factory=lambda: [0] * len(_GRES_TENTHS))

    def add_record(self, record: dict[str, Any], referent: Any) -> None:
        empty = record["pred_area"] == 0
        if record.get("no_target", False):
            self.outcomes["TP" if empty else "FN"] += 1
            self._counted(record, referent, 1.0 if empty else 0.0)
            return
        self.outcomes["FP" if empty else "TN"] += 1
        self._counted(record, referent, sentence_iou(record["I"], record["U"]))  # FP: I = 0, U = |G|
        for k, hit in enumerate(precision_hits(record["I"], record["U"], _GRES_TENTHS)):
            self.hits[k] += hit

    def summary(self) -> dict[str, Any]:
        tp, fn, fp, tn = (self.outcomes[key] for key in ("TP", "FN", "FP", "TN"))
        counts = self._counts()
        return {
            "gIoU": self._giou(),
            "cIoU": _percent(counts["sum_intersection"], counts["sum_union"]),
            "N-acc": _percent(tp, tp + fn),
            "T-acc": _percent(tn, tn + fp),
            "precision": {f"{tenths / 10:.1f}": _percent(hits, tn + fp) for tenths, hits in zip(_GRES_TENTHS,
                                                                                                self.hits)},
            "no_target_sentences": tp + fn,
            "outcomes": dict(self.outcomes),
            **counts,
        }


@dataclass
class ReasonSegAccumulator(_SampleTally):
    """ReasonSeg's metrics, as LISA's validation computes them (module docstring)."""

    def add_record(self, record: dict[str, Any], referent: Any) -> None:
        intersection, union = record["I"], record["U"]
        self._counted(record, referent, intersection / (union + _LISA_EPSILON) + (1.0 if union == 0 else 0.0))

    def _ciou(self) -> float | None:
        if not self.scores:
            return None
        return 100.0 * self.counts.sum_intersection / (self.counts.sum_union + _LISA_TOTAL_EPSILON)

    def summary(self) -> dict[str, Any]:
        return {"gIoU": self._giou(), "cIoU": self._ciou(), **self._counts()}


Row = tuple[str, tuple[str, ...]]  # a metric's name in tables, and its path in a summary


@dataclass(frozen=True)
class MetricFamily:
    """A benchmark's metrics: how they are summed and how tables name them."""

    name: str
    label: str
    """The datasets' name before a metric where runs of several families share a table ("" for RefCOCO's)."""
    make: Callable[[], Tally]
    rows: tuple[Row, ...]
    """Its metrics in the order tables list them; the first two are its headline (the progress bar's, and
    each subset's in a report)."""
    subset_rows: bool = False
    """Whether the table across runs lists the headline of each subset (ReasonSeg's short and long)."""

    @property
    def headline(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.rows[:2])

    def headline_values(self, tally: Tally) -> dict[str, float | None]:
        values = metric_values(self, tally.summary())
        return {name: values[name] for name in self.headline}

    def shape(self) -> dict[str, Any]:
        """What a report's ``metrics`` must hold (:func:`~globallocal.data.bounded.check_shape`): every row, a
        number, or null where it is undefined (RefCOCO's are 0 over nothing, as the published code's, so null
        there only stands for a NaN that was never meant to be)."""
        shape: dict[str, Any] = {}
        for _, path in self.rows:
            level = shape
            for key in path[:-1]:
                level = level.setdefault(key, {})
            level[path[-1]] = (int, float, type(None))
        return shape


def _precision_rows(name: str, thresholds: tuple[float, ...]) -> tuple[Row, ...]:
    return tuple((f"{name}@{t:.1f}", ("precision", f"{t:.1f}")) for t in thresholds)


REFERRING = MetricFamily("referring", "", MetricAccumulator,
                         (("oIoU", ("oIoU",)), ("mIoU", ("mIoU",)), *_precision_rows("P", PRECISION_THRESHOLDS)))
GRES = MetricFamily("gres", "gRefCOCO", GresAccumulator, (
    ("gIoU", ("gIoU",)), ("cIoU", ("cIoU",)), ("N-acc", ("N-acc",)), ("T-acc", ("T-acc",)),
    *_precision_rows("Pr", tuple(tenths / 10 for tenths in _GRES_TENTHS)),
))
LISA = MetricFamily("reasonseg", "ReasonSeg", ReasonSegAccumulator, (("gIoU", ("gIoU",)), ("cIoU", ("cIoU",))),
                    subset_rows=True)
FAMILIES = {family.name: family for family in (REFERRING, GRES, LISA)}
_FAMILY_OF_DATASET = {GREFCOCO: GRES, REASONSEG: LISA}


def family_of(dataset: str) -> MetricFamily:
    """The metrics a dataset is scored by (RefCOCO's unless it has its own)."""
    return _FAMILY_OF_DATASET.get(dataset, REFERRING)


def metric_values(family: MetricFamily, summary: dict[str, Any]) -> dict[str, float | None]:
    """The family's metrics of a summary by row name (None: undefined)."""
    values = {}
    for name, path in family.rows:
        value: Any = summary
        for key in path:
            value = value[key]
        values[name] = value
    return values


