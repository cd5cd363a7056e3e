"""`globallocal report`: finished evaluation runs side by side, in a terminal or as Markdown, CSV or LaTeX.

Only the settings that differ between the runs are shown (what is common
says nothing about the difference in scores), so many runs fit a terminal
of 80 columns: the terminal table numbers the runs (#1, #2, ...) and lists
their folders above it.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..data.bounded import NUMBER, check_shape, read_json
from ..data.datasets import PHRASECUT, dataset_label
from ..errors import InputError
from .evaluation_report import REPORT_JSON, images_label
from .metrics import PRECISION_THRESHOLDS

FORMATS = ("table", "markdown", "csv", "latex")
# With a single run nothing differs; these say what it was.
_ONE_RUN_KEYS = ("dataset", "method", "clip_model", "preset", "proposals")


_TEXT = (str, type(None))  # PhraseCut runs have no split_by and no overlap rule
_ANSWER = {"oIoU": NUMBER, "mIoU": NUMBER, "precision": {f"{t:.1f}": NUMBER for t in PRECISION_THRESHOLDS}}
# Every field the tables read, so that a malformed report is named when read rather than crash below.
REPORT_SHAPE = {
    "config": {"dataset": str, "split": str, "overlap": _TEXT, "split_by?": _TEXT, "subset?": _TEXT, "settings?": dict},
    "metrics": {**_ANSWER, "images": int, "sentences": int, "no_proposal_sentences": int},
    "other_answers?": {"*": _ANSWER},
    "images_total": int, "truncated_sentences": int, "wall_time_s": NUMBER,
}


def check_report(report: Any, path: Path) -> None:
    """Refuse, in one line naming the key, a report.json that is not one 'globallocal evaluate' writes."""
    fix = "; it is not a report of 'globallocal evaluate', rerun the evaluation"
    check_shape(report, REPORT_SHAPE, str(path), fix)
    if report["config"]["dataset"] != PHRASECUT:
        check_shape(report, {"config": {"split_by": str}}, str(path), fix)


def load_reports(run_dirs: list[Path]) -> list[dict[str, Any]]:
    """report.json of every run folder; InputError naming a folder whose run has not finished."""
    reports = []
    for run_dir in run_dirs:
        path = Path(run_dir) / REPORT_JSON
        if not path.is_file():
            raise InputError(
                f"no finished run in {run_dir} ({REPORT_JSON} missing); run the evaluation to the end first"
            )
        report = read_json(path, what="report")
        check_report(report, path)
        reports.append(report)
    return reports


def _settings(report: dict[str, Any]) -> dict[str, Any]:
    """A run's configuration as one flat mapping: what it evaluated and every setting."""
    config = report["config"]
    flat = {
        "dataset": dataset_label(config),
        "overlap": config.get("overlap"),
    }
    flat.update(config.get("settings", {}))
    return flat


def _show(value: Any) -> str:
    if isinstance(value, str):
        # A weights file is told by its name; the folders around it only make the column wide.
        return Path(value).name if "/" in value else value
    return json.dumps(value)


def differing_settings(reports: list[dict[str, Any]]) -> list[str]:
    """The setting names whose values are not the same in every run (for one run: the main ones)."""
    flats = [_settings(report) for report in reports]
    keys = list(dict.fromkeys(key for flat in flats for key in flat))
    if len(reports) == 1:
        return [key for key in _ONE_RUN_KEYS if key in flats[0]]
    return [key for key in keys if len({json.dumps(flat.get(key), sort_keys=True) for flat in flats}) > 1]


def _metrics(report: dict[str, Any], others: list[str]) -> dict[str, float | None]:
    """The method's metrics, then oIoU and mIoU of each further answer in ``others`` (None where a run has none)."""
    metrics = report["metrics"]
    values: dict[str, float | None] = {"oIoU": metrics["oIoU"], "mIoU": metrics["mIoU"]}
    values.update({f"P@{t:.1f}": metrics["precision"][f"{t:.1f}"] for t in PRECISION_THRESHOLDS})
    for name in others:
        answer = report.get("other_answers", {}).get(name)
        values.update({f"{key} ({name})": answer[key] if answer else None for key in ("oIoU", "mIoU")})
    return values


