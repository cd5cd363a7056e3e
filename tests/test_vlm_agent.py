"""SAM 3 Agent's loop (SPEC-vlm steps 1-10), driven by scripted replies: the exact messages sent, the outcomes,
the answers. The replies stand in for the model's judgement; what is tested is what the loop does with them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from vlm_script import FakeSam3, ScriptedBackend, TransportError, images_of, kinds, proposals, rectangle, texts_of, tool

from globallocal.methods.vlm import render
from globallocal.methods.vlm.agent import run_agent
from globallocal.methods.vlm.candidates import agent_candidates
from globallocal.methods.vlm.prompts import Prompts, builtin_prompts
from globallocal.methods.vlm.render import candidate_image, color_of, marks_image, zoom_image
from globallocal.methods.vlm.settings import PRESETS, VlmSettings
from globallocal.methods.vlm.toolcalls import cut_after_tool
from globallocal.models.vlm.messages import message_images

pytestmark = pytest.mark.usefixtures("one_thread")

H, W = 48, 64
PHOTO = Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8))
QUERY = "the dog on the left"
PROMPTS = builtin_prompts("agent")
AGENT = PRESETS["sam3-agent"]
DOGS = proposals([rectangle(H, W, 2, 2, 12, 20), rectangle(H, W, 20, 2, 30, 20), rectangle(H, W, 40, 2, 60, 20)],
                 [0.6, 0.9, 0.7])
ANIMALS = proposals([rectangle(H, W, 2, 25, 20, 45), rectangle(H, W, 30, 25, 60, 45)], [0.8, 0.8])
DOG_CANDIDATES = agent_candidates(DOGS)  # by score: the originals 1, 2, 0


def run(replies, settings: VlmSettings = AGENT, queries=(QUERY,), table=None, prompts: Prompts = PROMPTS):
    backend = ScriptedBackend(replies)
    sam = FakeSam3(PHOTO, {"dog": DOGS, "animal": ANIMALS} if table is None else table)
    answers = run_agent(backend, PHOTO, list(queries), sam, settings, prompts)
    return answers, backend, sam


def segment(prompt, think=""):
    return tool("segment_phrase", think, text_prompt=prompt)


def select(*numbers):
    return tool("select_masks_and_return", final_answer_masks=list(numbers))


def examine(think=""):
    return tool("examine_each_mask", think)


def first_turn_text(tried=None):
    text = PROMPTS.fill("initial_query", query=QUERY)
    return text if tried is None else text + " " + PROMPTS.fill("tried_prompts_note", tried=json.dumps(tried))


def roles(messages):
    return [message["role"] for message in messages]


def is_main(messages):
    return messages[0]["content"] == PROMPTS.text("system_prompt")


def test_the_first_turn_is_the_system_prompt_then_the_photo_and_the_query():
    (answer,), backend, sam = run([tool("report_no_mask")])
    (first,) = backend.received
    assert first[0] == {"role": "system", "content": PROMPTS.text("system_prompt")}
    assert kinds(first[1]) == ["image", "text"] and images_of(first[1]) == [PHOTO]
    spec = f"The above image is the raw input image. The initial user input query is: '{QUERY}'."
    assert texts_of(first[1]) == [spec]
    assert (answer.outcome, answer.reason, answer.chosen) == ("no_mask", None, ())
    assert answer.mask.shape == (H, W) and not answer.mask.any() and len(answer.candidates) == 0
    assert sam.prompts == [] and backend.max_tokens == [4096]


def test_segment_then_select_answers_with_the_union_of_the_chosen_candidates():
    replies = [segment("dog", think="Dogs first."), select(3, 1, 1, 7)]
    (answer,), backend, sam = run(replies)
    second = backend.received[1]
    assert roles(second) == ["system", "user", "assistant", "user"]
    assert second[2]["content"] == [{"type": "text", "text": cut_after_tool(replies[0]) + "\n\n"}]
    assert kinds(second[3]) == ["text", "image"]
    assert texts_of(second[3]) == [PROMPTS.fill("masks_rendered", count=3, query=QUERY)]
    marks = images_of(second[3])[0]
    assert np.array_equal(np.asarray(marks), np.asarray(marks_image(PHOTO, DOG_CANDIDATES.masks)))
    assert len(message_images(second)) == 2
    assert sam.prompts == ["dog"]
    assert (answer.outcome, answer.chosen) == ("select", (0, 2))
    assert torch.equal(answer.candidates.masks, DOG_CANDIDATES.masks)
    assert torch.equal(answer.mask, DOGS.masks[1] | DOGS.masks[0])
    assert answer.details == {"sam3_prompts": ["dog"], "sam3_prompt": "dog", "agent_turns": 2}


def test_only_the_first_tool_call_of_a_reply_counts():
    replies = [segment("dog") + " and then " + select(1), select(2)]
    (answer,), backend, _ = run(replies)
    assert backend.received[1][2]["content"][0]["text"] == segment("dog") + "\n\n"
    assert answer.chosen == (1,)


@pytest.mark.parametrize("first", [examine(), select(1)])
def test_only_segment_phrase_or_report_no_mask_come_first(first):
    (answer,), backend, sam = run([first])
    assert (answer.outcome, answer.reason, answer.chosen) == ("vlm_error", "tool_not_allowed", ())
    assert sam.prompts == [] and len(backend.received) == 1 and len(answer.candidates) == 0


def test_a_prompt_that_finds_nothing_counts_as_run():
    (answer,), backend, _ = run([segment("cat"), select(1)])
    last = backend.received[1][-1]
    assert kinds(last) == ["text"] and texts_of(last) == [PROMPTS.fill("no_masks", prompt="cat", query=QUERY)]
    assert len(message_images(backend.received[1])) == 1
    assert (answer.outcome, answer.chosen) == ("select", ())
    (answer,), _, _ = run([segment("cat"), examine()])
    assert (answer.outcome, answer.reason) == ("vlm_error", "tool_not_allowed")


def test_a_used_prompt_is_refused_without_calling_sam3():
    (answer,), backend, sam = run([segment("dog"), segment("dog"), select(1)])
    assert sam.prompts == ["dog"]
    third = backend.received[2]
    # The refusal's assistant turn calls segment_phrase: the history starts there, the masks are out of view.
    assert roles(third) == ["system", "user", "assistant", "user"]
    assert texts_of(third[3]) == [PROMPTS.fill("duplicate_prompt", prompt="dog", used='["dog"]')]
    assert len(message_images(third)) == 1 and texts_of(third[1]) == [first_turn_text()]
    # The candidates of "dog" are still the ones a selection numbers.
    assert answer.chosen == (0,) and torch.equal(answer.mask, DOGS.masks[1])


def test_other_prompts_tried_are_noted_in_the_second_message():
    (answer,), backend, sam = run([segment("dog"), segment("animal"), select(2)])
    third = backend.received[2]
    assert images_of(third[1]) == [PHOTO] and texts_of(third[1]) == [first_turn_text(["dog"])]
    assert third[2]["content"][0]["text"] == segment("animal") + "\n\n"
    assert texts_of(third[3]) == [PROMPTS.fill("masks_rendered", count=2, query=QUERY)]
    assert len(message_images(third)) == 2 and len(third) == 4
    assert sam.prompts == ["dog", "animal"]
    assert torch.equal(answer.mask, ANIMALS.masks[1])  # equal scores keep their order


def test_examine_each_mask_checks_each_candidate_alone_and_renumbers_the_kept_ones():
    verdicts = ["<verdict>Accept</verdict>", "<think>not it</think><verdict>Reject</verdict>",
                "<verdict>Accept</verdict>"]
    (answer,), backend, _ = run([segment("dog"), examine(), *verdicts, select(2)])
    assert backend.batches == [1, 1, 3, 1]
    for index, check in enumerate(backend.received[2:5]):
        assert check[0] == {"role": "system", "content": PROMPTS.text("system_prompt_iterative_checking")}
        assert kinds(check[1]) == ["text", "image", "text", "text", "image", "text", "image"]
        photo, alone, zoomed = images_of(check[1])
        mask = DOG_CANDIDATES.masks[index]
        assert photo is PHOTO
        assert np.array_equal(np.asarray(alone), np.asarray(candidate_image(PHOTO, mask, color_of(index))))
        assert np.array_equal(np.asarray(zoomed), np.asarray(zoom_image(PHOTO, mask, color_of(index))))
        assert texts_of(check[1])[1] == PROMPTS.fill("check_query", query=QUERY)
    after = backend.received[5]
    assert roles(after) == ["system", "user", "assistant", "user", "assistant", "user"]
    assert after[3]["content"] == [{"type": "text", "text": PROMPTS.text("examine_placeholder")}]
    assert texts_of(after[5]) == [PROMPTS.fill("examined_some", count=2, query=QUERY)]
    kept = DOG_CANDIDATES.masks[[0, 2]]
    assert np.array_equal(np.asarray(images_of(after[5])[0]), np.asarray(marks_image(PHOTO, kept)))
    assert len(message_images(after)) == 2
    # Mask 2 after the check is the third candidate before it: SAM 3's first instance.
    assert answer.chosen == (1,) and len(answer.candidates) == 2 and torch.equal(answer.mask, DOGS.masks[0])
    assert answer.usage.calls == 6


def test_examine_rejecting_every_mask_asks_for_a_new_prompt():
    (answer,), backend, _ = run([segment("dog"), examine(), *["<verdict>Reject</verdict>"] * 3, examine()])
    assert texts_of(backend.received[5][-1]) == [PROMPTS.fill("examined_none", query=QUERY)]
    assert (answer.outcome, answer.reason, len(answer.candidates)) == ("vlm_error", "tool_not_allowed", 0)


def test_a_think_block_that_names_segment_phrase_starts_the_pruned_history():
    """The authors find the last segment_phrase call by substring: an examine turn whose reasoning names the tool
    becomes the start, and the masks' first showing leaves the context."""
    musing = examine(think="no need to call segment_phrase again")
    replies = [segment("dog"), musing, *["<verdict>Accept</verdict>"] * 3, select(1)]
    _, backend, _ = run(replies)
    after = backend.received[5]
    assert roles(after) == ["system", "user", "assistant", "user"]
    assert "examine_each_mask" in after[2]["content"][0]["text"]


