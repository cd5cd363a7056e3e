"""A cached run read back as data: `sweep`, which cannot compute anything, refuses a damaged record, setting or
cache entry in one line naming it; a rerun of `evaluate` computes a damaged entry again, with one warning line
naming it; at the run's own setting, picks among tied scores are ties, not a sign of other features."""

from __future__ import annotations

import json
import os
import shutil
import signal
import warnings

import numpy as np
import pytest
import torch
from refer_fixtures import ShiftedOracleSource, build_refer

from globallocal.data.refer import ReferDataset
from globallocal.errors import InputError
from globallocal.methods.global_local.method import GlobalLocalSettings
from globallocal.methods.sweeps import pick_agrees
from globallocal.runs.cache import FeatureCache
from globallocal.runs.evaluate import CONFIG_FILE, RECORDS_FILE, EvaluationConfig, run_evaluation
from globallocal.runs.sweep import SWEEP_MD, run_sweep
from globallocal.segmenter import Segmenter

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def refer(tmp_path_factory):
    return build_refer(tmp_path_factory.mktemp("dataset"))


def _evaluate(refer, out_dir, clip, nlp, config_path, cache_dir):
    """A cached refcoco val run with shifted ground-truth proposals (image 13 gets none)."""
    segmenter = Segmenter(clip, nlp, GlobalLocalSettings())
    cache = FeatureCache.for_segmenter(cache_dir, segmenter, str(config_path))
    dataset = ReferDataset(refer.data_root, "refcoco", "val", images_dir=refer.images_dir)
    config = EvaluationConfig(dataset="refcoco", split="val", data_root=refer.data_root, images_dir=refer.images_dir,
                              out_dir=out_dir, settings={"model": clip.name})
    return run_evaluation(config, segmenter, ShiftedOracleSource(dataset, frozenset({13})), progress=False,
                          cache=cache)


@pytest.fixture(scope="module")
def made(refer, tmp_path_factory, tiny_vit, nlp, tiny_config_paths):
    root = tmp_path_factory.mktemp("made")
    report = _evaluate(refer, root / "run", tiny_vit, nlp, tiny_config_paths["vit"], root / "cache")
    return root, report


@pytest.fixture
def run(made, tmp_path):
    """A copy of the cached run and its cache: (run folder, cache folder, the run's report)."""
    root, report = made
    for name in ("run", "cache"):
        shutil.copytree(root / name, tmp_path / name)
    return tmp_path / "run", tmp_path / "cache", report


def _lines(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / RECORDS_FILE).read_text().splitlines()]


def _change_records(run_dir, change) -> None:
    lines = _lines(run_dir)
    change(lines)
    (run_dir / RECORDS_FILE).write_text("".join(json.dumps(line) + "\n" for line in lines))


def _answered(lines) -> dict:
    return next(line for line in lines if "image_done" not in line and not line["no_proposals"])


def _marker(lines) -> dict:
    return next(line for line in lines if "image_done" in line and "cache_entry" in line)


def _change_scoring(run_dir, change) -> None:
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    change(config["cache"])
    (run_dir / CONFIG_FILE).write_text(json.dumps(config))


def _entry(cache, image_id: int):
    return next(cache.glob(f"visual-*/{image_id}-*.npz"))


def _change_entry(cache, image_id: int, **changes) -> None:
    path = _entry(cache, image_id)
    data = dict(np.load(path))
    data.update(changes)
    np.savez(path, **data)


SWEEP_DAMAGE = {
    "an entry name reaching outside the cache": (
        lambda run, cache: _change_records(run, lambda lines: _marker(lines).update(cache_entry="../../x")),
        ("the cache entry of image", "'../../x' is not the name of a cache entry")),
    "a record's cache_entry that is an object": (
        lambda run, cache: _change_records(run, lambda lines: _answered(lines).update(cache_entry={"a": 1})),
        ("the records of", "sentence 1: cache_entry must be a string, got {\"a\": 1}")),
    "a null expression": (
        lambda run, cache: _change_records(run, lambda lines: _answered(lines).update(expression=None)),
        ("sentence 1: expression must be a string, got null",)),
    "overlaps of text": (
        lambda run, cache: _change_records(run, lambda lines: _answered(lines).update(
            overlaps=[str(o) for o in _answered(lines)["overlaps"]])),
        ("sentence 1: overlaps[0] must be an integer",)),
    "an overlap larger than its proposal": (
        lambda run, cache: _change_records(run, lambda lines: _answered(lines)["overlaps"].__setitem__(0, 10**6)),
        ("does not fit its image's cache entry",)),
    "an answer outside the proposals": (
        lambda run, cache: _change_records(run, lambda lines: _answered(lines).update(index=999)),
        ("does not fit its image's cache entry",)),
    "alpha as text": (
        lambda run, cache: _change_scoring(run, lambda c: c["scoring"].update(alpha="0.95")),
        ("config.json: cache.scoring.alpha must be a number, got \"0.95\"",)),
    "no feature_norm": (
        lambda run, cache: _change_scoring(run, lambda c: c["scoring"].pop("feature_norm")),
        ("config.json: cache.scoring.feature_norm is missing",)),
    "an unknown feature_norm": (
        lambda run, cache: _change_scoring(run, lambda c: c["scoring"].update(feature_norm="l3")),
        ("config.json: cache.scoring: feature_norm must be 'paper' or 'unit'",)),
    "an unknown family": (
        lambda run, cache: _change_scoring(run, lambda c: c.update(family="transformer")),
        ("config.json: cache.family is 'transformer'",)),
    "features of another width than the text's": (
        lambda run, cache: _change_entry(cache, 12, tensor_local=np.zeros((6, 31), np.float32)),
        ("the cache entry of image 12", "its local features are (6, 31), not of shape 6x32")),
    "an RLE that is not one": (
        lambda run, cache: _change_entry(cache, 12, rle=np.full_like(np.load(_entry(cache, 12))["rle"], ord("~"))),
        ("the cache entry of image 12", "is damaged: its mask 0: compressed RLE counts are malformed")),
    "a text feature that is not finite": (
        lambda run, cache: [np.savez(path, **{**np.load(path), "feature": np.full(32, np.nan, np.float32)})
                            for path in cache.glob("text-*/*/*.npz")],
        ("(the text features of", "is damaged: it holds other arrays or numbers that are not finite")),
}


