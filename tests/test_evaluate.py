"""The evaluation loop: numbers, grouping by image, records, resuming, reports."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from refer_fixtures import ShiftedOracleSource, StandInSegmenter, build_refer, file_name, stand_in_index
from rich.console import Console

from globallocal.data.images import load_mask
from globallocal.data.refer import ReferDataset
from globallocal.errors import InputError
from globallocal.methods.global_local.method import GlobalLocalSettings
from globallocal.runs.cache import FeatureCache
from globallocal.runs.evaluate import (
    RECORDS_FILE,
    REPORT_JSON,
    REPORT_MD,
    EvaluationConfig,
    EvaluationStopped,
    run_evaluation,
)
from globallocal.runs.report import format_report_table
from globallocal.segmenter import Segmenter

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
EMPTY = frozenset({13})  # image 13 of refcoco val gets no proposals


@pytest.fixture
def refer(tmp_path):
    return build_refer(tmp_path / "dataset")


def _config(refer, out_dir, **overrides) -> EvaluationConfig:
    values = {
        "dataset": "refcoco",
        "split": "val",
        "data_root": refer.data_root,
        "images_dir": refer.images_dir,
        "out_dir": out_dir,
        "settings": {"model": "stand-in", "alpha": 0.95, "beta": 0.5},
    }
    values.update(overrides)
    return EvaluationConfig(**values)


def _source(refer, dataset="refcoco", split="val", empty=EMPTY) -> ShiftedOracleSource:
    dataset = ReferDataset(refer.data_root, dataset, split, images_dir=refer.images_dir)
    return ShiftedOracleSource(dataset, empty)


def _run(refer, out_dir, **kwargs):
    segmenter, source = StandInSegmenter(), _source(refer)
    report = run_evaluation(_config(refer, out_dir), segmenter, source, progress=False, **kwargs)
    return report, segmenter, source


def _expected(refer, empty=EMPTY):
    """Per-sentence (I, U, index) computed here, without the loop under test."""
    dataset = ReferDataset(refer.data_root, "refcoco", "val", images_dir=refer.images_dir)
    source = ShiftedOracleSource(dataset, empty)
    expected = {}
    for group in dataset.images():
        proposals = source(dataset.load_image(group.image), group.image)
        for ref in group.refs:
            gt = dataset.gt_mask(ref)
            for sentence in ref.sentences:
                if group.image.image_id in empty:
                    expected[sentence.sent_id] = (0, int(gt.sum()), None)
                    continue
                index = stand_in_index(sentence.raw, len(proposals))
                pred = proposals.masks[index].numpy()
                expected[sentence.sent_id] = (int((pred & gt).sum()), int((pred | gt).sum()), index)
    return expected


def _lines(out_dir):
    return [json.loads(line) for line in (out_dir / RECORDS_FILE).read_text().splitlines()]


def _records(out_dir):
    return [entry for entry in _lines(out_dir) if "image_done" not in entry]


def _without_timing(out_dir):
    return [{k: v for k, v in entry.items() if k != "seconds"} for entry in _lines(out_dir)]


def test_uninterrupted_run_matches_an_independent_computation(refer, tmp_path):
    out = tmp_path / "run"
    report, segmenter, source = _run(refer, out)
    expected = _expected(refer)
    ious = [i / u for i, u, _ in expected.values()]
    assert any(0 < iou < 1 for iou in ious), "the fixture should give fractional IoUs"

    metrics = report["metrics"]
    assert metrics["oIoU"] == pytest.approx(
        100 * sum(i for i, _, _ in expected.values()) / sum(u for _, u, _ in expected.values())
    )
    assert metrics["mIoU"] == pytest.approx(100 * float(np.mean(ious)))
    for threshold in ("0.5", "0.6", "0.7", "0.8", "0.9"):
        hits = sum(iou >= float(threshold) for iou in ious)
        assert metrics["precision"][threshold] == pytest.approx(100 * hits / len(ious))
    assert (metrics["images"], metrics["refs"], metrics["sentences"]) == (3, 7, 14)
    # Image 13 (refs 607 and 707, three sentences): IoU 0, counted apart, not skipped.
    assert metrics["no_proposal_images"] == 1
    assert metrics["no_proposal_refs"] == 2
    assert metrics["no_proposal_sentences"] == 3

    # One proposal computation per image; set_image only where there are proposals.
    assert source.calls == [11, 12, 13]
    assert segmenter.set_image_sizes == [(40, 30), (32, 24)]

    records = _records(out)
    assert len(records) == 14
    for record in records:
        intersection, union, index = expected[record["sent_id"]]
        assert (record["I"], record["U"], record["index"]) == (intersection, union, index)
        assert record["IoU"] == pytest.approx(intersection / union)
        assert record["no_proposals"] == (record["image_id"] in EMPTY)
        if record["no_proposals"]:
            assert record["score"] is None and record["noun_phrase"] is None
        else:
            assert record["score"] == pytest.approx(1.0)  # the stand-in gives its pick the top score
            assert record["expression"] == record["phrase"].lower()
    truncated = sum(len(r["phrase"]) > 20 for r in records if not r["no_proposals"])
    assert truncated and report["truncated_sentences"] == truncated

    assert json.loads((out / REPORT_JSON).read_text()) == report
    assert report["config"]["settings"] == {"model": "stand-in", "alpha": 0.95, "beta": 0.5}
    assert report["config"]["split_by"] == "unc"
    packages = {"torch", "open_clip_torch", "spacy", "numpy", "pycocotools", "globallocal"}
    assert set(report["versions"]) == packages
    assert report["wall_time_s"] > 0
    markdown = (out / REPORT_MD).read_text()
    assert f"{metrics['oIoU']:.2f}" in markdown and f"{metrics['mIoU']:.2f}" in markdown
    assert "3 sentences, scored as empty answers: IoU 0 where there is a target" in markdown


def test_stop_and_resume_gives_identical_numbers(refer, tmp_path):
    full, _, _ = _run(refer, tmp_path / "full")

    out = tmp_path / "resumed"
    with pytest.raises(EvaluationStopped):
        _run(refer, out, stop_after_images=1)
    assert not (out / REPORT_JSON).exists()
    assert [entry["image_done"] for entry in _lines(out) if "image_done" in entry] == [11]

    resumed, segmenter, source = _run(refer, out)
    assert source.calls == [12, 13]  # image 11 is not redone
    assert segmenter.set_image_sizes == [(32, 24)]
    assert resumed["metrics"] == full["metrics"]
    assert _without_timing(out) == _without_timing(tmp_path / "full")


@pytest.mark.parametrize("damage", ["half_line", "unfinished_image", "half_marker"])
def test_interrupted_writes_are_recovered_without_double_counting(refer, tmp_path, damage):
    full, _, _ = _run(refer, tmp_path / "full")
    out = tmp_path / "damaged"
    with pytest.raises(EvaluationStopped):
        _run(refer, out, stop_after_images=2 if damage == "half_marker" else 1)
    records_path = out / RECORDS_FILE
    data = records_path.read_bytes()
    if damage == "half_line":
        data += b'{"image_id": 12, "ref_id": 307, "sent_'
    elif damage == "unfinished_image":
        # Complete records of image 12 with no image-done marker, then a torn line.
        bogus = {"image_id": 12, "ref_id": 307, "sent_id": 4, "I": 999, "U": 1000, "no_proposals": False}
        data += (json.dumps(bogus) + "\n").encode() * 2 + b'{"image_'
    else:
        # The last line is image 12's marker: cut it in half, so image 12 must be redone.
        last_start = data.rstrip(b"\n").rfind(b"\n") + 1
        data = data[: last_start + 10]
    records_path.write_bytes(data)

    resumed, _, source = _run(refer, out)
    assert source.calls == [12, 13]  # with a torn marker, image 12 is redone
    assert resumed["metrics"] == full["metrics"]
    assert _without_timing(out) == _without_timing(tmp_path / "full")
    assert all(record["I"] != 999 for record in _records(out))


def test_kill_at_any_moment_then_resume(refer, tmp_path):
    full, _, _ = _run(refer, tmp_path / "full")
    out = tmp_path / "killed"
    script = f"""
