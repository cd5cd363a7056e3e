"""The ``marks`` preset: the shortlist drawn numbered, the choice read from log-probabilities or the reply."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from vlm_script import ScriptedBackend, TransportError, images_of, kinds, proposals, rectangle, texts_of

from globallocal.methods.vlm.marks import best_label, read_choice, run_marks, shortlist
from globallocal.methods.vlm.prompts import builtin_prompts
from globallocal.methods.vlm.render import marks_image
from globallocal.methods.vlm.settings import PRESETS

MARKS = PRESETS["marks"].with_overrides(marks_k=3)
PROMPTS = builtin_prompts("marks")
H, W = 48, 64
PHOTO = Image.fromarray(np.random.default_rng(3).integers(0, 255, (H, W, 3), dtype=np.uint8))
CANDIDATES = proposals([rectangle(H, W, 2 + 15 * i, 2, 12 + 15 * i, 40) for i in range(4)], [0.2, 0.9, 0.5, 0.7])
ORDER = [1, 3, 2]  # the best three by the source's scores


def pick(replies=(), logprobs=(), settings=MARKS, candidates=(CANDIDATES,), scores=None):
    backend = ScriptedBackend(list(replies), logprobs=list(logprobs))
    queries = [f"query {i}" for i in range(len(candidates))]
    return run_marks(backend, PHOTO, queries, list(candidates), settings, PROMPTS, scores), backend


def test_the_shortlist_is_drawn_numbered_and_the_choice_read_from_logprobs():
    (answer,), backend = pick(logprobs=[{"1": -2.0, "2": -0.1, "3": float("-inf"), "4": 3.0}])
    ((messages, labels),) = backend.label_calls
    assert labels == ("1", "2", "3") and len(messages) == 1
    assert kinds(messages[0]) == ["image", "image", "text"]
    photo, marked = images_of(messages[0])
    assert photo is PHOTO
    assert np.array_equal(np.asarray(marked), np.asarray(marks_image(PHOTO, CANDIDATES.masks[ORDER])))
    assert texts_of(messages[0]) == [PROMPTS.fill("marks_request", count=3, labels="1, 2, 3", query="query 0")]
    assert backend.received == []  # no generation
    assert (answer.outcome, answer.chosen) == ("select", (3,)) and torch.equal(answer.mask, CANDIDATES.masks[3])
    assert answer.details["shortlist"] == ORDER
    assert answer.details["label_logprobs"] == {"1": -2.0, "2": -0.1, "3": None}  # JSON holds no infinity
    assert answer.usage.calls == 1 and answer.transcript[0]["labels"]["2"] == -0.1


@pytest.mark.parametrize("logprobs", [None, {}, {"1": float("nan"), "2": float("-inf")}])
def test_without_usable_logprobs_the_reply_is_read(logprobs):
    (answer,), backend = pick(["<think>Mark 1 is a cat.</think>\nMark 3."], [logprobs])
    assert len(backend.label_calls) == 1 and len(backend.received) == 1
    assert backend.received[0] == backend.label_calls[0][0]
    assert (answer.outcome, answer.chosen) == ("select", (2,))
    assert answer.transcript[0]["reply"].endswith("Mark 3.")


def test_logprobs_off_asks_for_a_reply_only():
    (answer,), backend = pick(["2"], settings=MARKS.with_overrides(logprobs=False))
    assert backend.label_calls == [] and answer.chosen == (3,)


@pytest.mark.parametrize("fallback, chosen", [("best", (1,)), ("none", ())])
def test_an_unreadable_choice_is_a_vlm_error_answered_by_the_fallback(fallback, chosen):
    settings = MARKS.with_overrides(fallback=fallback, logprobs=False)
    for reply in ("4", "none of them", "2.5"):
        (answer,), _ = pick([reply], settings=settings)
        assert (answer.outcome, answer.reason, answer.chosen) == ("vlm_error", "unreadable_choice", chosen)
    (answer,), _ = pick(logprobs=[TransportError()], settings=settings.with_overrides(logprobs=True))
    assert (answer.outcome, answer.reason, answer.chosen) == ("vlm_error", "transport", chosen)


def test_another_methods_scores_make_the_shortlist():
    scores = torch.tensor([0.9, 0.1, 0.8, 0.0])
    (answer,), backend = pick(["1"], [None], scores=[scores])
    marked = images_of(backend.received[0][0])[1]
    assert np.array_equal(np.asarray(marked), np.asarray(marks_image(PHOTO, CANDIDATES.masks[[0, 2, 1]])))
    assert answer.chosen == (0,) and answer.details["shortlist"] == [0, 2, 1]
    (answer,), _ = pick(["7"], [None], scores=[scores])
    assert answer.chosen == (0,)  # the fallback's best is by the shortlist's scores


def test_one_candidate_is_chosen_without_asking_and_none_gives_the_empty_answer():
    one = CANDIDATES.select(torch.tensor([2]))
    none = CANDIDATES.select(torch.zeros(4, dtype=torch.bool))
    answers, backend = pick(candidates=(one, none))
    assert backend.label_calls == [] and backend.received == []
    assert [(a.outcome, a.reason, a.chosen) for a in answers] == [("select", "single_candidate", (0,)),
                                                                  ("no_mask", "no_candidates", ())]
    assert not answers[1].mask.any()


def test_the_phrases_of_a_photo_are_asked_together():
    answers, backend = pick(["1", "3"], [None, None], candidates=(CANDIDATES, CANDIDATES))
    assert backend.batches == [2] and [a.chosen for a in answers] == [(1,), (2,)]


def test_read_choice_and_best_label():
    assert read_choice("```\n3\n```", 3) == 3
    assert read_choice("The answer: 12", 12) == 12
    assert read_choice("-2", 3) is None and read_choice("", 3) is None and read_choice("0", 3) is None
    assert best_label({"1": -1.0, "2": -1.0}, ("1", "2")) == "1"
    assert best_label({"1": None, "3": -1.0}, ("1", "2", "3")) == "3"
    assert shortlist(torch.tensor([0.5, 0.5, 0.9]), 2) == [2, 0]
