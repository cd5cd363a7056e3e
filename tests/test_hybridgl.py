"""The HybridGL method: settings, presets, boxes, answers on a tiny 12-block ViT, Q-sticky-k."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from globallocal.errors import InputError
from globallocal.methods import ImageFeatures, build_method, get_method
from globallocal.methods.hybridgl.method import HybridGLResult, HybridGLSettings, xywh_boxes
from globallocal.methods.hybridgl.text import analyse_text, final_scores, gem_k, guidance_map, region_means
from globallocal.models.text import encode_texts, parse_phrase
from globallocal.proposals import Proposals

# Settings fields that switch a quirk of SPEC-hybridgl section 11, with the published code's value.
QUIRK_FIELDS = {
    "gem_prompt": "a photo of a {}.",  # Q-gem-prompt
    "input_normalization": "imagenet",  # Q-imagenet-stats
    "local_fill": "paper",  # Q-fill
    "mask_antialias": False,  # Q-mask-grid
    "right_relation": False,  # Q-right-never
    "vertical_masks": False,  # Q-vertical-off
    "fallback_target_chunk": "other",  # Q-np-fallback
    "double_minmax": True,  # Q-double-minmax
    "nan_wins": True,  # Q-gem-empty
    "within_guard": False,  # Q-within-zero
}


def test_paper_preset_is_the_spec_and_keeps_every_quirk():
    spec = get_method("hybridgl")
    paper = spec.settings()
    assert spec.settings("paper") == paper == spec.settings("hybridgl-paper")
    assert (paper.fusion_mode, paper.beta, paper.masking_block, paper.hybrid_weight) == ("G2L", 0.5, 9, 2.0)
    assert (paper.top_k, paper.negative_k, paper.relation_weight) == (3, 6, 0.4)
    assert (paper.gem_k_big, paper.gem_k_small, paper.gem_k_other) == (1.95, 1.5, 1.8)
    assert (paper.gem_depth, paper.gem_iterations, paper.gem_size, paper.sticky_topk) == (7, 1, 448, False)
    assert {name: getattr(paper, name) for name in QUIRK_FIELDS} == QUIRK_FIELDS
    no_quirks = spec.settings("no-quirks")
    assert all(getattr(no_quirks, name) != value for name, value in QUIRK_FIELDS.items())
    assert (spec.default_clip_model, spec.default_proposals, spec.default_proposal_settings) == (
        "ViT-B-16", "sam", "hybridgl")


@pytest.mark.parametrize(("overrides", "message"), [
    ({"fusion_mode": "G2X"}, "fusion mode must be one of G2L, L2G, G2L&L2G"),
    ({"beta": 1.5}, "beta must be in [0, 1]"),
    ({"relation_weight": -0.1}, "relation weight must be in [0, 1]"),
    ({"top_k": 0}, "top k and negative k must be >= 1"),
    ({"gem_prompt": "a photo"}, "the GEM prompt must contain {}"),
    ({"fallback_target_chunk": "last"}, "fallback_target_chunk must be 'other' or 'leading'"),
])
def test_bad_settings_are_refused_with_the_fix(overrides, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("{}", r"\{\}")):
        HybridGLSettings(**overrides)


def test_boxes_are_sams_inclusive_xywh():
    masks = torch.zeros((4, 6, 9), dtype=torch.bool)
    masks[0, 2:5, 3:8] = True  # rows 2..4, columns 3..7
    masks[1, 1:6, 4] = True  # one column: w = 0
    masks[3, 5, 8] = True  # one pixel in the corner
    assert xywh_boxes(masks).tolist() == [[3, 2, 4, 2], [4, 1, 0, 4], [0, 0, 0, 0], [8, 5, 0, 0]]


def test_result_json_has_every_field_and_writes_nan_as_null():
    result = HybridGLResult(
        phrase="Dog", expression="dog", noun_phrase="dog", index=2, mask=torch.zeros(2, 2, dtype=torch.bool),
        scores=torch.tensor([float("nan"), float("nan"), 0.5]), truncated=False, has_noun=True,
        clip_scores=torch.tensor([0.1, 0.2, 0.3]), pure_index=2, gem=torch.tensor([1.0, float("nan"), -0.5]),
        candidates=[2, 1], relation=torch.tensor([0.6, 0.4]), other_noun_phrases=["the cat"], direction="left",
        relation_flag="up",
    )
    record = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert record["index"] == 2 and record["pure_index"] == 2 and record["candidates"] == [2, 1]
    # The final scores chose the answer: they are `score` and `scores` (null: not scored, or undefined).
    assert record["score_name"] == "final score" and record["score"] == 0.5 and record["scores"] == [None, None, 0.5]
    assert record["clip_scores"] == [float(torch.tensor(v)) for v in (0.1, 0.2, 0.3)]  # float32, full precision
    assert record["gem"] == [1.0, None, -0.5] and "final" not in record
    assert result.final.tolist()[0] == 0.5 and math.isnan(result.final.tolist()[1])
    assert record["relation"] == [float(torch.tensor(0.6)), float(torch.tensor(0.4))]
    assert (record["noun_phrase"], record["other_noun_phrases"]) == ("dog", ["the cat"])
    assert (record["direction"], record["relation_flag"]) == ("left", "up")
    assert result.other_answers() == {"pure": 2}


# -- the method on a tiny 12-block ViT ---------------------------------------------------------------

PHRASES = ["the dog to the left of the cat", "the smallest dog", "man behind the car", "blue"]


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    generator = torch.Generator().manual_seed(3)
    pixels = (torch.rand((40, 56, 3), generator=generator) * 255).to(torch.uint8)
    return Image.fromarray(pixels.numpy())


@pytest.fixture(scope="module")
def proposals() -> Proposals:
    masks = torch.zeros((4, 40, 56), dtype=torch.bool)
    masks[0, 5:20, 3:20] = True
    masks[1, 10:35, 30:50] = True
    masks[2, 22:38, 8:28] = True
    masks[3, :, :] = True  # full frame: its GEM score is NaN
    return Proposals.from_masks(masks)


def _method(clip, nlp, **overrides):
    return build_method("hybridgl", clip, nlp, "hybridgl-paper", gem_size=64, **overrides)


@pytest.fixture(scope="module")
def tensors(tiny_vit12, nlp, photo, proposals) -> dict[str, torch.Tensor]:
    return _method(tiny_vit12, nlp).image_features(photo, proposals)


def test_image_features_are_named_tensors(tiny_vit12, tensors, proposals):
    assert tensors["features"].shape == (4, tiny_vit12.model.text_projection.shape[-1])
    assert tensors["gem_tokens"].shape == (16, tiny_vit12.model.text_projection.shape[-1])  # 64 / 16 = 4 x 4
    torch.testing.assert_close(tensors["gem_tokens"].norm(dim=-1), torch.ones(16))
    assert torch.equal(tensors["boxes_xywh"], xywh_boxes(proposals.masks))


def test_answers_follow_sections_6_to_9(tiny_vit12, nlp, photo, proposals, tensors):
    """Each answer recomputed here, step by step from the stored features and the text encoder."""
    method = _method(tiny_vit12, nlp)
    image = ImageFeatures(photo, proposals, tensors)
    parsed = [parse_phrase(phrase, nlp) for phrase in PHRASES]
    encode = lambda texts: encode_texts(list(texts), tiny_vit12)  # noqa: E731
    results = method.answer(image, parsed, encode)
    tau = float(tiny_vit12.model.logit_scale.exp())
    features = image.tensors["features"] / image.tensors["features"].norm(dim=-1, keepdim=True)
    for item, result in zip(parsed, results):
        analysis = analyse_text(nlp(item.expression))
        assert (result.noun_phrase, result.other_noun_phrases) == (analysis.noun_phrase,
                                                                   list(analysis.other_noun_phrases))
        assert (result.direction, result.relation_flag) == (analysis.direction, analysis.relation)
        expression, noun_phrase = encode([item.expression, analysis.noun_phrase])
        text = 0.5 * expression + 0.5 * noun_phrase
        scores = tau * features @ (text / text.norm())
        torch.testing.assert_close(result.clip_scores, scores, rtol=1e-5, atol=1e-5)
        assert result.pure_index == int(torch.argmax(scores))
        p = torch.softmax(scores, 0)
        assert result.candidates == sorted(range(4), key=lambda i: -float(p[i]))[:3]
        assert math.isnan(result.gem[3])  # the full-frame mask
        heat = gem_heat_map_of(method, image, analysis)
        inside, outside = region_means(guidance_map(heat, 40, 56, analysis.direction), proposals.masks)
        k = gem_k(analysis.relation)
        torch.testing.assert_close(result.gem, (2 - k) * inside - k * outside, equal_nan=True)
        final = final_scores(result.relation, result.gem[result.candidates], 0.4)
        torch.testing.assert_close(result.final, final, equal_nan=True)
        others = [i for i in range(4) if i not in result.candidates]
        assert torch.isnan(result.scores[others]).all()  # only the candidates have a final score
        nan = [k for k, value in enumerate(final.tolist()) if value != value]
        best = nan[0] if nan else int(torch.argmax(final))
        assert result.index == result.candidates[best]
        assert torch.equal(result.mask, proposals.masks[result.index])
        assert result.relation.sum().item() == pytest.approx(1.0)
    assert method.text_strings(parsed[0]) == [
        "the dog to the left of the cat", "the dog", "a photo of the cat", "a photo of a the dog."]


def gem_heat_map_of(method, image, analysis):
    from globallocal.methods.hybridgl.gem import gem_heat_map

    prompt = encode_texts([f"a photo of a {analysis.noun_phrase}."], method.clip)[0]
    return gem_heat_map(image.tensors["gem_tokens"], prompt / prompt.norm(), size=64)


def test_sticky_topk_keeps_the_smallest_count_across_images(tiny_vit12, nlp, photo, proposals, tensors):
    parsed = [parse_phrase("the dog", nlp)]
    encode = lambda texts: encode_texts(list(texts), tiny_vit12)  # noqa: E731
    first_two = {name: value if name == "gem_tokens" else value[:2] for name, value in tensors.items()}
    images = [ImageFeatures(photo, proposals.select(torch.tensor([0, 1])), first_two),
              ImageFeatures(photo, proposals, tensors)]
    for sticky, expected in ((False, [2, 3]), (True, [2, 2])):
        method = _method(tiny_vit12, nlp, sticky_topk=sticky)
        assert [len(method.answer(image, parsed, encode)[0].candidates) for image in images] == expected


@pytest.mark.parametrize("point", [{}, {"beta": 1.0, "relation_weight": 0.9, "gem_k_other": 1.2, "gem_k_big": 1.0}])
def test_sweep_replay_picks_what_the_method_picks(tiny_vit12, nlp, photo, proposals, tensors, point):
    from globallocal.methods.hybridgl.replay import replay, sentence_quantities

    method = _method(tiny_vit12, nlp, **point)
    image = ImageFeatures(photo, proposals, tensors)
    parsed = [parse_phrase(phrase, nlp) for phrase in PHRASES]
    # One feature per string, as the text cache gives the run and the sweep.
    strings = [string for item in parsed for string in method.text_strings(item)]
    features = dict(zip(strings, encode_texts(strings, tiny_vit12)))
    encode = lambda texts: torch.stack([features[text] for text in texts])  # noqa: E731
    tau = tiny_vit12.model.logit_scale.exp()
    paper = _method(tiny_vit12, nlp).settings
    for item, result in zip(parsed, method.answer(image, parsed, encode)):
        sentence = sentence_quantities(paper, tensors, proposals.masks, tau, features, item.expression,
                                       result.noun_phrase, result.other_noun_phrases, result.direction,
                                       result.relation_flag)
        guided = replay(paper, tensors, sentence, tau, 3, 4, **point)
        assert (guided.index, guided.pure_index, guided.candidates.tolist()) == (
            result.index, result.pure_index, result.candidates)
        torch.testing.assert_close(guided.final, result.final, equal_nan=True, rtol=0, atol=0)
