"""Phrase-dependent proposals (SAM 3's concepts) in the Segmenter, with a stand-in source of SAM 3's interface.

The image is paid for once; each phrase's candidates are its noun phrase's
instances; a mask is encoded once whichever noun phrases return it; and a
phrase's answer is exactly the method's answer among those masks given as
proposals.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from concept_fixtures import FakeConceptSource, table_masks
from PIL import Image

from globallocal.data.images import load_image
from globallocal.errors import InputError
from globallocal.methods import build_method
from globallocal.methods.tcl import TCLHead
from globallocal.methods.tcl.blend import TCLBlend
from globallocal.methods.tcl.method import TCL, TCLSettings
from globallocal.proposals import Proposals
from globallocal.proposals.concepts import ConceptAnswer, ConceptQuery
from globallocal.segmenter import Segmenter

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = (40, 56)  # height, width


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(np.random.default_rng(5).integers(0, 256, (*SIZE, 3), dtype=np.uint8))


def _rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros(SIZE, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


CHAIR, TABLE, MAN, DOG = _rect(2, 2, 20, 30), _rect(18, 10, 50, 38), _rect(30, 0, 44, 25), _rect(5, 25, 25, 40)
# "the man" shares TABLE with "the wooden chair"; "chair" answers the head-noun fallback.
TABLE_OF_MASKS = {
    "the wooden chair": np.stack([CHAIR, TABLE]),
    "the man": np.stack([MAN, TABLE, DOG]),
    "chair": np.stack([CHAIR]),
}


def _method(name: str, clips: dict, nlp):
    if name == "tcl-blend":
        torch.manual_seed(2)
        head = TCLHead(**TCLHead.dims_for(clips["vit"]))
        for parameter in head.parameters():
            torch.nn.init.normal_(parameter, std=0.05)
        inner = build_method("global-local", clips["vit"], nlp)
        return TCLBlend(inner, TCL(clips["vit"], nlp, TCLSettings(window="whole"), head), 0.5)
    return build_method(name, clips["vit12" if name == "hybridgl" else "vit"], nlp)


@pytest.fixture(scope="module")
def clips(tiny_vit, tiny_vit12) -> dict:
    return {"vit": tiny_vit, "vit12": tiny_vit12}


def _segmenter(name: str, clips: dict, nlp) -> tuple[Segmenter, FakeConceptSource]:
    source = FakeConceptSource(table_masks(TABLE_OF_MASKS))
    method = _method(name, clips, nlp)
    return Segmenter(method.clip, nlp, proposal_source=source, method=method), source


class _StemRows:
    """Images through the CLIP ViT's patch embedding (every pass of the image tower starts there)."""

    def __init__(self, clip) -> None:
        self.rows: list[int] = []
        self.handle = clip.visual.conv1.register_forward_pre_hook(lambda _, args: self.rows.append(args[0].shape[0]))

    def __enter__(self) -> _StemRows:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    @property
    def total(self) -> int:
        return sum(self.rows)


# Image-tower rows per image (Global-Local's trunk, HybridGL's GEM pass) and per mask (a crop; two views).
ROWS = {"global-local": (1, 1), "hybridgl": (1, 2)}


@pytest.mark.parametrize("name", ["global-local", "hybridgl"])
def test_image_once_then_only_new_masks_are_encoded(name, clips, nlp, photo):
    segmenter, source = _segmenter(name, clips, nlp)
    per_image, per_mask = ROWS[name]
    with _StemRows(segmenter.clip) as stem:
        segmenter.set_image(photo)
        assert source.vision_calls == 1 and stem.total == per_image
        segmenter.predict("the wooden chair")  # CHAIR, TABLE: both new
        assert stem.total == per_image + 2 * per_mask
        segmenter.predict("the man")  # MAN, TABLE, DOG: TABLE seen
        assert stem.total == per_image + 4 * per_mask
        segmenter.predict("the wooden chair on the left")  # the first noun phrase again: nothing new
        assert stem.total == per_image + 4 * per_mask
    assert source.vision_calls == 1
    assert source.batches == [[ConceptQuery("the wooden chair", "chair")], [ConceptQuery("the man", "man")]]


def test_phrases_of_one_noun_phrase_share_its_instances_in_one_batch(clips, nlp, photo):
    segmenter, source = _segmenter("global-local", clips, nlp)
    segmenter.set_image(photo)
    first, other, again = segmenter.predict_many(["the wooden chair", "the man", "the wooden chair on the left"])
    assert source.batches == [[ConceptQuery("the wooden chair", "chair"), ConceptQuery("the man", "man")]]
    assert first.concept is again.concept and first.concept is not other.concept
    assert torch.equal(first.concept.proposals.masks, torch.from_numpy(TABLE_OF_MASKS["the wooden chair"]))
    assert len(other.scores) == 3 and len(first.scores) == len(again.scores) == 2


@pytest.mark.parametrize("name", ["global-local", "hybridgl", "tcl-blend"])
def test_candidates_are_answered_as_the_same_masks_given_as_proposals(name, clips, nlp, photo):
    segmenter, _ = _segmenter(name, clips, nlp)
    segmenter.set_image(photo)
    # "the man" first, so TABLE's features are reused (computed in another batch) for the chair's phrases.
    phrases = ["the man on the left", "the wooden chair", "the wooden chair next to the man"]
    got = segmenter.predict_many(phrases[:1]) + segmenter.predict_many(phrases[1:])
    for result in got:
        direct, _ = _segmenter(name, clips, nlp)
        direct.set_image(photo, result.concept.proposals)
        expected = direct.predict(result.phrase)
        assert expected.concept is None
        assert result.index == expected.index
        torch.testing.assert_close(result.scores, expected.scores, rtol=1e-5, atol=1e-6)
        assert torch.equal(result.mask, expected.mask)
        assert result.other_answers() == expected.other_answers()  # HybridGL's pure answer; the blend's inner one


