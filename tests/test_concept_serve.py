"""`globallocal serve` with SAM 3's proposals (a stand-in of its interface): candidates per phrase, sessions apart."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from concept_fixtures import FakeConceptSource, table_masks
from PIL import Image

pytest.importorskip("gradio", reason="the [demo] extra (Gradio) is not installed")

from globallocal.methods import build_method  # noqa: E402
from globallocal.segmenter import Segmenter  # noqa: E402
from globallocal.serve import Engine  # noqa: E402
from globallocal.serve.page import Page  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def setup(tiny_vit, nlp, example, tmp_path):
    gt, box, rest = example["masks"]
    source = FakeConceptSource(table_masks({"the wooden chair": np.stack([gt, box]), "the man": np.stack([rest])}))
    engine = Engine(lambda name: Segmenter(tiny_vit, nlp, method=build_method(name, tiny_vit, nlp)),
                    lambda kind: source, "global-local", max_megapixels=1.0)
    other = tmp_path / "flipped.png"  # a second photo of the same size, for a second session
    Image.open(example["image"]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(other)
    page = Page(engine, [], proposals="sam3", top_k=5)
    yield page, source, other
    page.close()


def _segment(page, photo, phrases, view=None):
    return page.segment(view, str(photo), phrases, "sam3", [], "global-local", 0.95, 0.5)


def test_each_phrase_is_answered_among_its_own_candidates(setup, example):
    page, source, _ = setup
    out = _segment(page, example["image"], "the wooden chair\nthe man")
    assert out[page.status] == ""
    chair, man = out[page.session].answer.results
    assert len(chair.scores) == 2 and len(man.scores) == 1 and source.vision_calls == 1
    assert len(out[page.gallery]) == 2  # the shown phrase's candidates, not the photo's
    assert " = global " in out[page.gallery][0][1]
    report = json.loads(open(list(out[page.downloads])[-1]).read())
    assert report["proposal_source"] == "sam3"
    assert [r["proposal_scores"] for r in report["results"]] == [[float(np.float32(0.9)), float(np.float32(0.8))],
                                                                [float(np.float32(0.9))]]


def test_parts_add_up_to_each_candidates_score(setup, example):
    page, _, _ = setup
    engine = page.engine
    session = engine.set_image(str(example["image"]), "sam3")
    answer = engine.answer(session, ["the wooden chair"], {"alpha": 0.95, "beta": 0.5})
    (result,), (parts,) = answer.results, answer.parts
    torch.testing.assert_close(parts["global"] + parts["local"], result.scores, rtol=1e-5, atol=1e-6)


def test_two_sessions_keep_their_own_photos(setup, example):
    page, source, other = setup
    engine = page.engine
    first = engine.set_image(str(example["image"]), "sam3")
    second = engine.set_image(str(other), "sam3")
    engine.answer(second, ["the man"], {"alpha": 0.95, "beta": 0.5})
    # A new noun phrase for the first session: SAM 3 must look at the first photo again, not the second.
    engine.answer(first, ["the wooden chair"], {"alpha": 0.95, "beta": 0.5})
    assert source.image is first.state.image
    assert source.vision_calls == 3
