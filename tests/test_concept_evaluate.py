"""Evaluating with phrase-dependent proposals (SAM 3's interface, a stand-in source) on the synthetic REFER split.

Each sentence is answered among its own noun phrase's candidates and its
record says which step found them; a sentence without any is IoU 0; the
cache keeps every query's candidates and features, so a rerun runs neither
the source nor the image tower; a killed run resumes to identical records;
a sweep replays the run from the cache alone.
"""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
from concept_fixtures import FakeConceptSource, refer_masks
from refer_fixtures import build_refer

from globallocal.data.refer import ReferDataset
from globallocal.methods import build_method
from globallocal.runs.cache import FeatureCache
from globallocal.runs.evaluate import RECORDS_FILE, EvaluationConfig, EvaluationStopped, run_evaluation
from globallocal.runs.sweep import run_sweep
from globallocal.segmenter import Segmenter

pytestmark = pytest.mark.usefixtures("one_thread")

CLIPS = {"global-local": "vit", "hybridgl": "vit12"}


@pytest.fixture(scope="module")
def refer(tmp_path_factory):
    return build_refer(tmp_path_factory.mktemp("dataset"))


@pytest.fixture(scope="module")
def dataset(refer):
    return ReferDataset(refer.data_root, "refcoco", "val", images_dir=refer.images_dir)


def _evaluate(refer, dataset, out_dir, method, request, cache_dir=None, stop_after_images=None, **settings):
    """A refcoco val run of ``method`` with the stand-in concept source; (report, source)."""
    family = CLIPS[method]
    clip = request.getfixturevalue(f"tiny_{family}")
    nlp = request.getfixturevalue("nlp")
    source = FakeConceptSource(refer_masks(dataset))
    segmenter = Segmenter(clip, nlp, proposal_source=source, method=build_method(method, clip, nlp, **settings))
    config_path = request.getfixturevalue("tiny_config_paths")[family]
    cache = FeatureCache.for_segmenter(cache_dir, segmenter, str(config_path)) if cache_dir else None
    config = EvaluationConfig(
        dataset="refcoco", split="val", data_root=refer.data_root, images_dir=refer.images_dir, out_dir=out_dir,
        settings={"model": clip.name, "proposals": "fake", **settings},
    )
    report = run_evaluation(config, segmenter, None, progress=False, stop_after_images=stop_after_images,
                            cache=cache, proposal_key={"source": "fake", "options": source.settings})
    return report, source


def _lines(out_dir):
    lines = [json.loads(line) for line in (out_dir / RECORDS_FILE).read_text().splitlines()]
    return [{key: value for key, value in line.items() if key != "seconds"} for line in lines]


def _records(out_dir):
    return [line for line in _lines(out_dir) if "image_done" not in line]


@pytest.fixture(scope="module")
def cached_runs(refer, dataset, tmp_path_factory, request):
    """Per method: a cached run, its folder and cache."""
    runs = {}
    for method in CLIPS:
        root = tmp_path_factory.mktemp(method)
        report, source = _evaluate(refer, dataset, root / "run", method, request, root / "cache")
        runs[method] = (root, report, source)
    return runs


@pytest.mark.parametrize("method", list(CLIPS))
def test_each_sentence_is_scored_among_its_own_candidates(cached_runs, dataset, method):
    root, report, source = cached_runs[method]
    records = _records(root / "run")
    assert source.vision_calls == len(dataset.images())  # once per image, whatever its sentences
    steps = {record["proposal_step"] for record in records}
    assert steps == {"noun-phrase", "head-noun", "none"}
    gts = {(ref.ref_id): dataset.gt_mask(ref) for group in dataset.images() for ref in group.refs}
    for record in records:
        assert len(record["overlaps"]) == len(record["proposal_scores"])
        if record["proposal_step"] == "none":
            # No candidate: an empty prediction, IoU 0, counted as a sentence without proposals.
            assert record["no_proposals"] and record["I"] == 0 and record["U"] == record["gt_area"]
            assert record["index"] is None and record["proposal_score"] is None
            continue
        assert not record["no_proposals"]
        assert record["I"] == record["overlaps"][record["index"]]
        assert record["proposal_score"] == record["proposal_scores"][record["index"]]
        # The candidates are the stand-in's instances of the prompt that answered.
        group = next(g for g in dataset.images() if g.image.image_id == record["image_id"])
        masks = refer_masks(dataset)(dataset.load_image(group.image), record["proposal_prompt"])
        gt = gts[record["ref_id"]]
        assert record["overlaps"] == [int(np.count_nonzero(mask & gt)) for mask in masks]
    assert report["metrics"]["no_proposal_sentences"] == sum(record["no_proposals"] for record in records) > 0


