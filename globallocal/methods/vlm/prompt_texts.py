"""Every text the method sends to the VLM, per preset, by name: this project's own wording.

A name is also the file name (``NAME.txt``) that ``--vlm-prompts DIR`` reads
in its place; the agent's two system prompts are named as the authors name
their files, so a folder holding a copy of theirs runs their prompts. A
template's ``{field}`` is filled when the text is sent (:data:`FIELDS`); any
other brace is sent as written.
"""

from __future__ import annotations

__all__ = ["AGENT", "BOX", "FIELDS", "MARKS", "PRESET_PROMPTS"]

_AGENT_SYSTEM = """\
You find the object(s) in an image that a user's query refers to, using tools, one tool call per turn.

The query is a referring expression ("the man on the left in a red shirt") or a question whose answer is something \
in the image ("what can I sit on?"). The target is what the query is about, not the things it mentions only to \
identify it: for "the dog next to the bench" the target is the dog, for "a woman holding an umbrella" it is the woman.

Tools:

segment_phrase: runs a segmentation model on the raw input image with a short, simple noun phrase and returns every \
instance it finds as numbered masks drawn on the image. Each call replaces all earlier masks.
  Parameters: {"text_prompt": "a short noun phrase, e.g. person, red car, wooden chair, dog"}
  - Name the whole target and its category, optionally with a visual adjective (colour, material). Never use \
relations, positions, ordinals, counts, actions or text written in the image: the segmentation model cannot read \
them. Ask for "man" and choose the one on the left yourself.
  - Never use the same text_prompt twice. If a prompt finds nothing useful, try a more general one \
("person" after "referee").

examine_each_mask: checks every currently numbered mask on its own, closely, and keeps only the masks that match the \
query; the kept masks are renumbered. Use it when masks are small, overlapping or hard to tell apart.
  Parameters: {}

select_masks_and_return: ends the task with the chosen mask(s) as the answer.
  Parameters: {"final_answer_masks": [list of the chosen mask numbers, e.g. [2] or [1, 3]]}
  - Use only numbers shown on the most recent image with masks.

report_no_mask: ends the task saying that nothing in the image matches the query. Use it only when the query clearly \
contradicts everything in the image, never for a small mismatch (a "red laptop" that is purple is still the laptop).
  Parameters: {}

How to work:
1. First look at the raw input image and the query, decide what the target is and call segment_phrase with a simple \
noun phrase for it (or report_no_mask).
2. When masks are shown, look at each numbered mask against the raw input image and the query: what it covers, where \
it is, how it relates to the other masks. Masks are renumbered whenever they change; refer only to the numbers on the \
most recent image.
3. Then select the mask(s) that match the query, examine them, or segment again with a different phrase if none fits.

Reply format, every turn: your reasoning inside <think> ... </think>, then exactly one tool call as JSON inside \
<tool> ... </tool>, then stop. For example:
<think>The query asks for the man on the left. I will segment all men and choose.</think>
<tool>{"name": "segment_phrase", "parameters": {"text_prompt": "man"}}</tool>"""

_CHECK_SYSTEM = """\
You check whether one predicted segmentation mask covers an object that a user's query refers to.

You are given the query (a referring expression, or a question whose answer is something in the image), the raw \
input image, the image with the one mask drawn on it, and a zoomed view of the mask: a close-up of the area around \
it with its box drawn, and the masked object itself, enlarged.

Accept the mask when it covers the target of the query (or one of them, when the query refers to several). Reject it \
when it covers something else, only part of the target, or an object the query mentions only to identify the target \
("the man holding a cup": the cup is not the target). Use the whole image for queries about position or order \
("the second car from the left").

Reply with your reasoning inside <think> ... </think>, then exactly one of <verdict>Accept</verdict> or \
<verdict>Reject</verdict>."""

AGENT: dict[str, str] = {
    "system_prompt": _AGENT_SYSTEM,
    "system_prompt_iterative_checking": _CHECK_SYSTEM,
    # The spec's first user turn (SPEC-vlm step 1), as the system prompts name the image and the query.
    "initial_query": "The above image is the raw input image. The initial user input query is: '{query}'.",
    "tried_prompts_note": (
        "These text_prompts were already tried with segment_phrase and gave no satisfactory masks; do not use "
        "them again: {tried}."
    ),
    "duplicate_prompt": (
        "The text_prompt '{prompt}' was already used and cannot be used again. Call segment_phrase with a "
        "different noun phrase, perhaps a more general one. Never use any of these text_prompts: {used}."
    ),
    "no_masks": (
        "segment_phrase found no masks for the text_prompt '{prompt}'. Call segment_phrase again with a "
        "different, perhaps more general, noun phrase. The query is still: '{query}'."
    ),
    "masks_rendered": (
        "segment_phrase found {count} mask(s). The image below shows all {count} of them, each drawn with its "
        "number. Compare every mask with the raw input image and the query, then choose your next tool call. The "
        "query is: '{query}'."
    ),
    "examine_placeholder": (
        "segment_phrase found some masks. Compare them with the raw input image and the query, then choose your "
        "next tool call."
    ),
    "examined_some": (
        "The query is: '{query}'. examine_each_mask kept {count} mask(s), renumbered and shown in the image "
        "below. Compare every mask with the raw input image and the query, then choose your next tool call."
    ),
    "examined_none": (
        "The query is: '{query}'. examine_each_mask rejected every mask. Call segment_phrase again with a "
        "different, perhaps more general, noun phrase."
    ),
    "check_raw_image": "The raw input image:",
    "check_query": "The query: '{query}'",
    "check_candidate": "The image with the predicted mask drawn on it:",
    "check_zoom": "The zoomed view of the predicted mask:",
    # Sent only by the presets that retry a malformed reply (format_retries > 0).
    "format_reminder": (
        "Your reply could not be used: {problem}. Reply again with your reasoning in <think> ... </think> and "
        "then exactly one tool call as JSON inside <tool> ... </tool>, e.g. "
        '<tool>{"name": "select_masks_and_return", "parameters": {"final_answer_masks": [1]}}</tool>.'
    ),
    "verdict_reminder": (
        "Your reply had no clear verdict. End your reply with exactly one of <verdict>Accept</verdict> or "
        "<verdict>Reject</verdict>."
    ),
}

BOX: dict[str, str] = {
    "box_request": (
        "Locate the object described as '{query}' in the image. Answer with its bounding box as JSON: "
        '[{"bbox_2d": [x1, y1, x2, y2], "label": "..."}]'
    ),
}

MARKS: dict[str, str] = {
    "marks_request": (
        "The second image is the first one with {count} candidate objects drawn on it, each in its own colour and "
        "labelled with its number ({labels}). Which number marks the object described as '{query}'? Answer with "
        "the number only."
    ),
}

PRESET_PROMPTS = {"agent": AGENT, "box": BOX, "marks": MARKS}
"""Each mode's texts (a preset's ``mode`` setting picks them)."""

FIELDS: dict[str, tuple[str, ...]] = {
    "initial_query": ("query",),
    "tried_prompts_note": ("tried",),
    "duplicate_prompt": ("prompt", "used"),
    "no_masks": ("prompt", "query"),
    "masks_rendered": ("count", "query"),
    "examined_some": ("count", "query"),
    "examined_none": ("query",),
    "check_query": ("query",),
    "format_reminder": ("problem",),
    "box_request": ("query",),
    "marks_request": ("count", "labels", "query"),
}
"""The fields each template fills; the other texts are sent as they are."""
