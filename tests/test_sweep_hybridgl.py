"""HybridGL sweeps of a cached run: the run's own numbers exactly, another point as a fresh evaluation gives."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
from refer_fixtures import build_refer, shifted_proposals

from globallocal.data.refer import ReferDataset
from globallocal.errors import InputError
from globallocal.methods import build_method
from globallocal.proposals import Proposals
from globallocal.runs.cache import FeatureCache
from globallocal.runs.evaluate import RECORDS_FILE, EvaluationConfig, read_records, run_evaluation
from globallocal.runs.sweep import SWEEP_JSON, SWEEP_MD, SWEEP_PNG, run_sweep
from globallocal.segmenter import Segmenter

# Small enough for the tiny 12-block ViT; top_k 5 so that Q-sticky-k bites (image 11 has 2 proposals).
SETTINGS = {"gem_size": 64, "top_k": 5, "sticky_topk": True}
OTHER_POINT = {"beta": 0.2, "relation_weight": 0.9, "gem_k_big": 1.95, "gem_k_small": 1.5, "gem_k_other": 1.2}


@pytest.fixture(scope="module")
def refer(tmp_path_factory):
    return build_refer(tmp_path_factory.mktemp("dataset"))


def _source(dataset):
    """Image 11: its 2 instance masks (the crowd one is not an instance); image 12: 6 masks (each instance
    and a shifted copy); image 13: none."""

    def source(image, record):
        instances = dataset.instance_masks(record.image_id)
        if record.image_id == 11:
            return Proposals.from_arrays(instances)
        if record.image_id == 12:
            return shifted_proposals(instances)
        return Proposals.from_arrays(instances[:0])

    return source


def _evaluate(refer, out_dir, clip, nlp, config_path=None, cache_dir=None, **overrides):
    settings = {**SETTINGS, **overrides}
    segmenter = Segmenter(clip, nlp, method=build_method("hybridgl", clip, nlp, **settings))
    cache = FeatureCache.for_segmenter(cache_dir, segmenter, str(config_path)) if cache_dir else None
    dataset = ReferDataset(refer.data_root, "refcoco", "val", images_dir=refer.images_dir)
    config = EvaluationConfig(
        dataset="refcoco", split="val", data_root=refer.data_root, images_dir=refer.images_dir, out_dir=out_dir,
        settings={"model": clip.name, **settings},
    )
    return run_evaluation(config, segmenter, _source(dataset), progress=False, cache=cache)


@pytest.fixture(scope="module")
def cached_run(refer, tmp_path_factory, tiny_vit12, nlp, tiny_config_paths):
    root = tmp_path_factory.mktemp("hybridgl")
    report = _evaluate(refer, root / "run", tiny_vit12, nlp, tiny_config_paths["vit12"], root / "cache")
    return root / "run", report


def test_records_keep_what_the_replay_needs(cached_run, tiny_vit12):
    run_dir, _ = cached_run
    config = json.loads((run_dir / "config.json").read_text())
    assert config["cache"]["scoring"]["tau"] == float(tiny_vit12.model.logit_scale.exp())
    records = {done.marker["image_done"]: done.records for done in read_records(run_dir)}
    guy = next(r for r in records[11] if r["phrase"] == "guy in red shirt")
    assert (guy["noun_phrase"], guy["other_noun_phrases"]) == ("guy", ["red shirt"])
    assert [r["direction"] for r in records[11][:2]] == ["left", "left"]
    # Q-sticky-k: image 12's six proposals get image 11's two as K1 and K2.
    assert {(r["k1"], r["k2"]) for r in records[11] + records[12]} == {(2, 2)}


def test_records_score_each_answer_by_the_final_score_that_chose_it(cached_run, refer, tiny_vit12, nlp):
    run_dir, _ = cached_run
    records = {done.marker["image_done"]: done.records for done in read_records(run_dir)}
    dataset = ReferDataset(refer.data_root, "refcoco", "val", images_dir=refer.images_dir)
    (group,) = [group for group in dataset.images() if group.image.image_id == 11]  # the first: K1 is 2 there too
    segmenter = Segmenter(tiny_vit12, nlp, method=build_method("hybridgl", tiny_vit12, nlp, **SETTINGS))
    segmenter.set_image(dataset.load_image(group.image), Proposals.from_arrays(dataset.instance_masks(11)))
    for record in records[11]:
        answer = segmenter.predict(record["phrase"])
        assert record["index"] == answer.index and answer.score is not None
        assert record["score"] == pytest.approx(answer.score, rel=1e-5)
        assert answer.score == pytest.approx(float(answer.final[answer.candidates.index(answer.index)]))
        assert answer.score != pytest.approx(float(answer.clip_scores[answer.index]))


def test_the_runs_point_reproduces_and_another_is_a_fresh_evaluation(cached_run, refer, tmp_path, tiny_vit12, nlp):
    run_dir, report = cached_run
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "answers differ" warning
        result = run_sweep(run_dir, betas=[0.2, 0.5], axes={"relation_weight": [0.4, 0.9], "gem_k_other": [1.2, 1.8]},
                           out_dir=tmp_path / "sweep")
    run = result["run"]
    assert run["metrics"] == {"guided": report["metrics"], "pure": report["other_answers"]["pure"]}
    assert (run["sentences_checked"], run["sentences_differing"]) == (report["metrics"]["sentences"] - 3, 0)
    assert list(result["axes"]) == ["beta", "relation_weight", "gem_k_other"] and len(result["results"]) == 8
    at = {tuple(item[name] for name in result["axes"]): item["metrics"] for item in result["results"]}
    assert at[(0.5, 0.4, 1.8)] == run["metrics"]

    fresh = _evaluate(refer, tmp_path / "fresh", tiny_vit12, nlp, **OTHER_POINT)
    assert at[(0.2, 0.9, 1.2)] == {"guided": fresh["metrics"], "pure": fresh["other_answers"]["pure"]}
    # The grid must move the answers, or the comparisons above prove nothing.
    assert at[(0.2, 0.9, 1.2)] != run["metrics"]
    assert len({json.dumps(metrics["guided"], sort_keys=True) for metrics in at.values()}) > 2


def test_sweep_writes_a_table_of_both_answers_and_refuses_alpha(cached_run, cli, tmp_path):
    run_dir, _ = cached_run
    out = tmp_path / "out"
    done = cli("sweep", run_dir, "--beta", "0.5,0.2", "--gem-k-big", "1.95,1.0", "--out", out)
    assert done.code == 0, done.err
    assert "no heat map" in done.err and not (out / SWEEP_PNG).exists()
    result = json.loads((out / SWEEP_JSON).read_text())
    assert result["axes"] == {"beta": [0.2, 0.5], "gem_k_big": [1.0, 1.95]}
    assert result["fixed"] == {"relation_weight": 0.4, "gem_k_small": 1.5, "gem_k_other": 1.8}
    markdown = (out / SWEEP_MD).read_text()
    assert "| beta | gem_k_big | guided oIoU | guided mIoU | guided P@0.5" in markdown
    assert "| pure oIoU | pure mIoU |" in markdown and "||" not in markdown
    run_row = next(line for line in markdown.splitlines() if line.startswith("| 0.5* | 1.95 |"))
    assert f"{result['run']['metrics']['pure']['oIoU']:.2f}" in run_row
    best = result["best"]["guided"]["oIoU"]["value"]
    assert f"**{best:.2f}**" in markdown and f"{best:.2f}" in done.out

    refused = cli("sweep", run_dir, "--alpha", "0.9")
    assert refused.code == 2 and "--alpha is a global-local weight" in refused.err
    assert len(refused.err.strip().splitlines()) == 1
    bad_k = cli("sweep", run_dir, "--gem-k-small", "2.5")
    assert bad_k.code == 2 and "--gem-k-small values must be in [0, 2]" in bad_k.err


def _lines_changed(run_dir, tmp_path, change):
    """A copy of the run folder (its cache stays where the run recorded it) with its records file changed."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    lines = [json.loads(line) for line in (copy / RECORDS_FILE).read_text().splitlines()]
    change(lines)
    (copy / RECORDS_FILE).write_text("".join(json.dumps(line) + "\n" for line in lines))
    return copy


