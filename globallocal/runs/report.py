"""`globallocal report`: finished evaluation runs side by side, in a terminal or as Markdown, CSV or LaTeX.

Runs of different methods have different, nested settings: they are
compared as dotted leaf keys (``tcl.threshold``), and only those that differ
are rows (what is common says nothing about the difference in scores; the
terminal lists it once, above the table). Each setting is named once, under
its owner's name (:func:`by_owner`: ``tcl.threshold``, ``sam3.threshold``).
Identity digests (a weights file's sha256, a config hash) tell nothing a
reader can compare and stay in report.json. The terminal table is one column
per run (#1, #2, ..., their folders listed above it), its cells wrapped at
word boundaries to fit 80 columns for up to 8 runs.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..data.bounded import NUMBER, check_shape, read_json
from ..data.datasets import dataset_label
from ..data.refer import DEFAULT_SPLIT_BY
from ..errors import InputError
from ..plurals import counted
from .benchmark_metrics import MetricFamily, family_of, metric_values
from .evaluation_report import REPORT_JSON, images_label, outcomes_text
from .metrics import format_metric

FORMATS = ("table", "markdown", "csv", "latex")
# With a single run nothing differs; these say what it was.
_ONE_RUN_KEYS = ("dataset", "method", "clip_model", "preset", "proposals")
# The settings of the run itself, which no method or proposal source owns (see by_owner).
_RUN_KEYS = ("clip_model", "clip_weights", "preset", "method", "parser", "proposals", "device", "precision")
_WIDTH = 80  # the terminal the table is laid out for
_KEY_WIDTH = 24  # the row labels' column at most: longer keys wrap after a dot or an underscore
_KEY_MIN = 8  # ... and at least, when the runs' columns need the room for their words
_MIN_CELL = 6  # "100.00": more runs than fit make the table wider rather than cut the numbers
_CELL_LINES = 3  # a value longer than this many lines is cut
_COMMON_VALUE = 30  # a setting's value in the line of settings all runs share, at most
_BREAK = re.compile(r"(?<=[-_./, ])")  # where a value may wrap: after these


_TEXT = (str, type(None))  # PhraseCut runs have no split_by and no overlap rule
# Every field the tables read, so that a malformed report is named when read rather than crash below; the
# metrics themselves are the dataset's own (MetricFamily.shape).
REPORT_SHAPE = {
    "config": {"dataset": str, "split": str, "overlap": _TEXT, "split_by?": _TEXT, "subset?": _TEXT, "settings?": dict},
    "metrics": {"images": int, "sentences": int, "no_proposal_sentences": int},
    "other_answers?": dict, "subsets?": {"*": dict}, "answers?": _TEXT, "missing_photos?": {"images": int},
    "answer_outcomes?": {"outcomes": {"*": int}, "reasons": {"*": int}},
    "images_total": int, "truncated_sentences": int, "wall_time_s": NUMBER,
    "images_in_split?": int, "limit?": (int, type(None)),
}


def check_report(report: Any, path: Path) -> None:
    """Refuse, in one line naming the key, a report.json that is not one 'globallocal evaluate' writes."""
    fix = "; it is not a report of 'globallocal evaluate', rerun the evaluation"
    check_shape(report, REPORT_SHAPE, str(path), fix)
    family = family_of(report["config"]["dataset"])
    check_shape(report, {"metrics": family.shape(), "other_answers?": {"*": family.shape()}}, str(path), fix)
    if family.subset_rows:
        headline = {name: (*NUMBER, type(None)) for name in family.headline}
        check_shape(report, {"subsets?": {"*": headline}}, str(path), fix)
    if report["config"]["dataset"] in DEFAULT_SPLIT_BY:
        check_shape(report, {"config": {"split_by": str}}, str(path), fix)


def read_report(path: Path) -> dict[str, Any]:
    """A report.json checked as data (:func:`check_report`); a metric written as null (or NaN, read as null) is
    undefined, and shown as such (:func:`~globallocal.runs.metrics.format_metric`)."""
    report = read_json(path, what="report", nan_as_null=True)
    check_report(report, path)
    return report


def check_run_folder(run_dir: Path) -> None:
    """Refuse, saying which, a run folder that does not exist, a file, or a folder of runs (``runs``, where
    ``runs/*`` was meant)."""
    if not run_dir.exists():
        raise InputError(f"no such folder: {run_dir}")
    if not run_dir.is_dir():
        raise InputError(f"{run_dir} is a file; give the folder of a finished evaluation run")
    if (run_dir / REPORT_JSON).is_file():
        return
    runs = sorted(child.name for child in run_dir.iterdir() if (child / REPORT_JSON).is_file())
    if runs:
        named = ", ".join(runs[:3]) + (", ..." if len(runs) > 3 else "")
        raise InputError(f"{run_dir} holds {counted(len(runs), 'run')} ({named}), not a run of its own: give them, "
                         f"e.g. `globallocal report {run_dir / '*'}`")


def load_reports(run_dirs: list[Path]) -> list[dict[str, Any]]:
    """report.json of every run folder; InputError naming a folder whose run has not finished."""
    reports = []
    for run_dir in run_dirs:
        check_run_folder(Path(run_dir))
        path = Path(run_dir) / REPORT_JSON
        if not path.is_file():
            raise InputError(
                f"no finished run in {run_dir} ({REPORT_JSON} missing); run the evaluation to the end first"
            )
        reports.append(read_report(path))
    return reports


# A key ending so names an identity digest, as does a long hexadecimal string whatever its key.
_DIGEST_KEYS = ("sha256", "sha1", "md5", "hash", "digest", "fingerprint")
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{32,}")


def _is_digest(key: str, value: Any) -> bool:
    return key.lower().endswith(_DIGEST_KEYS) or (isinstance(value, str) and bool(_HEX_DIGEST.fullmatch(value)))


def flatten_settings(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted leaf keys (``{"tcl": {"threshold": 0.4}}``: ``tcl.threshold``), digests left out.

    The byte count beside a digest (``{"size", "sha256"}`` of a weights file) is part of that identity and goes
    with it; lists are leaves.
    """
    identity = any(_is_digest(key, value) for key, value in settings.items())
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if _is_digest(key, value) or (identity and key == "size"):
            continue
        if isinstance(value, dict) and value:
            flat.update(flatten_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def by_owner(settings: dict[str, Any]) -> dict[str, Any]:
    """A run's settings with each under its owner's name, once (SAM 3's threshold and TCL's are two settings).

    The run's own (model, preset, parser, device, ...) and the proposal source's part (``freesolo``, ``sam2``,
    ``sam3``: named by ``proposals``) stay as recorded; a part that names its method (a blend's ``tcl``) goes
    under that method's name; every other setting is the method's and goes under its name, together with a part
    of that name (the SAM 3 method's source settings, ``sam3``), whose values win where both name a setting
    (``fallback`` as the source holds it). Settings that name no method are left as they are.
    """
    method = settings.get("method")
    if not isinstance(method, str):
        return dict(settings)
    owned: dict[str, Any] = {}
    same_name: dict[str, Any] = {}
    for key, value in settings.items():
        if key in _RUN_KEYS or key == settings.get("proposals"):
            owned[key] = value
        elif isinstance(value, dict) and isinstance(value.get("method"), str):
            owned.setdefault(value["method"], {}).update({k: v for k, v in value.items() if k != "method"})
        elif key == method and isinstance(value, dict):
            owned.setdefault(method, {})
            same_name.update(value)
        else:
            owned.setdefault(method, {})[key] = value
    if same_name:
        owned[method].update(same_name)
    return owned


def _settings(report: dict[str, Any]) -> dict[str, Any]:
    """A run's configuration as one flat mapping: what it evaluated and every setting, under its owner's name."""
    config = report["config"]
    flat = {
        "dataset": dataset_label(config),
        "overlap": config.get("overlap"),
    }
    flat.update(flatten_settings(by_owner(config.get("settings", {}))))
    return flat


def _show(value: Any) -> str:
    if isinstance(value, str):
        # A weights file is told by its name; the folders around it only make the column wide.
        return Path(value).name if "/" in value else value
    if isinstance(value, list) and value:
        return ",".join(_show(item) for item in value)
    return json.dumps(value)


def compare_settings(reports: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """The setting names whose values are not the same in every run (for one run: the main ones), and the
    settings every run has alike (none for one run). A key some run lacks differs."""
    flats = [_settings(report) for report in reports]
    keys = list(dict.fromkeys(key for flat in flats for key in flat))
    if len(reports) == 1:
        return [key for key in _ONE_RUN_KEYS if key in flats[0]], {}
    differing = [key for key in keys if any(key not in flat for flat in flats)
                 or len({json.dumps(flat[key], sort_keys=True) for flat in flats}) > 1]
    return differing, {key: flats[0][key] for key in keys if key not in differing}


def _families(reports: list[dict[str, Any]]) -> list[MetricFamily]:
    return list(dict.fromkeys(family_of(report["config"]["dataset"]) for report in reports))


def _metrics(reports: list[dict[str, Any]]) -> list[dict[str, float | None]]:
    """Per run, its dataset's metrics by row name (None: undefined), then the headline metrics of each further
    answer some run reports and, for ReasonSeg, of each subset. A run lacks the rows of other datasets. Where
    runs of several datasets share a table, gRefCOCO's and ReasonSeg's names say whose they are."""
    families = _families(reports)
    others = sorted({name for report in reports for name in report.get("other_answers", {})})
    values = []
    for report in reports:
        family = family_of(report["config"]["dataset"])
        prefix = f"{family.label} " if family.label and len(families) > 1 else ""
        row = {prefix + name: value for name, value in metric_values(family, report["metrics"]).items()}
        for name in others:
            answer = report.get("other_answers", {}).get(name)
            if answer:
                row.update({f"{prefix}{key} ({name})": answer[key] for key in family.headline})
        if family.subset_rows:
            for subset, scores in report.get("subsets", {}).items():
                row.update({f"{prefix}{key} {subset}": scores[key] for key in family.headline})
        values.append(row)
    return values


def _metric_names(values: list[dict[str, float | None]]) -> list[str]:
    """Every row name some run has, in the runs' order."""
    return list(dict.fromkeys(name for row in values for name in row))


def _cell(row: dict[str, float | None], name: str, full_precision: bool) -> float | str:
    """A metric in a table: "-" where the run's dataset has no such metric, "undefined" where it is None."""
    return format_metric(row[name], None if full_precision else 2) if name in row else "-"


def _words(text: str) -> list[str]:
    """The pieces a value wraps between: each ends after - _ . / , (kept) or a space (dropped)."""
    return [piece.rstrip() for piece in _BREAK.split(text) if piece.strip()]


def _fit(text: str, width: int, lines: int | None = _CELL_LINES) -> str:
    """``text`` in at most ``lines`` lines (None: as many as it takes) of ``width``, broken after - _ . / , or
    a space; only a word longer than ``width`` is folded; cut with an ellipsis past the last line."""
    rows = [""]
    for piece in filter(None, _BREAK.split(text)):
        if rows[-1] and len(rows[-1]) + len(piece.rstrip()) > width:
            rows.append("")
        rows[-1] += piece
    rows = [row[i:i + width] for row in map(str.rstrip, rows) for i in range(0, len(row) or 1, width)]
    if lines is not None and len(rows) > lines:
        rows = rows[:lines]
        rows[-1] = rows[-1][:width - 1] + "…"
    return "\n".join(rows)


def _layout(labels: list[str], columns: list[list[str]]) -> tuple[int, list[int]]:
    """The widths of the label column and of each run's column in :data:`_WIDTH` (one space between columns).

    A run's column is as wide as its longest word (at least :data:`_MIN_CELL`), the label column as its
    longest label (at most :data:`_KEY_WIDTH`). When that is too wide, the label column narrows first (to
    :data:`_KEY_MIN`; labels wrap after dots and underscores), then the widest run columns (only then is a
    word cut); room left over widens the narrowest run columns, so that long values take fewer lines.
    """
    key = min(_KEY_WIDTH, max(map(len, labels)))
    cells = [max([_MIN_CELL, *(len(word) for value in column for word in _words(value))]) for column in columns]

    def over() -> int:
        return key + sum(cells) + len(cells) - _WIDTH

    key = max(_KEY_MIN, key - max(0, over()))
    while over() > 0 and max(cells) > _MIN_CELL:
        cells[cells.index(max(cells))] -= 1
    while over() < 0:
        cells[cells.index(min(cells))] += 1
    return key, cells


def _legend(run_dirs: list[Path], common: dict[str, Any]) -> list[Text]:
    """The numbered run folders, then the settings all of them have alike."""
    parents = {Path(run_dir).parent for run_dir in run_dirs}
    if len(parents) == 1 and len(run_dirs) > 1:
        # Runs side by side usually share a folder: named once, so each run's line is just its own name.
        legend = [Text(f"runs in {parents.pop()}:")]
        legend += [Text(f"#{i} {Path(run_dir).name}") for i, run_dir in enumerate(run_dirs, start=1)]
    else:
        legend = [Text(f"#{i} {run_dir}") for i, run_dir in enumerate(run_dirs, start=1)]
    if common:
        alike = ", ".join(f"{key}={_fit(_show(value), _COMMON_VALUE, lines=1)}" for key, value in common.items())
        legend.append(Text(f"same in every run: {alike}"))
    return legend


def format_report_table(run_dirs: list[Path]) -> Group:
    """The terminal view: the numbered run folders and what they share, then one column per run (the settings
    that differ, the metrics), in 80 columns for up to 8 runs."""
    reports = load_reports(run_dirs)
    differing, common = compare_settings(reports)
    flats = [_settings(report) for report in reports]
    metrics = _metrics(reports)
    counts = {
        "images": [images_label(r, compact=True) for r in reports],
        "sentences": [str(r["metrics"]["sentences"]) for r in reports],
        "no proposals": [str(r["metrics"]["no_proposal_sentences"]) for r in reports],
        "truncated": [str(r["truncated_sentences"]) for r in reports],
        "wall time (s)": [f"{r['wall_time_s']:.1f}" for r in reports],
    }
    if any(report.get("answers") for report in reports):  # how many objects the method's answers hold
        counts["answers"] = [r.get("answers") or "-" for r in reports]
    if any("answer_outcomes" in report for report in reports):  # how a VLM answered, by outcome
        counts["outcomes"] = [outcomes_text(r["answer_outcomes"]) if "answer_outcomes" in r else "-"
                              for r in reports]
    if any("missing_photos" in report for report in reports):
        counts["photos missing"] = [str(r["missing_photos"]["images"]) if "missing_photos" in r else "-"
                                    for r in reports]
    sections = [
        {key: [_show(flat.get(key, "-")) for flat in flats] for key in differing},
        {name: [str(_cell(row, name, False)) for row in metrics] for name in _metric_names(metrics)},
        counts,
    ]
    # One space between columns, no padding.
    columns = [[cells[i] for rows in sections for cells in rows.values()] for i in range(len(reports))]
    key_width, widths = _layout([key for rows in sections for key in rows], columns)
    table = Table(title="Evaluation", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=0)
    table.add_column("", no_wrap=True)
    for i in range(1, len(reports) + 1):
        table.add_column(f"#{i}", justify="right", no_wrap=True)
    for rows in sections:
        for key, cells in rows.items():
            table.add_row(Text(_fit(key, key_width, lines=None)),
                          *(Text(_fit(value, width)) for value, width in zip(cells, widths)))
        table.add_section()
    return Group(*_legend(run_dirs, common), table)


def _rows(run_dirs: list[Path], reports: list[dict[str, Any]], full_precision: bool) -> tuple[list[str], list[list]]:
    keys = compare_settings(reports)[0]
    metrics = _metrics(reports)
    names = _metric_names(metrics)
    header = ["run", *keys, *names, "sentences"]
    rows = []
    for run_dir, report, values in zip(run_dirs, reports, metrics):
        flat = _settings(report)
        numbers = [_cell(values, name, full_precision) for name in names]
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
    numeric = len(header) - 1 - len(compare_settings(reports)[0])
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
