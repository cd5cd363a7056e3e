"""Reading the one-call presets' free-form replies: the answer apart from a think block and code fences.

Models wrap answers in ``<think> ... </think>`` (thinking models), in
```` ```json ```` fences, or cut them short at the token limit; these helpers
find the answer's text, then JSON (through the project's bounded reader), then
plain numbers.
"""

from __future__ import annotations

import re
from typing import Any

from ...data.bounded import JsonError, parse_json

__all__ = ["answer_text", "integers", "json_value", "numbers"]

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)
# A number standing alone: not the end of a word ("bbox_2d", "x1") or of another number.
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")
# A whole number standing alone: nor signed, nor part of a decimal.
_INTEGER = re.compile(r"(?<![\w.-])\d+(?![\d]|\.\d)")


def answer_text(text: str) -> str:
    """The reply without its think block (everything up to the last ``</think>``; a ``<think>`` never closed,
    cut at the token limit, hides everything after it) and with the first code fence's content in place of the
    whole when there is one (an unclosed fence runs to the end)."""
    if _THINK_CLOSE in text:
        text = text.rsplit(_THINK_CLOSE, 1)[1]
    elif _THINK_OPEN in text:
        text = text.split(_THINK_OPEN, 1)[0]
    fence = _FENCE.search(text)
    return (fence[1] if fence else text).strip()


def json_value(text: str, where: str) -> Any | None:
    """The answer text as JSON (bounded reader), or None when it is not JSON."""
    try:
        return parse_json(text, where)
    except JsonError:
        return None


def numbers(text: str) -> list[float]:
    """Every number standing alone in ``text``, in order."""
    return [float(match) for match in _NUMBER.findall(text)]


def integers(text: str) -> list[int]:
    """Every whole, non-negative number standing alone in ``text``, in order (no decimals, no signs)."""
    return [int(match) for match in _INTEGER.findall(text) if len(match) <= 18]