@pytest.mark.parametrize("verdicts", [["<verdict>Accept</verdict>", "<verdict>Accept, not Reject</verdict>",
                                       "<verdict>Reject</verdict>"], ["fine", "fine", "fine"]])
def test_a_broken_verdict_ends_the_query(verdicts):
    (answer,), backend, _ = run([segment("dog"), examine(), *verdicts])
    assert (answer.outcome, answer.reason, answer.chosen) == ("vlm_error", "bad_verdict", ())
    assert answer.usage.calls == 5 and not answer.mask.any()


@pytest.mark.parametrize("reply, reason", [
    (tool("zoom_in"), "unknown_tool"),
    ("<tool>{not json}</tool>", "bad_json"),
    ('<tool>{"parameters": {}}</tool>', "bad_call"),
    (tool("segment_phrase", text_prompt=["dog"]), "bad_parameters"),
    (tool("segment_phrase", text_prompt="dog", extra=1), "bad_parameters"),
    (tool("select_masks_and_return", masks=[1]), "bad_parameters"),
    (tool("select_masks_and_return", final_answer_masks=[1.0]), "bad_parameters"),
])
def test_malformed_turns_end_the_query_with_their_reason(reply, reason):
    (answer,), backend, sam = run([segment("dog"), reply])
    assert (answer.outcome, answer.reason, answer.chosen) == ("vlm_error", reason, ())
    assert sam.prompts == ["dog"] and len(answer.candidates) == 3 and not answer.mask.any()


