"""What one query's VLM work produces: the answer set, its outcome, what it cost and the transcript.

An answer is a SET of candidates (their union is the mask), possibly empty:
"no target" is a valid answer. Every query records its outcome:

- ``select``: the VLM chose candidates (the agent's ``select_masks_and_return``, the box or mark it pointed at);
- ``no_mask``: the VLM reported no target (``report_no_mask``), or there was nothing to choose from;
- ``fallback``: the ``box`` preset answered with the mask of the VLM's box from a promptable segmenter;
- ``vlm_error``: the reply broke the format (where the authors raise) or the endpoint did not answer
  (reason ``transport``: a resume asks again); the answer is then the preset's fallback (often empty).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from ...proposals import Proposals
from .candidates import by_score
from .chat import Message

__all__ = [
    "OUTCOMES",
    "REASONS",
    "Transcript",
    "Usage",
    "VlmAnswer",
    "empty_candidates",
    "fallback_chosen",
    "record_reply",
]

OUTCOMES = ("select", "no_mask", "fallback", "vlm_error")

REASONS = {
    # vlm_error
    "transport": "the endpoint did not answer",
    "bad_json": "the tool call is not valid JSON",
    "bad_call": "the tool call is not an object with a name",
    "tool_not_allowed": "the tool is not allowed at this point",
    "bad_parameters": "the tool's parameters are not the ones it takes",
    "unknown_tool": "the tool name is not one of the four tools",
    "bad_verdict": "a mask check did not give exactly one of Accept or Reject",
    "too_many_generations": "the query used up its generations",
    "unreadable_box": "no box could be read from the reply",
    "unreadable_choice": "no valid mark number could be read from the reply",
    # no_mask / select without asking
    "no_candidates": "there were no candidates to choose from",
    "single_candidate": "one candidate: chosen without asking",
}
"""Every reason an answer records beside its outcome, with what it means."""


@dataclass
class Usage:
    """What a query's VLM calls cost, summed."""

    calls: int = 0
    prompt_tokens: int = 0
    prefilled_tokens: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0

    def add(self, prompt_tokens: int = 0, prefilled_tokens: int = 0, generated_tokens: int = 0,
            seconds: float = 0.0) -> None:
        self.calls += 1
        self.prompt_tokens += prompt_tokens
        self.prefilled_tokens += prefilled_tokens
        self.generated_tokens += generated_tokens
        self.seconds += seconds

    def to_json(self) -> dict[str, Any]:
        return {"vlm_calls": self.calls, "prompt_tokens": self.prompt_tokens,
                "prefilled_tokens": self.prefilled_tokens, "generated_tokens": self.generated_tokens,
                "vlm_seconds": self.seconds}


class Transcript:
    """Every call of a query: the messages sent, with images as placeholders and system prompts by name, and
    the raw reply. Messages are converted when recorded, so later edits of the history do not reach it."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self._images: dict[int, str] = {}
        self._prompts: dict[str, str] = {}

    def name_image(self, image: Image.Image, name: str) -> Image.Image:
        """Record ``image`` under ``name`` (its placeholder); returns the image."""
        self._images[id(image)] = f"{name} ({image.width}x{image.height})"
        return image

    def name_prompt(self, text: str, name: str) -> None:
        """A system prompt is recorded by its name (the prompts' digest identifies the texts)."""
        self._prompts[text] = name

    def _part(self, part: Any) -> Any:
        if isinstance(part, dict) and part.get("type") == "image":
            return {"type": "image", "image": self._images.get(id(part.get("image")), "image")}
        return dict(part) if isinstance(part, dict) else part

    def _message(self, message: Message) -> dict[str, Any]:
        content = message.get("content")
        if message.get("role") == "system" and isinstance(content, str) and content in self._prompts:
            return {"role": "system", "prompt": self._prompts[content]}
        if isinstance(content, list):
            content = [self._part(part) for part in content]
        return {"role": message.get("role"), "content": content}

    def record(self, conversation: str, messages: Sequence[Message], reply: str | None = None,
               **fields: Any) -> None:
        """One call: ``conversation`` names it ("agent", "check", "box", "marks"); ``fields`` add what it cost
        or returned (tokens, label log-probabilities, the candidate checked)."""
        entry = {"conversation": conversation, **fields, "messages": [self._message(m) for m in messages]}
        if reply is not None:
            entry["reply"] = reply
        self.calls.append(entry)

    def to_json(self) -> list[dict[str, Any]]:
        return list(self.calls)


def record_reply(usage: Usage, transcript: Transcript, conversation: str, messages: Sequence[Message], reply: Any,
                 **fields: Any) -> str:
    """Count a backend's :class:`~.chat.ChatReply` and record its call; returns its text."""
    cost = {"prompt_tokens": reply.prompt_tokens, "prefilled_tokens": reply.prefilled_tokens,
            "generated_tokens": reply.generated_tokens, "seconds": reply.seconds}
    usage.add(**cost)
    transcript.record(conversation, messages, reply.text, **fields, **cost)
    return reply.text


def fallback_chosen(candidates: Proposals, fallback: str, scores: torch.Tensor | None = None) -> tuple[int, ...]:
    """What a one-call preset answers when the reply cannot be read: the best candidate by ``scores`` (default:
    the source's) for "best", nothing for "none"."""
    if fallback == "best" and len(candidates):
        return (by_score(candidates.scores if scores is None else scores)[0],)
    return ()


def empty_candidates(image: Image.Image) -> Proposals:
    """No candidates, at the photo's size."""
    return Proposals.from_masks(torch.zeros((0, image.height, image.width), dtype=torch.bool))


@dataclass
class VlmAnswer:
    """One query's answer: ``chosen`` indexes ``candidates`` (the last candidates the VLM saw)."""

    candidates: Proposals
    chosen: tuple[int, ...]
    mask: torch.Tensor
    """The answer mask: the union of the chosen candidates (or the fallback's mask), bool (H, W)."""
    outcome: str
    reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    transcript: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    """What the preset adds: the SAM 3 prompts used (agent), the VLM's box and its IoU (box), the shortlist and
    label log-probabilities (marks)."""

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}")
        if self.reason is not None and self.reason not in REASONS:
            raise ValueError(f"unknown reason {self.reason!r}")

    @classmethod
    def of(cls, candidates: Proposals, chosen: Sequence[int], outcome: str, reason: str | None = None,
           **fields: Any) -> VlmAnswer:
        """An answer whose mask is the union of the ``chosen`` candidates (empty for none)."""
        chosen = tuple(int(i) for i in chosen)
        if chosen:
            mask = candidates.masks[list(chosen)].any(dim=0).cpu()
        else:
            mask = torch.zeros(candidates.image_size, dtype=torch.bool)
        return cls(candidates, chosen, mask, outcome, reason, **fields)

    def to_json(self) -> dict[str, Any]:
        """The outcome, the chosen candidates, the cost and the details, JSON-ready (the transcript apart)."""
        return {"outcome": self.outcome, "reason": self.reason, "chosen": list(self.chosen),
                **self.usage.to_json(), **self.details}
