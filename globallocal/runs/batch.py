"""Segmenting every (photo, phrase) pair of a manifest: grouped by photo, resumable, bad lines set aside.

Lines naming the same photo (with the same ``masks``) form one *unit*:
its proposals and visual features are computed once, then every phrase of
those lines is answered. Units go through a :class:`~globallocal.runs.runfolder.RunFolder`
like ``evaluate``'s images: one record per output, then a unit-done marker,
fsynced; a run killed at any moment (SIGKILL included) redoes at most the
unit it was in, and a resumed run writes exactly what an uninterrupted one
does. The run's configuration is its settings, not the manifest: every
record carries its line's :attr:`~globallocal.data.manifest.BatchLine.key`,
so a rerun after lines were fixed, added, removed or moved does only the
lines whose key has no record yet, and reports the manifest's lines alone
(the records and files of removed lines stay). The units are done by
:class:`~globallocal.runs.batch_step.BatchStep` in this process, or by the
same step in a pool of Ray actors (``ray``: :mod:`~globallocal.runs.ray_engine`);
this process alone writes the folder either way.

Outputs under ``OUT_DIR``::

    masks/<id>.png      0/255 at the photo's size
    overlays/<id>.png   with ``overlays``: the photo with the mask tinted
    results.jsonl       one line per output: id, line, image, phrase, noun_phrase, index, score, mask (, rle)
    errors.jsonl        one line per failed output or unusable manifest line: line, id, error (and retry: true
                        where a rerun asks again by itself: an endpoint that did not answer)
    records.jsonl, config.json, run.lock: the run folder

results.jsonl and errors.jsonl are written (atomically) from the records
when the run finishes, in manifest order.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from ..data.images import save_text
from ..data.manifest import BatchLine, Manifest, read_manifest
from ..models.weights import weights_change
from ..plurals import counted
from .batch_step import MASKS_FOLDER, OVERLAYS_FOLDER, BatchOptions, BatchStep, ProposalSource, Unit
from .progress import LoggedProgress, RateColumn, RemainingColumn
from .runfolder import CompletedUnit, RunFolder, UnitLayout, UnitResult
from .worker import run_description

__all__ = ["ERRORS_FILE", "RESULTS_FILE", "BatchStopped", "Unit", "group_units", "run_batch"]

RESULTS_FILE = "results.jsonl"
ERRORS_FILE = "errors.jsonl"
PHOTO_UNITS = UnitLayout(marker="unit_done", member="unit", count="outputs",
                         record={"unit": int, "key": str, "line": int, "id": str, "error?": str, "retry?": bool},
                         output_folders=(MASKS_FOLDER, OVERLAYS_FOLDER))
_FORMAT = 2  # 2: records carry their line's key; the manifest is no longer part of the configuration
_BOOKKEEPING = ("unit", "key")  # the record fields results.jsonl and errors.jsonl leave out


class BatchStopped(KeyboardInterrupt):
    """Raised by the ``stop_after_units`` hook; behaves like Ctrl-C for callers."""


def group_units(manifest: Manifest, masks: Path | None = None) -> list[Unit]:
    """Lines grouped by (photo, masks), numbered by first appearance; ``masks`` is for lines without their own."""
    groups: dict[tuple[Path, Path | None], list[BatchLine]] = {}
    for line in manifest.lines:
        source = line.masks or masks
        groups.setdefault((line.image.resolve(), source.resolve() if source else None), []).append(line)
    return [Unit(number, image, masks, tuple(lines)) for number, ((image, masks), lines) in enumerate(groups.items())]


def _batch_step(options: BatchOptions, worker: Any) -> BatchStep:
    """The step of a Ray actor, from the worker it built."""
    return BatchStep(worker.segmenter, worker.image_source(), options)


def _latest(completed: list[CompletedUnit]) -> dict[str, dict[str, Any]]:
    """The last record of each output id: the one whose files masks/<id>.png (and the overlay) now hold, since
    a later line of the same id, in a session with an edited manifest, overwrote an earlier line's."""
    return {record["id"]: record for unit in completed for record in unit.records}


def _done(line: BatchLine, latest: dict[str, dict[str, Any]]) -> bool:
    """Whether every output of the line is recorded for this line, and not as a failure to ask again (an
    endpoint that did not answer)."""
    return all(latest.get(output, {}).get("key") == line.key and not latest[output].get("retry")
               for output in line.output_ids)


def _todo(units: list[Unit], latest: dict[str, dict[str, Any]], recorded: set[int]) -> list[Unit]:
    """Each photo's lines not yet done, under the photo's number, or a fresh one where that number is recorded
    already (a photo with some lines done, on a rerun with an edited manifest): a unit is recorded once."""
    fresh = itertools.count(max(recorded | {len(units) - 1}) + 1)
    todo = []
    for unit in units:
        lines = tuple(line for line in unit.lines if not _done(line, latest))
        if lines:
            todo.append(replace(unit, number=unit.number if unit.number not in recorded else next(fresh), lines=lines))
    return todo


def lines_failed(count: int) -> str:
    """'1 line failed', '3 lines failed': the bar and the summary count failures alike, by manifest line."""
    return f"{counted(count, 'line')} failed"


