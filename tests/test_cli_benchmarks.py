"""`globallocal evaluate --dataset grefcoco|reasonseg` end to end with `--method sam3` (a tiny random SAM 3) on
synthetic layouts: resumed after a kill to identical records, the official metrics in report.json and printed by
`report`, SAM 3's union reaching the records unchanged; `report` across datasets keeps each dataset's metrics
apart."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from grefcoco_fixtures import build_grefcoco
from pycocotools import mask as coco_mask
from reasonseg_fixtures import build_reasonseg
from rich.console import Console
from test_cli_sam3_method import THRESHOLD, _records, _without_timing, killed_and_resumed, sam3_directly

from globallocal.runs.report import format_report_table, format_report_text

pytestmark = [pytest.mark.usefixtures("one_thread", "no_clip"),
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]


@pytest.fixture
def no_clip(monkeypatch):
    import globallocal.segmenter

    def refuse(*args, **kwargs):
        raise AssertionError("--method sam3 loaded a CLIP")

    monkeypatch.setattr(globallocal.segmenter, "load_clip", refuse)


def _data(dataset, root):
    if dataset == "grefcoco":
        fixture = build_grefcoco(root)
        return ["--data-root", fixture.data_root, "--images", fixture.images_dir], fixture.images_dir
    fixture = build_reasonseg(root)
    return ["--data-root", fixture.root], fixture.root / "val"


def _official(dataset, records):
    """The dataset's metrics from the records, by the official formulas written out here."""
    if dataset == "reasonseg":
        ious = [r["I"] / (r["U"] + 1e-5) + (r["U"] == 0) for r in records]
        return {"gIoU": 100 * math.fsum(ious) / len(ious),
                "cIoU": 100 * sum(r["I"] for r in records) / (sum(r["U"] for r in records) + 1e-10)}
    no_target = [r for r in records if r["no_target"]]
    targets = [r for r in records if not r["no_target"]]
    tp = sum(r["pred_area"] == 0 for r in no_target)
    tn = sum(r["pred_area"] > 0 for r in targets)
    ious = [float(r["pred_area"] == 0) for r in no_target] + [r["I"] / r["U"] for r in targets]
    return {"gIoU": 100 * math.fsum(ious) / len(records),
            "cIoU": 100 * sum(r["I"] for r in records) / sum(r["U"] for r in records),
            "N-acc": 100 * tp / len(no_target), "T-acc": 100 * tn / len(targets)}


@pytest.mark.parametrize("dataset", ["grefcoco", "reasonseg"])
def test_evaluate_with_sam3_resumes_and_reports_the_official_metrics(cli, sam3_folder, tmp_path, monkeypatch, nlp,
                                                                     dataset):
    data, photos = _data(dataset, tmp_path / "dataset")
    common = ["evaluate", "--dataset", dataset, "--split", "val", *data, "--method", "sam3", "--sam3-weights",
              sam3_folder, "--sam3-threshold", THRESHOLD, "--sam3-answer", "union", "--device", "cpu",
              "--save-masks", "rle"]
    full = cli(*common, "--out", tmp_path / "full")
    assert full.code == 0, full.err
    partial = killed_and_resumed(cli, monkeypatch, common, tmp_path / "resumed")
    records = _records(tmp_path / "full")
    assert 0 < len(partial) < len(records)
    assert _without_timing(_records(tmp_path / "resumed")) == _without_timing(records)

    report = json.loads((tmp_path / "full" / "report.json").read_text())
    for key, value in _official(dataset, records).items():
        assert report["metrics"][key] == pytest.approx(value, rel=1e-12), key
    assert report["answers"] == "none, one or several"
    shown = cli("report", tmp_path / "full")
    assert shown.code == 0, shown.err
    for name in ("gIoU", "cIoU", *(("N-acc", "T-acc", "Pr@0.7") if dataset == "grefcoco" else ("gIoU short",))):
        assert name in shown.out, name
    assert f"{report['metrics']['gIoU']:.2f}" in shown.out and "oIoU" not in shown.out

    # SAM 3's union reaches the record as it is: the mask kept equals SAM 3's own instances OR-ed (the first
    # sample's photo has no EXIF orientation, so it is the same pixels whichever way it is opened).
    record = records[0]
    kept = coco_mask.decode({**record["mask"], "counts": record["mask"]["counts"].encode()}).astype(bool)
    assert kept.sum() == record["pred_area"]
    name = record["name"] if dataset == "reasonseg" else f"COCO_train2014_{record['image_id']:012d}"
    [concept] = sam3_directly(sam3_folder, photos / f"{name}.jpg", [record["phrase"]], nlp)
    assert len(concept.proposals) > 1
    np.testing.assert_array_equal(kept, concept.proposals.masks.numpy().any(axis=0))


