"""The Segmenter: one image pass, many phrases; scores as SPEC section 6 defines them."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from globallocal import GlobalLocalSettings, NoProposalsError, Proposals, Segmenter
from globallocal.errors import InputError
from globallocal.methods import get_method


@pytest.fixture
def segmenter(tiny_clip, nlp):
    return Segmenter(tiny_clip, nlp, get_method("global-local").settings("paper-refcoco"))


def _proposals(example):
    return Proposals.from_masks(torch.from_numpy(example["masks"]))


def _count_calls(module):
    calls = []
    handle = module.register_forward_pre_hook(lambda *args: calls.append(1))
    return calls, handle


def test_image_is_paid_for_once(segmenter, example):
    visual_calls, visual_hook = _count_calls(segmenter.clip.visual.conv1)  # every image pass starts there
    text_calls, text_hook = _count_calls(segmenter.clip.model.token_embedding)  # every text pass starts there
    try:
        segmenter.set_image(example["image"], _proposals(example))
        after_image = len(visual_calls)
        first = segmenter.predict_many(["the wooden chair", "the man on the right"])
        again = segmenter.predict("the wooden chair")
        segmenter.settings = replace(segmenter.settings, alpha=0.5)
        reblended = segmenter.predict("the wooden chair")
    finally:
        visual_hook.remove()
        text_hook.remove()
    assert after_image >= 1 and len(visual_calls) == after_image  # no image work after set_image
    # Text encoder: once per distinct text (the two expressions and "the man"; "the wooden chair" is its own
    # noun phrase), one at a time, then all cached.
    assert len(text_calls) == 3
    assert again.index == first[0].index
    torch.testing.assert_close(again.scores, first[0].scores)  # several phrases scored at once: roundoff
    assert not torch.allclose(reblended.scores, first[0].scores)


def _independent_text(clip, texts):
    with torch.inference_mode():
        return clip.model.encode_text(clip.tokenizer(texts)).float()


def test_scores_follow_spec(segmenter, example):
    segmenter.set_image(example["image"], _proposals(example))
    result = segmenter.predict("the wooden chair on the left")
    assert result.noun_phrase == "the wooden chair"
    state = segmenter.image_state
    alpha, beta = segmenter.settings.alpha, segmenter.settings.beta
    t_global, t_local = _independent_text(segmenter.clip, [result.expression, result.noun_phrase])
    if segmenter.clip.family == "resnet":
        visual = alpha * state.tensors["global"] + (1 - alpha) * F.normalize(state.tensors["local"], dim=-1)
        text = beta * F.normalize(t_global, dim=0) + (1 - beta) * F.normalize(t_local, dim=0)
        expected = visual @ text
    else:
        visual = alpha * state.tensors["global"] + (1 - alpha) * state.tensors["local"]
        text = beta * t_global + (1 - beta) * t_local
        expected = F.cosine_similarity(visual, text[None], dim=-1)
    torch.testing.assert_close(result.scores, expected, rtol=1e-5, atol=1e-6)
    assert result.index == int(expected.argmax())
    assert torch.equal(result.mask, state.proposals.masks[result.index])


def test_unit_feature_norm_is_cosine_of_unit_blends(tiny_clip, nlp, example):
    segmenter = Segmenter(tiny_clip, nlp, get_method("global-local").settings("paper", feature_norm="unit"))
    segmenter.set_image(example["image"], _proposals(example))
    result = segmenter.predict("table")
    state = segmenter.image_state
    a, b = segmenter.settings.alpha, segmenter.settings.beta
    visual = a * F.normalize(state.tensors["global"], dim=-1) + (1 - a) * F.normalize(state.tensors["local"], dim=-1)
    t_global, t_local = F.normalize(_independent_text(tiny_clip, ["table", "table"]), dim=-1)
    expected = F.cosine_similarity(visual, (b * t_global + (1 - b) * t_local)[None], dim=-1)
    torch.testing.assert_close(result.scores, expected, rtol=1e-5, atol=1e-6)


def test_mask_size_must_match_the_image(segmenter, example):
    wrong = Proposals.from_masks(torch.ones(2, 10, 10, dtype=torch.bool))
    with pytest.raises(InputError, match="masks are 10x10 but the image is 640x480"):
        segmenter.set_image(example["image"], wrong)


def test_no_proposals(segmenter, example):
    height, width = example["size"]
    empty = Proposals.from_masks(torch.zeros(0, height, width, dtype=torch.bool))
    with pytest.raises(NoProposalsError):
        segmenter.set_image(example["image"], empty)


def test_predict_needs_an_image(segmenter):
    with pytest.raises(InputError, match="set_image"):
        segmenter.predict("the dog")


def test_require_noun(segmenter, example):
    segmenter.set_image(example["image"], _proposals(example))
    with pytest.raises(InputError, match="no noun"):
        segmenter.predict("red", require_noun=True)
    assert segmenter.predict("red").noun_phrase == "red"  # the reference's fallback


def test_settings_validate():
    with pytest.raises(InputError, match="alpha"):
        GlobalLocalSettings(alpha=1.5)
    with pytest.raises(InputError, match="unknown setting"):
        GlobalLocalSettings().with_overrides(gamma=1)
    with pytest.raises(InputError, match="unknown preset"):
        get_method("global-local").settings("papr")
    spec = get_method("global-local")
    assert spec.settings("paper-refcocog").alpha == 0.85 and spec.settings("paper-refcoco+").alpha == 0.95


def test_truncation_is_reported(segmenter, example):
    segmenter.set_image(example["image"], _proposals(example))
    with pytest.warns(UserWarning, match="truncated"):
        result = segmenter.predict("the man " * 60)
    assert result.truncated