def _write_outputs(out_dir: Path, manifest: Manifest, latest: dict[str, dict[str, Any]]) -> tuple[int, int, int]:
    """results.jsonl and errors.jsonl of the manifest's lines, in its order, each output once and under its line's
    number now; (results, failed outputs, failed lines)."""
    results, failures = [], [error.to_json() for error in manifest.errors]
    for line in manifest.lines:
        for output in line.output_ids:
            entry = {key: value for key, value in latest[output].items() if key not in _BOOKKEEPING}
            entry["line"] = line.line
            (failures if "error" in entry else results).append(entry)
    failures.sort(key=lambda r: r["line"])
    save_text("".join(json.dumps(r) + "\n" for r in results), out_dir / RESULTS_FILE)
    save_text("".join(json.dumps(r) + "\n" for r in failures), out_dir / ERRORS_FILE)
    return len(results), len(failures), len({failure["line"] for failure in failures})


def run_batch(
    manifest: Manifest | str | Path,
    out_dir: str | Path,
    segmenter: Any,
    proposal_source: ProposalSource | None = None,
    *,
    masks: str | Path | None = None,
    settings: dict[str, Any] | None = None,
    weights: dict[str, str | Path] | None = None,
    rle: bool = False,
    overlays: bool = False,
    allow_no_noun: bool = False,
    progress: bool = True,
    stop_after_units: int | None = None,
    ray: Any = None,
    recipe: Any = None,
) -> dict[str, Any]:
    """Segment every pair of the manifest into ``out_dir``, resuming a run of the same configuration there.

    ``segmenter``: ``set_image(image, proposals)``, ``predict_many(phrases)``
    and ``nlp``. ``masks``: the proposals of lines without their own;
    ``proposal_source``: ``image -> Proposals`` for lines with neither
    (None: such lines fail). ``settings`` (model, preset,
    proposal options, ...) and ``weights`` (``{role: path}``, identified by
    content) are part of the configuration a resume must match.

    ``ray``: an entered :class:`~globallocal.runs.ray_engine.RayRun`; the
    units then go to its actors, each building its segmenter and proposal
    source from ``recipe`` (``recipe.build(device) -> Worker``, picklable)
    and checking them against this run's settings and weights; this process
    only writes (``segmenter`` and ``proposal_source`` are then unused).

    Returns the summary (lines, outputs, results, failed outputs and lines,
    units retried after a worker died).
    ``stop_after_units`` raises :class:`BatchStopped` once that many units
    are recorded in this call and more remain, as an interruption would.
    """
    manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    out_dir = Path(out_dir)
    masks = Path(masks) if masks is not None else None
    units = group_units(manifest, masks)
    weights = dict(weights or {})
    identity = json.loads(json.dumps({
        "format": _FORMAT,
        "masks": str(masks.resolve()) if masks else None,
        **run_description(settings or {}, weights),
        "rle": rle,
        "overlays": overlays,
        "allow_no_noun": allow_no_noun,
    }, sort_keys=True, default=str))

    def explain(stored: dict[str, Any], current: dict[str, Any]) -> str | None:
        return weights_change(stored.get("weights"), current.get("weights"), weights)

    options = BatchOptions(rle=rle, overlays=overlays, allow_no_noun=allow_no_noun)
    with RunFolder(out_dir, PHOTO_UNITS) as folder:
        folder.check_config(identity, explain=explain)
        folder.open_records()
        completed = folder.read_completed()
        latest = _latest(completed)
        todo = _todo(units, latest, {unit.marker["unit_done"] for unit in completed})
        if ray is None:
            step = BatchStep(segmenter, proposal_source, options)
            finished: Iterator[UnitResult] = (step(unit) for unit in todo)
        else:
            from .ray_engine import StepRecipe

            make = StepRecipe(recipe, functools.partial(_batch_step, options), identity)
            finished = ray.results(make, [(unit.number, unit) for unit in todo])
        columns = (
            TextColumn("[bold]batch"), BarColumn(), MofNCompleteColumn(), RateColumn(),
            TextColumn("{task.fields[failed]}"), TimeElapsedColumn(), RemainingColumn(),
        )
        with LoggedProgress(*columns, console=Console(stderr=True), unit="photos", disable=not progress) as bar:
            resumed = len(units) - len(todo)  # the rate and ETA count this session's photos only
            # Failed lines, as the summary counts them: unusable manifest lines and the done lines that failed.
            failed = {error.line for error in manifest.errors}
            failed |= {line.line for line in manifest.lines if _done(line, latest)
                       and any("error" in latest[output] for output in line.output_ids)}
            task = bar.add_task("batch", total=len(units), completed=resumed, resumed_at=resumed,
                                failed=lines_failed(len(failed)))
            for count, result in enumerate(finished, start=1):
                failed |= {record["line"] for record in result.records if "error" in record}
                folder.record(result, out_dir)
                bar.update(task, advance=1, failed=lines_failed(len(failed)))
                latest.update((record["id"], record) for record in result.records)
                if stop_after_units is not None and count >= stop_after_units and count < len(todo):
                    raise BatchStopped(f"stopped after {counted(count, 'photo')}")
    results, failed_outputs, failed_lines = _write_outputs(out_dir, manifest, latest)
    return {
        "lines": manifest.line_count,
        "photos": len(units),
        "results": results,
        "failed_outputs": failed_outputs,
        "failed_lines": failed_lines,
        "retried_units": ray.retried if ray is not None else 0,
        "results_file": str(out_dir / RESULTS_FILE),
        "errors_file": str(out_dir / ERRORS_FILE),
    }