def test_a_bare_json_call_without_tags_is_followed():
    (answer,), _, _ = run(['{"name": "report_no_mask", "parameters": {}}'])
    assert answer.outcome == "no_mask"


def test_an_empty_prompt_runs_but_cannot_be_examined():
    """The authors test the latest prompt for truth before examine_each_mask: "" fails it."""
    (answer,), _, sam = run([segment(""), examine()], table={"": DOGS})
    assert sam.prompts == [""] and (answer.outcome, answer.reason) == ("vlm_error", "tool_not_allowed")


def test_an_endpoint_that_does_not_answer_is_recorded_not_raised():
    (answer,), backend, sam = run([segment("dog"), TransportError("connection refused")])
    assert (answer.outcome, answer.reason, answer.chosen) == ("vlm_error", "transport", ())
    assert answer.usage.calls == 1 and sam.prompts == ["dog"]
    # The checks' batch fails on its second conversation; asked alone, the first is answered, the second fails.
    (answer,), _, _ = run([segment("dog"), examine(), "<verdict>Accept</verdict>", TransportError(),
                           "<verdict>Accept</verdict>", TransportError()])
    assert answer.reason == "transport"


def test_other_backend_failures_propagate():
    with pytest.raises(RuntimeError, match="boom"):
        run([RuntimeError("boom")])


