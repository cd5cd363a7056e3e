"""Reading the agent's replies exactly as the authors do: tool calls (SPEC-vlm step 2), parameters, verdicts.

Where the authors' code raises (bad JSON, a missing key, an unknown tool, a
verdict with both or neither word), these raise :class:`AgentError` with the
reason the answer records (``vlm_error``). The authors' check that a reply
holds ``<tool>`` is an assert on a tuple, which never fails: a reply without
the tag is parsed all the same (its whole text, cut at the first ``</tool>``,
is the JSON), and so it is here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...data.bounded import JsonError, parse_json

__all__ = [
    "AgentError",
    "ToolCall",
    "chosen_numbers",
    "cut_after_tool",
    "only_parameter",
    "parse_tool_call",
    "parse_verdict",
    "tool_json",
]

TOOL_OPEN, TOOL_CLOSE = "<tool>", "</tool>"
VERDICT_OPEN, VERDICT_CLOSE = "<verdict>", "</verdict>"


class AgentError(Exception):
    """A reply the loop cannot follow: ``reason`` is one of :data:`~.answer.REASONS`; the message says what."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ToolCall:
    """A parsed tool call: the JSON object, whose ``name`` may be anything JSON holds."""

    call: dict[str, Any]

    @property
    def name(self) -> Any:
        return self.call["name"]


def cut_after_tool(text: str) -> str:
    """The reply up to its first ``</tool>``, which is kept (added when the reply has none, as the authors do)."""
    return text.split(TOOL_CLOSE, 1)[0] + TOOL_CLOSE


def tool_json(cut: str) -> str:
    """The JSON text of a cut reply: between the last ``<tool>`` and the next ``</tool>``, stripped, with
    ``}}}`` read as ``}}`` (a common slip of the models)."""
    return cut.split(TOOL_OPEN)[-1].split(TOOL_CLOSE)[0].strip().replace("}}}", "}}")


def parse_tool_call(text: str) -> ToolCall:
    """The tool call of a reply (cut or not): a JSON object with a ``name``, else :class:`AgentError`."""
    try:
        call = parse_json(tool_json(cut_after_tool(text)), "the tool call")
    except JsonError as error:
        raise AgentError("bad_json", str(error)) from None
    if not isinstance(call, dict) or "name" not in call:
        raise AgentError("bad_call", 'the tool call must be a JSON object with "name" and "parameters"')
    return ToolCall(call)


def only_parameter(call: ToolCall, key: str) -> Any:
    """The value of the tool's one parameter ``key``; the parameters must be exactly that key."""
    parameters = call.call.get("parameters")
    if not isinstance(parameters, dict) or list(parameters) != [key]:
        raise AgentError("bad_parameters", f'{call.name} takes exactly one parameter, "{key}"')
    return parameters[key]


def chosen_numbers(value: Any, count: int) -> list[int]:
    """``final_answer_masks`` as the authors read it: the values in 1..count, without duplicates, ascending.

    Python's semantics are the rule: a JSON object or string is iterated (its keys or characters, never in
    range: nothing chosen), ``true`` is 1; a number that is not a list, a list inside the list, or a float
    that survives (the authors index a list with it) is an error.
    """
    available = set(range(1, count + 1))
    try:
        chosen = sorted({number for number in value if number in available})
    except TypeError:
        raise AgentError("bad_parameters", "final_answer_masks must be a list of mask numbers") from None
    if not all(isinstance(number, int) for number in chosen):
        raise AgentError("bad_parameters", "final_answer_masks must hold whole mask numbers")
    return [int(number) for number in chosen]


def parse_verdict(text: str) -> bool:
    """A check's verdict: the text between the last ``<verdict>`` and the next ``</verdict>`` (the whole reply
    when there are no tags) must hold exactly one of ``Accept`` (True) and ``Reject`` (False)."""
    verdict = text.split(VERDICT_OPEN)[-1].split(VERDICT_CLOSE)[0].strip()
    accept, reject = "Accept" in verdict, "Reject" in verdict
    if accept == reject:
        raise AgentError("bad_verdict", "the verdict must say exactly one of Accept or Reject")
    return accept
