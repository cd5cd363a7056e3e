"""The evaluation loop over a REFER split: resumable, image by image.

Work is grouped by image: the proposals are computed and the segmenter's
``set_image`` is paid once per image, then every sentence of every ref on it
is answered with ``predict``. One JSON line per sentence goes to
``<out>/records.jsonl`` as it is produced, followed by an image-done marker
line; the file is fsynced after each marker. A run killed at any moment
therefore loses at most the image it was working on: on restart the file is
cut back to the last marker (dropping a half-written line and the records of
an unfinished image) and the loop continues with the next image. The final
metrics are computed from the records file alone, so a resumed run reports
exactly what an uninterrupted one does.

The segmenter is duck-typed (``set_image(image, proposals)`` and
``predict(phrase)`` returning an object with ``mask``, ``index``,
``scores``, ``noun_phrase``, ``expression`` and ``truncated``), as is the
proposal source: any callable ``(image, record) -> Proposals``.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from .errors import GlobalLocalError, InputError
from .images import save_mask_png, save_text
from .metrics import PRECISION_THRESHOLDS, MetricAccumulator, intersection_union, sentence_iou
from .proposals import Proposals
from .refer import ImageGroup, ImageRecord, ReferDataset, resolve_split

__all__ = [
    "CONFIG_FILE",
    "RECORDS_FILE",
    "REPORT_JSON",
    "REPORT_MD",
    "EvaluationConfig",
    "EvaluationStopped",
    "ProposalSource",
    "format_report_table",
    "run_evaluation",
]

RECORDS_FILE = "records.jsonl"
CONFIG_FILE = "config.json"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"

# Bumped when the records or config layout changes, so that an old out dir is
# refused instead of misread.
_FORMAT = 1

ProposalSource = Callable[[Image.Image, ImageRecord], Proposals]

_VERSIONED_PACKAGES = ("torch", "open_clip_torch", "spacy", "numpy", "pycocotools", "globallocal")


class EvaluationStopped(KeyboardInterrupt):
    """Raised by the ``stop_after_images`` hook; behaves like Ctrl-C for callers."""


@dataclass
class EvaluationConfig:
    """What is evaluated and where results go.

    ``split_by`` defaults per dataset (unc, unc, umd). ``limit`` keeps the
    first N images of the split (by image_id). ``save_masks`` is a folder for
    one PNG per sentence. ``overlap`` is the ground-truth rule of
    :func:`globallocal.refer.decode_segmentation`. ``settings`` (model,
    alpha, beta, preset, parser model, ...) is copied into the report
    verbatim and takes part in the resume check; it must be
    JSON-serialisable (other values are stored as their ``str``).
    """

    dataset: str
    split: str
    data_root: str | Path
    images_dir: str | Path
    out_dir: str | Path
    split_by: str | None = None
    limit: int | None = None
    save_masks: str | Path | None = None
    overlap: str = "paper"
    settings: dict[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        """The configuration as stored in config.json and compared on resume.

        The out dir itself is left out (moving a run directory is harmless);
        paths are made absolute so the same data named from another working
        directory still matches; split_by is resolved to its default.
        """

        def absolute(path: str | Path | None) -> str | None:
            return None if path is None else str(Path(path).expanduser().resolve())

        identity = {
            "format": _FORMAT,
            "dataset": self.dataset,
            "split": self.split,
            "split_by": resolve_split(self.dataset, self.split, self.split_by),
            "data_root": absolute(self.data_root),
            "images_dir": absolute(self.images_dir),
            "limit": self.limit,
            "save_masks": absolute(self.save_masks),
            "overlap": self.overlap,
            "settings": self.settings,
        }
        # Round-trip so that tuples/lists and key order compare as stored.
        return json.loads(json.dumps(identity, sort_keys=True, default=str))


class _RateColumn(ProgressColumn):
    """Images per second, blank until rich has a speed estimate."""

    def render(self, task: Task) -> Text:
        return Text("" if task.speed is None else f"{task.speed:.2f} img/s")


def _check_or_write_config(out_dir: Path, identity: dict[str, Any]) -> None:
    config_path = out_dir / CONFIG_FILE
    if config_path.exists():
        try:
            stored = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            stored = None
        if stored != identity:
            differing = (
                sorted(key for key in set(stored) | set(identity) if stored.get(key) != identity.get(key))
                if isinstance(stored, dict)
                else ["(unreadable config.json)"]
            )
            raise InputError(
                f"{out_dir} holds a run with a different configuration ({', '.join(differing)}); "
                "use another --out or delete that directory"
            )
        return
    if (out_dir / RECORDS_FILE).exists():
        raise InputError(
            f"{out_dir} holds records but no {CONFIG_FILE}; use another --out or delete that directory"
        )
    save_text(json.dumps(identity, indent=2, sort_keys=True) + "\n", config_path)


@dataclass
class _CompletedImage:
    marker: dict[str, Any]
    records: list[dict[str, Any]]


def _recover_records(path: Path) -> list[_CompletedImage]:
    """The fully recorded images of a records file, cutting the file back to them.

    Everything after the last image-done marker (a half-written line, records
    of an image that was being worked on) is truncated away. A damaged line
    *before* the last marker is not something an interruption produces, so it
    is reported rather than repaired.
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    completed: list[_CompletedImage] = []
    pending: list[dict[str, Any] | None] = []
    keep = 0
    position = 0
    for number, line in enumerate(data.split(b"\n")[:-1], start=1):
        position += len(line) + 1
        try:
            entry = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            entry = None
        if isinstance(entry, dict) and "image_done" in entry:
            image_id = entry["image_done"]
            if (
                any(record is None for record in pending)
                or len(pending) != entry.get("sentences")
                or any(record.get("image_id") != image_id for record in pending)
                or any(done.marker["image_done"] == image_id for done in completed)
            ):
                raise InputError(
                    f"{path} is damaged before line {number}; use another --out or delete that directory"
                )
            completed.append(_CompletedImage(entry, [record for record in pending if record is not None]))
            pending = []
            keep = position
        else:
            pending.append(entry if isinstance(entry, dict) else None)
    if keep != len(data):
        with open(path, "r+b") as handle:
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
    return completed


