"""The agent's candidates (SPEC-vlm step 4 a-d) against a slow route written here: pixel loops, Python's RLE."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from globallocal.methods.vlm.candidates import (
    agent_candidates,
    by_score,
    intersections,
    overlap_survivors,
    rle_counts,
)
from globallocal.proposals import Proposals

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- the slow route ---------------------------------------------------------------------------------------------

def slow_iom(a: list[list[bool]], b: list[list[bool]]) -> np.float32:
    inter = area_a = area_b = 0
    for row_a, row_b in zip(a, b):
        for x, y in zip(row_a, row_b):
            inter += x and y
            area_a += x
            area_b += y
    # The authors' float32 division: inter / (max(min area, 1) + 1e-8), 1e-8 vanishing in float32.
    return np.float32(inter) / np.float32(max(min(area_a, area_b), 1))


def above(iom: np.float32, threshold: float) -> bool:
    """torch compares a float32 tensor with a Python number in float32."""
    return bool(iom > np.float32(threshold))


def slow_rle_string(mask: list[list[bool]]) -> str:
    """pycocotools' rleEncode then rleToString, in plain Python: column-major runs starting with zeros, each
    count 5 bits a character, from the fourth count on as the difference to the count two before."""
    height, width = len(mask), len(mask[0])
    pixels = [mask[y][x] for x in range(width) for y in range(height)]
    counts, current, run = [], False, 0
    for pixel in pixels:
        if pixel != current:
            counts.append(run)
            current, run = pixel, 0
        run += 1
    counts.append(run)
    text = []
    for i, count in enumerate(counts):
        value = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            chunk = value & 0x1F
            value >>= 5
            more = value != -1 if chunk & 0x10 else value != 0
            text.append(chr((chunk | (0x20 if more else 0)) + 48))
    return "".join(text)


def slow_candidates(masks: list[list[list[bool]]], scores: list[float], threshold=0.3, short=4) -> list[int]:
    """The original indices of the candidates, numbered 1..N in this order."""
    n = len(masks)
    kept = list(range(n))
    if n >= 2:
        visit = sorted(range(n), key=lambda i: scores[i], reverse=True)
        chosen = []
        for i in visit:
            if not any(above(slow_iom(masks[i], masks[j]), threshold) for j in chosen):
                chosen.append(i)
        kept = sorted(chosen)
    ordered = sorted(kept, key=lambda i: scores[i], reverse=True)
    return [i for i in ordered if len(slow_rle_string(masks[i])) > short]


def random_masks(rng: random.Random, n: int, height: int, width: int) -> list[list[list[bool]]]:
    masks = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.1:  # empty: its RLE is short on a small photo
            masks.append([[False] * width for _ in range(height)])
            continue
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = rng.randrange(x0 + 1, width + 1), rng.randrange(y0 + 1, height + 1)
        masks.append([[x0 <= x < x1 and y0 <= y < y1 and rng.random() > 0.1 for x in range(width)]
                      for y in range(height)])
    return masks


def as_proposals(masks, scores) -> Proposals:
    tensor = torch.tensor(masks, dtype=torch.bool)
    return Proposals(tensor, torch.zeros((len(masks), 4)), torch.tensor(scores, dtype=torch.float32))


# ---- tests --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(12))
def test_candidates_match_the_slow_route(seed):
    rng = random.Random(seed)
    height, width = rng.choice([(6, 7), (9, 12), (14, 11)])
    n = rng.randrange(0, 9)
    masks = random_masks(rng, n, height, width)
    # Scores with ties (a tie keeps the original order in both visits); float32 values, as SAM 3 gives them.
    scores = [float(np.float32(rng.choice([0.5, 0.6, 0.7, 0.8, 0.9]))) for _ in range(n)]
    result = agent_candidates(as_proposals(masks, scores) if n else Proposals(
        torch.zeros((0, height, width), dtype=torch.bool), torch.zeros((0, 4)), torch.zeros(0)))
    expected = slow_candidates(masks, scores)
    assert result.masks.tolist() == [masks[i] for i in expected]
    assert result.scores.tolist() == [scores[i] for i in expected]


def test_rle_strings_are_pycocotools_and_the_slow_encoder():
    rng = random.Random(3)
    masks = random_masks(rng, 10, 13, 9)
    assert [counts.decode() for counts in rle_counts(torch.tensor(masks))] == [slow_rle_string(m) for m in masks]
    assert rle_counts(torch.zeros((0, 5, 5), dtype=torch.bool)) == []


def test_intersections_count_pixels():
    rng = random.Random(5)
    masks = random_masks(rng, 5, 8, 10)
    expected = [[sum(a and b for ra, rb in zip(ma, mb) for a, b in zip(ra, rb)) for mb in masks] for ma in masks]
    assert intersections(torch.tensor(masks)).tolist() == expected


def test_an_overlap_of_exactly_the_threshold_stays():
    """3 pixels shared with a 10-pixel mask: 3 / 10 is not above 0.3 (both float32 in torch's comparison), so it
    stays; 4 of 10 goes."""
    big = torch.zeros((10, 10), dtype=torch.bool)
    big[:, :5] = True
    small = torch.zeros((10, 10), dtype=torch.bool)
    small[0, 2:10] = True  # 8 pixels, 3 inside big (columns 2-4)
    small[1, 8:10] = True
    assert int(small.sum()) == 10 and int((small & big).sum()) == 3
    assert overlap_survivors(torch.stack([big, small]), torch.tensor([0.9, 0.8])) == [0, 1]
    small[1, 9] = False
    small[1, 1] = True
    assert int(small.sum()) == 10 and int((small & big).sum()) == 4
    assert overlap_survivors(torch.stack([big, small]), torch.tensor([0.9, 0.8])) == [0]
    # The smaller area is the denominator: the big mask, scored lower, goes for overlapping the small one.
    assert overlap_survivors(torch.stack([big, small]), torch.tensor([0.1, 0.8])) == [1]


def test_overlap_removal_keeps_the_original_order_and_visits_by_score():
    height, width = 8, 8
    a = torch.zeros((height, width), dtype=torch.bool)
    a[:4] = True
    b = a.clone()  # the same mask: one of a and b goes, the better scored stays
    c = torch.zeros((height, width), dtype=torch.bool)
    c[6:] = True
    masks = torch.stack([c, a, b])
    assert overlap_survivors(masks, torch.tensor([0.1, 0.5, 0.9])) == [0, 2]
    assert overlap_survivors(masks, torch.tensor([0.1, 0.9, 0.5])) == [0, 1]
    # Equal scores: the earlier is visited first and kept.
    assert overlap_survivors(masks, torch.tensor([0.1, 0.7, 0.7])) == [0, 1]
    # One instance, even empty: untouched by (a).
    assert overlap_survivors(masks[:1], torch.tensor([0.3])) == [0]


def test_the_short_rle_drop_depends_on_the_text():
    """An empty mask is one run: 100 pixels encode in 2 characters, 40 000 in 4 (both dropped), 1 000 000 in 5
    (kept: the quirk keeps a mask with no pixel on a large photo)."""
    for size, kept in ((10, False), (200, False), (1000, True)):
        empty = torch.zeros((1, size, size), dtype=torch.bool)
        counts = rle_counts(empty)[0]
        assert (len(counts) > 4) is kept, counts
        result = agent_candidates(Proposals(empty, torch.zeros((1, 4)), torch.ones(1)))
        assert len(result) == int(kept)
    # 0 disables the drop.
    empty = torch.zeros((1, 10, 10), dtype=torch.bool)
    assert len(agent_candidates(Proposals(empty, torch.zeros((1, 4)), torch.ones(1)), short_rle_chars=0)) == 1


def test_by_score_is_stable_descending():
    assert by_score(torch.tensor([0.5, 0.9, 0.5, 0.9])) == [1, 3, 0, 2]
    assert by_score([]) == []
