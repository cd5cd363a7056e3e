"""alpha x beta sweeps of a cached run: the run's own numbers exactly, other settings as if evaluated."""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from refer_fixtures import ShiftedOracleSource, build_refer
from rich.console import Console

from globallocal import cli
from globallocal.data.refer import ReferDataset
from globallocal.errors import InputError
from globallocal.methods import ImageFeatures
from globallocal.methods.global_local.method import (
    GlobalLocalSettings,
    proposal_scores,
    scoring_visual,
    text_blend,
    visual_blend,
)
from globallocal.models.text import ParsedPhrase
from globallocal.proposals import Proposals
from globallocal.runs.cache import FeatureCache
from globallocal.runs.evaluate import EvaluationConfig, run_evaluation
from globallocal.runs.sweep import (
    SWEEP_JSON,
    SWEEP_MD,
    SWEEP_PNG,
    format_sweep_table,
    parse_values,
    run_sweep,
)
from globallocal.segmenter import Segmenter

RUN_RED = (230, 30, 30)


@pytest.fixture
def refer(tmp_path):
    return build_refer(tmp_path / "dataset")


def _evaluate(refer, out_dir, clip, nlp, config_path=None, cache_dir=None, **settings):
    """A run on refcoco val with shifted ground-truth proposals (image 13 gets none), cached when cache_dir."""
    segmenter = Segmenter(clip, nlp, GlobalLocalSettings(**settings))
    cache = FeatureCache.for_segmenter(cache_dir, segmenter, str(config_path)) if cache_dir else None
    dataset = ReferDataset(refer.data_root, "refcoco", "val", images_dir=refer.images_dir)
    config = EvaluationConfig(
        dataset="refcoco", split="val", data_root=refer.data_root, images_dir=refer.images_dir, out_dir=out_dir,
        settings={"model": clip.name, **settings},
    )
    source = ShiftedOracleSource(dataset, frozenset({13}))
    return run_evaluation(config, segmenter, source, progress=False, cache=cache)


@pytest.mark.parametrize("family", ["vit", "resnet"])
@pytest.mark.parametrize("feature_norm", ["paper", "unit"])
def test_the_scoring_is_the_segmenters_bit_for_bit(family, feature_norm, request, nlp):
    clip = request.getfixturevalue(f"tiny_{family}")
    settings = GlobalLocalSettings(alpha=0.8, beta=0.3, feature_norm=feature_norm)
    segmenter = Segmenter(clip, nlp, settings)
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand((6, 12, 16), generator=generator) > 0.5
    global_features = 3 * torch.randn((6, 32), generator=generator)
    local_features = torch.randn((6, 32), generator=generator)
    expression, noun_phrase = torch.randn((2, 32), generator=generator)
    proposals = Proposals.from_masks(masks)
    image = Image.new("RGB", (16, 12))
    segmenter.set_features(image, proposals, {"global": global_features, "local": local_features})
    segmenter.add_text_features(["the red car", "car"], torch.stack([expression, noun_phrase]))
    features = ImageFeatures(image, proposals, segmenter.image_state.tensors)
    method = segmenter.method
    phrase = ParsedPhrase("the red car", "the red car", "car", True)
    expected = method.scores(features, method.text_features([phrase], segmenter.encode))
    assert torch.equal(method.answer(features, [phrase], segmenter.encode)[0].scores, expected[0])

    # The sweep replays one sentence at a time from cached features.
    visual = visual_blend(global_features, local_features, 0.8, feature_norm, family)
    text = text_blend(torch.stack([expression]), torch.stack([noun_phrase]), 0.3, feature_norm, family)
    scores = proposal_scores(text, scoring_visual(visual, feature_norm, family), feature_norm, family)
    assert torch.equal(scores, expected)


@pytest.mark.parametrize(("family", "feature_norm"), [("vit", "paper"), ("resnet", "paper"), ("resnet", "unit")])
def test_sweep_gives_the_run_exactly_and_other_settings_as_evaluated(
    refer, tmp_path, family, feature_norm, request, nlp, tiny_config_paths
):
    clip = request.getfixturevalue(f"tiny_{family}")
    run_dir = tmp_path / "run"
    report = _evaluate(refer, run_dir, clip, nlp, tiny_config_paths[family], tmp_path / "cache",
                       feature_norm=feature_norm)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "picks differ" warning
        result = run_sweep(run_dir, [0.3, 0.95], [0.1, 0.5])
    assert result["run"]["metrics"] == report["metrics"]
    assert result["run"]["sentences_checked"] == report["metrics"]["sentences"] - 3  # image 13: no proposals
    assert result["run"]["sentences_differing"] == 0
    by_point = {(item["alpha"], item["beta"]): item["metrics"] for item in result["results"]}
    assert list(by_point) == [(0.3, 0.1), (0.3, 0.5), (0.95, 0.1), (0.95, 0.5)]
    assert by_point[(0.95, 0.5)] == report["metrics"]
    for alpha, beta in [(0.3, 0.1), (0.3, 0.5), (0.95, 0.1)]:
        evaluated = _evaluate(refer, tmp_path / f"plain_{alpha}_{beta}", clip, nlp, alpha=alpha, beta=beta,
                              feature_norm=feature_norm)
        assert by_point[(alpha, beta)] == evaluated["metrics"], (alpha, beta)
    # The grid must move the answers, or the comparisons above prove nothing.
    assert len({json.dumps(metrics, sort_keys=True) for metrics in by_point.values()}) > 1


