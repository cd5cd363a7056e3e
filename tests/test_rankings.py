"""Pictures and the page rank proposals by the score the method chose with: HybridGL's final score, not CLIP's."""

from __future__ import annotations

import json
import math

import pytest
import torch

from globallocal.methods.base import SegmentResult
from globallocal.methods.hybridgl.method import HybridGLResult


def _result(cls=SegmentResult, **fields):
    common = {"phrase": "the dog", "expression": "the dog", "noun_phrase": "the dog", "mask": torch.zeros(2, 2),
              "truncated": False, "has_noun": True}
    return cls(**common, **fields)


def test_the_answer_comes_first_then_the_best_scores():
    result = _result(index=2, scores=torch.tensor([0.1, 0.7, 0.9, 0.3]))
    assert result.ranking() == [(2, pytest.approx(0.9)), (1, pytest.approx(0.7)), (3, pytest.approx(0.3)),
                                (0, pytest.approx(0.1))]
    assert _result(index=None, scores=torch.zeros(0)).ranking() == []


def test_hybridgl_ranks_its_candidates_by_final_score():
    # CLIP ranks proposal 0 first; the guidance made 1 the answer; 2's final score is NaN (an empty mask).
    nan = float("nan")
    result = _result(HybridGLResult, index=1, scores=torch.tensor([-0.9, -0.7, nan, nan]), candidates=[0, 1, 2],
                     clip_scores=torch.tensor([3.5, 3.1, 0.2, 0.1]), pure_index=0)
    ranking = result.ranking()
    assert [index for index, _ in ranking] == [1, 0, 2]
    assert ranking[0][1] == pytest.approx(-0.7) and ranking[1][1] == pytest.approx(-0.9) and math.isnan(ranking[2][1])
    assert result.ranking_label == "final score"


def test_the_json_the_summary_and_the_page_give_the_score_that_chose():
    from types import SimpleNamespace

    from globallocal.outputs.answers import caption
    from globallocal.serve.views import summary

    nan = float("nan")
    result = _result(HybridGLResult, index=1, scores=torch.tensor([-0.9, -0.7, nan, nan]), candidates=[0, 1, 2],
                     clip_scores=torch.tensor([3.5, 3.1, 0.2, 0.1]), pure_index=0)
    record = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert record["score"] == result.score == pytest.approx(-0.7) and record["score_name"] == "final score"
    assert record["scores"][:2] == [pytest.approx(-0.9), pytest.approx(-0.7)] and record["scores"][2:] == [None] * 2
    assert record["clip_scores"] == [pytest.approx(value) for value in (3.5, 3.1, 0.2, 0.1)]
    assert caption(result).endswith("proposal 1, final score -0.7000")
    page = summary(SimpleNamespace(state=SimpleNamespace(proposals=None)), SimpleNamespace(results=[result]))
    assert page.endswith("proposal 1, final score -0.7000")
    # A candidate whose final score is undefined (an empty mask's, under nan_wins): null, and said so.
    undefined = _result(HybridGLResult, index=2, scores=torch.tensor([-0.9, -0.7, nan, nan]), candidates=[0, 1, 2],
                        clip_scores=torch.tensor([3.5, 3.1, 0.2, 0.1]), pure_index=0)
    assert undefined.to_json()["score"] is None and caption(undefined).endswith("final score undefined")


def test_top_k_picture_marks_the_json_answer(cli, monkeypatch, tmp_path, example, tiny_config_paths,
                                              tiny_checkpoints):
    from globallocal.outputs import answers

    drawn = []
    real = answers.top_k_picture
    monkeypatch.setattr(answers, "top_k_picture", lambda *args: drawn.append(args) or real(*args))
    report = tmp_path / "out.json"
    done = cli("segment", example["image"], "the chair on the left", "--method", "hybridgl",
               "--clip-model", tiny_config_paths["vit12"], "--clip-weights", tiny_checkpoints["vit12"],
               "--masks", example["mask_dir"], "-o", tmp_path / "m.png", "--top-k-picture", tmp_path / "k.png",
               "--json", report)
    assert done.code == 0, done.err
    answer = json.loads(report.read_text())["results"][0]
    (_, _, ranking, _, _, label), = drawn
    assert ranking[0][0] == answer["index"] and label == "final score"
    assert [value for _, value in ranking] == [pytest.approx(answer["scores"][index]) for index, _ in ranking]
    assert f"proposal {answer['index']} ({answer['file']}), final score" in done.err