def test_the_generation_limit_counts_turns_after_the_first():
    settings = AGENT.with_overrides(max_generations=3)
    (answer,), backend, _ = run([segment(f"p{i}") for i in range(10)], settings)
    assert (answer.outcome, answer.reason) == ("vlm_error", "too_many_generations")
    assert len(backend.received) == 4


def test_a_long_run_never_holds_more_than_two_images(monkeypatch):
    """101 turns of every kind (new prompts with and without masks, refusals, checks): every main conversation
    holds at most two images; the run ends at the authors' limit."""
    monkeypatch.setattr(render, "ZOOM_SIDE", 32)  # small zoomed views: this test is about the history
    table = {f"p{i}": DOGS if i % 4 else ANIMALS for i in range(0, 300, 2)}  # odd prompts find nothing
    replies, latest = [], ""
    for turn in range(101):
        step = ("new", "examine", "used", "nothing")[turn % 4]
        if step == "new":
            latest = f"p{turn // 2}"
            replies.append(segment(latest))
        elif step == "examine":
            replies.append(examine())
            replies += ["<verdict>Accept</verdict>"] + ["<verdict>Reject</verdict>"] * (len(table[latest]) - 1)
        else:
            replies.append(segment(latest if step == "used" else f"p{2 * (turn // 4) + 1}"))
    (answer,), backend, _ = run(replies, table=table)
    main = [messages for messages in backend.received if is_main(messages)]
    assert len(main) == 101
    assert max(len(message_images(messages)) for messages in main) == 2
    assert all(len(messages) < 10 for messages in main)  # the authors assert it of their history
    assert (answer.outcome, answer.reason) == ("vlm_error", "too_many_generations")
    assert any(len(message_images(messages)) == 1 for messages in main[1:])  # refusals and empty prompts came through


def test_usage_and_transcript_record_every_call():
    replies = [segment("dog"), select(1)]
    (answer,), _, _ = run(replies)
    usage = answer.usage
    assert (usage.calls, usage.prompt_tokens, usage.prefilled_tokens) == (2, 102 + 104, 20)
    assert usage.generated_tokens == len(replies[0]) + len(replies[1]) and usage.seconds == 1.0
    first, second = answer.transcript
    assert first["conversation"] == "agent" and first["reply"] == replies[0] and first["turn"] == 1
    assert first["messages"][0] == {"role": "system", "prompt": "system_prompt"}
    assert first["messages"][1]["content"][0] == {"type": "image", "image": f"photo ({W}x{H})"}
    assert second["messages"][3]["content"][1] == {"type": "image", "image": f"marks 1-3 ({W}x{H})"}
    assert second["prompt_tokens"] == 104 and second["generated_tokens"] == len(replies[1])
    json.dumps(answer.transcript)  # no image or tensor left in it
    assert answer.to_json()["vlm_calls"] == 2 and answer.to_json()["chosen"] == [0]


