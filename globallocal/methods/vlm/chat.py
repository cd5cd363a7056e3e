"""What the method needs from a chat backend, and the messages it sends (the OpenAI chat format).

A message is ``{"role": "system" | "user" | "assistant", "content": str | list[part]}``;
a part is ``{"type": "text", "text": str}`` or ``{"type": "image", "image": PIL.Image.Image}``.
The backends themselves live in ``globallocal.models.vlm``; this protocol is
what the method's logic is written and tested against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from PIL import Image

__all__ = [
    "ChatBackend",
    "ChatReply",
    "Conversation",
    "Message",
    "Part",
    "assistant",
    "count_images",
    "image_part",
    "is_transport_error",
    "system",
    "text_part",
    "user",
]

Part = dict[str, Any]
Message = dict[str, Any]
Conversation = list[Message]


class ChatReply(Protocol):
    """One generation: its text and what it cost."""

    text: str
    prompt_tokens: int
    prefilled_tokens: int
    """The prompt tokens actually computed (the rest came from a cached prefix)."""
    generated_tokens: int
    seconds: float


class ChatBackend(Protocol):
    """A VLM that answers conversations (greedy decoding)."""

    family: str
    """"qwen2.5-vl", "qwen3-vl" or "other": decides the box convention of the ``box`` preset."""
    identity: dict[str, Any]

    def chat(self, messages: Conversation, max_tokens: int) -> ChatReply: ...

    def chat_many(self, conversations: Sequence[Conversation], max_tokens: int) -> list[ChatReply]: ...

    def label_logprobs(self, messages: Conversation, labels: Sequence[str]) -> dict[str, float] | None:
        """The log-probability of each label as the reply, or None where the backend cannot tell."""

    def seen_size(self, image: Image.Image) -> tuple[int, int]:
        """(width, height) of ``image`` as the model sees it (after its processor's resize)."""


def is_transport_error(error: BaseException) -> bool:
    """Whether a backend's exception says the endpoint did not answer (a later resume asks again)."""
    return getattr(error, "transport", False) is True


def text_part(text: str) -> Part:
    return {"type": "text", "text": text}


def image_part(image: Image.Image) -> Part:
    return {"type": "image", "image": image}


def system(text: str) -> Message:
    return {"role": "system", "content": text}


def user(*parts: Part) -> Message:
    return {"role": "user", "content": list(parts)}


def assistant(text: str) -> Message:
    """An assistant turn as the authors keep it: one text part."""
    return {"role": "assistant", "content": [text_part(text)]}


def count_images(messages: Sequence[Message]) -> int:
    """How many image parts the messages hold."""
    return sum(
        1
        for message in messages
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if isinstance(part, dict) and part.get("type") == "image"
    )
