"""Runs that meet, change weights, or meet bad data: refused with one line naming what and why."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
import time

import pytest
import torch
from refer_fixtures import ShiftedOracleSource, StandInSegmenter, build_refer, dump_refs

from globallocal.data.images import remove_write_orphans
from globallocal.data.refer import ReferDataset
from globallocal.errors import InputError, WeightsError
from globallocal.methods.global_local.method import GlobalLocal, GlobalLocalSettings
from globallocal.models import weights as weights_module
from globallocal.models.weights import weights_identity
from globallocal.proposals import Proposals
from globallocal.proposals.freesolo import _compact
from globallocal.proposals.freesolo_checkpoint import load_freesolo
from globallocal.runs.cache import FeatureCache, VisualStore
from globallocal.runs.evaluate import IMAGE_UNITS, RECORDS_FILE, EvaluationConfig, run_evaluation
from globallocal.runs.runfolder import RunFolder


@pytest.fixture
def refer(tmp_path):
    return build_refer(tmp_path / "dataset")


def _evaluate(refer, out, **config):
    values = {"dataset": "refcoco", "split": "val", "data_root": refer.data_root, "images_dir": refer.images_dir,
              "out_dir": out, "settings": {"model": "stand-in"}, **config}
    dataset = ReferDataset(refer.data_root, "refcoco", "val", images_dir=refer.images_dir)
    return run_evaluation(EvaluationConfig(**values), StandInSegmenter(), ShiftedOracleSource(dataset), progress=False)


# ---- weights by content -------------------------------------------------------------------------------------------


def test_weights_are_hashed_once_then_remembered(tmp_path, monkeypatch):
    path = tmp_path / "w.pt"
    path.write_bytes(b"weights" * 1000)
    old = time.time() - 60
    os.utime(path, (old, old))  # not "racily clean": the memo may keep it
    calls = []
    real = hashlib.sha256
    monkeypatch.setattr(weights_module.hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    first = weights_identity(path)
    assert first == {"size": 7000, "sha256": real(b"weights" * 1000).hexdigest()}
    assert weights_identity(path) == first and len(calls) == 1
    path.write_bytes(b"other!!" * 1000)  # same size, new content and times
    os.utime(path, (old + 1, old + 1))
    assert weights_identity(path)["sha256"] != first["sha256"] and len(calls) == 2


def test_a_resume_with_other_weights_is_refused_and_moved_weights_resume(refer, tmp_path):
    weights = tmp_path / "clip.pt"
    weights.write_bytes(b"A" * 100)
    out = tmp_path / "run"
    report = _evaluate(refer, out, weights={"clip": weights})
    assert report["config"]["weights"]["clip"] == {"size": 100, "sha256": hashlib.sha256(b"A" * 100).hexdigest()}
    moved = tmp_path / "elsewhere" / "renamed.pt"
    moved.parent.mkdir()
    shutil.move(weights, moved)
    assert _evaluate(refer, out, weights={"clip": moved})["metrics"] == report["metrics"]
    moved.write_bytes(b"B" * 100)
    with pytest.raises(InputError) as refused:
        _evaluate(refer, out, weights={"clip": moved})
    message = str(refused.value)
    assert f"other clip weights: the run used sha256 {hashlib.sha256(b'A' * 100).hexdigest()}" in message
    assert f"{moved} has sha256 {hashlib.sha256(b'B' * 100).hexdigest()}" in message


class _Code:
    """Stands for any pickled object in a checkpoint."""


def test_pickled_checkpoints_are_said_to_hold_code(tmp_path, tiny_config_paths):
    from globallocal.models.clip import load_clip

    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps({"model": {"x": _Code()}}))  # a plain pickle, not torch's zip format
    with pytest.raises(WeightsError, match="it is a pickle holding Python objects .*code.* will not be loaded"):
        load_freesolo(legacy)
    zipped = tmp_path / "zipped.pt"
    torch.save({"x": _Code()}, zipped)
    with pytest.raises(WeightsError) as refused:
        load_clip(str(tiny_config_paths["vit"]), str(zipped))
    assert "will not be loaded" in str(refused.value) and "weights_only" not in str(refused.value)


# ---- two runs, links, orphans -------------------------------------------------------------------------------------


def test_a_second_evaluation_on_a_held_folder_is_refused_at_once(refer, tmp_path):
    out = tmp_path / "run"
    with RunFolder(out, IMAGE_UNITS):
        started = time.perf_counter()
        with pytest.raises(InputError, match=rf"in use by another run \(pid {os.getpid()} on "):
            _evaluate(refer, out)
        assert time.perf_counter() - started < 2
    assert not (out / RECORDS_FILE).exists()


def test_a_symlinked_records_file_is_not_followed(refer, tmp_path):
    out = tmp_path / "run"
    _evaluate(refer, out)
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    records = out / RECORDS_FILE
    records.unlink()
    records.symlink_to(target)
    with pytest.raises(InputError, match="is a symbolic link"):
        _evaluate(refer, out)
    assert target.read_text() == "keep me\n"


def test_cache_orphans_are_removed_once_no_writer_can_own_them(tmp_path):
    folder = tmp_path / "text-abc" / "ab"
    folder.mkdir(parents=True)
    old, young = folder / ".x.abc.tmp", folder / ".y.def.tmp"
    old.write_bytes(b"half")
    young.write_bytes(b"in progress")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert remove_write_orphans(tmp_path / "text-abc", 3600) == 1
    assert not old.exists() and young.exists()
    cache = FeatureCache(tmp_path, {"model": "x"}, "vit", GlobalLocal(None, None, GlobalLocalSettings()))
    cache.prepare()
    orphan = cache.visual.directory / ".11-abc.xyz.tmp"
    orphan.write_bytes(b"half")
    os.utime(orphan, (time.time() - 7200, time.time() - 7200))
    cache.prepare()
    assert not orphan.exists()


def test_a_visual_entry_under_another_name_is_a_miss(tmp_path):
    store = VisualStore(tmp_path)
    masks = torch.zeros((2, 6, 8), dtype=torch.bool)
    masks[0, :3], masks[1, 3:] = True, True
    features = torch.randn(2, 4)
    store.save("11-abc", Proposals.from_masks(masks), {"global": features, "local": features})
    assert store.load("11-abc") is not None
    shutil.copy(store.path("11-abc"), store.path("12-def"))
    assert store.load("12-def") is None


# ---- dataset consistency ------------------------------------------------------------------------------------------


def _rewrite_refs(refer, change):
    refs = [dict(ref, sentences=[dict(s) for s in ref["sentences"]]) for ref in refer.refs[("refcoco", "unc")]]
    change(refs)
    dump_refs(refs, refer.data_root / "refcoco" / "refs(unc).p", "str")


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (lambda refs: refs.append(dict(refs[0])), "ref 107 appears twice"),
        (lambda refs: refs[0].update(image_id=12), "its annotation 1101 belongs to image 11"),
        (lambda refs: refs[1]["sentences"][0].update(sent_id=1), "sent_id 1 is used by ref 107 and ref 207"),
        (lambda refs: [ref.update(split="train") for ref in refs], "has no refs in split 'val'"),
    ],
)
def test_inconsistent_datasets_are_refused_naming_the_ids(refer, change, pattern):
    _rewrite_refs(refer, change)
    with pytest.raises(InputError, match=pattern):
        ReferDataset(refer.data_root, "refcoco", "val", images_dir=refer.images_dir)


# ---- the command line ---------------------------------------------------------------------------------------------


@pytest.fixture
def no_models(monkeypatch):
    from globallocal.segmenter import Segmenter

    monkeypatch.setattr(Segmenter, "from_pretrained", lambda *a, **k: pytest.fail("a model was loaded"))


def _evaluate_cli(cli, refer, tmp_path, *extra):
    return cli("evaluate", "--dataset", "refcoco", "--data-root", refer.data_root, "--images", refer.images_dir,
               "--proposals", "gt", *extra)


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (["--split", "testC"], "invalid combination --dataset 'refcoco' --split-by 'unc' --split 'testC'"),
        (["--split", "val", "--limit", "0"], "--limit must be at least 1"),
        (["--split", "val", "--save-masks", "{file}"], "is an existing file; give a folder"),
        (["--split", "val", "--out", "{file}"], "run folder {file} is an existing file"),
    ],
)
def test_cheap_checks_fail_before_any_model_loads(cli, refer, tmp_path, no_models, extra, pattern):
    existing = tmp_path / "a_file"
    existing.write_text("x")
    extra = [value.replace("{file}", str(existing)) for value in extra]
    result = _evaluate_cli(cli, refer, tmp_path, *extra, *([] if "--out" in extra else ["--out", tmp_path / "run"]))
    assert result.code == 2 and "Traceback" not in result.err
    assert pattern.replace("{file}", str(existing)) in result.err


def test_an_unknown_data_root_fails_before_any_model_loads(cli, tmp_path, no_models):
    result = cli("evaluate", "--dataset", "refcoco", "--split", "val", "--data-root", tmp_path / "nowhere",
                 "--images", tmp_path, "--out", tmp_path / "run")
    assert result.code == 2 and "data root not found" in result.err


def test_a_full_disk_is_one_error_line(cli, example, tiny_config_paths, tiny_checkpoints, tmp_path, monkeypatch):
    from globallocal.data import images

    def full(path, write, sync=True):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(images, "atomic_write", full)
    out = tmp_path / "m.png"
    result = cli("segment", example["image"], "the chair", "--masks", example["mask_dir"], "-o", out,
                 "--clip-model", tiny_config_paths["vit"], "--clip-weights", tiny_checkpoints["vit"])
    assert result.code == 2 and "Traceback" not in result.err
    assert result.err.strip().splitlines()[-1] == (
        f"error: cannot write or read {out}: No space left on device; free some space or choose another location"
    )


def test_a_malformed_report_is_one_error_line(cli, tmp_path):
    (tmp_path / "report.json").write_text(json.dumps({"config": {"dataset": "refcoco"}, "metrics": {}}))
    result = cli("report", tmp_path)
    assert result.code == 2 and "Traceback" not in result.err
    assert "is not a report of 'globallocal evaluate'" in result.err


# ---- FreeSOLO's masks at full size ----------------------------------------------------------------------------


def test_masks_are_compacted_in_place():
    masks = torch.rand(6, 5, 7) > 0.5
    keep = torch.tensor([False, True, True, False, True, False])
    expected = masks[keep].clone()
    compacted = _compact(masks, keep)
    assert torch.equal(compacted, expected)
    assert compacted.untyped_storage().data_ptr() == masks.untyped_storage().data_ptr()  # no second stack
