"""Reading the agent's replies (SPEC-vlm steps 2, 5, 6) and its history between turns (step 9)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from globallocal.methods.vlm.chat import assistant, image_part, system, text_part, user
from globallocal.methods.vlm.history import cut_assistant_texts, prune, tried_list
from globallocal.methods.vlm.toolcalls import (
    AgentError,
    chosen_numbers,
    cut_after_tool,
    only_parameter,
    parse_tool_call,
    parse_verdict,
    tool_json,
)
from globallocal.models.vlm.messages import message_images

# ---- tool calls ---------------------------------------------------------------------------------------------------


def test_the_reply_is_cut_after_its_first_closing_tag():
    text = '<think>a</think><tool>{"name": "a"}</tool> more <tool>{"name": "b"}</tool>'
    assert cut_after_tool(text) == '<think>a</think><tool>{"name": "a"}</tool>'
    assert parse_tool_call(text).name == "a"
    assert cut_after_tool("no tag at all") == "no tag at all</tool>"


def test_the_json_is_between_the_last_opening_tag_and_the_closing_one():
    # Two opening tags before the first closing one: the last wins (the first is then not a call at all).
    text = '<tool>{"name": "a"} oops <tool> {"name": "b", "parameters": {}} </tool>'
    assert tool_json(cut_after_tool(text)) == '{"name": "b", "parameters": {}}'
    assert parse_tool_call(text).call == {"name": "b", "parameters": {}}


def test_three_closing_braces_read_as_two():
    text = '<tool>{"name": "segment_phrase", "parameters": {"text_prompt": "dog"}}}</tool>'
    assert parse_tool_call(text).call["parameters"] == {"text_prompt": "dog"}


def test_a_reply_without_tags_is_parsed_whole_as_the_authors_do():
    """The authors' "<tool> in reply" check is an assert on a tuple (always true): bare JSON is a call."""
    assert parse_tool_call('{"name": "report_no_mask", "parameters": {}}').name == "report_no_mask"
    with pytest.raises(AgentError) as caught:
        parse_tool_call("I think it is the dog.")
    assert caught.value.reason == "bad_json"


@pytest.mark.parametrize("body, reason", [
    ("{'name': 'x'}", "bad_json"),  # not JSON
    ('{"name": "a", "parameters": {"x": NaN}}', "bad_json"),  # the bounded reader refuses what is not finite
    ("[" * 100 + "]" * 100, "bad_json"),  # deeper than the bounded reader allows
    ('["segment_phrase"]', "bad_call"),
    ('"segment_phrase"', "bad_call"),
    ('{"parameters": {}}', "bad_call"),
])
def test_malformed_calls_have_their_reason(body, reason):
    with pytest.raises(AgentError) as caught:
        parse_tool_call(f"<tool>{body}</tool>")
    assert caught.value.reason == reason
    assert str(caught.value)


@pytest.mark.parametrize("parameters", [None, [], "dog", {"text_prompt": "dog", "x": 1}, {"prompt": "dog"}, {}])
def test_a_tool_takes_exactly_its_one_parameter(parameters):
    call = parse_tool_call(f'<tool>{{"name": "segment_phrase", "parameters": {json.dumps(parameters)}}}</tool>')
    with pytest.raises(AgentError) as caught:
        only_parameter(call, "text_prompt")
    assert caught.value.reason == "bad_parameters"
    call = parse_tool_call('<tool>{"name": "segment_phrase", "parameters": {"text_prompt": "dog"}}</tool>')
    assert only_parameter(call, "text_prompt") == "dog"


@pytest.mark.parametrize("value, count, expected", [
    ([3, 1, 1, 2], 3, [1, 2, 3]),
    ([0, 4, -1, 2, 2], 3, [2]),
    (["1", "2"], 3, []),  # strings are never mask numbers
    ([], 3, []),
    ([True], 3, [1]),  # Python's True is 1, as in the authors' set test
    ({"1": 1}, 3, []),  # an object iterates its keys
    ("12", 3, []),  # a string its characters
    ([1, 1.0], 3, [1]),  # the set keeps the int that came first
])
def test_final_answer_masks_as_the_authors_read_them(value, count, expected):
    assert chosen_numbers(value, count) == expected


@pytest.mark.parametrize("value", [2, None, 1.5, [[1]], [{"a": 1}], [1.0], [2.0, 1]])
def test_final_answer_masks_the_authors_fail_on(value):
    with pytest.raises(AgentError) as caught:
        chosen_numbers(value, 3)
    assert caught.value.reason == "bad_parameters"