def _add_record(accumulator: MetricAccumulator, record: dict[str, Any]) -> None:
    accumulator.add(
        record["I"],
        record["U"],
        ref_id=record["ref_id"],
        image_id=record["image_id"],
        no_proposals=record["no_proposals"],
    )


def _evaluate_image(
    group: ImageGroup,
    dataset: ReferDataset,
    segmenter: Any,
    proposal_source: ProposalSource,
    save_masks: Path | None,
) -> list[dict[str, Any]]:
    """The records of every sentence on one image (proposals and set_image paid once)."""
    image = dataset.load_image(group.image)
    proposals = proposal_source(image, group.image)
    size = (group.image.height, group.image.width)
    has_proposals = len(proposals) > 0
    if has_proposals:
        if proposals.image_size != size:
            raise InputError(
                f"proposals for image {group.image.image_id} are {proposals.image_size}, the image is {size}"
            )
        segmenter.set_image(image, proposals)
    records = []
    for ref in group.refs:
        gt = dataset.gt_mask(ref)
        for sentence in ref.sentences:
            record: dict[str, Any] = {
                "image_id": group.image.image_id,
                "ref_id": ref.ref_id,
                "sent_id": sentence.sent_id,
                "phrase": sentence.raw,
            }
            if has_proposals:
                try:
                    result = segmenter.predict(sentence.raw)
                except GlobalLocalError as error:
                    # Name the sentence: over thousands of them the bare reason is not enough.
                    raise type(error)(
                        f"ref {ref.ref_id} sentence {sentence.sent_id} ({sentence.raw!r}): {error}"
                    ) from None
                pred = result.mask
                intersection, union = intersection_union(pred, gt)
                record.update(
                    index=int(result.index),
                    score=float(result.scores[result.index]),
                    noun_phrase=result.noun_phrase,
                    expression=result.expression,
                    truncated=bool(result.truncated),
                )
            else:
                # No proposal to choose: an empty prediction, IoU 0 (never skipped).
                pred = None
                intersection, union = 0, int(gt.sum())
                record.update(index=None, score=None, noun_phrase=None, expression=None, truncated=False)
            record.update(
                I=intersection,
                U=union,
                IoU=sentence_iou(intersection, union),
                no_proposals=not has_proposals,
            )
            if save_masks is not None:
                path = save_masks / f"{ref.ref_id}_{sentence.sent_id}.png"
                save_mask_png(np.zeros_like(gt) if pred is None else pred, path)
            records.append(record)
    return records