# -- report across datasets -----------------------------------------------------------------------------------

def _report(folder, dataset, metrics, answers, **extra):
    folder.mkdir(parents=True)
    config = {"dataset": dataset, "split": "val", "split_by": "unc" if dataset != "reasonseg" else None,
              "overlap": "paper" if dataset == "refcoco" else None, "settings": {"method": "sam3", "answer": "top"}}
    if dataset == "reasonseg":
        config["subset"] = "all"
    report = {"config": config, "metrics": {**metrics, "images": 10, "sentences": 20, "no_proposal_sentences": 0},
              "images_total": 10, "truncated_sentences": 0, "wall_time_s": 1.0, "answers": answers, **extra}
    (folder / "report.json").write_text(json.dumps(report))
    return folder


@pytest.fixture
def three_datasets(tmp_path):
    precision = {t: 10.0 for t in ("0.5", "0.6", "0.7", "0.8", "0.9")}
    return [
        _report(tmp_path / "runs" / "refcoco", "refcoco", {"oIoU": 31.25, "mIoU": 32.5, "precision": precision},
                "exactly one"),
        _report(tmp_path / "runs" / "grefcoco", "grefcoco", {"gIoU": 41.25, "cIoU": 42.5, "N-acc": None, "T-acc": 99.0,
                                                             "precision": {"0.7": 1.0, "0.8": 2.0, "0.9": 3.0}},
                "none or one"),
        _report(tmp_path / "runs" / "reasonseg", "reasonseg", {"gIoU": 51.25, "cIoU": 52.5}, "none, one or several",
                subsets={"short": {"gIoU": 61.25, "cIoU": 62.5, "sentences": 12},
                         "long": {"gIoU": 71.25, "cIoU": 72.5, "sentences": 8}}),
    ]


def test_report_across_datasets_keeps_each_datasets_metrics_apart(three_datasets):
    console = Console(record=True, width=80)
    console.print(format_report_table(three_datasets))
    lines = console.export_text().splitlines()
    rows = {line.split("  ")[0].strip(): line.split()[-3:] for line in lines if line.strip()}
    assert rows["oIoU"] == ["31.25", "-", "-"] and rows["P@0.5"] == ["10.00", "-", "-"]
    assert rows["gRefCOCO gIoU"] == ["-", "41.25", "-"] and rows["gRefCOCO Pr@0.9"] == ["-", "3.00", "-"]
    assert rows["gRefCOCO N-acc"] == ["-", "undefined", "-"]  # null in report.json: no no-target sample
    assert rows["ReasonSeg gIoU"] == ["-", "-", "51.25"] and rows["ReasonSeg cIoU long"] == ["-", "-", "72.50"]
    assert "gIoU" not in rows and "cIoU" not in rows  # never one row for two datasets' different metrics
    at = next(number for number, line in enumerate(lines) if line.startswith("answers"))
    assert " ".join(" ".join(lines[at:]).split()) == "answers exactly one none or one none, one or several"
    csv_lines = format_report_text(three_datasets, "csv").splitlines()
    header = csv_lines[0].split(",")
    assert {"oIoU", "gRefCOCO gIoU", "gRefCOCO N-acc", "ReasonSeg gIoU", "ReasonSeg gIoU short"} <= set(header)
    grefcoco = dict(zip(header, csv_lines[2].split(",")))
    assert grefcoco["gRefCOCO N-acc"] == "undefined" and grefcoco["oIoU"] == "-"
    assert grefcoco["gRefCOCO gIoU"] == "41.25"


def test_a_report_of_one_dataset_names_its_metrics_plainly(three_datasets):
    text = format_report_text(three_datasets[1:2], "markdown")
    assert text.startswith("| run | dataset | method | gIoU | cIoU | N-acc | T-acc | Pr@0.7 | Pr@0.8 | Pr@0.9 |")
    assert "| 41.25 | 42.50 | undefined | 99.00 |" in text and "NaN" not in text and "oIoU" not in text
