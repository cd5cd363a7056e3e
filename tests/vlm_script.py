"""An in-memory chat backend that answers from a script, and SAM 3 stand-ins built from masks: for the VLM
method's logic tests (what the tool does with given replies; the models themselves run in other tests)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from globallocal.proposals import Proposals


class TransportError(Exception):
    """What a backend raises when its endpoint does not answer."""

    transport = True


@dataclass
class Reply:
    text: str
    prompt_tokens: int
    prefilled_tokens: int
    generated_tokens: int
    seconds: float


def snapshot(messages):
    """The messages as they were when sent: lists and dicts copied (the loop edits its history later), images
    kept as the same objects."""
    copied = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = [dict(part) for part in content]
        copied.append({**message, "content": content})
    return copied


def images_of(message) -> list[Image.Image]:
    content = message["content"]
    return [part["image"] for part in content if part["type"] == "image"] if isinstance(content, list) else []


def texts_of(message) -> list[str]:
    content = message["content"]
    if isinstance(content, str):
        return [content]
    return [part["text"] for part in content if part["type"] == "text"]


def kinds(message) -> list[str]:
    """The message's parts by type, e.g. ["image", "text"] ("str" for a plain string content)."""
    content = message["content"]
    return ["str"] if isinstance(content, str) else [part["type"] for part in content]


class ScriptedBackend:
    """Answers every conversation with the next scripted reply, in the order they are sent (a check's
    conversations in candidate order); an exception in the script is raised instead. Records what it received.

    A reply costs: prompt tokens 100 + the number of messages, prefilled 10, generated its length, 0.5 s.
    """

    family = "qwen3-vl"
    identity = {"backend": "scripted"}

    def __init__(self, replies: Sequence[str | BaseException], logprobs: Sequence[dict | None | BaseException] = (),
                 seen: tuple[int, int] = (0, 0), family: str = "qwen3-vl") -> None:
        self.replies = list(replies)
        self.logprobs = list(logprobs)
        self.seen = seen
        self.family = family
        self.received: list[list[dict]] = []
        self.batches: list[int] = []
        self.label_calls: list[tuple[list[dict], tuple[str, ...]]] = []
        self.max_tokens: list[int] = []

    def _next(self, messages, max_tokens) -> Reply:
        self.received.append(snapshot(messages))
        self.max_tokens.append(max_tokens)
        if not self.replies:
            raise AssertionError("the script ran out of replies")
        reply = self.replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return Reply(reply, 100 + len(messages), 10, len(reply), 0.5)

    def chat(self, messages, max_tokens):
        self.batches.append(1)
        return self._next(messages, max_tokens)

    def chat_many(self, conversations, max_tokens):
        self.batches.append(len(conversations))
        replies = []
        for messages in conversations:
            replies.append(self._next(messages, max_tokens))
        return replies

    def label_logprobs(self, messages, labels):
        self.label_calls.append((snapshot(messages), tuple(labels)))
        result = self.logprobs.pop(0) if self.logprobs else None
        if isinstance(result, BaseException):
            raise result
        return result

    def seen_size(self, image):
        return self.seen


def rectangle(height: int, width: int, x0: int, y0: int, x1: int, y1: int) -> torch.Tensor:
    mask = torch.zeros((height, width), dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def proposals(masks: Sequence[torch.Tensor], scores: Sequence[float]) -> Proposals:
    return Proposals.from_masks(torch.stack(list(masks)), torch.tensor(scores, dtype=torch.float32))


class FakeSam3:
    """segment_phrase from a table of prompt -> instances (an unknown prompt finds none); records the prompts."""

    def __init__(self, photo: Image.Image, table: dict[str, Proposals]) -> None:
        self.photo = photo
        self.table = table
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> Proposals:
        self.prompts.append(prompt)
        if prompt in self.table:
            return self.table[prompt]
        return Proposals.from_masks(torch.zeros((0, self.photo.height, self.photo.width), dtype=torch.bool))


def tool(name: str, think: str = "", **parameters) -> str:
    """A reply calling one tool, as the models write it."""
    prefix = f"<think>{think}</think>\n" if think else ""
    return f'{prefix}<tool>{json.dumps({"name": name, "parameters": parameters})}</tool>'
