"""The records of an evaluation run: one JSON line per sentence, grouped by image-done markers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .benchmark_metrics import Tally
from .runfolder import (
    CompletedUnit,
    UnitLayout,
    read_completed,
)

# An image and all its sentences: the unit of work, recorded with an image-done marker.
# What every sentence record holds for resuming, reporting and sweeping (checked when read back).
SENTENCE_RECORD = {
    "image_id": int, "I": int, "U": int, "gt_area": int, "no_proposals": bool, "overlaps": (list, type(None)),
    "index": (int, type(None)), "expression": (str, type(None)), "noun_phrase": (str, type(None)),
    "ref_id?": int, "task_id?": str, "name?": str, "pred_area?": int, "no_target?": bool, "mask?": dict,
    "retry?": bool,
}
IMAGE_UNITS = UnitLayout(marker="image_done", member="image_id", count="sentences", record=SENTENCE_RECORD)
CompletedImage = CompletedUnit


def read_records(out_dir: str | Path) -> list[CompletedImage]:
    """The fully recorded images of every records file of a run folder (read only)."""
    return read_completed(out_dir, IMAGE_UNITS)


def referent(record: dict[str, Any]) -> Any:
    """The id of what a sentence record refers to: a PhraseCut task_id, a ReasonSeg sample's name, or a REFER
    (or gRefCOCO) ref_id."""
    return next(record[key] for key in ("task_id", "name", "ref_id") if key in record)


def add_record(accumulator: Tally, record: dict[str, Any]) -> None:
    accumulator.add_record(record, referent(record))
