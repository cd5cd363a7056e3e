"""Every file the tool reads goes through the bounded reader, and run-folder files are checked as data."""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np
import pytest
from phrasecut_fixtures import build_phrasecut
from PIL import Image
from refer_fixtures import ShiftedOracleSource, StandInSegmenter, build_refer

from globallocal.data.phrasecut import PhraseCutDataset
from globallocal.data.refer import ReferDataset
from globallocal.errors import InputError
from globallocal.models.clip import load_clip
from globallocal.proposals.files import load_proposals
from globallocal.runs.evaluate import IMAGE_UNITS, RECORDS_FILE, EvaluationConfig, read_records, run_evaluation
from globallocal.runs.report import load_reports
from globallocal.runs.runfolder import CONFIG_FILE, LOCK_FILE, RunFolder, check_free
from globallocal.runs.sweep import open_cached_run

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture
def refer(tmp_path):
    return build_refer(tmp_path / "dataset")


@pytest.fixture
def finished(refer, tmp_path):
    """A finished evaluation run folder (stand-in scorer, no model) made with a cache folder named."""
    out = tmp_path / "run"
    config = EvaluationConfig(dataset="refcoco", split="val", data_root=refer.data_root, images_dir=refer.images_dir,
                              out_dir=out, settings={"model": "stand-in"})
    dataset = ReferDataset(refer.data_root, "refcoco", "val", images_dir=refer.images_dir)
    run_evaluation(config, StandInSegmenter(), ShiftedOracleSource(dataset), progress=False)
    return out


def _one_line(error: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message and all(part in message for part in parts), message


# ---- one bounded reader on every surface --------------------------------------------------------------------------


def _masks_folder(tmp_path, index_text: str):
    folder = tmp_path / "masks"
    folder.mkdir()
    Image.fromarray(np.full((4, 6), 255, dtype=np.uint8)).save(folder / "000.png")
    (folder / "proposals.json").write_text(index_text)
    return folder


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ('{"proposals": ' + DEEP + "}", ("proposals index", "nests containers more than 32 levels")),
        ('{"proposals": [{"mask": "000.png", "score": 1e400}]}', ("not finite (inf) at proposals[0].score",)),
        ('{"proposals": [{"mask": "\\ud800.png"}]}', ("lone UTF-16 surrogate", "proposals[0].mask")),
        ('[{"mask": "000.png"}]', ("the top level must be an object",)),
        ('{"proposals": [{"score": 0.5}]}', ("proposals[0].mask is missing",)),
    ],
)
def test_a_masks_index_outside_the_bounds_is_one_line(tmp_path, text, parts):
    with pytest.raises(InputError) as refused:
        load_proposals(_masks_folder(tmp_path, text), (4, 6))
    _one_line(refused, "proposals.json", *parts)


@pytest.mark.parametrize("name", ["../outside.png", "/etc/passwd", "sub/../../outside.png"])
def test_a_masks_index_may_not_name_files_outside_its_folder(tmp_path, name):
    Image.fromarray(np.full((4, 6), 255, dtype=np.uint8)).save(tmp_path / "outside.png")
    folder = _masks_folder(tmp_path, json.dumps({"proposals": [{"mask": name}]}))
    with pytest.raises(InputError) as refused:
        load_proposals(folder, (4, 6))
    _one_line(refused, f"names {name!r}, which is outside {folder}")


def test_a_missing_mask_names_the_index_only_when_there_is_one(tmp_path):
    folder = _masks_folder(tmp_path, json.dumps({"proposals": [{"mask": "001.png"}]}))
    with pytest.raises(InputError, match=r"mask file listed in .*proposals.json is missing or not a file: .*001.png"):
        load_proposals(folder, (4, 6))
    lone = tmp_path / "m.png"
    os.mkfifo(lone)  # a PNG "mask" that is not a file, given without any index
    with pytest.raises(InputError) as refused:
        load_proposals(lone, (4, 6))
    assert "proposals.json" not in str(refused.value)


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        (DEEP, ("mask file", "nests containers")),
        ('[{"size": [4, Infinity], "counts": [24]}]', ("not finite (inf) at [0].size[1]",)),
        ('[{"size": [4, 6], "counts": "\\ud800"}]', ("lone UTF-16 surrogate", "[0].counts")),
        ('[{"size": [4, 1' + "0" * 400 + '], "counts": [24]}]', ("an integer beyond 64 bits at [0].size[1]",)),
    ],
)
def test_coco_mask_json_outside_the_bounds_is_one_line(tmp_path, text, parts):
    path = tmp_path / "masks.json"
    path.write_text(text)
    with pytest.raises(InputError) as refused:
        load_proposals(path, (4, 6))
    _one_line(refused, "masks.json", *parts)


