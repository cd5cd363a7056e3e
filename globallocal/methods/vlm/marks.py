"""The ``marks`` preset: the best K candidates drawn with numbers, one call picks one.

The shortlist is the top ``marks_k`` candidates by a score vector: the
proposal source's scores, or another method's (a CLIP selector narrowing, the
VLM deciding). They are drawn numbered 1..K, best first, on the photo; the
request shows the photo and that picture and asks for the number. Where the
backend gives log-probabilities, the choice is the label with the highest
(one forward pass, nothing to parse); otherwise the first whole number of the
reply's answer, which must be one of the labels (else ``vlm_error``, answered
by the ``fallback`` setting: the shortlist's first, or none). One candidate is
chosen without asking; none gives the empty answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from ...proposals import Proposals
from .answer import Transcript, Usage, VlmAnswer, fallback_chosen, record_reply
from .candidates import by_score
from .chat import ChatBackend, Conversation, image_part, is_transport_error, text_part, user
from .prompts import Prompts, builtin_prompts
from .render import marks_image
from .replies import answer_text, integers
from .settings import VlmSettings
from .steps import ChatRequest, LabelRequest, Steps, run_steps

__all__ = ["best_label", "marks_request", "marks_steps", "read_choice", "run_marks", "shortlist"]


def shortlist(scores: torch.Tensor, k: int) -> list[int]:
    """The ``k`` best candidates by ``scores``, best first (equal scores keep their order)."""
    return by_score(scores)[:k]


def marks_request(photo: Image.Image, marked: Image.Image, query: str, count: int, prompts: Prompts) -> Conversation:
    """The photo, the picture of numbered candidates, and the question."""
    labels = ", ".join(str(number) for number in range(1, count + 1))
    text = prompts.fill("marks_request", count=count, labels=labels, query=query)
    return [user(image_part(photo), image_part(marked), text_part(text))]


def read_choice(text: str, count: int) -> int | None:
    """The number (1..count) a reply answers: the first whole number of its answer, None when that is not a
    label or there is none."""
    found = integers(answer_text(text))
    return found[0] if found and 1 <= found[0] <= count else None


def _finite(value: Any) -> float | None:
    """A log-probability as JSON keeps it: a finite float, else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def best_label(logprobs: dict[str, float], labels: Sequence[str]) -> str | None:
    """The label with the highest finite log-probability (the first of equals), None when none has one."""
    finite = [(_finite(logprobs.get(label)), -position, label) for position, label in enumerate(labels)]
    finite = [entry for entry in finite if entry[0] is not None]
    return max(finite)[2] if finite else None


def marks_steps(photo: Image.Image, query: str, candidates: Proposals, settings: VlmSettings, prompts: Prompts,
                scores: torch.Tensor | None = None) -> Steps:
    """One phrase's call over its numbered shortlist, as a generator of requests (:mod:`.steps`). ``scores``
    rank the shortlist (default: the source's)."""
    scores = candidates.scores if scores is None else scores
    usage, transcript = Usage(), Transcript()
    transcript.name_image(photo, "photo")
    order = shortlist(scores, settings.marks_k)
    details: dict[str, Any] = {"shortlist": order}

    def answer(chosen: Sequence[int], outcome: str, reason: str | None = None) -> VlmAnswer:
        return VlmAnswer.of(candidates, chosen, outcome, reason, usage=usage, transcript=transcript.to_json(),
                            details=details)

    if not order:
        return answer((), "no_mask", "no_candidates")
    if len(order) == 1:
        return answer(order, "select", "single_candidate")
    marked = transcript.name_image(marks_image(photo, candidates.masks[order]), f"marks 1-{len(order)}")
    messages = marks_request(photo, marked, query, len(order), prompts)
    labels = tuple(str(number) for number in range(1, len(order) + 1))
    try:
        if settings.logprobs:
            (scored,) = yield [LabelRequest(messages, labels)]
            label = None if scored.logprobs is None else best_label(scored.logprobs, labels)
            if label is not None:
                cost = {"prompt_tokens": scored.prompt_tokens, "prefilled_tokens": scored.prefilled_tokens,
                        "generated_tokens": scored.generated_tokens, "seconds": scored.seconds}
                usage.add(**cost)
                details["label_logprobs"] = {name: _finite(scored.logprobs.get(name)) for name in labels}
                transcript.record("marks", messages, labels=details["label_logprobs"], **cost)
                return answer((order[int(label) - 1],), "select")
        (reply,) = yield [ChatRequest(messages)]
    except Exception as error:
        if not is_transport_error(error):
            raise
        return answer(fallback_chosen(candidates, settings.fallback, scores), "vlm_error", "transport")
    number = read_choice(record_reply(usage, transcript, "marks", messages, reply), len(order))
    if number is None:
        return answer(fallback_chosen(candidates, settings.fallback, scores), "vlm_error", "unreadable_choice")
    return answer((order[number - 1],), "select")


def run_marks(backend: ChatBackend, photo: Image.Image, queries: Sequence[str], candidates: Sequence[Proposals],
              settings: VlmSettings, prompts: Prompts | None = None,
              scores: Sequence[torch.Tensor | None] | None = None) -> list[VlmAnswer]:
    """Every phrase of a photo (each with its candidates and shortlist scores), the calls sent together."""
    prompts = prompts or builtin_prompts("marks")
    scores = [None] * len(queries) if scores is None else scores
    generators = [marks_steps(photo, query, among, settings, prompts, ranked)
                  for query, among, ranked in zip(queries, candidates, scores, strict=True)]
    return run_steps(generators, backend, settings.max_tokens)
