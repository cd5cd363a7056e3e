"""Conversations in the OpenAI chat format, checked, recorded and digested.

A message is ``{"role": "system" | "user" | "assistant", "content": str |
list[part]}``; a part is ``{"type": "text", "text": str}`` or ``{"type":
"image", "image": PIL.Image.Image}``. Records hold the :func:`transcript`
form, where each image is a placeholder naming its size and pixel digest
(``<image 640x480 sha256:...>``); the same form, hashed, is the key of a
conversation (:func:`conversation_digest`), so two conversations with the
same words and the same pixels share a key whatever objects hold them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from PIL import Image

from ...data.images import image_digest
from ...errors import InputError

__all__ = [
    "ROLES",
    "Message",
    "check_messages",
    "conversation_digest",
    "image_placeholder",
    "message_images",
    "transcript",
]

Message = dict[str, Any]
ROLES = ("system", "user", "assistant")


def _parts(message: Message) -> list[dict[str, Any]]:
    content = message["content"]
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def check_messages(messages: Sequence[Message]) -> None:
    """Refuse, in one line naming the message and part, anything that is not a conversation of the format."""
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise InputError("a conversation must be a non-empty list of messages")
    for index, message in enumerate(messages):
        where = f"message {index}"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise InputError(f"{where} must be a dict with a role among {', '.join(ROLES)}")
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise InputError(f"{where} ({message['role']}) must have a string or a list of parts as its content")
        for number, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                continue
            if kind == "image" and isinstance(part.get("image"), Image.Image):
                continue
            raise InputError(f"{where} part {number} must be {{'type': 'text', 'text': str}} or "
                             "{'type': 'image', 'image': PIL.Image.Image}")


def message_images(messages: Sequence[Message]) -> list[Image.Image]:
    """The images of a conversation, in order."""
    return [part["image"] for message in messages for part in _parts(message) if part["type"] == "image"]


def image_placeholder(image: Image.Image) -> str:
    """``<image WxH sha256:HEX>``: an image in a record, by size and pixel digest."""
    return f"<image {image.width}x{image.height} sha256:{image_digest(image)}>"


def transcript(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """The messages as plain JSON: images replaced by :func:`image_placeholder`, nothing else changed."""
    plain = []
    for message in messages:
        content = message["content"]
        if not isinstance(content, str):
            content = [
                {"type": "image", "image": image_placeholder(part["image"])} if part["type"] == "image"
                else {"type": "text", "text": part["text"]}
                for part in content
            ]
        plain.append({"role": message["role"], "content": content})
    return plain


def conversation_digest(messages: Sequence[Message]) -> str:
    """SHA-256 of the :func:`transcript` (words, roles, and each image's pixels by digest)."""
    text = json.dumps(transcript(messages), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