# ---- verdicts -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, accepted", [
    ("<think>Reject? no.</think><verdict>Accept</verdict>", True),
    ("<verdict> Reject </verdict>", False),
    ("<verdict>Accept</verdict> then <verdict>Reject</verdict>", False),  # the last opening tag
    ("I Accept this mask", True),  # no tags: the whole text
    ("<verdict>Accepted</verdict>", True),  # a word that holds Accept
])
def test_verdicts(text, accepted):
    assert parse_verdict(text) is accepted


@pytest.mark.parametrize("text", ["<verdict>Accept or Reject</verdict>", "<verdict>yes</verdict>", "",
                                  "<verdict>accept</verdict>"])
def test_a_verdict_needs_exactly_one_word(text):
    with pytest.raises(AgentError) as caught:
        parse_verdict(text)
    assert caught.value.reason == "bad_verdict"


# ---- the history --------------------------------------------------------------------------------------------------

PHOTO = Image.new("RGB", (8, 6))
MARKS = Image.new("RGB", (8, 6), (255, 0, 0))


def first_turn(tried):
    return user(image_part(PHOTO), text_part(f"query; tried {tried_list(tried)}" if tried else "query"))


def history(*turns):
    return [system("S"), first_turn([]), *turns]


def test_cutting_keeps_up_to_the_first_closing_tag_and_a_blank_line():
    messages = history(assistant('<tool>{"a": 1}</tool> extra <tool>x</tool>'), user(text_part("u </tool> u")))
    cut_assistant_texts(messages)
    assert messages[2]["content"][0]["text"] == '<tool>{"a": 1}</tool>\n\n'
    assert messages[3]["content"][0]["text"] == "u </tool> u"  # user texts are left alone
    cut_assistant_texts(messages)  # idempotent
    assert messages[2]["content"][0]["text"] == '<tool>{"a": 1}</tool>\n\n'


def test_pruning_keeps_the_head_and_everything_from_the_last_segment_phrase_call():
    seg1 = assistant('<tool>{"name": "segment_phrase", "parameters": {"text_prompt": "a"}}</tool>')
    seg2 = assistant('<tool>{"name": "segment_phrase", "parameters": {"text_prompt": "b"}}</tool>')
    examine = assistant('<tool>{"name": "examine_each_mask", "parameters": {}}</tool>')
    shown1, shown2 = user(text_part("1"), image_part(MARKS)), user(text_part("2"), image_part(MARKS))
    placeholder = user(text_part("p"))
    messages = history(seg1, shown1, seg2, placeholder, examine, shown2)
    pruned = prune(messages, ["a", "b"], "b", first_turn)
    assert pruned[0] is messages[0]
    assert pruned[2:] == [seg2, placeholder, examine, shown2]
    # "a" was tried before the latest prompt: the second message is rebuilt with the note.
    assert pruned[1]["content"][0]["image"] is PHOTO
    assert pruned[1]["content"][1]["text"] == 'query; tried ["a"]'
    assert len(message_images(pruned)) == 2


def test_pruning_without_other_prompts_or_without_a_segment_call():
    seg = assistant('<tool>{"name": "segment_phrase", "parameters": {"text_prompt": "a"}}</tool>')
    messages = history(seg, user(text_part("none found")))
    pruned = prune(messages, ["a"], "a", first_turn)
    assert pruned == messages and pruned[1] is messages[1]
    # No assistant message names segment_phrase: only the head, never rebuilt.
    other = history(assistant("<tool>{}</tool>"), user(text_part("x")))
    assert prune(other, ["a", "b"], "b", first_turn) == other[:2]
    # The latest prompt "" (falsy, as the authors test it): every used prompt counts as tried.
    pruned = prune(messages, ["", "a"], "", first_turn)
    assert pruned[1]["content"][1]["text"] == 'query; tried ["", "a"]'


def test_pruning_finds_segment_phrase_anywhere_in_an_assistant_text():
    """The authors look for "<tool>" and "segment_phrase" anywhere in the text: reasoning that mentions the tool
    makes an examine turn the start (a quirk, kept)."""
    seg = assistant('<tool>{"name": "segment_phrase", "parameters": {"text_prompt": "a"}}</tool>')
    musing = assistant('<think>no more segment_phrase</think><tool>{"name": "examine_each_mask"}</tool>')
    messages = history(seg, user(text_part("1"), image_part(MARKS)), musing, user(text_part("2")))
    assert prune(messages, ["a"], "a", first_turn)[2:] == messages[4:]