import sys
sys.path[:0] = [{str(TESTS_DIR)!r}, {str(REPO_ROOT)!r}]
from pathlib import Path
from refer_fixtures import ShiftedOracleSource, StandInSegmenter
from globallocal.runs.evaluate import EvaluationConfig, run_evaluation
from globallocal.data.refer import ReferDataset
data_root, images_dir = Path({str(refer.data_root)!r}), Path({str(refer.images_dir)!r})
config = EvaluationConfig(
    dataset="refcoco", split="val", data_root=data_root, images_dir=images_dir, out_dir=Path({str(out)!r}),
    settings={{"model": "stand-in", "alpha": 0.95, "beta": 0.5}},
)
dataset = ReferDataset(data_root, "refcoco", "val", images_dir=images_dir)
source = ShiftedOracleSource(dataset, frozenset({{13}}))
run_evaluation(config, StandInSegmenter(delay=0.15), source, progress=False)
"""
    process = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        # Kill once the first image is on disk and the second is being worked on.
        while time.monotonic() < deadline and process.poll() is None:
            records = out / RECORDS_FILE
            if records.exists() and records.read_bytes().count(b"image_done") >= 1:
                time.sleep(0.2)
                break
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / REPORT_JSON).exists()

    resumed, _, source = _run(refer, out)
    assert 11 not in source.calls
    assert resumed["metrics"] == full["metrics"]
    assert _without_timing(out) == _without_timing(tmp_path / "full")


def test_a_finished_run_is_not_redone(refer, tmp_path):
    first, _, _ = _run(refer, tmp_path / "run")
    again, segmenter, source = _run(refer, tmp_path / "run")
    assert source.calls == [] and segmenter.set_image_sizes == []
    assert again["metrics"] == first["metrics"]


def test_resuming_with_another_configuration_is_refused(refer, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(EvaluationStopped):
        _run(refer, out, stop_after_images=1)
    before = (out / RECORDS_FILE).read_bytes()
    changed = _config(refer, out, settings={"model": "stand-in", "alpha": 0.5, "beta": 0.5})
    with pytest.raises(InputError, match=r"differs in:\n  settings.alpha: run 0.95, now 0.5$"):
        run_evaluation(changed, StandInSegmenter(), _source(refer), progress=False)
    union = _config(refer, out, overlap="union")
    with pytest.raises(InputError, match=r"differs in:\n  overlap: run \"paper\", now \"union\"$"):
        run_evaluation(union, StandInSegmenter(), _source(refer), progress=False)
    assert (out / RECORDS_FILE).read_bytes() == before

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / RECORDS_FILE).write_text("{}\n")
    with pytest.raises(InputError, match="no config.json"):
        run_evaluation(_config(refer, foreign), StandInSegmenter(), _source(refer), progress=False)


def test_damage_before_the_last_marker_is_reported(refer, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(EvaluationStopped):
        _run(refer, out, stop_after_images=2)
    lines = (out / RECORDS_FILE).read_text().splitlines(keepends=True)
    lines[1] = "not json\n"
    (out / RECORDS_FILE).write_text("".join(lines))
    with pytest.raises(InputError, match="damaged before line"):
        _run(refer, out)


def test_saved_masks_are_the_predictions(refer, tmp_path):
    masks_dir = tmp_path / "masks"
    masks_dir.mkdir()
    (masks_dir / ".1_2.png.k3j4.tmp").write_bytes(b"half")  # a killed run's mask, in a --save-masks DIR: removed
    config = _config(refer, tmp_path / "run", save_masks=masks_dir)
    dataset = ReferDataset(refer.data_root, "refcoco", "val", images_dir=refer.images_dir)
    source = ShiftedOracleSource(dataset, EMPTY)
    run_evaluation(config, StandInSegmenter(), source, progress=False)
    records = _records(tmp_path / "run")
    assert sorted(path.name for path in masks_dir.iterdir()) == sorted(
        f"{r['ref_id']}_{r['sent_id']}.png" for r in records
    )
    for record in records:
        saved = load_mask(masks_dir / f"{record['ref_id']}_{record['sent_id']}.png")
        image = next(group.image for group in dataset.images() if group.image.image_id == record["image_id"])
        assert saved.shape == (image.height, image.width)
        if record["no_proposals"]:
            assert not saved.any()
        else:
            proposals = source(dataset.load_image(image), image)
            np.testing.assert_array_equal(saved, proposals.masks[record["index"]].numpy())


def test_limit_takes_the_first_images_with_the_progress_bar(refer, tmp_path, capsys):
    segmenter, source = StandInSegmenter(), _source(refer)
    report = run_evaluation(_config(refer, tmp_path / "run", limit=2), segmenter, source, progress=True)
    assert source.calls == [11, 12]
    assert report["images_total"] == 2 and report["metrics"]["sentences"] == 11
    # No terminal here: a line for the first image and one at the end (tests/test_progress.py: the timing).
    first, last = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"evaluate refcoco val: 1/2 images, [\d.]+ img/s, eta \d+s, \d+ sentences?, "
                        r"oIoU [\d.]+  mIoU [\d.]+", first), first
    metrics = report["metrics"]
    assert re.fullmatch(rf"evaluate refcoco val: 2/2 images, [\d.]+ img/s, eta 0s, 11 sentences, "
                        rf"oIoU {metrics['oIoU']:.2f}  mIoU {metrics['mIoU']:.2f}", last), last
    # Everywhere the run is described, the limit is said: of the split's images, how many, and why.
    split = report["images_in_split"]
    assert split > 2 and report["limit"] == 2
    assert f"- images: 2 of {split} images (--limit 2)," in (tmp_path / "run" / "report.md").read_text()
    table = io.StringIO()
    Console(file=table, width=80).print(format_report_table([tmp_path / "run"]))
    assert f"2/{split} (--limit 2)" in table.getvalue().replace("\n", "")
    run_evaluation(_config(refer, tmp_path / "run", limit=3), segmenter, source, progress=True)
    assert "resuming: 2 of 3 images done" in capsys.readouterr().err
    with pytest.raises(InputError, match="at least 1"):
        run_evaluation(_config(refer, tmp_path / "zero", limit=0), segmenter, source, progress=False)


def test_a_limited_run_is_extended_and_a_smaller_limit_reports_its_images(refer, tmp_path):
    out = tmp_path / "run"
    segmenter, source = StandInSegmenter(), _source(refer)
    limited = run_evaluation(_config(refer, out, limit=2), segmenter, source, progress=False)
    assert source.calls == [11, 12] and limited["images_total"] == 2
    segmenter, source = StandInSegmenter(), _source(refer)
    extended = run_evaluation(_config(refer, out), segmenter, source, progress=False)
    assert source.calls == [13]  # only the image the limited run left out
    whole, _, _ = _run(refer, tmp_path / "whole")
    assert extended["metrics"] == whole["metrics"]
    again = run_evaluation(_config(refer, out, limit=2), StandInSegmenter(), _source(refer), progress=False)
    assert again["metrics"] == limited["metrics"]


def test_the_session_rate_and_time_left_do_not_wait_for_riches_speed_window():
    from rich.progress import Progress

    from globallocal.runs.evaluate import RateColumn, RemainingColumn

    clock = [0.0]
    progress = Progress(RateColumn(), RemainingColumn(), get_time=lambda: clock[0], disable=True)
    task_id = progress.add_task("run", total=10, completed=4, resumed_at=4)
    progress.start_task(task_id)
    task = progress.tasks[0]
    assert str(RateColumn().render(task)) == "" and str(RemainingColumn().render(task)) == "-:--:--"
    clock[0] = 120.0  # one image in two minutes: far longer than rich's speed window
    progress.update(task_id, advance=1)
    assert task.speed is None  # what the old column showed: nothing
    assert str(RateColumn().render(task)) == "0.01 img/s"
    assert str(RemainingColumn().render(task)) == "0:10:00"  # 5 images left at 120 s each


def test_missing_images_are_named_before_any_work(refer, tmp_path):
    (refer.images_dir / file_name(12)).unlink()
    out = tmp_path / "run"
    with pytest.raises(InputError, match=f"1 of 3 images are missing .*{file_name(12)}"):
        _run(refer, out)
    assert not (out / RECORDS_FILE).exists()


def test_segmenter_errors_name_the_sentence(refer, tmp_path):
    class Refusing(StandInSegmenter):
        def predict(self, phrase):
            if phrase == "blob":
                raise InputError("phrase refused")
            return super().predict(phrase)

    with pytest.raises(InputError, match=r"ref 307 sentence 7 \('blob'\): phrase refused"):
        run_evaluation(_config(refer, tmp_path / "run"), Refusing(), _source(refer), progress=False)


def test_report_table_puts_runs_side_by_side(refer, tmp_path):
    first, _, _ = _run(refer, tmp_path / "a")
    plus = _config(refer, tmp_path / "b", dataset="refcoco+", settings={"model": "other"})
    source = _source(refer, "refcoco+", empty=frozenset())
    second = run_evaluation(plus, StandInSegmenter(), source, progress=False)
    table = format_report_table([tmp_path / "a", tmp_path / "b"])
    console = Console(record=True, width=250)
    console.print(table)
    text = console.export_text()
    assert "refcoco val (unc)" in text and "refcoco+ val (unc)" in text
    for report in (first, second):
        assert f"{report['metrics']['oIoU']:.2f}" in text
        assert f"{report['metrics']['mIoU']:.2f}" in text
    assert "stand-in" in text and "other" in text
    (tmp_path / "nothing").mkdir()
    with pytest.raises(InputError, match="no finished run"):
        format_report_table([tmp_path / "nothing"])
    with pytest.raises(InputError, match="no such folder"):
        format_report_table([tmp_path / "absent"])


# -- the feature cache ----------------------------------------------------------


@contextmanager
def _forward_calls(module: torch.nn.Module) -> Iterator[list[int]]:
    """Counts forward calls into ``module`` or any of its submodules while the block runs."""
    calls = [0]

    def count(*_):
        calls[0] += 1

    handles = [part.register_forward_pre_hook(count) for part in module.modules()]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _cached_run(refer, out_dir, clip, config_path, nlp, cache_dir, dataset="refcoco", **settings):
    """(report, image-tower calls, text-tower calls) of a "gt" run with a fresh segmenter, cached when cache_dir."""
    segmenter = Segmenter(clip, nlp, GlobalLocalSettings(**settings))
    cache = FeatureCache.for_segmenter(cache_dir, segmenter, str(config_path)) if cache_dir else None
    config = _config(refer, out_dir, dataset=dataset, settings={"model": clip.name, **settings})
    with _forward_calls(clip.model.visual) as image_calls, _forward_calls(clip.model.token_embedding) as text_calls:
        report = run_evaluation(config, segmenter, "gt", progress=False, cache=cache)
    return report, image_calls[0], text_calls[0]


@pytest.mark.parametrize("family", ["vit", "resnet"])
def test_cached_runs_give_the_records_of_uncached_ones_without_the_towers(
    refer, tmp_path, family, request, nlp, tiny_config_paths
):
    clip = request.getfixturevalue(f"tiny_{family}")
    args = (clip, tiny_config_paths[family], nlp)
    cache = tmp_path / "cache"
    plain, image_calls, _ = _cached_run(refer, tmp_path / "plain", *args, None)
    assert image_calls > 0
    cold, image_calls, text_calls = _cached_run(refer, tmp_path / "cold", *args, cache)
    assert image_calls > 0 and text_calls > 0
    warm, image_calls, text_calls = _cached_run(refer, tmp_path / "warm", *args, cache)
    assert (image_calls, text_calls) == (0, 0)
    assert _records(tmp_path / "cold") == _records(tmp_path / "plain")
    assert _records(tmp_path / "warm") == _records(tmp_path / "plain")
    assert plain["metrics"] == cold["metrics"] == warm["metrics"]
    assert plain["config"]["cache"] is None
    assert warm["config"]["cache"]["dir"] == str(cache.resolve())
    entries = [entry["cache_entry"] for entry in _lines(tmp_path / "warm") if "image_done" in entry]
    assert sorted(path.stem for path in cache.glob("visual-*/*.npz")) == sorted(entries)



def test_other_alphas_betas_and_splits_reuse_the_cache(refer, tmp_path, tiny_vit, nlp, tiny_config_paths):
    args = (tiny_vit, tiny_config_paths["vit"], nlp)
    cache = tmp_path / "cache"
    _cached_run(refer, tmp_path / "cold", *args, cache)
    # Another alpha and beta: no image tower, and the records of an uncached run with them.
    _, image_calls, text_calls = _cached_run(refer, tmp_path / "warm", *args, cache, alpha=0.5, beta=0.2)
    assert (image_calls, text_calls) == (0, 0)
    _cached_run(refer, tmp_path / "plain", *args, None, alpha=0.5, beta=0.2)
    assert _records(tmp_path / "warm") == _records(tmp_path / "plain")
    # Another split on the same images (refcoco+ val: images 11 and 12): no image tower either.
    report, image_calls, text_calls = _cached_run(refer, tmp_path / "plus", *args, cache, dataset="refcoco+")
    assert image_calls == 0 and text_calls > 0  # refcoco+ has phrases of its own
    assert report["metrics"]["images"] == 2


def test_a_damaged_cache_entry_is_recomputed(refer, tmp_path, tiny_vit, nlp, tiny_config_paths):
    args = (tiny_vit, tiny_config_paths["vit"], nlp)
    cache = tmp_path / "cache"
    _cached_run(refer, tmp_path / "first", *args, cache)
    entry = next(e["cache_entry"] for e in _lines(tmp_path / "first") if e.get("image_done") == 12)
    entry_path = next(cache.glob(f"visual-*/{entry}.npz"))
    entry_path.write_bytes(entry_path.read_bytes()[:100])
    text_path = next(cache.glob("text-*/*/*.npz"))
    text_path.write_bytes(b"")

    segmenter = Segmenter(tiny_vit, nlp, GlobalLocalSettings())
    sizes = []
    set_image = segmenter.set_image
    segmenter.set_image = lambda image, proposals: (sizes.append(image.size), set_image(image, proposals))
    config = _config(refer, tmp_path / "second", settings={"model": tiny_vit.name})
    feature_cache = FeatureCache.for_segmenter(cache, segmenter, str(tiny_config_paths["vit"]))
    with _forward_calls(tiny_vit.model.token_embedding) as text_calls:
        run_evaluation(config, segmenter, "gt", progress=False, cache=feature_cache)
    assert sizes == [(32, 24)]  # image 12 alone
    assert text_calls[0] == 1  # the one damaged string
    assert _records(tmp_path / "second") == _records(tmp_path / "first")
    assert feature_cache.visual.load(entry) is not None


def test_a_proposal_source_with_a_key_is_not_asked_on_a_hit(refer, tmp_path, tiny_vit, nlp, tiny_config_paths):
    key = {"source": "shifted oracle", "shift": 2}
    reports = []
    for name in ("first", "second"):
        segmenter = Segmenter(tiny_vit, nlp, GlobalLocalSettings())
        source = _source(refer)
        feature_cache = FeatureCache.for_segmenter(tmp_path / "cache", segmenter, str(tiny_config_paths["vit"]))
        config = _config(refer, tmp_path / name, settings={"model": tiny_vit.name})
        reports.append(
            run_evaluation(config, segmenter, source, progress=False, cache=feature_cache, proposal_key=key)
        )
        assert source.calls == ([11, 12, 13] if name == "first" else [])
    assert _records(tmp_path / "second") == _records(tmp_path / "first")
    assert reports[1]["config"]["cache"]["proposals"] == key
    assert reports[1]["metrics"]["no_proposal_images"] == 1  # image 13's empty proposals came from the cache


def test_a_cached_run_is_not_resumed_without_its_cache(refer, tmp_path, tiny_vit, nlp, tiny_config_paths):
    segmenter = Segmenter(tiny_vit, nlp, GlobalLocalSettings())
    feature_cache = FeatureCache.for_segmenter(tmp_path / "cache", segmenter, str(tiny_config_paths["vit"]))
    config = _config(refer, tmp_path / "run", settings={"model": tiny_vit.name})
    with pytest.raises(EvaluationStopped):
        run_evaluation(config, segmenter, "gt", progress=False, cache=feature_cache, stop_after_images=1)
    with pytest.raises(InputError, match=r"differs in:\n  cache: run \{\"dir\": .*\.\.\., now null$"):
        run_evaluation(config, segmenter, "gt", progress=False)


def test_records_keep_every_proposals_overlap_with_the_ground_truth(refer, tmp_path):
    _run(refer, tmp_path / "run")
    dataset = ReferDataset(refer.data_root, "refcoco", "val", images_dir=refer.images_dir)
    source = ShiftedOracleSource(dataset, EMPTY)
    groups = {group.image.image_id: group for group in dataset.images()}
    for record in _records(tmp_path / "run"):
        group = groups[record["image_id"]]
        gt = dataset.gt_mask(next(ref for ref in group.refs if ref.ref_id == record["ref_id"]))
        masks = source(dataset.load_image(group.image), group.image).masks.numpy()
        assert record["gt_area"] == int(gt.sum())
        assert record["overlaps"] == [int((mask & gt).sum()) for mask in masks]
        if not record["no_proposals"]:
            chosen, area = record["overlaps"][record["index"]], int(masks[record["index"]].sum())
            assert (record["I"], record["U"]) == (chosen, area + record["gt_area"] - chosen)