def test_the_queries_of_a_photo_are_asked_together():
    replies = [segment("dog"), tool("report_no_mask"), select(1)]  # query 1, query 2, query 1
    answers, backend, _ = run(replies, queries=(QUERY, "a cat"))
    assert backend.batches == [2, 1]
    assert [answer.outcome for answer in answers] == ["select", "no_mask"]
    assert texts_of(backend.received[1][1]) == [PROMPTS.fill("initial_query", query="a cat")]


def test_one_querys_fault_is_not_the_others():
    """A batch the endpoint failed is asked again one conversation at a time: only the query whose request
    failed again records the fault, the other answers."""
    # Batch (query 1, query 2) fails on query 2; alone: query 1 answered, query 2 fails again; then query 1 goes on.
    replies = [segment("dog"), TransportError("503"), segment("dog"), TransportError("503"), select(1)]
    answers, backend, _ = run(replies, queries=(QUERY, "a cat"))
    assert backend.batches == [2, 1, 1, 1]
    assert [(answer.outcome, answer.reason) for answer in answers] == [("select", None), ("vlm_error", "transport")]


def test_a_malformed_reply_is_retried_with_a_reminder_when_the_preset_allows():
    settings = PRESETS["sam3-agent-retry"]
    (answer,), backend, _ = run(["It is the dog.", segment("dog"), select(1)], settings)
    retry = backend.received[1]
    assert roles(retry) == ["system", "user", "assistant", "user"]
    assert retry[2]["content"][0]["text"] == "It is the dog.</tool>\n\n"
    assert texts_of(retry[3])[0].startswith("Your reply could not be used: the tool call is not valid JSON")
    # The malformed turn and the reminder stay out of the history.
    assert roles(backend.received[2]) == ["system", "user", "assistant", "user"]
    assert backend.received[2][2]["content"][0]["text"] == segment("dog") + "\n\n"
    assert (answer.outcome, answer.chosen) == ("select", (0,))
    (answer,), backend, _ = run(["a", "b", "c", "d"], settings)
    assert (answer.outcome, answer.reason, len(backend.received)) == ("vlm_error", "bad_json", 3)


def test_a_broken_verdict_is_asked_again_when_the_preset_allows():
    settings = PRESETS["sam3-agent-retry"]
    replies = [segment("dog"), examine(), "maybe", "<verdict>Reject</verdict>", "<verdict>Reject</verdict>",
               "<verdict>Accept</verdict>", select(1)]
    (answer,), backend, _ = run(replies, settings)
    assert backend.batches == [1, 1, 3, 1, 1]
    again = backend.received[5]
    assert roles(again) == ["system", "user", "assistant", "user"]
    assert again[2]["content"][0]["text"] == "maybe"
    assert texts_of(again[3]) == [PROMPTS.text("verdict_reminder")]
    assert answer.chosen == (0,) and len(answer.candidates) == 1 and torch.equal(answer.mask, DOGS.masks[1])


def test_prompts_given_are_the_ones_sent():
    prompts = Prompts({**PROMPTS.texts, "system_prompt": "SYSTEM", "initial_query": "Q={query}"}, "folder")
    _, backend, _ = run([tool("report_no_mask")], prompts=prompts)
    assert backend.received[0][0]["content"] == "SYSTEM" and texts_of(backend.received[0][1]) == [f"Q={QUERY}"]