def test_dataset_files_outside_the_bounds_are_one_line(refer, tmp_path):
    instances = refer.data_root / "refcoco" / "instances.json"
    instances.write_text('{"images": [], "annotations": ' + DEEP + "}")
    with pytest.raises(InputError) as refused:
        ReferDataset(refer.data_root, "refcoco", "val", images_dir=refer.images_dir)
    _one_line(refused, "instances file", "instances.json nests containers")
    phrasecut = build_phrasecut(tmp_path / "VGPhraseCut_v0")
    (phrasecut.root / "refer_val.json").write_text('[{"task_id": "1", "image_id": Infinity}]')
    with pytest.raises(InputError) as refused:
        PhraseCutDataset(phrasecut.root, "val")
    _one_line(refused, "refer_val.json", "not finite (inf) at [0].image_id")


def test_a_clip_config_outside_the_bounds_is_one_line(tmp_path):
    path = tmp_path / "model.json"
    for text, part in ((DEEP, "nests containers"), ("[1, 2]", "is not an open_clip model config")):
        path.write_text(text)
        with pytest.raises(InputError) as refused:
            load_clip(str(path), "random")
        _one_line(refused, "model.json", part)


@pytest.mark.parametrize(
    ("change", "parts"),
    [
        (lambda vision, text: vision.update(width=10**6), ("vision_cfg.width is 1000000", "from 1 to 4096")),
        (lambda vision, text: text.update(layers=0), ("text_cfg.layers is 0",)),
        (lambda vision, text: vision.update(layers=[1, 1, 10**5, 1]), ("vision_cfg.layers is 100000",)),
        (lambda vision, text: vision.update(image_size="big"), ("vision_cfg.image_size is 'big'",)),
    ],
)
def test_a_clip_config_of_giant_sizes_is_refused_before_building(tmp_path, tiny_config_paths, change, parts):
    config = json.loads(tiny_config_paths["vit"].read_text())
    change(config["vision_cfg"], config["text_cfg"])
    path = tmp_path / "giant.json"
    path.write_text(json.dumps(config))
    with pytest.raises(InputError) as refused:
        load_clip(str(path), "random")
    _one_line(refused, "CLIP model config", *parts)


# ---- run-folder files checked as data ------------------------------------------------------------------------------


def _rewrite(path, change):
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


REPORT_DAMAGE = {
    "no split_by": (lambda r: r["config"].pop("split_by"), "config.split_by is missing"),
    "text metric": (lambda r: r["metrics"].update(oIoU="0.5"), 'metrics.oIoU must be a number or null, got "0.5"'),
    "text wall time": (lambda r: r.update(wall_time_s="1 s"), 'wall_time_s must be a number, got "1 s"'),
    "list metric": (lambda r: r["metrics"]["precision"].update({"0.7": [1]}), "metrics.precision.0.7 must be a"),
    "text limit": (lambda r: r.update(limit="3"), 'limit must be an integer or null, got "3"'),
    "text images in split": (lambda r: r.update(images_in_split=[5]), "images_in_split must be an integer, got [5]"),
    "null": (lambda r: None, "the top level must be an object, got null"),
    "nested": (lambda r: r.update(other_answers=json.loads("[" * 900 + "]" * 900)), "nests containers more than 32"),
}


@pytest.mark.parametrize("damage", sorted(REPORT_DAMAGE))
def test_a_damaged_report_is_one_line_naming_the_key(finished, cli, damage):
    change, part = REPORT_DAMAGE[damage]
    path = finished / "report.json"
    if damage == "null":
        path.write_text("null")
    else:
        _rewrite(path, change)
    with pytest.raises(InputError) as refused:
        load_reports([finished])
    _one_line(refused, "report.json", part)
    result = cli("report", finished)
    assert result.code == 2 and "Traceback" not in result.err and part in result.err