def _first_answered(lines):
    return next(line for line in lines if "image_done" not in line and not line["no_proposals"])


HYBRIDGL_DAMAGE = {
    "k1 of 0": (lambda lines: _first_answered(lines).update(k1=0), "k1, k2 or the pure answer"),
    "a null direction": (lambda lines: _first_answered(lines).update(direction=None),
                         "direction must be a string, got null"),
    "other noun phrases of numbers": (lambda lines: _first_answered(lines).update(other_noun_phrases=[1]),
                                      "other_noun_phrases[0] must be a string, got 1"),
    "no pure answer": (lambda lines: _first_answered(lines).pop("other_answers"), "other_answers is missing"),
    "tau as text": (None, 'config.json: cache.scoring.tau must be a number, got "1"'),
    "top_k of 0": (None, "config.json: cache.scoring: top k and negative k must be >= 1"),
}


@pytest.mark.parametrize("damage", sorted(HYBRIDGL_DAMAGE))
def test_sweep_refuses_damaged_hybridgl_records_and_settings_in_one_line(cached_run, tmp_path, damage):
    change, part = HYBRIDGL_DAMAGE[damage]
    run_dir = _lines_changed(cached_run[0], tmp_path, change or (lambda lines: None))
    if change is None:
        config = json.loads((run_dir / "config.json").read_text())
        config["cache"]["scoring"].update({"tau": "1"} if damage == "tau as text" else {"top_k": 0})
        (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError) as refused:
        run_sweep(run_dir, out_dir=tmp_path / "sweep")
    assert part in str(refused.value) and "\n" not in str(refused.value), str(refused.value)