def test_json_says_which_step_answered_and_the_sources_scores(clips, nlp, photo):
    segmenter, _ = _segmenter("global-local", clips, nlp)
    segmenter.set_image(photo)
    own, fallback, nothing = segmenter.predict_many(["the wooden chair", "the tall chair", "a purple giraffe"])
    answer = own.to_json()
    assert answer["proposal_step"] == "noun-phrase" and answer["proposal_prompt"] == "the wooden chair"
    assert answer["proposal_scores"] == [float(s) for s in own.concept.proposals.scores] == [
        float(np.float32(0.9)), float(np.float32(0.8))]
    assert answer["proposal_score"] == answer["proposal_scores"][own.index]
    assert fallback.to_json()["proposal_step"] == "head-noun" and fallback.to_json()["proposal_prompt"] == "chair"
    empty = nothing.to_json()
    assert (empty["index"], empty["score"], empty["scores"], empty["proposal_step"], empty["proposal_score"]) == (
        None, None, [], "none", None)
    assert nothing.noun_phrase == "a purple giraffe" and not nothing.mask.any() and nothing.mask.shape == SIZE


def test_answers_given_back_need_neither_the_source_nor_the_image_tower(clips, nlp, photo):
    first, _ = _segmenter("hybridgl", clips, nlp)
    first.set_image(photo)
    phrases = ["the wooden chair on the left", "the man", "a purple giraffe"]
    expected = first.predict_many(phrases)
    entries = {first.concept_query(p): first.concept_entry(first.concept_query(p)) for p in phrases}
    assert entries[first.concept_query("a purple giraffe")][1] == {}

    second, source = _segmenter("hybridgl", clips, nlp)
    with _StemRows(second.clip) as stem:
        second.set_image(photo, lazy=True)
        for query, (answer, tensors) in entries.items():
            second.add_concept(query, answer, tensors)
        got = second.predict_many(phrases)
    assert source.vision_calls == 0 and stem.total == 0
    for one, other in zip(got, expected):
        assert one.index == other.index and one.to_json() == other.to_json()


def test_a_lazy_image_is_paid_for_when_a_phrase_needs_it(clips, nlp, photo):
    segmenter, source = _segmenter("global-local", clips, nlp)
    segmenter.set_image(photo, lazy=True)
    assert source.vision_calls == 0
    segmenter.predict("the man")
    segmenter.predict("the wooden chair")
    assert source.vision_calls == 1


def test_concept_entries_need_an_image_without_proposals_of_its_own(clips, nlp, photo):
    segmenter, source = _segmenter("global-local", clips, nlp)
    segmenter.set_image(photo)
    with pytest.raises(InputError, match="no image is set"):
        Segmenter(segmenter.clip, nlp, proposal_source=source).concept_entry(ConceptQuery("man", None))
    segmenter.set_features(photo, None, {})
    with pytest.raises(InputError, match="has proposals of its own"):
        segmenter.concept_entry(ConceptQuery("man", None))


def test_a_phrase_without_candidates_gets_a_picture_and_a_caption(clips, nlp, photo):
    from globallocal.outputs.answers import caption
    from globallocal.outputs.drawing import top_k_picture

    segmenter, _ = _segmenter("global-local", clips, nlp)
    segmenter.set_image(photo)
    (nothing,) = segmenter.predict_many(["a purple giraffe"])
    assert caption(nothing) == "'a purple giraffe': no candidate"
    picture = top_k_picture(photo, nothing.among(None).masks.numpy(), nothing.scores.tolist(), nothing.phrase)
    assert picture.shape[1] == 320 and picture.shape[0] > round(SIZE[0] * 320 / SIZE[1])


class _RawSource:
    """A concept source that answers every prompt with one full and one empty mask, as a detector may."""

    phrase_dependent = True

    def __init__(self) -> None:
        self.settings = {"threshold": 0.5}
        self.asked: list[ConceptQuery] = []

    def set_image(self, image) -> None:
        self.size = (image.height, image.width)

    def answer(self, queries):
        self.asked.extend(queries)
        masks = torch.zeros((2, *self.size), dtype=torch.bool)
        masks[0] = True
        return [ConceptAnswer(Proposals.from_masks(masks, torch.tensor([0.9, 0.8])), "noun-phrase", q.noun_phrase)
                for q in queries]


def test_the_photo_memory_keeps_exact_answers_whole_and_forgets_on_other_settings(example):
    from globallocal.proposals.concept_image import ConceptImage

    source = _RawSource()

    class NoFeatures:
        name, per_proposal = "none", ()

    photo = load_image(example["image"])
    concepts = ConceptImage(photo, source, NoFeatures())
    exact, chained = concepts.answer([ConceptQuery("chair", None, exact=True), ConceptQuery("chair", None)])
    assert len(exact.proposals) == 2 and not exact.proposals.masks[1].any()  # as the source gave it
    assert len(chained.proposals) == 1 and chained.proposals.masks[0].all()  # empty masks: nothing to choose
    concepts.answer([ConceptQuery("chair", None, exact=True)])
    assert len(source.asked) == 2  # asked again: answered from the photo's memory
    source.settings = {"threshold": 0.3}
    concepts.answer([ConceptQuery("chair", None, exact=True)])
    assert len(source.asked) == 3  # other settings, other answers: asked anew
