"""`globallocal evaluate` and `report` end to end: tiny random CLIP, ground-truth proposals."""

from __future__ import annotations

import json

import pytest
from refer_fixtures import build_refer

from globallocal.runs.evaluate import RECORDS_FILE, REPORT_JSON, REPORT_MD


@pytest.fixture
def run(cli):
    """(exit code, stdout, stderr) of a command."""

    def invoke(*args) -> tuple[int, str, str]:
        result = cli(*args)
        return result.code, result.out, result.err

    return invoke


def test_evaluate_with_ground_truth_proposals_then_report(run, tmp_path, tiny_config_paths, tiny_checkpoints):
    refer = build_refer(tmp_path / "dataset")
    out = tmp_path / "run"
    args = [
        "evaluate", "--dataset", "refcoco", "--split", "val", "--data-root", refer.data_root,
        "--images", refer.images_dir, "--proposals", "gt", "--out", out,
        "--clip-model", tiny_config_paths["resnet"], "--clip-weights", tiny_checkpoints["resnet"],
    ]
    code, stdout, err = run(*args)
    assert code == 0, err
    report = json.loads((out / REPORT_JSON).read_text())
    sentences = [r for r in map(json.loads, (out / RECORDS_FILE).read_text().splitlines()) if "image_done" not in r]
    assert report["metrics"]["sentences"] == len(sentences) > 0
    # With the ground-truth instances as proposals every IoU is that of one instance with the target.
    assert all(0.0 <= r["IoU"] <= 1.0 and r["I"] <= r["U"] for r in sentences)
    assert report["config"]["settings"]["preset"] == "paper-refcoco"
    assert report["config"]["settings"]["proposals"] == "gt"
    assert report["config"]["settings"]["parser"].startswith("en_")
    assert (out / REPORT_MD).is_file() and "oIoU" in stdout

    # The same command again: nothing recomputed, the same report.
    code, _, err = run(*args)
    assert code == 0, err
    again = json.loads((out / REPORT_JSON).read_text())
    assert again["metrics"] == report["metrics"]

    code, stdout, err = run("report", out, out)
    assert code == 0, err
    assert "mIoU" in stdout and f"{report['metrics']['mIoU']:.2f}" in stdout


def test_evaluate_bad_split_is_a_clean_error(run, tmp_path, tiny_config_paths, tiny_checkpoints):
    refer = build_refer(tmp_path / "dataset")
    code, _, err = run(
        "evaluate", "--dataset", "refcoco", "--split", "test", "--data-root", refer.data_root,
        "--images", refer.images_dir, "--proposals", "gt", "--out", tmp_path / "run",
        "--clip-model", tiny_config_paths["vit"], "--clip-weights", tiny_checkpoints["vit"],
    )
    assert code == 2 and "Traceback" not in err
    assert err.startswith("error: ") and "testA" in err
