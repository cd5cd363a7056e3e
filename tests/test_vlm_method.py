"""--method vlm through the Segmenter: the presets wired to the phrase-dependent source, to image proposals and
to real backends (the openai client against a scripted endpoint on 127.0.0.1; tiny random Qwen VLMs in
process)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from chat_server import ChatServer
from concept_fixtures import FakeConceptSource
from PIL import Image
from vlm_script import tool

from globallocal.methods import build_method, get_method
from globallocal.methods.vlm.candidates import agent_candidates
from globallocal.proposals import Proposals
from globallocal.segmenter import Segmenter

pytestmark = pytest.mark.usefixtures("one_thread")

HEIGHT, WIDTH = 48, 64


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(np.random.default_rng(5).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))


def rectangles(*boxes: tuple[int, int, int, int]) -> np.ndarray:
    masks = np.zeros((len(boxes), HEIGHT, WIDTH), dtype=bool)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes):
        mask[y0:y1, x0:x1] = True
    return masks


CHAIRS = rectangles((2, 2, 20, 30), (30, 5, 50, 40), (52, 10, 62, 20))


class CountingSource(FakeConceptSource):
    """The fake concept source, counting each prompt it is asked for."""

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        super().__init__(lambda image, prompt: table.get(prompt))
        self.prompts: list[str] = []

    def answer(self, queries):
        self.prompts.extend(query.noun_phrase for query in queries)
        return super().answer(queries)


def vlm_segmenter(nlp, backend_options: dict, source=None, preset: str = "sam3-agent", **overrides) -> Segmenter:
    method = build_method("vlm", None, nlp, preset, backend_options, **overrides)
    return Segmenter(None, nlp, proposal_source=source, method=method)


def openai_options(server: ChatServer, **more) -> dict:
    return {"kind": "openai", "url": server.url, "model": "qwen3-vl-test", **more}


def test_the_agent_prompts_sam3_through_the_photos_memory_and_answers_a_set(nlp, photo):
    """Two phrases, each a segment_phrase then a selection: SAM 3 is asked each distinct prompt once per photo,
    and the answer is the union of the chosen candidates, numbered as the agent numbers them."""
    script = {"the two chairs": [tool("segment_phrase", text_prompt="chair"),
                                 tool("select_masks_and_return", final_answer_masks=[1, 2])],
              "the purple giraffe": [tool("segment_phrase", text_prompt="chair"), tool("report_no_mask")]}

    def reply(body: dict) -> str:  # by query and turn: the endpoint gets a photo's queries concurrently
        text = json.dumps(body["messages"])
        query = next(query for query in script if query in text)
        return script[query][sum(message["role"] == "assistant" for message in body["messages"])]

    source = CountingSource({"chair": CHAIRS})
    with ChatServer(reply) as server:
        segmenter = vlm_segmenter(nlp, openai_options(server), source)
        segmenter.set_image(photo)
        both, none = segmenter.predict_many(["the two chairs", "the purple giraffe"])
    assert source.prompts == ["chair"]  # the second query's prompt came from the photo's memory
    candidates = agent_candidates(Proposals.from_masks(torch.from_numpy(CHAIRS),
                                                       torch.tensor([0.9, 0.8, 0.7])))
    assert torch.equal(both.mask, candidates.masks[0] | candidates.masks[1])
    assert both.index is None and both.chosen == (0, 1) and both.scores.tolist() == [1.0, 1.0, 0.0]
    assert (both.vlm.outcome, none.vlm.outcome) == ("select", "no_mask")
    assert not none.mask.any() and none.chosen == ()
    written = json.loads(json.dumps(both.to_json()))  # JSON-ready
    assert written["answer_set"] == [0, 1] and written["vlm"]["vlm_calls"] == 2
    assert written["proposal_step"] == "agent" and written["proposal_prompt"] == "chair"
    assert [call["reply"] for call in written["transcript"]] == script["the two chairs"]
    assert len(server.requests) == 4


def test_an_endpoint_that_does_not_answer_is_a_recorded_failure(nlp, photo):
    source = CountingSource({"chair": CHAIRS})
    with ChatServer(["unused"], faults=[503, 503, 503]) as server:
        segmenter = vlm_segmenter(nlp, openai_options(server, retries=2), source)
        segmenter.set_image(photo)
        [result] = segmenter.predict_many(["the chair"])
    assert (result.vlm.outcome, result.vlm.reason) == ("vlm_error", "transport")
    assert server.url in result.failure() and "503" in result.failure()
    assert not result.mask.any()


def test_box_and_marks_choose_among_image_proposals(nlp, photo):
    """Image proposals (a user's masks): the box preset takes the candidate whose tight box fits the VLM's
    box best; marks the number the VLM names."""
    proposals = Proposals.from_masks(torch.from_numpy(CHAIRS))
    box = '```json\n[{"bbox_2d": [469, 104, 781, 833], "label": "chair"}]\n```'  # candidate 1 on the 0-1000 grid
    with ChatServer([box]) as server:
        segmenter = vlm_segmenter(nlp, openai_options(server), preset="box")
        segmenter.set_image(photo, proposals)
        [result] = segmenter.predict_many(["the chair in the middle"])
    assert result.index == 1 and torch.equal(result.mask, proposals.masks[1])
    assert result.vlm.details["box_candidate"] == 1 and result.vlm.details["box_iou"] > 0.9
    with ChatServer(["3"]) as server:
        segmenter = vlm_segmenter(nlp, openai_options(server), preset="marks", logprobs=False)
        segmenter.set_image(photo, proposals)
        [result] = segmenter.predict_many(["the small chair"])
    assert result.index == 2 and result.vlm.outcome == "select"


def test_the_agent_needs_phrase_dependent_proposals(nlp, photo):
    with ChatServer(["unused"]) as server:
        segmenter = vlm_segmenter(nlp, openai_options(server))
        segmenter.set_image(photo, Proposals.from_masks(torch.from_numpy(CHAIRS)))
        with pytest.raises(Exception, match="needs phrase-dependent proposals"):
            segmenter.predict("the chair")


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_the_agent_runs_end_to_end_on_a_tiny_random_vlm(nlp, photo, vlm_folders, family):
    """The real model's (garbage) replies give a recorded outcome, never a traceback."""
    source = CountingSource({"chair": CHAIRS})
    segmenter = vlm_segmenter(nlp, {"model": str(vlm_folders[family]), "device": "cpu"}, source, max_tokens=8,
                              max_generations=2)
    segmenter.set_image(photo)
    [result] = segmenter.predict_many(["the chair on the left"])
    assert result.vlm.outcome in ("select", "no_mask", "vlm_error")
    assert result.vlm.usage.calls >= 1 and result.vlm.usage.generated_tokens >= 1
    assert result.mask.shape == (HEIGHT, WIDTH)


def test_the_registry_entry_names_the_presets_and_the_default_source():
    spec = get_method("vlm")
    assert {"sam3-agent", "box", "marks"} <= set(spec.preset_names())
    assert spec.default_proposals == "sam3" and spec.default_preset == "sam3-agent"


def test_the_vlm_gets_its_own_precision_not_clips(monkeypatch):
    """--precision is CLIP's (fp32 by default); the in-process VLM defaults to bf16 on CUDA unless
    --vlm-precision says otherwise."""
    from globallocal.methods.vlm.options import VlmOptions

    assert VlmOptions().method_options("vlm")["precision"] is None  # the backend's default then applies
    assert VlmOptions(precision="fp16").method_options("vlm")["precision"] == "fp16"


def test_a_shortlist_by_another_method_ranks_the_marks(nlp, photo, tiny_vit):
    """--vlm-shortlist global-local: the CLIP selector's scores pick the numbered candidates, the VLM decides."""
    proposals = Proposals.from_masks(torch.from_numpy(CHAIRS), torch.tensor([0.9, 0.8, 0.7]))
    with ChatServer(["1"]) as server:
        method = build_method("vlm", tiny_vit, nlp, "marks", openai_options(server), shortlist="global-local",
                              marks_k=2, logprobs=False)
        segmenter = Segmenter(tiny_vit, nlp, method=method)
        segmenter.set_image(photo, proposals)
        [result] = segmenter.predict_many(["the chair"])
        clip_scores = build_method("global-local", tiny_vit, nlp)
        reference = Segmenter(tiny_vit, nlp, method=clip_scores)
        reference.set_image(photo, proposals)
        ranked = reference.predict("the chair").scores
    order = torch.argsort(ranked, descending=True, stable=True)[:2].tolist()
    assert result.vlm.details["shortlist"] == order and result.index == order[0]