def _package_versions() -> dict[str, str]:
    versions = {}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _build_report(
    completed: list[_CompletedImage], identity: dict[str, Any], out_dir: Path, total_images: int
) -> dict[str, Any]:
    """The report, from the records alone.

    Wall time is the sum of the per-image times over all sessions: model
    loading and work lost to interruptions are not in it, so resumed and
    uninterrupted runs are comparable.
    """
    accumulator = MetricAccumulator()
    truncated = 0
    for done in completed:
        for record in done.records:
            _add_record(accumulator, record)
            truncated += bool(record.get("truncated"))
    wall = sum(float(done.marker.get("seconds", 0.0)) for done in completed)
    return {
        "metrics": accumulator.summary(),
        "truncated_sentences": truncated,
        "images_total": total_images,
        "wall_time_s": wall,
        "images_per_second": len(completed) / wall if wall > 0 else None,
        "config": identity,
        "out_dir": str(out_dir),
        "versions": _package_versions(),
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _report_markdown(report: dict[str, Any]) -> str:
    config, metrics = report["config"], report["metrics"]
    thresholds = [f"{t:.1f}" for t in PRECISION_THRESHOLDS]
    header = ["oIoU", "mIoU", *(f"P@{t}" for t in thresholds)]
    values = [metrics["oIoU"], metrics["mIoU"], *(metrics["precision"][t] for t in thresholds)]
    lines = [
        f"# Global-Local evaluation: {config['dataset']} {config['split']} ({config['split_by']})",
        "",
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
        "| " + " | ".join(f"{value:.2f}" for value in values) + " |",
        "",
        f"- images: {metrics['images']}, refs: {metrics['refs']}, sentences: {metrics['sentences']}",
        f"- images without proposals: {metrics['no_proposal_images']} ({metrics['no_proposal_refs']} refs, "
        f"{metrics['no_proposal_sentences']} sentences, scored as IoU 0)",
        f"- expressions truncated to CLIP's 77 tokens: {report['truncated_sentences']}",
        f"- cumulative I / U: {metrics['sum_intersection']} / {metrics['sum_union']}",
        f"- wall time: {report['wall_time_s']:.1f} s",
        "",
        "## Configuration",
        "",
        "| key | value |",
        "| --- | --- |",
    ]
    flat = {key: value for key, value in config.items() if key != "settings"}
    flat.update({f"settings.{key}": value for key, value in config.get("settings", {}).items()})
    lines += [f"| {key} | {json.dumps(value)} |" for key, value in sorted(flat.items())]
    lines += ["", "## Versions", "", "| package | version |", "| --- | --- |"]
    lines += [f"| {name} | {version} |" for name, version in report["versions"].items()]
    return "\n".join(lines) + "\n"


def _ground_truth_source(dataset: ReferDataset) -> ProposalSource:
    def source(image: Image.Image, record: ImageRecord) -> Proposals:
        return dataset.instance_masks(record.image_id)

    return source


def run_evaluation(
    config: EvaluationConfig,
    segmenter: Any,
    proposal_source: ProposalSource | str,
    progress: bool = True,
    stop_after_images: int | None = None,
) -> dict[str, Any]:
    """Evaluate a split, resuming from ``config.out_dir`` if it holds a run of the same config.

    ``proposal_source`` is a callable ``(image, record) -> Proposals`` or
    ``"gt"``: the image's ground-truth instance masks from instances.json
    (the oracle setting papers report as an upper bound).

    Returns the report (also written to report.json / report.md).
    ``stop_after_images`` raises :class:`EvaluationStopped` once that many
    images have been completed in this call and more remain, leaving the out
    dir exactly as an interruption would (used to test resuming).
    """
    if config.limit is not None and config.limit < 1:
        raise InputError(f"--limit must be at least 1, got {config.limit}")
    identity = config.identity()
    dataset = ReferDataset(
        config.data_root,
        config.dataset,
        config.split,
        split_by=identity["split_by"],
        images_dir=config.images_dir,
        overlap=config.overlap,
    )
    if proposal_source == "gt":
        proposal_source = _ground_truth_source(dataset)
    elif isinstance(proposal_source, str):
        raise InputError(f"unknown proposal source '{proposal_source}'")
    groups = dataset.images()[: config.limit]
    missing = dataset.missing_images(groups)
    if missing:
        raise InputError(
            f"{len(missing)} of {len(groups)} images are missing from {config.images_dir}, e.g. {missing[0]}"
        )

    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_or_write_config(out_dir, identity)
    records_path = out_dir / RECORDS_FILE
    completed = _recover_records(records_path)
    expected = {group.image.image_id: group.sentence_count for group in groups}
    for done in completed:
        if expected.get(done.marker["image_done"]) != done.marker["sentences"]:
            raise InputError(
                f"{records_path} does not match the dataset (image {done.marker['image_done']}); "
                "use another --out or delete that directory"
            )
    done_ids = {done.marker["image_done"] for done in completed}
    todo = [group for group in groups if group.image.image_id not in done_ids]
    save_masks = Path(config.save_masks) if config.save_masks is not None else None

    running = MetricAccumulator()
    for done in completed:
        for record in done.records:
            _add_record(running, record)

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TextColumn("{task.fields[sentences]} sentences"),
        TextColumn("oIoU {task.fields[oiou]:.2f}  mIoU {task.fields[miou]:.2f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    description = f"{config.dataset} {config.split}"
    with (
        Progress(*columns, console=Console(stderr=True), disable=not progress) as bar,
        open(records_path, "ab") as handle,
    ):
        task = bar.add_task(
            description,
            total=len(groups),
            completed=len(completed),
            sentences=running.sentences,
            oiou=running.oiou,
            miou=running.miou,
        )
        for count, group in enumerate(todo, start=1):
            started = time.perf_counter()
            records = _evaluate_image(group, dataset, segmenter, proposal_source, save_masks)
            for record in records:
                handle.write(json.dumps(record).encode("utf-8") + b"\n")
                _add_record(running, record)
            marker = {
                "image_done": group.image.image_id,
                "sentences": len(records),
                "seconds": time.perf_counter() - started,
            }
            handle.write(json.dumps(marker).encode("utf-8") + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
            completed.append(_CompletedImage(marker, records))
            bar.update(task, advance=1, sentences=running.sentences, oiou=running.oiou, miou=running.miou)
            if stop_after_images is not None and count >= stop_after_images and count < len(todo):
                raise EvaluationStopped(f"stopped after {count} images")

    report = _build_report(completed, identity, out_dir, len(groups))
    save_text(json.dumps(report, indent=2) + "\n", out_dir / REPORT_JSON)
    save_text(_report_markdown(report), out_dir / REPORT_MD)
    return report


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def format_report_table(run_dirs: list[Path]) -> Table:
    """The metrics of finished runs side by side, one column per run directory."""
    reports = []
    for run_dir in run_dirs:
        path = Path(run_dir) / REPORT_JSON
        if not path.is_file():
            raise InputError(
                f"no finished run in {run_dir} ({REPORT_JSON} missing); run the evaluation to the end first"
            )
        try:
            reports.append(json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InputError(f"{path} is not valid JSON: {error}") from None

    table = Table(title="Global-Local evaluation")
    table.add_column("")
    for run_dir in run_dirs:
        table.add_column(str(run_dir), justify="right")

    def row(label: str, values: list[str]) -> None:
        table.add_row(label, *values)

    configs = [r["config"] for r in reports]
    row("dataset", [f"{c['dataset']} {c['split']} ({c['split_by']})" for c in configs])
    row("overlap", [str(c["overlap"]) for c in configs])
    for key in sorted({key for c in configs for key in c.get("settings", {})}):
        row(key, [_cell(c.get("settings", {}).get(key, "-")) for c in configs])
    table.add_section()
    row("oIoU", [f"{r['metrics']['oIoU']:.2f}" for r in reports])
    row("mIoU", [f"{r['metrics']['mIoU']:.2f}" for r in reports])
    for threshold in (f"{t:.1f}" for t in PRECISION_THRESHOLDS):
        row(f"P@{threshold}", [f"{r['metrics']['precision'][threshold]:.2f}" for r in reports])
    table.add_section()
    row("images", [f"{r['metrics']['images']}/{r['images_total']}" for r in reports])
    row("sentences", [str(r["metrics"]["sentences"]) for r in reports])
    row("no-proposal sentences", [str(r["metrics"]["no_proposal_sentences"]) for r in reports])
    row("truncated sentences", [str(r["truncated_sentences"]) for r in reports])
    row("wall time (s)", [f"{r['wall_time_s']:.1f}" for r in reports])
    return table
