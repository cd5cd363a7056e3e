"""`globallocal report`: many runs in 80 columns, only the settings that differ (as leaf keys, without digests),
Markdown / CSV / LaTeX."""

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
    table = text[text.index("Evaluation"):]
    labels = {line.split()[0] for line in table.splitlines() if line.split()}
    assert "alpha" in labels
    shared = " ".join(text[:text.index("Evaluation")].split())
    for same in ("clip_model", "clip_weights", "preset", "beta", "proposals", "overlap", "dataset", "device"):
        assert same not in labels, same
        assert f" {same}=" in shared, same  # listed once, above the table
    assert "same in every run: dataset=refcoco val (unc), overlap=paper, clip_model=ViT-B-32," in shared
    assert "clip_weights=ViT-B-32.pt," in shared and "alpha=" not in shared
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


# -- runs of different methods, as `evaluate` writes their report.json ----------------------------------------

CLIP_SHA, FREESOLO_SHA, TCL_SHA, SAM3_SHA = (f"{n:x}" * 64 for n in (10, 11, 12, 13))
PARSER = {"parser": "en_core_web_sm 3.7.1"}
GLOBAL_LOCAL = {"method": "global-local", "alpha": 0.95, "beta": 0.5, "masked_blocks": 3,
                "clip_normalization": "imagenet", "antialias": False, "crop_fill": "paper",
                "crop_box": "projection", "feature_norm": "paper", "short_side": 800, "chunk_size": None}
FREESOLO = {"proposals": "freesolo", "freesolo": {"score_threshold": 0.1, "mask_threshold": 0.5,
                                                  "max_proposals": None, "short_side": 800}}
HYBRIDGL = {"method": "hybridgl", "fusion_mode": "G2L", "beta": 0.5, "masking_block": 9, "hybrid_weight": 2.0,
            "top_k": 3, "gem_prompt": "a photo of a {}.", "fallback_target_chunk": "other", "chunk_size": None,
            "tau": 100.0}
SAM2 = {"proposals": "sam2", "sam2": {"model": "sam2.1_hiera_large", "points_per_side": 32,
                                      "stability_score_thresh": 0.95, "crop_n_points_downscale_factor": 1,
                                      "max_proposals": None}}


def _tcl(threshold=None):
    return {"method": "tcl", "window": "slide", "pamr": True, "templates": "identity", "kp_weight": 0.3,
            "threshold": threshold, "preprocessing": None,
            "tcl_weights": {"file": "/home/someone/weights/tcl.pth", "size": 599876543, "sha256": TCL_SHA}}


SAM3 = {"method": "sam3", "prompt": "noun-phrase", "answer": "top", "threshold": 0.5, "fallback": "sam3-lower,none",
        "below_threshold_k": 1,
        "sam3": {"threshold": 0.5, "mask_threshold": 0.5, "max_proposals": None, "fallback": ["sam3-lower", "none"],
                 "below_threshold_k": 1, "sam2": None, "weights": {"size": 3440000000, "sha256": SAM3_SHA},
                 "transformers": "4.57.1"}}


def _evaluated(folder, settings, weights, oiou, pure=None, dataset=None):
    """A finished run's folder with report.json in the layout `evaluate` writes (identity digests included);
    ``dataset``: config fields of another dataset than RefCOCO val."""
    folder.mkdir(parents=True)
    answer = {"oIoU": oiou, "mIoU": oiou + 1, "precision": {t: 10.0 for t in THRESHOLDS}}
    config = {"format": 3, "dataset": "refcoco", "split": "val", "split_by": "unc", "overlap": "paper",
              **(dataset or {}),
              "data_root": "/data/refer", "images_dir": "/data/coco/train2014", "save_masks": None,
              "settings": {**settings, "device": "cuda", "precision": "fp32"},
              "weights": {role: {"size": 1000 + i, "sha256": sha} for i, (role, sha) in enumerate(weights.items())},
              "cache": {"dir": "/cache", "visual": f"visual-{FREESOLO_SHA[:16]}", "text": f"text-{CLIP_SHA[:16]}",
                        "family": "vit"}}
    report = {"metrics": {**answer, "images": 1500, "refs": 3811, "sentences": 10834, "no_proposal_sentences": 0},
              "other_answers": {} if pure is None else {"pure": {**answer, "oIoU": pure, "mIoU": pure}},
              "truncated_sentences": 2, "images_total": 1500, "images_in_split": 1500, "limit": None,
              "wall_time_s": 3600.0, "processes": 1, "config": config, "out_dir": str(folder),
              "versions": {"torch": "2.5.1"}, "finished_at": "2026-12-02T06:00:00+00:00"}
    (folder / "report.json").write_text(json.dumps(report))
    return folder


