"""Segmenting every (photo, phrase) pair of a manifest: grouped by photo, resumable, bad lines set aside.

Lines naming the same photo (with the same ``masks``) form one *unit*:
its proposals and visual features are computed once, then every phrase of
those lines is answered. Units go through a :class:`~globallocal.runs.runfolder.RunFolder`
like ``evaluate``'s images: one record per output, then a unit-done marker,
fsynced; a run killed at any moment (SIGKILL included) redoes at most the
unit it was in, and a resumed run writes exactly what an uninterrupted one
does. The manifest's content is part of the run's configuration, so a
changed manifest is refused instead of mixed in. The units are done by
:class:`~globallocal.runs.batch_step.BatchStep` in this process, or by the
same step in a pool of Ray actors (``ray``: :mod:`~globallocal.runs.ray_engine`);
this process alone writes the folder either way.

Outputs under ``OUT_DIR``::

    masks/<id>.png      0/255 at the photo's size
    overlays/<id>.png   with ``overlays``: the photo with the mask tinted
    results.jsonl       one line per output: id, line, image, phrase, noun_phrase, index, score, mask (, rle)
    errors.jsonl        one line per failed output or unusable manifest line: line, id, error
    records.jsonl, config.json, run.lock: the run folder

results.jsonl and errors.jsonl are written (atomically) from the records
when the run finishes, in manifest order.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..data.images import save_text
from ..data.manifest import BatchLine, Manifest, read_manifest
from ..models.weights import weights_change, weights_identity
from .batch_step import BatchOptions, BatchStep, ProposalSource, Unit
from .progress import RateColumn, RemainingColumn
from .runfolder import RunFolder, UnitLayout, UnitResult

__all__ = ["ERRORS_FILE", "RESULTS_FILE", "BatchStopped", "Unit", "group_units", "run_batch"]

RESULTS_FILE = "results.jsonl"
ERRORS_FILE = "errors.jsonl"
PHOTO_UNITS = UnitLayout(marker="unit_done", member="unit", count="outputs",
                         record={"unit": int, "line": int, "id": str, "error?": str})
_FORMAT = 1


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


def _manifest_digest(path: Path) -> str:
    with open(path, "rb") as handle:  # in pieces: a manifest may be far larger than memory allows
        return hashlib.file_digest(handle, "sha256").hexdigest()


def lines_failed(count: int) -> str:
    """'1 line failed', '3 lines failed': the bar and the summary count failures alike, by manifest line."""
    return f"{count} line{'' if count == 1 else 's'} failed"


def _write_outputs(out_dir: Path, manifest: Manifest, records: list[dict[str, Any]]) -> tuple[int, int, int]:
    """results.jsonl and errors.jsonl in manifest order; (results, failed outputs, failed lines)."""
    results = [{k: v for k, v in r.items() if k != "unit"} for r in records if "error" not in r]
    failures = [{k: v for k, v in r.items() if k != "unit"} for r in records if "error" in r]
    failures += [error.to_json() for error in manifest.errors]
    results.sort(key=lambda r: r["line"])
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
        "manifest": str(manifest.path.resolve()),
        "manifest_sha256": _manifest_digest(manifest.path),
        "masks": str(masks.resolve()) if masks else None,
        "settings": settings or {},
        "weights": {role: weights_identity(path) for role, path in sorted(weights.items())},
        "rle": rle,
        "overlays": overlays,
        "allow_no_noun": allow_no_noun,
    }, sort_keys=True, default=str))

    def explain(stored: dict[str, Any], current: dict[str, Any]) -> str | None:
        if stored.get("manifest_sha256") != current["manifest_sha256"]:
            return f"another manifest (the content of {manifest.path} changed since)"
        return weights_change(stored.get("weights"), current.get("weights"), weights)

    options = BatchOptions(rle=rle, overlays=overlays, allow_no_noun=allow_no_noun)
    with RunFolder(out_dir, PHOTO_UNITS) as folder:
        folder.check_config(identity, explain=explain)
        folder.open_records()
        done = {unit.marker["unit_done"] for unit in folder.read_completed()}
        todo = [unit for unit in units if unit.number not in done]
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
        with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
            resumed = len(units) - len(todo)  # the rate and ETA count this session's photos only
            # Failed lines, as the summary counts them: unusable manifest lines and those of finished photos too.
            failed = {error.line for error in manifest.errors}
            failed |= {record["line"] for unit in folder.read_completed() for record in unit.records
                       if "error" in record}
            task = bar.add_task("batch", total=len(units), completed=resumed, resumed_at=resumed,
                                failed=lines_failed(len(failed)))
            for count, result in enumerate(finished, start=1):
                failed |= {record["line"] for record in result.records if "error" in record}
                folder.record(result, out_dir)
                bar.update(task, advance=1, failed=lines_failed(len(failed)))
                if stop_after_units is not None and count >= stop_after_units and count < len(todo):
                    raise BatchStopped(f"stopped after {count} photos")
        records = [record for unit in folder.read_completed() for record in unit.records]
    results, failed_outputs, failed_lines = _write_outputs(out_dir, manifest, records)
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
