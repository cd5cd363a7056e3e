"""PhraseCut: reading and validating the layout, ground truth, subsets, and evaluating with resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from phrasecut_fixtures import IMAGES, VAL_COUNTS, VAL_DROPPED, build_phrasecut, expected_gt, rectangle
from PIL import Image, ImageDraw
from refer_fixtures import ShiftedOracleSource, StandInSegmenter, stand_in_index
from rich.console import Console
from test_evaluate import _records, _without_timing

from globallocal.data.images import load_mask
from globallocal.data.phrasecut import COCO_CATEGORY_NAMES, PhraseCutDataset, rasterize_polygons
from globallocal.errors import InputError
from globallocal.runs.evaluate import (
    REPORT_JSON,
    REPORT_MD,
    EvaluationConfig,
    EvaluationStopped,
    run_evaluation,
)
from globallocal.runs.metrics import MetricAccumulator
from globallocal.runs.report import format_report_table


@pytest.fixture
def phrasecut(tmp_path):
    return build_phrasecut(tmp_path / "VGPhraseCut_v0")


def _config(phrasecut, out_dir, **overrides) -> EvaluationConfig:
    values = {
        "dataset": "phrasecut", "split": "val", "data_root": phrasecut.root, "images_dir": None,
        "out_dir": out_dir, "settings": {"model": "stand-in"},
    }
    values.update(overrides)
    return EvaluationConfig(**values)


def _run(phrasecut, out_dir, subset="all", **kwargs):
    source = ShiftedOracleSource(PhraseCutDataset(phrasecut.root, "val", subset=subset))
    segmenter = StandInSegmenter()
    report = run_evaluation(_config(phrasecut, out_dir, subset=subset), segmenter, source, progress=False, **kwargs)
    return report, source


def test_coco_category_names_are_cocos_80():
    assert len(COCO_CATEGORY_NAMES) == 80
    assert {"person", "dining table", "hair drier", "tv", "motorcycle", "couch"} <= COCO_CATEGORY_NAMES
    assert not {"table", "people", "tvmonitor", "motorbike", "sofa"} & COCO_CATEGORY_NAMES


def test_ground_truth_matches_the_datasets_rule(phrasecut):
    dataset = PhraseCutDataset(phrasecut.root, "val")
    tasks = [task for group in dataset.images() for task in group.refs]
    assert len(tasks) == VAL_COUNTS["all"]
    for task in tasks:
        height, width, _ = IMAGES[task.image_id]
        gt = dataset.gt_mask(task)
        assert gt.shape == (height, width) and gt.dtype == bool
        np.testing.assert_array_equal(gt, expected_gt(phrasecut.task(task.task_id), height, width), task.task_id)

    # By hand: truncated to x 2..10, y 3..8, the lattice points of the closed rectangle: 9 x 6 pixels.
    box = rasterize_polygons([tuple((int(x), int(y)) for x, y in rectangle(2.9, 3.2, 10.7, 8.99))], 30, 40)
    assert box.sum() == 54 and box[3:9, 2:11].all()
    # The off-image part is clipped: the top rows are in, whole.
    sky = dataset.gt_mask(next(task for task in tasks if task.task_id == "101__4"))
    assert sky[:5, :].all() and sky[10, 0] and not sky[11:, :].any()


def test_ground_truth_is_the_official_single_call_without_an_outline_pass():
    # PhraseCut's polygons_to_mask draws polygon(points, outline=1, fill=1) once; Pillow then skips the
    # outline (same colour as the fill), so its masks are the fill alone: 1060 pixels for this quadrilateral,
    # where a separate outline pass would add 25 pixels of its sloped edges.
    quadrilateral = ((21, 3), (44, 10), (58, 22), (5, 45))
    official = rasterize_polygons([quadrilateral], 60, 60)
    assert official.sum() == 1060
    outlined = Image.fromarray(official.astype(np.uint8))
    ImageDraw.Draw(outlined).polygon(quadrilateral, outline=1)
    assert (np.asarray(outlined) > 0).sum() == 1085
    # Points are truncated towards zero; polygons of fewer than two points are skipped, as there.
    fractional = tuple((x + 0.9, y + 0.6) for x, y in quadrilateral)
    np.testing.assert_array_equal(rasterize_polygons([fractional, ((7.5, 7.5),), ()], 60, 60), official)


def test_instances_are_the_gt_oracle(phrasecut):
    dataset = PhraseCutDataset(phrasecut.root, "val")
    masks = dataset.instance_masks(102)
    # The person, five fence posts; the task without a phrase structure is not read at all.
    assert masks.shape == (6, 24, 32)
    dogs = phrasecut.task("101__2__3")
    np.testing.assert_array_equal(
        dataset.instance_masks(101)[1], expected_gt({"Polygons": dogs["Polygons"][:1]}, 30, 40)
    )


@pytest.mark.parametrize("subset", ["all", "unseen", "seen"])
def test_subset_filter_by_counts(phrasecut, subset):
    dataset = PhraseCutDataset(phrasecut.root, "val", subset=subset)
    tasks = [task for group in dataset.images() for task in group.refs]
    assert len(tasks) == VAL_COUNTS[subset]
    categories = {task.category for task in tasks}
    if subset == "unseen":
        assert categories == {"table", "sky", "fence", "Person"}
    elif subset == "seen":
        assert categories == {"dog", "person", "dining table"}
    notes = dataset.report_notes()
    dropped = {**VAL_DROPPED, "subset": VAL_COUNTS["all"] - VAL_COUNTS[subset]}
    assert notes == {
        "subset": subset, "tasks_in_files": 9, "tasks": VAL_COUNTS[subset],
        "tasks_dropped": sum(dropped.values()), "dropped_by_reason": dropped,
    }


def test_combined_splits_read_both_files(phrasecut):
    dataset = PhraseCutDataset(phrasecut.root, "val_miniv")
    assert [group.image.image_id for group in dataset.images()] == [101, 102, 103, 105]
    test = PhraseCutDataset(phrasecut.root, "test")
    assert [task.task_id for group in test.images() for task in group.refs] == ["104__15"]


def _bad(task, **changes):
    return {**task, **changes}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: _bad(t, Polygons=t["Polygons"] + [[rectangle(0, 0, 1, 1)]]), "2 instances in Polygons but 1"),
        (lambda t: _bad(t, Polygons=[[[[1, 1], ["2", 2], [3, 3]]]]), "two finite numbers"),
        (lambda t: _bad(t, Polygons=[[[[1, 1], [1e12, 2], [3, 3]]]]), "far outside the 40x30 image"),
        (lambda t: _bad(t, Polygons=[[[[1, 1, 1], [2, 2], [3, 3]]]]), "two finite numbers"),
        (lambda t: _bad(t, Polygons=[["not a polygon"]]), "list of"),
        (lambda t: _bad(t, image_id=999), "image 999 is not in"),
        (lambda t: _bad(t, phrase="  "), "phrase must be a non-empty string"),
        (lambda t: _bad(t, task_id="../x"), "cannot name a mask file"),
        (lambda t: _bad(t, phrase_structure={"attributes": []}), "string 'name'"),
        (lambda t: _bad(t, task_id="101__2__3"), "task_id '101__2__3' is also task record 0 of refer_val.json"),
    ],
)
def test_bad_task_records_are_named(phrasecut, change, message):
    tasks = list(phrasecut.tasks["val"])
    tasks[0] = change(tasks[0])
    phrasecut.write_tasks("val", tasks)
    with pytest.raises(InputError, match=r"refer_val.json: task record [01]\b") as error:
        PhraseCutDataset(phrasecut.root, "val")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_bad_files_are_named(phrasecut):
    (phrasecut.root / "refer_val.json").write_text("{not json")
    with pytest.raises(InputError, match="refer_val.json is not valid JSON"):
        PhraseCutDataset(phrasecut.root, "val")
    (phrasecut.root / "refer_val.json").write_text("{}")
    with pytest.raises(InputError, match="refer_val.json does not hold a list"):
        PhraseCutDataset(phrasecut.root, "val")
    (phrasecut.root / "image_data_split.json").write_text(json.dumps([{"image_id": 101, "width": "40"}]))
    with pytest.raises(InputError, match=r"image_data_split.json: image record 0: width must be a positive integer"):
        PhraseCutDataset(phrasecut.root, "val")
    with pytest.raises(InputError, match="invalid phrasecut split 'train'"):
        PhraseCutDataset(phrasecut.root, "train")
    with pytest.raises(InputError, match="file not found: .*elsewhere/image_data_split.json; is --data-root"):
        PhraseCutDataset(phrasecut.root / "elsewhere", "test")


def test_an_empty_selection_is_refused(phrasecut):
    phrasecut.write_tasks("val", [phrasecut.task("102__5")])
    with pytest.raises(InputError, match="no task of PhraseCut val is left with --subset unseen"):
        PhraseCutDataset(phrasecut.root, "val", subset="unseen")


def test_evaluation_records_report_and_masks(phrasecut, tmp_path):
    out, masks_dir = tmp_path / "run", tmp_path / "masks"
    dataset = PhraseCutDataset(phrasecut.root, "val", subset="unseen")
    source = ShiftedOracleSource(dataset)
    config = _config(phrasecut, out, subset="unseen", save_masks=masks_dir)
    report = run_evaluation(config, StandInSegmenter(), source, progress=False)

    records = _records(out)
    assert [r["task_id"] for r in records] == ["101__1", "101__4", "102__6__7__8__9__10", "103__13"]
    expected = MetricAccumulator()
    subsets: dict[str, MetricAccumulator] = {}
    for record in records:
        task = phrasecut.task(record["task_id"])
        height, width, _ = IMAGES[task["image_id"]]
        gt = expected_gt(task, height, width)
        group = next(g for g in dataset.images() if g.image.image_id == task["image_id"])
        proposals = ShiftedOracleSource(dataset)(dataset.load_image(group.image), group.image)
        index = stand_in_index(task["phrase"], len(proposals))
        pred = proposals.masks[index].numpy()
        assert (record["I"], record["U"]) == (int((pred & gt).sum()), int((pred | gt).sum()))
        assert record["phrase"] == task["phrase"] and record["category"] == task["phrase_structure"]["name"]
        assert "ref_id" not in record and "sent_id" not in record
        np.testing.assert_array_equal(load_mask(masks_dir / f"{record['task_id']}.png"), pred)
        # PhraseCut's subsets, by its definitions: instance count, and area relative to the image.
        count, relative = len(task["Polygons"]), gt.sum() / (height * width)
        names = ["i_single" if count == 1 else "i_multi", *(["i_many"] if count >= 5 else [])]
        names.append("s_small" if relative < 0.02 else "s_large" if relative > 0.2 else "s_mid")
        assert record["subsets"] == names
        expected.add(record["I"], record["U"])
        for name in names:
            subsets.setdefault(name, MetricAccumulator()).add(record["I"], record["U"])
    assert sorted(path.name for path in masks_dir.iterdir()) == sorted(f"{r['task_id']}.png" for r in records)
    assert report["metrics"]["mIoU"] == pytest.approx(expected.miou)
    assert report["metrics"]["oIoU"] == pytest.approx(expected.oiou)
    assert report["metrics"]["refs"] == 4
    assert set(report["subsets"]) == {"i_single", "i_multi", "i_many", "s_small", "s_mid", "s_large"}
    for name, values in report["subsets"].items():
        assert values["mIoU"] == pytest.approx(subsets[name].miou)
        assert values["sentences"] == subsets[name].sentences
    assert list(report["subsets"]) == [n for n in ("i_single", "i_multi", "i_many", "s_small", "s_mid", "s_large")
                                       if n in subsets]
    assert report["selection"]["subset"] == "unseen" and report["selection"]["tasks_dropped"] == 5
    assert report["config"]["subset"] == "unseen"
    assert report["config"]["images_dir"] == str((phrasecut.root / "images").resolve())
    markdown = (out / REPORT_MD).read_text()
    assert "phrasecut val (unseen)" in markdown
    assert "subset unseen: 4 of 9 tasks, 5 dropped (1 no phrase structure, 1 other split, 3 subset)" in markdown
    assert "| i_multi |" in markdown
    console = Console(width=200, record=True)
    console.print(format_report_table([out]))
    assert "phrasecut val (unseen)" in console.export_text()


def test_stop_and_resume_gives_identical_records(phrasecut, tmp_path):
    full, _ = _run(phrasecut, tmp_path / "full")
    out = tmp_path / "resumed"
    with pytest.raises(EvaluationStopped):
        _run(phrasecut, out, stop_after_images=1)
    assert not (out / REPORT_JSON).exists()
    resumed, source = _run(phrasecut, out)
    assert source.calls == [102, 103]
    assert resumed["metrics"] == full["metrics"] and resumed["subsets"] == full["subsets"]
    assert _without_timing(out) == _without_timing(tmp_path / "full")


def test_another_subset_does_not_resume_a_run(phrasecut, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(EvaluationStopped):
        _run(phrasecut, out, stop_after_images=1)
    with pytest.raises(InputError, match=r"differs in:\n  subset: run \"all\", now \"seen\"$"):
        _run(phrasecut, out, subset="seen")


def test_subset_is_refused_for_refcoco(tmp_path):
    config = EvaluationConfig("refcoco", "val", tmp_path, tmp_path, tmp_path / "run", subset="unseen")
    with pytest.raises(InputError, match="--subset applies to phrasecut and reasonseg, not refcoco"):
        config.identity()


def test_cli_evaluates_the_unseen_subset(cli, phrasecut, tmp_path, tiny_config_paths, tiny_checkpoints):
    out = tmp_path / "run"
    args = [
        "evaluate", "--dataset", "phrasecut", "--split", "val", "--subset", "unseen", "--data-root", phrasecut.root,
        "--proposals", "gt", "--out", out, "--save-masks", tmp_path / "masks",
        "--clip-model", tiny_config_paths["vit"], "--clip-weights", tiny_checkpoints["vit"],
    ]
    result = cli(*args)
    assert result.code == 0, result.err
    # Global-Local's paper sets no PhraseCut preset: the run says which one it takes.
    assert ("evaluate: global-local has no phrasecut preset (its paper sets none); using paper-refcoco, its refcoco "
            "preset (choose another with --preset)") in result.err.splitlines()
    report = json.loads((out / REPORT_JSON).read_text())
    assert report["config"]["settings"]["preset"] == "paper-refcoco"
    assert report["metrics"]["sentences"] == VAL_COUNTS["unseen"]
    assert report["selection"]["tasks_dropped"] == 5 and "phrasecut val (unseen)" in result.out
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == sorted(
        f"{r['task_id']}.png" for r in _records(out)
    )
    assert cli(*args).code == 0  # resumed: nothing left to do, same report
    assert json.loads((out / REPORT_JSON).read_text())["metrics"] == report["metrics"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--dataset", "phrasecut", "--split", "train"], "invalid phrasecut split 'train'"),
        (["--dataset", "phrasecut", "--split", "val", "--subset", "novel"], "unknown --subset 'novel'"),
        (["--dataset", "phrasecut", "--split", "val", "--split-by", "unc"], "--split-by applies to refcoco"),
        (["--dataset", "refcoco", "--split", "val"], "--images is required for refcoco"),
        (["--dataset", "refcoco", "--split", "val", "--images", ".", "--subset", "unseen"],
         "phrasecut and reasonseg, not refcoco"),
    ],
)
def test_cli_refuses_bad_options_before_loading_models(run, tmp_path, monkeypatch, options, message):
    from globallocal.segmenter import Segmenter

    def loaded(*args, **kwargs):
        raise AssertionError("the models were loaded")

    monkeypatch.setattr(Segmenter, "from_pretrained", loaded)
    code, err = run("evaluate", *options, "--data-root", tmp_path)
    assert code == 2 and err.startswith("error: ") and message in err, err


def test_each_method_takes_its_papers_phrasecut_setting_or_says_it_has_none(cli, phrasecut, tmp_path, monkeypatch):
    from globallocal.commands.recipe import ModelRecipe
    from globallocal.methods import available_methods, get_method

    assert {name: get_method(name).borrowed_preset("phrasecut") for name in available_methods()} == {
        "global-local": ("paper-refcoco", "refcoco"), "hybridgl": None, "tcl": None, "sam3": None, "vlm": None}
    assert get_method("global-local").borrowed_preset("refcocog") is None
    assert [get_method("hybridgl").proposal_settings_for(dataset) for dataset in ("refcoco", "phrasecut")] == [
        "hybridgl", "hybridgl-phrasecut"]

    class Built(Exception):
        pass

    def build(recipe, *args, **kwargs):
        raise Built(recipe.preset, recipe.generator.kind, recipe.generator.sam_settings)

    monkeypatch.setattr(ModelRecipe, "build", build)
    monkeypatch.setattr(ModelRecipe, "check_files", lambda recipe: None)  # no weights here: the recipe is the point
    with pytest.raises(Built) as built:
        cli("evaluate", "--dataset", "phrasecut", "--split", "val", "--data-root", phrasecut.root, "--method",
            "hybridgl", "--out", tmp_path / "run")
    assert built.value.args == ("hybridgl-paper", "sam", "hybridgl-phrasecut")  # SPEC-hybridgl section 12