@pytest.fixture
def methods(tmp_path):
    clip = {"clip_model": "ViT-B-16", "clip_weights": "file"}
    runs = {
        "global-local": ({**clip, "preset": "paper-refcoco", **GLOBAL_LOCAL, **PARSER, **FREESOLO},
                         {"clip": CLIP_SHA, "freesolo": FREESOLO_SHA}),
        "hybridgl": ({**clip, "preset": "hybridgl-paper", **HYBRIDGL, **PARSER, **SAM2}, {"clip": CLIP_SHA}),
        "tcl": ({**clip, "preset": "tcl", **_tcl(), **PARSER}, {"clip": CLIP_SHA}),
        "sam3": ({"clip_model": None, "clip_weights": None, "preset": "sam3", **SAM3, **PARSER, "proposals": "none"},
                 {"sam3": SAM3_SHA}),
        "blend": ({**clip, "preset": "paper-refcoco", **GLOBAL_LOCAL, "tcl_weight": 0.5, "tcl": _tcl(0.4), **PARSER,
                   **FREESOLO}, {"clip": CLIP_SHA, "freesolo": FREESOLO_SHA}),
    }
    return [_evaluated(tmp_path / "runs" / name, settings, weights, 30.0 + i, pure=20.5 if name == "hybridgl" else None)
            for i, (name, (settings, weights)) in enumerate(runs.items())]


def _printed(runs):
    console = Console(record=True, width=80)
    console.print(format_report_table(runs))
    return console.export_text()


def _cells(runs):
    """The table's rows as {label: the runs' cells}, a wrapped label joined, a wrapped cell's lines kept."""
    table = format_report_table(runs).renderables[-1]
    labels, *columns = ([str(cell) for cell in column.cells] for column in table.columns)
    return {label.replace("\n", ""): [column[i] for column in columns] for i, label in enumerate(labels)}


def test_five_methods_fit_80_columns_as_leaf_keys_without_digests(methods):
    text = _printed(methods)
    assert max(len(line) for line in text.splitlines()) <= 80
    for digest in (CLIP_SHA, FREESOLO_SHA, TCL_SHA, SAM3_SHA):
        assert digest[:8] not in text
    assert "sha256" not in text and "599876543" not in text  # a weights file's size is part of its identity
    assert "same in every run: dataset=refcoco val (unc), overlap=paper, parser=en_core_web_sm 3.7.1, " \
           "device=cuda, precision=fp32" in " ".join(text.split())
    cells = _cells(methods)
    # Nested settings are rows of their leaf keys, "-" where a run has no such setting; each setting under its
    # owner's name once: TCL's mask threshold (the method's, null: its default, and the blend's) is not SAM 3's
    # instance threshold, and the SAM 3 method's settings and its source's are one set.
    assert cells["tcl.threshold"] == ["-", "-", "null", "-", "0.4"]
    assert cells["sam3.threshold"] == ["-", "-", "-", "0.5", "-"]
    assert cells["tcl.tcl_weights.file"] == ["-", "-", "tcl.pth", "-", "tcl.pth"]
    assert cells["sam3.fallback"] == ["-", "-", "-", "sam3-\nlower,none", "-"]
    assert cells["sam3.prompt"] == ["-", "-", "-", "noun-\nphrase", "-"]
    assert cells["global-local.alpha"] == ["0.95", "-", "-", "-", "0.95"]
    assert cells["hybridgl.beta"] == ["-", "0.5", "-", "-", "-"] and cells["global-local.beta"][1] == "-"
    assert cells["freesolo.score_threshold"] == ["0.1", "-", "-", "-", "0.1"]
    assert cells["sam2.crop_n_points_downscale_factor"] == ["-", "1", "-", "-", "-"]
    assert cells["method"] == ["global-\nlocal", "hybridgl", "tcl", "sam3", "global-\nlocal"]
    assert cells["oIoU"] == ["30.00", "31.00", "32.00", "33.00", "34.00"]
    assert cells["oIoU (pure)"] == ["-", "20.50", "-", "-", "-"]
    for unowned in ("threshold", "fallback", "alpha", "tcl_weights.file", "tcl.method", "window"):
        assert unowned not in cells, unowned
    for nested in ("tcl", "sam3", "sam3.weights", "freesolo", "sam2", "tcl_weights", "tcl.tcl_weights"):
        assert nested not in cells, nested
    assert not [label for label in cells if label.endswith((".size", ".sha256"))]
    assert "dataset" not in cells and "parser" not in cells  # the same in every run