def test_an_undefined_metric_is_written_as_null_and_read_back_as_undefined(refer, tmp_path, cli, monkeypatch):
    from globallocal.runs.metrics import MetricAccumulator

    monkeypatch.setattr(MetricAccumulator, "miou", property(lambda self: float("nan")))  # as 0 / 0 would give
    out = tmp_path / "run"
    config = EvaluationConfig(dataset="refcoco", split="val", data_root=refer.data_root, images_dir=refer.images_dir,
                              out_dir=out, settings={"model": "stand-in"})
    dataset = ReferDataset(refer.data_root, "refcoco", "val", images_dir=refer.images_dir)
    run_evaluation(config, StandInSegmenter(), ShiftedOracleSource(dataset), progress=False)
    text = (out / "report.json").read_text()
    assert "NaN" not in text and json.loads(text)["metrics"]["mIoU"] is None
    for written in (text, text.replace('"mIoU": null', '"mIoU": NaN')):  # NaN as other writers put it
        (out / "report.json").write_text(written)
        result = cli("report", out)
        assert result.code == 0 and "undefined" in result.out, result.err
        result = cli("report", out, "--format", "csv")
        row = dict(zip(*csv.reader(io.StringIO(result.out))))
        assert result.code == 0 and row["mIoU"] == "undefined" and float(row["oIoU"]) > 0, result.out


@pytest.mark.parametrize(
    ("config", "part"),
    [
        ([1, 2], "config.json: the top level must be an object, got [1, 2]"),
        ({"cache": "runs/cache"}, 'config.json: cache must be an object, got "runs/cache"'),
        ({"cache": {"dir": "c", "text": "t", "scoring": {}, "family": "vit"}}, "config.json: cache.visual is missing"),
    ],
)
def test_a_damaged_config_is_one_line_for_sweep(finished, config, part):
    (finished / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(InputError) as refused:
        open_cached_run(finished)
    _one_line(refused, part)


@pytest.mark.parametrize(("key", "part"), [("I", "I is missing"), ("overlaps", "overlaps is missing"),
                                           ("U", "U is missing")])
def test_a_record_without_its_fields_is_one_line(finished, key, part):
    path = finished / RECORDS_FILE
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    lines[0].pop(key)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(InputError) as refused:
        read_records(finished)
    _one_line(refused, f"{RECORDS_FILE} (unit ", part)


def test_a_deeply_nested_record_names_its_line(finished):
    path = finished / RECORDS_FILE
    lines = path.read_text().splitlines()
    lines[0] = lines[0][:-1] + ', "x": ' + DEEP + "}"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as refused:
        read_records(finished)
    _one_line(refused, "is damaged before line", "(line 1 nests containers")


@pytest.mark.parametrize(("line", "part"), [(DEEP, "nests containers more than 32"),
                                            ('{"image_id": 1e400}', "not finite (inf) at image_id"),
                                            ("[1, 2]", "is not a JSON object")])
def test_a_damaged_line_after_the_last_unit_is_refused_naming_it(finished, line, part):
    path = finished / RECORDS_FILE
    count = len(path.read_text().splitlines())
    with path.open("a") as handle:  # a killed run leaves at most an unfinished last line, never a complete bad one
        handle.write(line + "\n")
    with pytest.raises(InputError) as refused:
        read_records(finished)  # what sweep and report read
    _one_line(refused, RECORDS_FILE, f"line {count + 1}", part)
    with pytest.raises(InputError) as refused:
        with RunFolder(finished, IMAGE_UNITS) as folder:
            folder.open_records()  # what a resumed evaluate reads
    _one_line(refused, f"line {count + 1}", part)
    assert len(path.read_text().splitlines()) == count + 1  # nothing cut


# ---- only regular files -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [CONFIG_FILE, LOCK_FILE])
def test_a_fifo_in_a_run_folder_is_refused_without_blocking(tmp_path, no_hang, name):
    out = tmp_path / "run"
    out.mkdir()
    os.mkfifo(out / name)
    with pytest.raises(InputError) as refused:
        with RunFolder(out, IMAGE_UNITS) as folder:
            folder.check_config({"a": 1})
    _one_line(refused, f"{out / name} is a FIFO", "use another --out")
    if name == LOCK_FILE:
        with pytest.raises(InputError, match="is a FIFO"):
            check_free(out)
