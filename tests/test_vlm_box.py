"""The ``box`` preset: reading the VLM's box in each family's convention, and the candidate it points at."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from vlm_script import ScriptedBackend, TransportError, images_of, kinds, proposals, rectangle, texts_of

from globallocal.methods.vlm.grounding import box_ious, read_box, run_box
from globallocal.methods.vlm.prompts import builtin_prompts
from globallocal.methods.vlm.settings import PRESETS

BOX = PRESETS["box"]
PROMPTS = builtin_prompts("box")


@pytest.mark.parametrize("reply, box_format, expected", [
    # Qwen3-VL: a 0-1000 grid, in a fence
    ('```json\n[{"bbox_2d": [100, 200, 500, 800], "label": "man"}]\n```', "grid-1000", (64, 96, 320, 384)),
    # after a think block whose numbers do not count
    ('<think>maybe [1, 2, 3, 4]?</think>\n[{"bbox_2d": [10, 20, 30, 40]}]', "photo-pixels", (10, 20, 30, 40)),
    # cut short at the token limit, the four numbers there
    ('```json\n[{"bbox_2d": [10, 20, 30, 40], "label": "the m', "photo-pixels", (10, 20, 30, 40)),
    # reversed corners
    ("[30, 40, 10, 20]", "photo-pixels", (10, 20, 30, 40)),
    # partly outside the photo: clipped
    ('{"bbox_2d": [-50, -10, 700, 500]}', "photo-pixels", (0, 0, 640, 480)),
    # JSON first: the label's number is not a coordinate
    ('[{"label": "man 2", "bbox_2d": [10, 20, 30, 40]}]', "photo-pixels", (10, 20, 30, 40)),
    ('[{"label": "dog"}, {"bbox": [11, 21, 31, 41]}]', "photo-pixels", (11, 21, 31, 41)),
    ("[[12, 22, 32, 42], [1, 1, 2, 2]]", "photo-pixels", (12, 22, 32, 42)),
    # no JSON: the first four numbers standing alone ("x1" is no number)
    ("The box is x1=10, y1=20, x2=30.5, y2=40.", "photo-pixels", (10, 20, 30.5, 40)),
    ("(10, 20), (30, 40) and then 50", "photo-pixels", (10, 20, 30, 40)),
])
def test_boxes_are_read_tolerantly(reply, box_format, expected):
    assert read_box(reply, box_format, (640, 480)) == pytest.approx(expected)


def test_qwen25_boxes_are_pixels_of_the_image_as_the_model_saw_it():
    """A 640x427 photo seen as 644x420 (multiples of 28): the box maps back by each axis' ratio."""
    box = read_box('[{"bbox_2d": [322, 210, 644, 420]}]', "seen-pixels", (640, 427), seen_size=(644, 420))
    assert box == pytest.approx((320, 213.5, 640, 427))
    with pytest.raises(ValueError, match="needs the size of the image as the model saw it"):
        read_box("[1, 2, 3, 4]", "seen-pixels", (640, 427))


@pytest.mark.parametrize("reply", [
    '```json\n[{"bbox_2d": [10, 20, 30',  # truncated before the fourth number
    "<think>The box is [10, 20, 30, 40] but let me check",  # a think block never closed
    "I cannot find it.",
    "[700, 10, 800, 20]",  # outside the photo: nothing left after clipping
    "[10, 20, 10, 40]",  # no width
    '{"bbox_2d": [1, 2, 3]}',
])
def test_no_box_to_read(reply):
    assert read_box(reply, "photo-pixels", (640, 480)) is None


def test_box_ious():
    boxes = torch.tensor([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 0]], dtype=torch.float32)
    assert box_ious((0, 0, 10, 10), boxes).tolist() == pytest.approx([1.0, 50 / 150, 0.0, 0.0])


# ---- the preset ---------------------------------------------------------------------------------------------------

H, W = 48, 64
PHOTO = Image.fromarray(np.random.default_rng(2).integers(0, 255, (H, W, 3), dtype=np.uint8))
# Tight boxes (x1, y1 exclusive): (2, 2, 12, 20), (20, 2, 30, 20), (40, 10, 60, 40)
CANDIDATES = proposals([rectangle(H, W, 2, 2, 12, 20), rectangle(H, W, 20, 2, 30, 20),
                        rectangle(H, W, 40, 10, 60, 40)], [0.5, 0.9, 0.7])


def grid(box):
    """A photo box written on the 0-1000 grid."""
    return "[" + ", ".join(str(round(v * 1000 / (W if i % 2 == 0 else H))) for i, v in enumerate(box)) + "]"


