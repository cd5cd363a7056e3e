"""One unit of ``batch``: a photo's proposals and features once, then every phrase of its lines answered.

:class:`BatchStep` is the one home of that rule: the single-process loop of
:func:`~globallocal.runs.batch.run_batch` and each Ray actor
(:mod:`~globallocal.runs.ray_engine`) call it, and it returns what the run
folder writes (records, the masks as PNG bytes), so both write the same bytes.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from ..data.images import load_image, mask_png_bytes, photo_reading, png_bytes
from ..data.manifest import BatchLine
from ..data.overlay import overlay_picture
from ..errors import GlobalLocalError, NoProposalsError
from ..models.text import parse_phrase
from ..plurals import noun_for
from ..proposals import Proposals
from ..proposals.files import load_proposals
from .runfolder import UnitResult

__all__ = ["MASKS_FOLDER", "OVERLAYS_FOLDER", "BatchOptions", "BatchStep", "ProposalSource", "Unit"]

# Where a batch run folder's PNG files go: masks/ID.png and overlays/ID.png.
MASKS_FOLDER = "masks"
OVERLAYS_FOLDER = "overlays"

ProposalSource = Callable[[Image.Image], Proposals]


@dataclass(frozen=True)
class Unit:
    """The lines that share a photo and its proposals, in manifest order (those still to do, on a rerun)."""

    number: int
    image: Path
    masks: Path | None
    lines: tuple[BatchLine, ...]

    @property
    def outputs(self) -> int:
        return sum(len(line.phrases) for line in self.lines)


@dataclass(frozen=True)
class BatchOptions:
    """What the run writes besides the masks, and whether a phrase without a noun is answered."""

    rle: bool = False
    overlays: bool = False
    allow_no_noun: bool = False


def _rle(mask: np.ndarray) -> dict[str, Any]:
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(size) for size in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _failed(unit: Unit, line: BatchLine, output: str, reason: str) -> dict[str, Any]:
    return {"unit": unit.number, "key": line.key, "line": line.line, "id": output, "error": reason}


def _lines_named(unit: Unit) -> str:
    """'line 3' or 'lines 3, 7': the manifest lines of a unit, as a message names them."""
    numbers = ", ".join(str(line.line) for line in unit.lines)
    return f"{noun_for(len(unit.lines), 'line')} {numbers}"


def _outputs(unit: Unit) -> list[tuple[BatchLine, str, str]]:
    return [(line, output, phrase) for line in unit.lines for output, phrase in zip(line.output_ids, line.phrases)]


class BatchStep:
    """Answers the outputs of one unit: records, and the files (by path under the run folder) as bytes."""

    def __init__(self, segmenter: Any, proposal_source: ProposalSource | None, options: BatchOptions) -> None:
        self.segmenter, self.proposal_source, self.options = segmenter, proposal_source, options

    def proposals(self, unit: Unit, picture: Image.Image) -> Proposals | None:
        """The unit's masks, or the proposal source's; None when the segmenter's source proposes per phrase."""
        if unit.masks is not None:
            with warnings.catch_warnings(record=True) as said:
                warnings.simplefilter("always")
                proposals = load_proposals(unit.masks, (picture.height, picture.width))
            for warning in said:  # e.g. empty masks dropped: which manifest lines they concern
                warnings.warn(f"{_lines_named(unit)}: {warning.message}", warning.category, stacklevel=2)
            return proposals
        if self.proposal_source is None and getattr(self.segmenter, "phrase_dependent", False):
            return None
        if self.proposal_source is None:
            raise NoProposalsError("no mask proposals: give the line masks, or run with a proposal source")
        return self.proposal_source(picture)

    def __call__(self, unit: Unit) -> UnitResult:
        started = time.perf_counter()
        records, files = self.unit_records(unit)
        marker = {"unit_done": unit.number, "seconds": time.perf_counter() - started}
        return UnitResult(unit.number, records, marker, files)

    def crashed(self, unit: Unit, reason: str) -> UnitResult:
        """The unit given up (its worker kept dying): every output failed with ``reason``, like a bad photo."""
        records = [_failed(unit, line, output, reason) for line, output, _ in _outputs(unit)]
        return UnitResult(unit.number, records, {"unit_done": unit.number, "seconds": 0.0})

    def unit_records(self, unit: Unit) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
        """One record per output: its result, or why it failed (a bad photo or masks fail the whole unit)."""
        outputs = _outputs(unit)
        try:
            picture = load_image(unit.image)
            # A method that draws its own mask (TCL) takes no proposals.
            proposals = self.proposals(unit, picture) if self.segmenter.method.uses_proposals else None
            if proposals is not None and len(proposals) == 0:
                raise NoProposalsError(f"no mask proposals for {unit.image}")
        except GlobalLocalError as error:
            return [_failed(unit, line, output, str(error)) for line, output, _ in outputs], {}
        self.segmenter.set_image(picture, proposals)
        records: list[dict[str, Any] | None] = [None] * len(outputs)
        files: dict[str, bytes] = {}
        answerable = []
        for position, (line, output, phrase) in enumerate(outputs):
            if not self.options.allow_no_noun and not parse_phrase(phrase, self.segmenter.nlp).has_noun:
                reason = f"no noun found in the phrase {phrase!r}; name the object, or run with --allow-no-noun"
                records[position] = _failed(unit, line, output, reason)
            else:
                answerable.append(position)
        results = self.segmenter.predict_many([outputs[position][2] for position in answerable]) if answerable else []
        for position, result in zip(answerable, results):
            line, output, phrase = outputs[position]
            failure = result.failure()
            if failure is not None:  # set aside like a bad line, but a rerun asks again by itself
                records[position] = {**_failed(unit, line, output, failure), "retry": True}
                continue
            mask = result.mask.numpy()
            record = {
                "unit": unit.number, "key": line.key, "line": line.line, "id": output, "image": str(unit.image),
                "photo": photo_reading(picture).to_json(), "phrase": phrase, "noun_phrase": result.noun_phrase,
                "index": result.index, "score": result.score, **result.candidate_fields(aliases=True),
                **result.answer_fields(), "mask": f"{MASKS_FOLDER}/{output}.png",
            }
            files[record["mask"]] = mask_png_bytes(mask)
            if self.options.overlays:
                record["overlay"] = f"{OVERLAYS_FOLDER}/{output}.png"
                files[record["overlay"]] = png_bytes(overlay_picture(picture, mask))
            if self.options.rle:
                record["rle"] = _rle(mask)
            records[position] = record
        return [record for record in records if record is not None], files