@pytest.mark.parametrize("method", list(CLIPS))
def test_a_warm_cache_runs_neither_the_source_nor_the_image_tower(cached_runs, refer, dataset, request, tmp_path,
                                                                  method):
    root, report, _ = cached_runs[method]
    clip = request.getfixturevalue(f"tiny_{CLIPS[method]}")
    rows = []
    handle = clip.visual.conv1.register_forward_pre_hook(lambda _, args: rows.append(args[0].shape[0]))
    try:
        warm, source = _evaluate(refer, dataset, tmp_path / "warm", method, request, root / "cache")
    finally:
        handle.remove()
    assert source.vision_calls == 0 and source.batches == [] and rows == []
    assert _records(tmp_path / "warm") == _records(root / "run")
    assert warm["metrics"] == report["metrics"]
    # Without a cache: the same answers. HybridGL encodes a phrase's texts as one batch, which the cache's one
    # string at a time matches to the last bits only, so its scores are compared as numbers.
    _evaluate(refer, dataset, tmp_path / "plain", method, request)
    exact = ("score", "cache_entry") if method == "hybridgl" else ("cache_entry",)
    for plain, cached in zip(_records(tmp_path / "plain"), _records(root / "run"), strict=True):
        assert {k: v for k, v in plain.items() if k not in exact} == {
            k: v for k, v in cached.items() if k not in exact}
        assert plain["score"] == (None if cached["score"] is None else pytest.approx(cached["score"], rel=1e-5))


def test_a_damaged_query_entry_is_computed_again_with_a_warning_and_never_copied_into_records(
        cached_runs, refer, dataset, request, tmp_path):
    root, report, _ = cached_runs["global-local"]
    shutil.copytree(root / "cache", tmp_path / "cache")
    records = _records(root / "run")
    named = [record["cache_entry"] for record in records if "cache_entry" in record]
    damage = {named[0]: b'["step", "prompt"]', named[-1]: json.dumps({"step": "garbage", "prompt": "x"}).encode()}
    for name, info in damage.items():  # an entry that is a list, and one naming a step the source has not
        path = next((tmp_path / "cache").glob(f"visual-*/{name}.npz"))
        np.savez(path, **{**np.load(path), "info": np.frombuffer(info, dtype=np.uint8)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again, source = _evaluate(refer, dataset, tmp_path / "again", "global-local", request, tmp_path / "cache")
    messages = [str(warning.message) for warning in caught if "cache entry" in str(warning.message)]
    assert len(messages) == 2 and all("\n" not in message for message in messages), messages
    assert any(named[0] in m and "its information: the top level must be an object" in m for m in messages)
    assert any(named[-1] in m and "its answer" in m and "'garbage'" in m for m in messages)
    assert source.batches  # the two queries were asked again
    assert _records(tmp_path / "again") == records and again["metrics"] == report["metrics"]


@pytest.mark.parametrize("cached", [False, True])
def test_a_killed_run_resumes_to_identical_records(refer, dataset, request, tmp_path, cached):
    cache = tmp_path / "cache" if cached else None
    _evaluate(refer, dataset, tmp_path / "whole", "global-local", request, cache)
    with pytest.raises(EvaluationStopped):
        _evaluate(refer, dataset, tmp_path / "resumed", "global-local", request, cache, stop_after_images=2)
    _, source = _evaluate(refer, dataset, tmp_path / "resumed", "global-local", request, cache)
    assert _lines(tmp_path / "resumed") == _lines(tmp_path / "whole")
    assert source.vision_calls == (0 if cached else len(dataset.images()) - 2)


def test_a_global_local_sweep_replays_the_run_and_other_weights_as_evaluated(cached_runs, refer, dataset, request,
                                                                             tmp_path):
    root, report, _ = cached_runs["global-local"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "picks differ" warning
        result = run_sweep(root / "run", [0.3, 0.95], [0.5])
    assert result["run"]["metrics"] == report["metrics"] and result["run"]["sentences_differing"] == 0
    assert result["run"]["sentences_checked"] == report["metrics"]["sentences"] - report["metrics"][
        "no_proposal_sentences"]
    other = next(item["metrics"] for item in result["results"] if item["alpha"] == 0.3)
    evaluated, _ = _evaluate(refer, dataset, tmp_path / "alpha", "global-local", request, alpha=0.3)
    assert other == evaluated["metrics"]


def test_a_hybridgl_sweep_replays_the_run(cached_runs):
    root, report, _ = cached_runs["hybridgl"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = run_sweep(root / "run", betas=[0.2, 0.5], axes={"relation_weight": [0.4, 0.9]})
    assert result["run"]["sentences_differing"] == 0
    assert result["run"]["metrics"]["guided"] == report["metrics"]