def ground(replies, settings=BOX, candidates=(CANDIDATES,), family="qwen3-vl", seen=(0, 0), segment_box=None):
    backend = ScriptedBackend(replies, seen=seen, family=family)
    queries = [f"query {i}" for i in range(len(candidates))]
    return run_box(backend, PHOTO, queries, list(candidates), settings, PROMPTS, segment_box), backend


def test_the_candidate_whose_box_fits_best_is_chosen():
    (answer,), backend = ground([f'```json\n[{{"bbox_2d": {grid((39, 9, 61, 41))}, "label": "x"}}]\n```'])
    (request,) = backend.received
    assert len(request) == 1 and kinds(request[0]) == ["image", "text"] and images_of(request[0]) == [PHOTO]
    assert texts_of(request[0]) == [PROMPTS.fill("box_request", query="query 0")]
    assert backend.max_tokens == [1024]
    assert (answer.outcome, answer.chosen) == ("select", (2,))
    assert torch.equal(answer.mask, CANDIDATES.masks[2])
    assert answer.details["box_candidate"] == 2 and answer.details["box_iou"] > 0.8
    assert answer.details["box_format"] == "grid-1000" and answer.usage.calls == 1
    assert answer.transcript[0]["conversation"] == "box"


def test_qwen25_boxes_are_mapped_from_the_size_the_model_saw():
    # The model saw the photo at half size: (10, 1, 15, 10) there is (20, 2, 30, 20) here, candidate 1.
    (answer,), _ = ground(['[{"bbox_2d": [10, 1, 15, 10]}]'], family="qwen2.5-vl", seen=(32, 24))
    assert answer.details["box"] == [20, 2, 30, 20] and answer.chosen == (1,) and answer.details["box_iou"] == 1.0


def test_below_the_threshold_a_promptable_segmenter_answers():
    asked = []
    drawn = rectangle(H, W, 30, 30, 40, 45)

    def segment_box(box):
        asked.append(box)
        return drawn.numpy()

    (answer,), _ = ground(["[28, 28, 42, 46]"], BOX.with_overrides(box_format="photo-pixels"),
                          segment_box=segment_box)
    assert asked == [(28, 28, 42, 46)]
    assert (answer.outcome, answer.chosen) == ("fallback", ()) and torch.equal(answer.mask, drawn)
    # Without a segmenter (or when it has no mask): the best-fitting candidate all the same.
    (answer,), _ = ground(["[28, 28, 42, 46]"], BOX.with_overrides(box_format="photo-pixels"))
    assert (answer.outcome, answer.chosen) == ("select", (2,))
    (answer,), _ = ground(["[28, 28, 42, 46]"], BOX.with_overrides(box_format="photo-pixels"),
                          segment_box=lambda box: None)
    assert (answer.outcome, answer.chosen) == ("select", (2,))
    with pytest.raises(ValueError, match="not the photo's"):
        ground(["[28, 28, 42, 46]"], BOX.with_overrides(box_format="photo-pixels"),
               segment_box=lambda box: torch.zeros((3, 3), dtype=torch.bool))


@pytest.mark.parametrize("fallback, chosen", [("best", (1,)), ("none", ())])
def test_an_unreadable_reply_is_a_vlm_error_answered_by_the_fallback(fallback, chosen):
    (answer,), _ = ground(["Sorry, I can't."], BOX.with_overrides(fallback=fallback))
    assert (answer.outcome, answer.reason, answer.chosen) == ("vlm_error", "unreadable_box", chosen)
    (answer,), _ = ground([TransportError()], BOX.with_overrides(fallback=fallback))
    assert (answer.outcome, answer.reason, answer.chosen) == ("vlm_error", "transport", chosen)
    assert answer.usage.calls == 0


def test_no_candidates():
    empty = CANDIDATES.select(torch.zeros(3, dtype=torch.bool))
    (answer,), backend = ground([], candidates=(empty,))
    assert (answer.outcome, answer.reason, answer.usage.calls) == ("no_mask", "no_candidates", 0)
    assert backend.received == [] and answer.mask.shape == (H, W)
    drawn = rectangle(H, W, 1, 1, 5, 5)
    (answer,), _ = ground([grid((1, 1, 5, 5))], candidates=(empty,), segment_box=lambda box: drawn)
    assert answer.outcome == "fallback" and torch.equal(answer.mask, drawn)


def test_the_phrases_of_a_photo_are_asked_together():
    answers, backend = ground([grid((2, 2, 12, 20)), grid((20, 2, 30, 20))], candidates=(CANDIDATES, CANDIDATES))
    assert backend.batches == [2]
    assert [answer.chosen for answer in answers] == [(0,), (1,)]
