"""The agent's history between turns (SPEC-vlm step 9), as the authors keep it.

After each turn that does not end the query, every assistant text is cut
after its first ``</tool>`` (plus a blank line), and the history is pruned:
the first two messages stay; then come the messages from the LAST assistant
message whose text holds ``<tool>`` and ``segment_phrase`` (anywhere: in its
reasoning too) to the end, or none when there is no such message. When
prompts other than the latest one that ran were used, the second message is
rebuilt: the raw image and the first turn's text with a note that lists them
as tried. So at most two images are ever in the context: the raw image and
the most recent image of marks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from .chat import Message
from .toolcalls import TOOL_CLOSE, TOOL_OPEN

__all__ = ["cut_assistant_texts", "prune", "tried_list"]

SEGMENT_PHRASE = "segment_phrase"


def cut_assistant_texts(messages: Sequence[Message]) -> None:
    """Cut every assistant text part after its first ``</tool>``, in place, and end it with a blank line."""
    for message in messages:
        if message.get("role") != "assistant" or not isinstance(message.get("content"), list):
            continue
        for part in message["content"]:
            if isinstance(part, dict) and part.get("type") == "text" and "text" in part:
                part["text"] = part["text"].split(TOOL_CLOSE, 1)[0] + TOOL_CLOSE + "\n\n"


def _calls_segment_phrase(message: Message) -> bool:
    if message.get("role") != "assistant" or not isinstance(message.get("content"), list):
        return False
    return any(
        isinstance(part, dict) and part.get("type") == "text"
        and TOOL_OPEN in part.get("text", "") and SEGMENT_PHRASE in part.get("text", "")
        for part in message["content"]
    )


def tried_list(prompts: Sequence[str]) -> str:
    """Prompts as the messages list them: a JSON list, in the order they were used."""
    return json.dumps(list(prompts), ensure_ascii=False)


def prune(
    messages: Sequence[Message], used: Sequence[str], latest: str, first_turn: Callable[[list[str]], Message]
) -> list[Message]:
    """The history for the next turn: the first two messages (the second rebuilt by ``first_turn(tried)`` when
    other prompts than ``latest`` were used and something follows), then the messages from the last assistant
    message that calls ``segment_phrase``.

    ``latest`` is the last prompt that ran SAM 3 ("" before any, as the authors' falsy check: then every used
    prompt counts as tried).
    """
    head = list(messages[:2])  # system and user messages: never edited in place, so not copied
    start = next((index for index in range(len(messages) - 1, 1, -1) if _calls_segment_phrase(messages[index])), None)
    tail = list(messages[start:]) if start is not None else []
    tried = [prompt for prompt in used if prompt != latest] if latest else list(used)
    if tail and tried:
        head[1] = first_turn(tried)
    return head + tail