def test_text_formats_of_five_methods_name_leaf_keys_without_digests(methods):
    table = format_report_text(methods, "csv")
    header, *rows = csv.reader(io.StringIO(table))
    assert "tcl.threshold" in header and "sam3.transformers" in header and "tcl" not in header
    assert "threshold" not in header and "fallback" not in header and header.count("sam3.fallback") == 1
    assert [row[header.index("tcl.threshold")] for row in rows] == ["-", "-", "null", "-", "0.4"]
    assert [row[header.index("sam2.model")] for row in rows] == ["-", "sam2.1_hiera_large", "-", "-", "-"]
    for digest in (CLIP_SHA, FREESOLO_SHA, TCL_SHA, SAM3_SHA):
        assert digest[:8] not in table and digest[:8] not in format_report_text(methods, "markdown")


def test_runs_of_one_method_differing_in_one_nested_leaf(tmp_path):
    settings = {"clip_model": "ViT-B-16", "clip_weights": "file", "preset": "paper-refcoco", **GLOBAL_LOCAL,
                "tcl_weight": 0.5, **PARSER, **FREESOLO}
    runs = [_evaluated(tmp_path / f"t{threshold}", {**settings, "tcl": _tcl(threshold)}, {"clip": CLIP_SHA}, 30.0)
            for threshold in (0.3, 0.4, 0.5)]
    cells = _cells(runs)
    assert list(cells)[0] == "tcl.threshold" and cells["tcl.threshold"] == ["0.3", "0.4", "0.5"]
    assert list(cells)[1] == "oIoU"  # no other setting differs
    text = _printed(runs)
    shared = " ".join(text[:text.index("Evaluation")].split())
    assert "tcl.window=slide," in shared and "tcl.tcl_weights.file=tcl.pth," in shared
    assert "global-local.tcl_weight=0.5," in shared and "global-local.alpha=0.95," in shared
    assert TCL_SHA[:8] not in text and "sha256" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    header = next(csv.reader(io.StringIO(format_report_text(runs, "csv"))))
    assert header[:3] == ["run", "tcl.threshold", "oIoU"]


def test_seven_runs_wrap_at_word_boundaries_in_80_columns(methods, tmp_path):
    clip = {"clip_model": "ViT-B-16", "clip_weights": "file"}
    plain = {**clip, "preset": "paper-refcoco", **GLOBAL_LOCAL, **PARSER, **FREESOLO}
    phrasecut = {"dataset": "phrasecut", "split": "val", "subset": "all", "overlap": None}
    runs = [*methods,
            _evaluated(tmp_path / "more" / "phrasecut", plain, {"clip": CLIP_SHA}, 20.0, dataset=phrasecut),
            _evaluated(tmp_path / "more" / "openai", {**plain, "clip_normalization": "openai"}, {"clip": CLIP_SHA},
                       21.0)]
    text = _printed(runs)
    assert max(len(line) for line in text.splitlines()) <= 80
    cells = _cells(runs)
    # Whole words on each line: a value wraps after - _ . / , or a space, never inside "phrasecut" or "imagenet".
    assert cells["dataset"][-2] == "phrasecut\nval (all)" and cells["dataset"][0] == "refcoco\nval (unc)"
    assert cells["global-local.clip_normalization"] == ["imagenet", "-", "-", "-", "imagenet", "imagenet", "openai"]
    assert cells["preset"][1] == "hybridgl-\npaper" and cells["method"][0] == "global-\nlocal"
    assert cells["hybridgl.gem_prompt"][1].split("\n") == ["a photo", "of a {}."]
    for label in cells:  # labels wrap after dots and underscores, and are never cut short
        assert "…" not in label


def test_a_word_is_cut_only_when_it_alone_is_wider_than_the_column():
    from globallocal.runs.report import _fit

    assert _fit("phrasecut val (all)", 9) == "phrasecut\nval (all)"
    assert _fit("sam2.1_hiera_large", 7) == "sam2.1_\nhiera_\nlarge"
    assert _fit("supercalifragilistic", 8, lines=None) == "supercal\nifragili\nstic"


def test_a_folder_of_runs_suggests_its_runs_and_a_missing_folder_is_named(cli, runs, tmp_path):
    parent = tmp_path / "runs"
    result = cli("report", parent)
    assert result.code == 2
    assert result.err.strip() == (f"error: {parent} holds 5 runs (refcoco_val_global-local_paper-refcoco_ViT-B-32_"
                                  "freesolo_a0.8, refcoco_val_global-local_paper-refcoco_ViT-B-32_freesolo_a0.85, "
                                  "refcoco_val_global-local_paper-refcoco_ViT-B-32_freesolo_a0.9, ...), not a run of "
                                  f"its own: give them, e.g. `globallocal report {parent}/*`")
    result = cli("report", tmp_path / "runs" / "nope")
    assert result.code == 2 and result.err.strip() == f"error: no such folder: {tmp_path / 'runs' / 'nope'}"
    (tmp_path / "empty").mkdir()
    result = cli("report", tmp_path / "empty")
    assert result.code == 2 and "no finished run in" in result.err
