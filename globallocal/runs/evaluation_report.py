"""The report of an evaluation run, from its records alone: metrics, subsets, versions, and its Markdown."""

from __future__ import annotations

import datetime
import json
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

from ..data.datasets import SUBSET_ORDER, dataset_label
from ..errors import InputError
from ..plurals import counted
from .benchmark_metrics import Tally, family_of, metric_values
from .evaluation_records import CompletedImage, add_record
from .metrics import format_metric

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
    return (SUBSET_ORDER.index(name) if name in SUBSET_ORDER else len(SUBSET_ORDER), name)


def answer_kind(settings: dict[str, Any], phrase_dependent: bool = False) -> str | None:
    """How many objects the run's method answers with (its registry entry's
    :meth:`~globallocal.methods.MethodSpec.answer_kind`); None for a method this version does not know."""
    from ..methods import DEFAULT_METHOD, get_method

    try:
        return get_method(settings.get("method", DEFAULT_METHOD)).answer_kind(settings, phrase_dependent)
    except InputError:
        return None


def build_report(
    completed: list[CompletedImage],
    identity: dict[str, Any],
    out_dir: Path,
    total_images: int,
    processes: int,
    notes: dict[str, Any] | None = None,
    split_images: int | None = None,
    limit: int | None = None,
    missing: dict[str, Any] | None = None,
    answers: str | None = None,
) -> dict[str, Any]:
    """The report, from the records alone (and the dataset's ``notes`` on its selection).

    The metrics are the dataset's own (:func:`~globallocal.runs.benchmark_metrics.family_of`). Records that
    name ``subsets`` (PhraseCut's, ReasonSeg's) also give the metrics of each subset. ``missing``: the photos
    left out because they are missing (datasets that allow it), counted. ``answers``: how many objects the
    method's answers hold (:func:`answer_kind`). Wall time is the sum of the per-image
    times over all sessions and processes: model loading and work lost to interruptions are
    not in it, so resumed and uninterrupted runs are comparable. ``total_images`` are the images evaluated
    (the first ``limit`` of the split's ``split_images``).
    """
    family = family_of(identity["dataset"])
    accumulator = family.make()
    by_subset: dict[str, Tally] = {}
    names = {name for done in completed for record in done.records for name in record.get("other_answers", {})}
    others = {name: family.make() for name in sorted(names)}
    truncated = 0
    outcomes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for done in completed:
        for record in done.records:
            add_record(accumulator, record)
            if isinstance(record.get("outcome"), str):  # how a method that records one answered (the VLM's)
                outcomes[record["outcome"]] += 1
                if isinstance(record.get("outcome_reason"), str):
                    reasons[record["outcome_reason"]] += 1
            for name in record.get("subsets", ()):
                add_record(by_subset.setdefault(name, family.make()), record)
            truncated += bool(record.get("truncated"))
            # A sentence without proposals has no answer of any kind: IoU 0 in every table.
            for name, total in others.items():
                add_record(total, {**record, **record.get("other_answers", {}).get(name, {})})
    wall = sum(float(done.marker.get("seconds", 0.0)) for done in completed)
    extra: dict[str, Any] = {}
    if notes:
        extra["selection"] = notes
    if missing is not None:
        extra["missing_photos"] = missing
    if outcomes:
        extra["answer_outcomes"] = {"outcomes": dict(sorted(outcomes.items())),
                                    "reasons": dict(sorted(reasons.items()))}
    if by_subset:
        extra["subsets"] = {
            name: {**family.headline_values(by_subset[name]), "sentences": by_subset[name].sentences}
            for name in sorted(by_subset, key=_subset_order)
        }
    return {
        "metrics": accumulator.summary(),
        "answers": answers,
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


def outcomes_text(answer_outcomes: dict[str, Any]) -> str:
    """``select 12, no_mask 3, vlm_error 2 (transport 1, bad_json 1)``: each outcome's count, then the reasons."""
    counts = ", ".join(f"{name} {count}" for name, count in answer_outcomes["outcomes"].items())
    reasons = ", ".join(f"{name} {count}" for name, count in answer_outcomes["reasons"].items())
    return counts + (f" ({reasons})" if reasons else "")


def images_label(report: dict[str, Any], compact: bool = False) -> str:
    """'3 of 5 images (--limit 3)' (compact, for a table: '3/5 (--limit 3)'): the images scored, of the split's,
    and the limit that cut it."""
    done, split = report["metrics"]["images"], report.get("images_in_split", report["images_total"])
    limit = report.get("limit")
    cut = f" (--limit {limit})" if limit is not None and limit < split else ""
    return f"{done}/{split}{cut}" if compact else f"{done} of {counted(split, 'image')}{cut}"


def report_markdown(report: dict[str, Any]) -> str:
    config, metrics = report["config"], report["metrics"]
    family = family_of(config["dataset"])
    answers = {"final": metrics, **report.get("other_answers", {})}
    method = config.get("settings", {}).get("method", "global-local")
    names = [name for name, _ in family.rows]
    lines = [
        f"# {method} evaluation: {dataset_label(config)}",
        "",
        "| answer | " + " | ".join(names) + " |",
        "|" + " --- |" * (len(names) + 1),
    ]
    for name, answer in answers.items():
        cells = map(str, map(format_metric, metric_values(family, answer).values()))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"- images: {images_label(report)}, refs: {metrics['refs']}, sentences: {metrics['sentences']}",
    ]
    if report.get("answers"):
        lines.append(f"- the method answers with {report['answers']} object(s) per sentence")
    if "answer_outcomes" in report:
        lines.append(f"- how the sentences were answered: {outcomes_text(report['answer_outcomes'])}")
    if "outcomes" in metrics:
        outcomes = metrics["outcomes"]
        lines.append(
            f"- no-target sentences: {metrics['no_target_sentences']} (answered empty, TP: {outcomes['TP']}; with "
            f"pixels, FN: {outcomes['FN']}); target sentences answered with pixels, TN: {outcomes['TN']}; empty, "
            f"FP: {outcomes['FP']}"
        )
    if "missing_photos" in report:
        missing = report["missing_photos"]
        lines.append(f"- photos missing, left out of the metrics: {missing['images']} "
                     f"({counted(missing['sentences'], 'sentence')})"
                     + (f", e.g. {missing['first']}" if missing.get("first") else ""))
    lines += [
        f"- images without proposals: {metrics['no_proposal_images']} ({counted(metrics['no_proposal_refs'], 'ref')}, "
        f"{counted(metrics['no_proposal_sentences'], 'sentence')}, scored as empty answers: IoU 0 where there is "
        "a target)",
        f"- expressions truncated to CLIP's 77 tokens: {report['truncated_sentences']}",
        f"- cumulative I / U: {metrics['sum_intersection']} / {metrics['sum_union']}",
        f"- wall time: {report['wall_time_s']:.1f} s",
    ]
    if "selection" in report:
        lines.append(f"- {_selection(report['selection'])}")
    if "subsets" in report:
        headline = [name for name in next(iter(report["subsets"].values())) if name != "sentences"]
        lines += ["", f"## {' and '.join(headline)} by subset", "",
                  "| subset | " + " | ".join(headline) + " | sentences |", "|" + " --- |" * (len(headline) + 2)]
        lines += [
            f"| {name} | " + " | ".join(str(format_metric(values[key])) for key in headline)
            + f" | {values['sentences']} |"
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


def _selection(selection: dict[str, Any]) -> str:
    """The dataset's notes on what it selected, in words."""
    if "dropped_by_reason" in selection:  # PhraseCut's
        reasons = ", ".join(f"{count} {reason.replace('_', ' ')}" for reason, count in
                            selection["dropped_by_reason"].items())
        return (f"subset {selection['subset']}: {selection['tasks']} of "
                f"{counted(selection['tasks_in_files'], 'task')}, "
                f"{selection['tasks_dropped']} dropped ({reasons})")
    return "selection: " + ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in selection.items())
