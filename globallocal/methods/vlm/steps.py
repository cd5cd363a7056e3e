"""One driver for every preset: a query's work is a generator of requests, answered in batches.

A preset's logic is written as a generator (:data:`Steps`) that yields the
requests it needs next (a list: the agent's mask checks are several
conversations at once) and receives their replies in the same order; it
returns the query's :class:`~.answer.VlmAnswer`. :func:`run_steps` drives the
generators of several queries (the phrases of a photo) together: each round,
every pending conversation goes to the backend in one ``chat_many`` call, so a
backend that batches pays one pass for all of them. A transport failure
(:func:`~.chat.is_transport_error`) is thrown into the generators whose
requests it hit, which record it as their outcome; any other exception is a
bug or a fault the user must see, and propagates.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from .answer import VlmAnswer
from .chat import ChatBackend, ChatReply, Conversation, is_transport_error

__all__ = ["ChatRequest", "LabelReply", "LabelRequest", "Request", "Steps", "run_steps"]


@dataclass(frozen=True)
class ChatRequest:
    """Generate a reply to ``messages`` (answered by a :class:`~.chat.ChatReply`)."""

    messages: Conversation


@dataclass(frozen=True)
class LabelRequest:
    """The log-probability of each label as the reply (answered by a :class:`LabelReply`)."""

    messages: Conversation
    labels: tuple[str, ...]


@dataclass(frozen=True)
class LabelReply:
    logprobs: dict[str, float] | None
    """None: the backend cannot give them (the preset then asks for a reply)."""
    seconds: float
    prompt_tokens: int = 0
    prefilled_tokens: int = 0
    generated_tokens: int = 0
    """What the backend reports computing them cost (a :class:`~globallocal.models.vlm.LabelLogprobs` says)."""


Request = ChatRequest | LabelRequest
Steps = Generator[list[Request], list[Any], VlmAnswer]


def _chat(backend: ChatBackend, conversations: list[Conversation], max_tokens: int) -> list[ChatReply]:
    if len(conversations) == 1:
        return [backend.chat(conversations[0], max_tokens)]
    replies = list(backend.chat_many(conversations, max_tokens))
    if len(replies) != len(conversations):
        raise RuntimeError(f"the backend answered {len(replies)} of {len(conversations)} conversations")
    return replies


def run_steps(steps: Sequence[Steps], backend: ChatBackend, max_tokens: int) -> list[VlmAnswer]:
    """Drive every generator to its answer, the chat requests of each round in one backend call."""
    answers: list[VlmAnswer | None] = [None] * len(steps)
    pending: dict[int, list[Request]] = {}
    failed_ever: dict[int, BaseException] = {}

    def advance(index: int, step: Callable[[], list[Request]]) -> None:
        try:
            pending[index] = step()
        except StopIteration as stop:
            answers[index] = stop.value

    for index, generator in enumerate(steps):
        advance(index, generator.__next__)
    while pending:
        current, pending = pending, {}
        replies: dict[int, list[Any]] = {index: [None] * len(requests) for index, requests in current.items()}
        failed: dict[int, BaseException] = {}
        chats = [(index, position, request) for index, requests in current.items()
                 for position, request in enumerate(requests) if isinstance(request, ChatRequest)]
        if chats:
            try:
                for (index, position, _), reply in zip(chats, _chat(backend, [r.messages for *_, r in chats],
                                                                     max_tokens)):
                    replies[index][position] = reply
            except Exception as error:
                if not is_transport_error(error):
                    raise
                # One conversation's fault is not the others': ask each alone, so that only the queries the
                # endpoint did not answer fail (and a resume asks those alone again).
                for index, position, request in chats if len(chats) > 1 else ():
                    if index in failed:
                        continue
                    try:
                        replies[index][position] = backend.chat(request.messages, max_tokens)
                    except Exception as alone:
                        if not is_transport_error(alone):
                            raise
                        failed[index] = alone
                if len(chats) == 1:
                    failed[chats[0][0]] = error
        for index, requests in current.items():
            for position, request in enumerate(requests):
                if index in failed or not isinstance(request, LabelRequest):
                    continue
                started = perf_counter()
                try:
                    logprobs = backend.label_logprobs(request.messages, request.labels)
                except Exception as error:
                    if not is_transport_error(error):
                        raise
                    failed[index] = error
                    continue
                tokens = {name: getattr(logprobs, name, 0) for name in ("prompt_tokens", "prefilled_tokens",
                                                                       "generated_tokens")}
                replies[index][position] = LabelReply(logprobs, perf_counter() - started, **tokens)
        failed_ever.update(failed)
        for index in current:
            generator = steps[index]
            if index in failed:
                advance(index, lambda g=generator, e=failed[index]: g.throw(e))
            else:
                advance(index, lambda g=generator, r=replies[index]: g.send(r))
    for index, error in failed_ever.items():  # the endpoint's own words, for the one-line error of a command
        if answers[index] is not None and answers[index].reason == "transport":
            answers[index].details.setdefault("error", str(error))
    return [answer for answer in answers if answer is not None]