def _other_answers(reports: list[dict[str, Any]]) -> list[str]:
    """The further answers some run reports (HybridGL's "pure" one)."""
    return sorted({name for report in reports for name in report.get("other_answers", {})})


def _number(value: float | None, full_precision: bool) -> float | str:
    if value is None:
        return "-"
    return value if full_precision else f"{value:.2f}"


def format_report_table(run_dirs: list[Path]) -> Group:
    """The terminal view: the numbered run folders, then one column per run (settings that differ, metrics)."""
    reports = load_reports(run_dirs)
    parents = {Path(run_dir).parent for run_dir in run_dirs}
    if len(parents) == 1 and len(run_dirs) > 1:
        # Runs side by side usually share a folder: named once, so each run's line is just its own name.
        legend = [Text(f"runs in {parents.pop()}:")]
        legend += [Text(f"#{i} {Path(run_dir).name}") for i, run_dir in enumerate(run_dirs, start=1)]
    else:
        legend = [Text(f"#{i} {run_dir}") for i, run_dir in enumerate(run_dirs, start=1)]
    table = Table(title="Evaluation", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("")
    for i in range(1, len(reports) + 1):
        table.add_column(f"#{i}", justify="right", overflow="fold")
    flats = [_settings(report) for report in reports]
    for key in differing_settings(reports):
        table.add_row(key, *(_show(flat.get(key, "-")) for flat in flats))
    table.add_section()
    metrics = [_metrics(report, _other_answers(reports)) for report in reports]
    for name in metrics[0]:
        table.add_row(name, *(str(_number(values[name], False)) for values in metrics))
    table.add_section()
    table.add_row("images", *(images_label(r, compact=True) for r in reports))
    table.add_row("sentences", *(str(r["metrics"]["sentences"]) for r in reports))
    table.add_row("no proposals", *(str(r["metrics"]["no_proposal_sentences"]) for r in reports))
    table.add_row("truncated", *(str(r["truncated_sentences"]) for r in reports))
    table.add_row("wall time (s)", *(f"{r['wall_time_s']:.1f}" for r in reports))
    return Group(*legend, table)


def _rows(run_dirs: list[Path], reports: list[dict[str, Any]], full_precision: bool) -> tuple[list[str], list[list]]:
    keys = differing_settings(reports)
    metrics = [_metrics(report, _other_answers(reports)) for report in reports]
    header = ["run", *keys, *metrics[0], "sentences"]
    rows = []
    for run_dir, report, values in zip(run_dirs, reports, metrics):
        flat = _settings(report)
        numbers = [_number(value, full_precision) for value in values.values()]
        rows.append([str(run_dir), *(_show(flat.get(key, "-")) for key in keys), *numbers,
                     report["metrics"]["sentences"]])
    return header, rows


def _latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                          ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"),
                          ("^", r"\textasciicircum{}")):
        text = text.replace(char, escaped)
    return text


def format_report_text(run_dirs: list[Path], fmt: str) -> str:
    """One row per run, in ``fmt``: ``markdown``, ``csv`` (metrics at full precision) or ``latex`` (a tabular)."""
    if fmt not in FORMATS[1:]:
        raise InputError(f"unknown report format {fmt!r}; use {', '.join(FORMATS)}")
    reports = load_reports(run_dirs)
    header, rows = _rows(run_dirs, reports, full_precision=fmt == "csv")
    # Columns of numbers end each row: the metrics of every answer, then sentences.
    numeric = len(header) - 1 - len(differing_settings(reports))
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        return buffer.getvalue()
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
        return "\n".join(lines) + "\n"
    lines = [
        r"\begin{tabular}{" + "l" * (len(header) - numeric) + "r" * numeric + "}",
        r"\toprule",
        " & ".join(_latex_escape(str(cell)) for cell in header) + r" \\",
        r"\midrule",
        *(" & ".join(_latex_escape(str(cell)) for cell in row) + r" \\" for row in rows),
        r"\bottomrule",
        r"\end{tabular}",
    ]
    return "\n".join(lines) + "\n"
