"""The report of an evaluation run, from its records alone: metrics, subsets, versions, and its Markdown."""

from __future__ import annotations

import datetime
import json
from importlib import metadata
from pathlib import Path
from typing import Any

from ..data.datasets import dataset_label
from ..data.phrasecut import BREAKDOWN
from ..plurals import counted
from .evaluation_records import CompletedImage, add_record
from .metrics import PRECISION_THRESHOLDS, MetricAccumulator

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
_VERSIONED_PACKAGES = ("torch", "open_clip_torch", "spacy", "numpy", "pycocotools", "globallocal")


def _package_versions() -> dict[str, str]:
    versions = {}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _subset_order(name: str) -> tuple[int, str]:
    return (BREAKDOWN.index(name) if name in BREAKDOWN else len(BREAKDOWN), name)


def build_report(
    completed: list[CompletedImage],
    identity: dict[str, Any],
    out_dir: Path,
    total_images: int,
    processes: int,
    notes: dict[str, Any] | None = None,
    split_images: int | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """The report, from the records alone (and the dataset's ``notes`` on its selection).

    Records that name ``subsets`` (PhraseCut's) also give the metrics of
    each subset. Wall time is the sum of the per-image times over all
    sessions and processes: model loading and work lost to interruptions are
    not in it, so resumed and uninterrupted runs are comparable. ``total_images`` are the images evaluated
    (the first ``limit`` of the split's ``split_images``).
    """
    accumulator = MetricAccumulator()
    by_subset: dict[str, MetricAccumulator] = {}
    names = {name for done in completed for record in done.records for name in record.get("other_answers", {})}
    others = {name: MetricAccumulator() for name in sorted(names)}
    truncated = 0
    for done in completed:
        for record in done.records:
            add_record(accumulator, record)
            for name in record.get("subsets", ()):
                add_record(by_subset.setdefault(name, MetricAccumulator()), record)
            truncated += bool(record.get("truncated"))
            # A sentence without proposals has no answer of any kind: IoU 0 in every table.
            for name, total in others.items():
                add_record(total, {**record, **record.get("other_answers", {}).get(name, {})})
    wall = sum(float(done.marker.get("seconds", 0.0)) for done in completed)
    extra: dict[str, Any] = {}
    if notes:
        extra["selection"] = notes
    if by_subset:
        extra["subsets"] = {
            name: {"mIoU": by_subset[name].miou, "oIoU": by_subset[name].oiou, "sentences": by_subset[name].sentences}
            for name in sorted(by_subset, key=_subset_order)
        }
    return {
        "metrics": accumulator.summary(),
        **extra,
        "other_answers": {name: total.summary() for name, total in others.items()},
        "truncated_sentences": truncated,
        "images_total": total_images,
        "images_in_split": total_images if split_images is None else split_images,
        "limit": limit,
        "wall_time_s": wall,
        "images_per_second": len(completed) / wall if wall > 0 else None,
        "processes": processes,
        "config": identity,
        "out_dir": str(out_dir),
        "versions": _package_versions(),
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def images_label(report: dict[str, Any], compact: bool = False) -> str:
    """'3 of 5 images (--limit 3)' (compact, for a table: '3/5 (--limit 3)'): the images scored, of the split's,
    and the limit that cut it."""
    done, split = report["metrics"]["images"], report.get("images_in_split", report["images_total"])
    limit = report.get("limit")
    cut = f" (--limit {limit})" if limit is not None and limit < split else ""
    return f"{done}/{split}{cut}" if compact else f"{done} of {counted(split, 'image')}{cut}"


def report_markdown(report: dict[str, Any]) -> str:
    config, metrics = report["config"], report["metrics"]
    thresholds = [f"{t:.1f}" for t in PRECISION_THRESHOLDS]
    header = ["answer", "oIoU", "mIoU", *(f"P@{t}" for t in thresholds)]
    answers = {"final": metrics, **report.get("other_answers", {})}
    method = config.get("settings", {}).get("method", "global-local")
    lines = [
        f"# {method} evaluation: {dataset_label(config)}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
    ]
    for name, answer in answers.items():
        values = [answer["oIoU"], answer["mIoU"], *(answer["precision"][t] for t in thresholds)]
        lines.append(f"| {name} | " + " | ".join(f"{value:.2f}" for value in values) + " |")
    lines += [
        "",
        f"- images: {images_label(report)}, refs: {metrics['refs']}, sentences: {metrics['sentences']}",
        f"- images without proposals: {metrics['no_proposal_images']} ({counted(metrics['no_proposal_refs'], 'ref')}, "
        f"{counted(metrics['no_proposal_sentences'], 'sentence')}, scored as IoU 0)",
        f"- expressions truncated to CLIP's 77 tokens: {report['truncated_sentences']}",
        f"- cumulative I / U: {metrics['sum_intersection']} / {metrics['sum_union']}",
        f"- wall time: {report['wall_time_s']:.1f} s",
    ]
    if "selection" in report:
        selection = report["selection"]
        dropped = selection["dropped_by_reason"].items()
        reasons = ", ".join(f"{count} {reason.replace('_', ' ')}" for reason, count in dropped)
        lines.append(
            f"- subset {selection['subset']}: {selection['tasks']} of {counted(selection['tasks_in_files'], 'task')}, "
            f"{selection['tasks_dropped']} dropped ({reasons})"
        )
    if "subsets" in report:
        lines += ["", "## mIoU by subset", "", "| subset | mIoU | oIoU | sentences |", "| --- | --- | --- | --- |"]
        lines += [
            f"| {name} | {values['mIoU']:.2f} | {values['oIoU']:.2f} | {values['sentences']} |"
            for name, values in report["subsets"].items()
        ]
    lines += [
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
