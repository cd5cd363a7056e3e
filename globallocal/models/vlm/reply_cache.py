"""A disk cache of VLM replies, and a backend that answers from it first.

Layout under the cache root (``--cache DIR``, beside the feature cache)::

    vlm-<identity digest>/identity.json         the backend's identity the entries belong to
    vlm-<identity digest>/<ab>/<request>.json   one reply

The request digest names the kind of call (a reply, or label
log-probabilities and their labels), the conversation (words and each image's
pixel digest, :func:`~.messages.conversation_digest`) and ``max_tokens``;
the identity names the model's weights or endpoint and everything else the
reply depends on. A reply is the same whether it was asked alone (``chat``) or
with others (``chat_many``), so both share entries.

Entries are written atomically and read as data (bounded, shape-checked, their
stored request digest compared with their name): a damaged one is asked again,
with a one-line warning. Only replies are stored; a fault (an endpoint that
did not answer) raises and leaves nothing behind, so a rerun asks again.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from ...data.bounded import NUMBER, check_shape, read_json
from ...data.images import atomic_write, save_text
from ...errors import InputError, first_line
from .backend import IN_MEMORY, ChatBackend, ChatReply, LabelLogprobs, check_labels, check_max_tokens
from .messages import Message, conversation_digest

__all__ = ["CachedBackend", "ReplyStore", "request_digest"]

# Bumped when an entry's layout or meaning changes; part of every folder's key.
FORMAT = 1
IDENTITY_FILE = "identity.json"
# A reply of 4096 tokens is a few tens of kB.
MAX_ENTRY_BYTES = 4 << 20
_REPLY = {"text": str, "prompt_tokens": int, "finish_reason": str}
_SHAPES = {
    "chat": {"format": int, "request": str, "reply": _REPLY},
    "labels": {"format": int, "request": str, "logprobs": (dict, type(None)), "prompt_tokens": int},
}


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def request_digest(call: str, messages: Sequence[Message], **settings: Any) -> str:
    """The key of one request: the kind of call, the conversation's digest and the call's settings."""
    return _digest({"call": call, "messages": conversation_digest(messages), **settings})


class ReplyStore:
    """Replies on disk, one folder per backend identity (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self._folders: dict[str, Path] = {}

    def folder(self, identity: dict[str, Any]) -> Path:
        """The identity's folder, with its identity.json written once."""
        key = _digest({"format": FORMAT, **identity})
        if key not in self._folders:
            folder = self.root / f"vlm-{key[:32]}"
            if not (folder / IDENTITY_FILE).is_file():
                save_text(json.dumps(identity, sort_keys=True, indent=1) + "\n", folder / IDENTITY_FILE)
            self._folders[key] = folder
        return self._folders[key]

    def path(self, identity: dict[str, Any], request: str) -> Path:
        return self.folder(identity) / request[:2] / f"{request}.json"

    def get(self, identity: dict[str, Any], request: str, call: str) -> dict[str, Any] | None:
        """The stored entry, or None when absent; a damaged entry is None with a one-line warning."""
        path = self.path(identity, request)
        if not path.exists():
            return None
        try:
            entry = read_json(path, what="VLM reply cache entry", max_bytes=MAX_ENTRY_BYTES)
            check_shape(entry, _SHAPES[call], f"VLM reply cache entry {path}")
            if entry["format"] != FORMAT or entry["request"] != request:
                raise InputError(f"VLM reply cache entry {path} belongs to another request")
            if call == "labels" and entry["logprobs"] is not None:
                check_shape(entry["logprobs"], {"*": (*NUMBER, type(None))}, f"VLM reply cache entry {path}")
        except (OSError, InputError) as error:
            warnings.warn(f"{first_line(error)}; asking the VLM again", stacklevel=3)
            return None
        return entry

    def put(self, identity: dict[str, Any], request: str, entry: dict[str, Any]) -> None:
        """Write an entry atomically (no fsync: a lost entry is only asked again)."""
        text = json.dumps({"format": FORMAT, "request": request, **entry}, sort_keys=True, ensure_ascii=False)
        atomic_write(self.path(identity, request), lambda handle: handle.write(text.encode("utf-8")), sync=False)


class CachedBackend:
    """A backend that answers from a :class:`ReplyStore` first and stores what it had to ask.

    A reply from the store reports no prefilled or generated tokens and
    ``cached`` True; it is exactly the stored reply.
    """

    def __init__(self, backend: ChatBackend, store: ReplyStore) -> None:
        if backend.identity.get("weights") == IN_MEMORY:
            raise InputError("the replies of a VLM built from a model object cannot be cached: nothing identifies "
                             "its weights; load it from a hub id or a folder")
        self.backend = backend
        self.store = store

    @property
    def identity(self) -> dict[str, Any]:
        return self.backend.identity

    @property
    def family(self) -> str:
        return self.backend.family

    def seen_size(self, image: Image.Image) -> tuple[int, int]:
        return self.backend.seen_size(image)

    @staticmethod
    def _hit(entry: dict[str, Any], started: float) -> ChatReply:
        reply = entry["reply"]
        return ChatReply(reply["text"], reply["prompt_tokens"], 0, 0, time.perf_counter() - started,
                         reply["finish_reason"], cached=True)

    def _store(self, identity: dict[str, Any], request: str, reply: ChatReply) -> None:
        self.store.put(identity, request, {"reply": {"text": reply.text, "prompt_tokens": reply.prompt_tokens,
                                                     "finish_reason": reply.finish_reason}})

    def chat(self, messages: Sequence[Message], max_tokens: int) -> ChatReply:
        return self.chat_many([messages], max_tokens)[0]

    def chat_many(self, conversations: Sequence[Sequence[Message]], max_tokens: int) -> list[ChatReply]:
        """Stored replies where there are; the others asked in one call of the backend, then stored."""
        check_max_tokens(max_tokens)
        started = time.perf_counter()
        identity = self.identity
        requests = [request_digest("chat", messages, max_tokens=max_tokens) for messages in conversations]
        replies: list[ChatReply | None] = []
        for request in requests:
            entry = self.store.get(identity, request, "chat")
            replies.append(None if entry is None else self._hit(entry, started))
        missing = [index for index, reply in enumerate(replies) if reply is None]
        if missing:
            asked = self.backend.chat_many([conversations[index] for index in missing], max_tokens)
            for index, reply in zip(missing, asked):
                self._store(identity, requests[index], reply)
                replies[index] = reply
        return replies  # type: ignore[return-value]

    def label_logprobs(self, messages: Sequence[Message], labels: Sequence[str]) -> LabelLogprobs | None:
        check_labels(labels)
        started = time.perf_counter()
        identity = self.identity
        request = request_digest("labels", messages, labels=list(labels))
        entry = self.store.get(identity, request, "labels")
        stored = entry["logprobs"] if entry is not None else None
        if stored is not None and set(stored) != set(labels):
            warnings.warn(f"VLM reply cache entry {self.store.path(identity, request)} holds other labels; asking "
                          "the VLM again", stacklevel=2)
            entry = None
        if entry is not None:
            if stored is None:
                return None
            # -inf (a label never among the endpoint's alternatives) is stored as null: JSON has no infinity.
            values = {label: -math.inf if stored.get(label) is None else float(stored[label]) for label in labels}
            return LabelLogprobs(values, prompt_tokens=entry["prompt_tokens"],
                                 seconds=time.perf_counter() - started, cached=True)
        result = self.backend.label_logprobs(messages, labels)
        stored = None if result is None else {label: value if math.isfinite(value) else None
                                              for label, value in result.items()}
        self.store.put(identity, request, {"logprobs": stored,
                                           "prompt_tokens": result.prompt_tokens if result is not None else 0})
        return result