@pytest.mark.parametrize("damage", sorted(SWEEP_DAMAGE))
def test_sweep_refuses_a_damaged_record_setting_or_entry_in_one_line(run, damage):
    run_dir, cache, _ = run
    change, parts = SWEEP_DAMAGE[damage]
    change(run_dir, cache)
    with pytest.raises(InputError) as refused:
        run_sweep(run_dir, cache_dir=cache)
    message = str(refused.value)
    assert "\n" not in message and all(part in message for part in parts), message


def test_sweep_of_a_damaged_entry_is_exit_2_and_one_line(run, cli):
    run_dir, cache, _ = run
    _change_records(run_dir, lambda lines: _marker(lines).update(cache_entry="../../../etc/passwd"))
    result = cli("sweep", run_dir, "--cache", cache)
    assert result.code == 2 and "Traceback" not in result.err and result.err.count("\n") == 1, result.err
    assert "is not the name of a cache entry" in result.err


def test_evaluate_computes_a_damaged_entry_again_with_one_warning_naming_it(run, refer, tiny_vit, nlp,
                                                                           tiny_config_paths, tmp_path):
    _, cache, report = run
    image_entry, local = _entry(cache, 12), np.load(_entry(cache, 12))["tensor_local"]
    _change_entry(cache, 12, tensor_local=local[:, :31].copy())  # features of the wrong shape
    _change_entry(cache, 11, info=np.frombuffer(b"[1]", dtype=np.uint8))  # extra information that is a list
    text_entry = next(cache.glob("text-*/*/*.npz"))
    text_entry.unlink()
    os.mkfifo(text_entry)  # a FIFO where a text entry should be: reading it would block
    def blocked(*_):
        raise AssertionError("a read blocked on the FIFO")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(120)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            again = _evaluate(refer, tmp_path / "again", tiny_vit, nlp, tiny_config_paths["vit"], cache)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    messages = [str(warning.message) for warning in caught if "cache entry" in str(warning.message)]
    assert len(messages) == 3 and all("\n" not in m and m.endswith("; computing it again") for m in messages)
    assert any(str(image_entry) in m and "its local features are (6, 31), not of shape 6x32" in m for m in messages)
    assert any("/11-" in m and "its information: the top level must be an object, got [1]" in m for m in messages)
    assert any(str(text_entry) in m and "is a FIFO" in m for m in messages)
    assert again["metrics"] == report["metrics"]
    assert np.array_equal(np.load(image_entry)["tensor_local"], local)  # written again, whole


def test_picks_among_tied_scores_are_ties_not_differences(run):
    run_dir, cache, report = run
    lines = _lines(run_dir)
    marker = next(line for line in lines if line.get("image_done") == 12)
    records = [line for line in lines if line.get("image_id") == 12 and "image_done" not in line]
    picked = records[0]["index"]
    other = next(i for i in range(len(records[0]["overlaps"])) if i not in {r["index"] for r in records})
    # Another proposal's features made those of the run's pick: their scores tie, and the replay takes the first
    # of the two; the run is said to have taken the second, as a sum in another order could have.
    path = next(cache.glob(f"visual-*/{marker['cache_entry']}.npz"))
    data = dict(np.load(path))
    for name in ("tensor_global", "tensor_local"):
        data[name][other] = data[name][picked]
    np.savez(path, **data)
    _change_records(run_dir, lambda lines: next(
        line for line in lines if line.get("sent_id") == records[0]["sent_id"]).update(index=max(picked, other)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "another device or library version" warning
        result = run_sweep(run_dir, cache_dir=cache)
    assert result["run"]["sentences_differing"] == 0 and result["run"]["sentences_tied"] >= 1
    assert "ties with the run's answer" in (run_dir / "sweep" / SWEEP_MD).read_text()


def test_a_tie_is_scores_equal_within_the_tolerance():
    scores = torch.tensor([0.5, 2.0, 2.0 + 1e-6, float("nan"), float("nan")])
    assert pick_agrees(scores, 1, 1) == "same"
    assert pick_agrees(scores, 2, 1) == "tie" and pick_agrees(scores, 1, 2) == "tie"
    assert pick_agrees(scores, 1, 0) == "other" and pick_agrees(scores, 1, 7) == "other"
    assert pick_agrees(scores, 3, 4) == "tie" and pick_agrees(scores, 3, 1) == "other"
