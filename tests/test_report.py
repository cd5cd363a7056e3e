"""`globallocal report`: many runs in 80 columns, only the settings that differ, Markdown / CSV / LaTeX."""

from __future__ import annotations

import csv
import io
import json

import pytest
from rich.console import Console

from globallocal.errors import InputError
from globallocal.runs.report import format_report_table, format_report_text

THRESHOLDS = ("0.5", "0.6", "0.7", "0.8", "0.9")


def _fake_run(folder, alpha, model="ViT-B-32", oiou=24.8312345678):
    folder.mkdir(parents=True)
    report = {
        "config": {
            "dataset": "refcoco", "split": "val", "split_by": "unc", "overlap": "paper",
            "settings": {"clip_model": model, "clip_weights": "/home/someone/weights/ViT-B-32.pt", "preset": "paper",
                         "alpha": alpha, "beta": 0.5, "proposals": "freesolo", "device": "cpu"},
        },
        "metrics": {"oIoU": oiou, "mIoU": 26.2, "precision": {t: 10.0 for t in THRESHOLDS}, "images": 1500,
                    "sentences": 10834, "no_proposal_sentences": 0},
        "images_total": 1500, "truncated_sentences": 0, "wall_time_s": 3600.0,
    }
    (folder / "report.json").write_text(json.dumps(report))
    return folder


@pytest.fixture
def runs(tmp_path):
    return [
        _fake_run(tmp_path / f"runs/refcoco_val_global-local_paper-refcoco_ViT-B-32_freesolo_a{alpha}", alpha,
                  oiou=24.8312345678 + i)
        for i, alpha in enumerate((0.8, 0.85, 0.9, 0.95, 1.0))
    ]


def test_many_runs_fit_80_columns_and_show_only_what_differs(runs):
    console = Console(record=True, width=80)
    console.print(format_report_table(runs))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert f"runs in {runs[0].parent}:".replace("\n", "") in text.replace("\n", "")
    for i, run in enumerate(runs, start=1):
        assert f"#{i} {run.name}" in text  # every run's own name in full
    assert "alpha" in text and "0.85" in text
    labels = {line.split()[0] for line in text.splitlines() if line.split()}
    assert "alpha" in labels
    for same in ("clip_model", "clip_weights", "preset", "beta", "proposals", "overlap", "dataset", "device"):
        assert same not in labels, same
    assert "24.83" in text and "28.83" in text


def test_text_formats(runs):
    table = list(csv.reader(io.StringIO(format_report_text(runs, "csv"))))
    assert table[0][:3] == ["run", "alpha", "oIoU"]
    assert table[1][0] == str(runs[0]) and table[1][1] == "0.8"
    assert float(table[1][2]) == 24.8312345678  # full precision in CSV
    markdown = format_report_text(runs, "markdown").splitlines()
    assert markdown[0].startswith("| run | alpha | oIoU |") and "| 24.83 |" in markdown[2]
    assert len(markdown) == 2 + len(runs)
    latex = format_report_text(runs, "latex")
    assert latex.startswith("\\begin{tabular}{ll" + "r" * 8 + "}")
    assert "refcoco\\_val" in latex and latex.rstrip().endswith("\\end{tabular}")
    with pytest.raises(InputError, match="unknown report format"):
        format_report_text(runs, "excel")