def test_sweep_writes_markdown_json_and_a_heat_map(refer, tmp_path, tiny_vit, nlp, tiny_config_paths, monkeypatch,
                                                   capsys):
    run_dir = tmp_path / "run"
    _evaluate(refer, run_dir, tiny_vit, nlp, tiny_config_paths["vit"], tmp_path / "cache")
    monkeypatch.setattr(
        sys, "argv", ["globallocal", "sweep", str(run_dir), "--alpha", "0.8,0.95,0.85,0.9", "--beta", "0.3,0.5,0.7"]
    )
    cli.main()
    stdout = capsys.readouterr().out
    result = json.loads((run_dir / "sweep" / SWEEP_JSON).read_text())
    assert result["alphas"] == [0.8, 0.85, 0.9, 0.95] and result["betas"] == [0.3, 0.5, 0.7]
    assert len(result["results"]) == 12
    for item in result["results"]:
        assert f"{item['metrics']['oIoU']:.2f}" in stdout and f"{item['metrics']['mIoU']:.2f}" in stdout
    best = result["best"]["oIoU"]
    assert best["value"] == max(item["metrics"]["oIoU"] for item in result["results"])

    markdown = (run_dir / "sweep" / SWEEP_MD).read_text()
    assert "## oIoU" in markdown and "## mIoU" in markdown and f"**{best['value']:.2f}**" in markdown
    assert "||" not in markdown and "reproduces 11 of its 11 picks" in markdown
    row = " | ".join(f"{item['metrics']['mIoU']:.2f}" for item in result["results"] if item["alpha"] == 0.85)
    assert f"\n| 0.85 | {row} |\n" in markdown.replace("**", "")  # the mIoU grid's row

    heat_map = Image.open(run_dir / "sweep" / SWEEP_PNG).convert("RGB")
    pixels = np.asarray(heat_map)
    assert (pixels == RUN_RED).all(axis=-1).any(), "the run's own cell is outlined"
    one_cell = run_sweep(run_dir, [0.5], [0.5], out_dir=tmp_path / "small")
    small = np.asarray(Image.open(tmp_path / "small" / SWEEP_PNG).convert("RGB"))
    assert small.shape[0] < pixels.shape[0] and small.shape[1] < pixels.shape[1]
    assert not (small == RUN_RED).all(axis=-1).any()  # the run's setting is not in that grid

    console = Console(record=True, width=200)
    console.print(format_sweep_table(one_cell))
    assert "< run" not in console.export_text()


def test_sweep_defaults_to_the_runs_values_and_finds_a_moved_cache(refer, tmp_path, tiny_vit, nlp,
                                                                    tiny_config_paths):
    run_dir = tmp_path / "run"
    report = _evaluate(refer, run_dir, tiny_vit, nlp, tiny_config_paths["vit"], tmp_path / "cache", alpha=0.9)
    (tmp_path / "cache").rename(tmp_path / "moved")
    with pytest.raises(InputError, match="pass the cache folder with --cache"):
        run_sweep(run_dir)
    result = run_sweep(run_dir, cache_dir=tmp_path / "moved")
    assert [(item["alpha"], item["beta"]) for item in result["results"]] == [(0.9, 0.5)]
    assert result["results"][0]["metrics"] == report["metrics"]
    with pytest.raises(InputError, match="--relation-weight is a HybridGL weight; .* is a global-local run"):
        run_sweep(run_dir, cache_dir=tmp_path / "moved", axes={"relation_weight": [0.3], "gem_k_big": None})

    entry = next((tmp_path / "moved").glob("visual-*/12-*.npz"))
    entry.unlink()
    with pytest.raises(InputError, match="cache entry of image 12"):
        run_sweep(run_dir, cache_dir=tmp_path / "moved")


def test_sweep_needs_a_finished_cached_run(refer, tmp_path, tiny_vit, nlp):
    _evaluate(refer, tmp_path / "plain", tiny_vit, nlp)
    with pytest.raises(InputError, match="without --cache"):
        run_sweep(tmp_path / "plain")
    (tmp_path / "plain" / "report.json").unlink()
    with pytest.raises(InputError, match="finished run"):
        run_sweep(tmp_path / "plain")


def test_parse_values():
    assert parse_values(None, "alpha") is None
    assert parse_values("0.9, 0.8,0.9,", "alpha") == [0.8, 0.9]
    with pytest.raises(InputError, match="comma-separated"):
        parse_values("0.8;0.9", "alpha")
    with pytest.raises(InputError, match=r"in \[0, 1\]"):
        parse_values("0.5,1.5", "beta")
    with pytest.raises(InputError, match="at least one"):
        parse_values(",", "beta")


@pytest.mark.parametrize(("settings", "message"), [
    ({"method": "sam3"}, "was evaluated with method sam3, whose runs cannot be swept; sweeps are for global-local "
                         "and hybridgl runs made with --cache"),
    ({"method": "tcl"}, "was evaluated with method tcl, whose runs cannot be swept"),
    ({"method": "global-local", "tcl_weight": 0.3}, "blends global-local with TCL (--tcl-blend); its scores cannot "
                                                    "be replayed from the cache, so it cannot be swept"),
    ({"method": "hybridgl"}, "was evaluated without --cache, so its features were not kept; evaluate again with "
                             "--cache DIR"),
], ids=["sam3", "tcl", "blend", "uncached"])
def test_a_run_that_cannot_be_swept_is_told_so_at_once(tmp_path, settings, message):
    """The method is checked before the cache: a SAM 3 or TCL run evaluated again with --cache leads nowhere."""
    from globallocal.runs.sweepable import check_sweepable

    (tmp_path / "config.json").write_text(json.dumps({"settings": settings}))
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(InputError) as caught:
        check_sweepable(tmp_path)
    assert message in str(caught.value)
    assert ("--cache DIR" in str(caught.value)) == (settings["method"] == "hybridgl")
    with pytest.raises(InputError, match="no such folder"):
        check_sweepable(tmp_path / "nope")
