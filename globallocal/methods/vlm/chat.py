"""The messages the method sends (the OpenAI chat format), built by small helpers.

A message is ``{"role": "system" | "user" | "assistant", "content": str | list[part]}``;
a part is ``{"type": "text", "text": str}`` or ``{"type": "image", "image": PIL.Image.Image}``.
The backends and their interface (:class:`~globallocal.models.vlm.ChatBackend`,
:class:`~globallocal.models.vlm.ChatReply`) live in ``globallocal.models.vlm``.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from ...models.vlm.backend import ChatBackend, ChatReply
from ...models.vlm.messages import Message

__all__ = [
    "ChatBackend",
    "ChatReply",
    "Conversation",
    "Message",
    "Part",
    "assistant",
    "image_part",
    "is_transport_error",
    "system",
    "text_part",
    "user",
]

Part = dict[str, Any]
Conversation = list[Message]


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

