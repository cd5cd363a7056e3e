"""TCL as a method (thresholded soft masks) and as a proposal score blended with Global-Local."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from globallocal.errors import InputError
from globallocal.methods import ImageFeatures, build_method, get_method
from globallocal.methods.tcl import TCLHead
from globallocal.methods.tcl.blend import TCLBlend, standardize, tcl_proposal_scores
from globallocal.methods.tcl.method import TCL, TCLResult, TCLSettings, phrase_text_embeddings, threshold_mask
from globallocal.models.text import parse_phrase
from globallocal.proposals import Proposals, projection_boxes


def fake_encode(dim: int = 32):
    """Deterministic random raw text features per string."""

    def encode(texts):
        rows = [torch.randn(dim, generator=torch.Generator().manual_seed(zlib.crc32(t.encode()))) for t in texts]
        return torch.stack(rows)

    return encode


@pytest.fixture(scope="module")
def tiny_head(tiny_vit) -> TCLHead:
    torch.manual_seed(2)
    head = TCLHead(**TCLHead.dims_for(tiny_vit))
    for parameter in head.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    return head


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8))


def test_threshold_is_strictly_greater():
    soft = torch.tensor([0.39, 0.4, 0.41, 0.5, 0.5001])
    assert threshold_mask(soft, 0.4).tolist() == [False, False, True, True, True]
    assert threshold_mask(soft, 0.5).tolist() == [False, False, False, False, True]
    assert TCLSettings().mask_threshold == 0.4
    assert TCLSettings(pamr=False).mask_threshold == 0.5
    assert TCLSettings(pamr=False, threshold=0.3).mask_threshold == 0.3
    assert TCLSettings(window="demo").input_preprocessing == "demo"
    with pytest.raises(InputError, match="TCL window must be one of slide, whole, demo"):
        TCLSettings(window="tiles")


def test_templates_average_raw_features_then_normalise():
    encode = fake_encode()
    templates = ("a {}.", "{} here")
    got = phrase_text_embeddings(encode, ["cat", "red dog"], templates)
    for row, phrase in zip(got, ["cat", "red dog"]):
        raw = encode([f"a {phrase}.", f"{phrase} here"]).mean(dim=0)
        assert torch.allclose(row, raw / raw.norm(), atol=1e-6)


def test_registry_entry():
    spec = get_method("tcl")
    assert spec.default_proposals is None and spec.method_class is TCL and not TCL.uses_proposals
    assert spec.settings("paper").templates == "custom" and spec.settings().templates == "identity"


def test_tcl_answers_with_the_thresholded_soft_mask(tiny_vit, tiny_head, nlp, photo):
    method = TCL(tiny_vit, nlp, TCLSettings(window="whole", threshold=0.5), tiny_head)
    features = ImageFeatures(photo, None, method.image_features(photo, None))
    parsed = [parse_phrase(p, nlp) for p in ("the cat", "A dog on the LEFT")]
    results = method.answer(features, parsed, fake_encode())
    soft = method.soft_masks(features, parsed, fake_encode())
    assert method.text_strings(parsed[1]) == ["A dog on the LEFT"]  # the phrase as given
    for result, expected in zip(results, soft):
        assert isinstance(result, TCLResult) and result.index is None and result.score is None
        assert result.soft_mask.shape == (40, 56) and result.soft_mask.dtype == torch.float32
        assert torch.equal(result.soft_mask, expected)
        assert torch.equal(result.mask, expected > 0.5)
        record = result.to_json()
        assert record["threshold"] == 0.5 and record["area"] == int((expected > 0.5).sum())


def test_tcl_proposal_score_by_hand():
    soft = torch.rand(2, 5, 6, dtype=torch.float32)
    masks = torch.zeros(3, 5, 6, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    masks[2] = True  # the whole image: nothing outside, whose mean is 0
    scores = tcl_proposal_scores(soft, masks)
    for n in range(2):
        values = soft[n].double()
        assert scores[n, 0] == pytest.approx(float(values[masks[0]].mean() - values[~masks[0]].mean()), abs=1e-12)
        assert np.isnan(float(scores[n, 1]))  # empty: not scored
        assert scores[n, 2] == pytest.approx(float(values.mean()), abs=1e-12)


def test_standardize():
    z = standardize(torch.tensor([1.0, 2.0, float("nan"), 4.0]))
    values = np.array([1.0, 2.0, 4.0])
    assert np.allclose(z.numpy()[[0, 1, 3]], (values - values.mean()) / values.std())
    assert z[2] == 0
    assert torch.equal(standardize(torch.tensor([3.0, 3.0])), torch.zeros(2))
    assert torch.equal(standardize(torch.tensor([3.0])), torch.zeros(1))


@pytest.fixture(scope="module")
def blend_setup(tiny_vit, tiny_head, nlp, photo):
    """Global-Local on the tiny ViT, random proposals, TCL on the same CLIP; image features once."""
    inner = build_method("global-local", tiny_vit, nlp)
    tcl = TCL(tiny_vit, nlp, TCLSettings(window="whole"), tiny_head)
    rng = np.random.default_rng(4)
    masks = torch.from_numpy(rng.random((12, 40, 56)) > 0.6)
    proposals = Proposals(masks=masks, boxes=projection_boxes(masks), scores=torch.ones(12))
    blends = {weight: TCLBlend(inner, tcl, weight) for weight in (0.0, 0.5, 1.0)}
    features = ImageFeatures(photo, proposals, blends[0.0].image_features(photo, proposals))
    inner_features, _ = blends[0.0].split(features)
    parsed = [parse_phrase(p, nlp) for p in ("the cat", "a tall man", "red car left", "the sky", "two dogs")]
    return inner, blends, features, inner_features, parsed


def test_blend_at_zero_is_the_global_local_answer(blend_setup):
    inner, blends, features, inner_features, parsed = blend_setup
    encode = fake_encode()
    expected = inner.answer(inner_features, parsed, encode)
    got = blends[0.0].answer(features, parsed, encode)
    assert [r.index for r in got] == [r.index for r in expected]
    for result, own in zip(got, expected):
        assert torch.equal(result.mask, own.mask)
        record = result.to_json()
        assert record["method_scores"] == [float(v) for v in own.scores]
        assert len(record["tcl_scores"]) == 12 and result.other_answers() == {"without-tcl": own.index}


def test_blend_at_one_ranks_by_tcl_alone_and_between_mixes_z_scores(blend_setup):
    inner, blends, features, inner_features, parsed = blend_setup
    encode = fake_encode()
    tcl_image = blends[1.0].split(features)[1]
    soft = blends[1.0].tcl.soft_masks(tcl_image, parsed, encode)
    tcl_scores = tcl_proposal_scores(soft, features.proposals.masks)
    got = blends[1.0].answer(features, parsed, encode)
    assert [r.index for r in got] == [int(torch.argmax(s)) for s in tcl_scores]
    own = inner.answer(inner_features, parsed, encode)
    for result, mine, scores in zip(blends[0.5].answer(features, parsed, encode), own, tcl_scores):
        z = lambda s: (s - s.mean()) / s.std()  # noqa: E731
        mixed = 0.5 * z(mine.scores.double().numpy()) + 0.5 * z(scores.numpy())
        assert np.allclose(result.scores.numpy(), mixed, atol=1e-9)
        assert result.index == int(np.argmax(mixed))
        assert torch.allclose(result.tcl_scores, scores.double(), atol=0)


def test_blend_refuses_bad_weight_and_proposal_free_inner(blend_setup, tiny_vit, tiny_head, nlp):
    inner, blends, *_ = blend_setup
    with pytest.raises(InputError, match="TCL weight must be in"):
        TCLBlend(inner, blends[0.0].tcl, 1.5)
    with pytest.raises(InputError, match="has no proposals"):
        TCLBlend(blends[0.0].tcl, blends[0.0].tcl, 0.5)


def test_blend_settings_are_the_inner_methods(blend_setup):
    """Assigning changed settings to the blend re-ranks as the segmenter does for the plain method."""
    from dataclasses import replace

    inner, blends, *_ = blend_setup
    original = inner.settings
    try:
        blends[0.5].settings = replace(original, alpha=0.5)
        assert inner.settings.alpha == 0.5 and blends[0.5].settings is inner.settings
    finally:
        inner.settings = original
