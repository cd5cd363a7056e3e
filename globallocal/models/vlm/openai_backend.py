"""The endpoint backend: any OpenAI-compatible chat-completions server (vLLM, SGLang, llama.cpp's server, a
hosted API) through the official ``openai`` client.

Requests are the authors' shape: the messages with each image as a base64
PNG data URL, ``max_tokens``, ``n`` 1, temperature 0. The photo is sent
already resized to the size the server's processor keeps (for the Qwen
families, their patch grid under ``max_pixels``; otherwise just capped), so
``seen_size`` is exactly the size the model saw. The API key is read from an
environment variable and goes nowhere else: not in ``identity``, not in an
error message.

Faults are one :class:`~globallocal.errors.VlmEndpointError` line naming
the URL and the status; 408/409/429/5xx and lost connections are retried by
the client itself (its exponential backoff, ``retries`` times). The body is
read with the project's bounded JSON reader, not trusted as a completion.
"""

from __future__ import annotations

import base64
import io
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

from PIL import Image

from ...data.bounded import JsonError, check_shape, parse_json
from ...data.images import image_digest
from ...errors import InputError, VlmEndpointError, first_line
from .backend import (
    DEFAULT_API_KEY_ENV,
    DEFAULT_MAX_PIXELS,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    ChatReply,
    LabelLogprobs,
    check_labels,
    check_max_tokens,
    family_of_name,
)
from .messages import Message, check_messages

__all__ = ["OpenAIBackend", "label_scores"]

# What each Qwen family's processor does to a photo: sides in multiples of this grid, at least this many pixels.
FAMILY_GRIDS = {"qwen2.5-vl": (28, 56 * 56), "qwen3-vl": (32, 256 * 256)}
# The placeholder key of an endpoint that needs none (vLLM without --api-key); the client refuses an empty one.
NO_KEY = "EMPTY"
# The most alternatives an OpenAI-compatible endpoint gives per token (OpenAI's and vLLM's default maximum).
TOP_LOGPROBS = 20
# The largest body read (a 4096-token reply with 20 alternatives per token is a few MB).
MAX_BODY_BYTES = 64 << 20
# Requests of one chat_many in flight at once (the server batches them; vLLM reuses the photo's prefix).
CONCURRENCY = 8
_REPLY_SHAPE = {"choices": [{"message": {}, "finish_reason?": (str, type(None))}], "usage?": (dict, type(None))}


def label_scores(steps: Sequence[tuple[str, float, dict[str, float]]], labels: Sequence[str]) -> dict[str, float]:
    """Each label's log-probability along a reply's tokens and their top alternatives.

    ``steps``: (chosen token, its log-probability, {alternative: log-probability}) per generated token. A label
    follows the reply while the reply's text is a prefix of it, and ends at the alternative that completes it;
    one never reached among the alternatives gets -inf (less likely than every alternative shown). The labels
    must be prefix-free, so that none needs the end-of-turn probability, which endpoints do not show.
    """
    scores = {}
    for label in labels:
        total, consumed, score = 0.0, "", -math.inf
        for token, logprob, alternatives in steps:
            rest = label[len(consumed):]
            if rest in alternatives or rest == token:
                score = total + alternatives.get(rest, logprob)
                break
            if not token or not rest.startswith(token):
                break
            total, consumed = total + logprob, consumed + token
        scores[label] = score
    return scores


class OpenAIBackend:
    """A VLM behind an OpenAI-compatible chat-completions endpoint (see the module docstring)."""

    def __init__(self, url: str, model: str, *, api_key_env: str = DEFAULT_API_KEY_ENV,
                 max_pixels: int = DEFAULT_MAX_PIXELS, timeout: float = DEFAULT_TIMEOUT,
                 retries: int = DEFAULT_RETRIES, family: str | None = None) -> None:
        from openai import OpenAI

        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise InputError(f"the VLM endpoint URL {url!r} is not an http(s) URL; give e.g. http://127.0.0.1:8000/v1")
        if parsed.username or parsed.password:  # the URL is recorded and named in messages: no secret in it
            raise InputError(f"the VLM endpoint URL holds credentials; give the key in ${api_key_env} instead "
                             f"(vlm_api_key_env=NAME) and the URL without them")
        if not (isinstance(retries, int) and 0 <= retries <= 10):
            raise InputError(f"VLM endpoint retries must be an integer from 0 to 10, got {retries!r}")
        if not (isinstance(timeout, int | float) and 0 < timeout <= 86400):
            raise InputError(f"the VLM endpoint timeout must be from 0 to 86400 seconds, got {timeout!r}")
        self.url = url.rstrip("/")
        self.model = model
        self.family = family or family_of_name(model)
        self.max_pixels = max_pixels
        self.timeout = float(timeout)
        self.retries = retries
        self.api_key_env = api_key_env
        self._key = os.environ.get(api_key_env) or NO_KEY
        self._client = OpenAI(base_url=self.url, api_key=self._key, timeout=self.timeout, max_retries=retries)
        self._data_urls: dict[str, str] = {}
        self.identity = {"backend": "openai", "url": self.url, "model": model, "decoding": "temperature 0"}

    # ---- the photo -----------------------------------------------------------------------------------

    def seen_size(self, image: Image.Image) -> tuple[int, int]:
        """(width, height) of the image as sent: on the family's patch grid, at most ``max_pixels``."""
        width, height = image.size
        if self.family in FAMILY_GRIDS:
            from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

            factor, min_pixels = FAMILY_GRIDS[self.family]
            try:
                height, width = smart_resize(height, width, factor=factor, min_pixels=min_pixels,
                                             max_pixels=self.max_pixels)
            except ValueError as error:  # more elongated than the processor takes
                raise InputError(f"a {image.width}x{image.height} photo cannot be given to the VLM "
                                 f"({first_line(error)}); crop it") from None
            return width, height
        scale = min(1.0, math.sqrt(self.max_pixels / (width * height)))
        return max(1, int(width * scale)), max(1, int(height * scale))

    def _data_url(self, image: Image.Image) -> str:
        key = image_digest(image)
        if key not in self._data_urls:
            size = self.seen_size(image)
            sent = image if size == image.size else image.resize(size, Image.Resampling.BICUBIC)
            buffer = io.BytesIO()
            sent.convert("RGB").save(buffer, format="PNG")
            if len(self._data_urls) >= CONCURRENCY:  # the photos of the current query or two, no more
                self._data_urls.pop(next(iter(self._data_urls)))
            self._data_urls[key] = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        return self._data_urls[key]

    def wire_messages(self, messages: Sequence[Message]) -> list[dict[str, Any]]:
        """The messages as the endpoint takes them (images as data URLs)."""
        check_messages(messages)
        wired = []
        for message in messages:
            content = message["content"]
            if not isinstance(content, str):
                content = [{"type": "image_url", "image_url": {"url": self._data_url(part["image"])}}
                           if part["type"] == "image" else {"type": "text", "text": part["text"]}
                           for part in content]
            wired.append({"role": message["role"], "content": content})
        return wired

    # ---- requests ------------------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key != NO_KEY and len(self._key) >= 4 else text

    def _fault(self, error: Exception) -> VlmEndpointError:
        import openai

        if isinstance(error, openai.APITimeoutError):
            return VlmEndpointError(
                f"the VLM endpoint {self.url} did not answer within {self.timeout:g} s (timed out, after "
                f"{self.retries} retries); check the server, or raise the timeout", transport=True)
        if isinstance(error, openai.APIStatusError):
            status = error.status_code
            transport = status in (408, 409, 429) or status >= 500
            detail = self._scrub(first_line(error))[:200]
            hint = f"; is the key in ${self.api_key_env}?" if status in (401, 403) else ""
            return VlmEndpointError(f"the VLM endpoint {self.url} answered HTTP {status} ({detail}){hint}",
                                    transport=transport)
        cause = first_line(error.__cause__) if error.__cause__ is not None else first_line(error)
        return VlmEndpointError(f"cannot reach the VLM endpoint {self.url} (no answer: {self._scrub(cause)[:200]}); "
                                "check the URL and that the server is running", transport=True)

    def request(self, wired: list[dict[str, Any]], max_tokens: int, **extra: Any) -> tuple[dict[str, Any], float]:
        """The checked JSON body of one chat completion of :meth:`wire_messages`, and the seconds it took."""
        import openai

        check_max_tokens(max_tokens)
        started = time.perf_counter()
        try:
            raw = self._client.chat.completions.with_raw_response.create(
                model=self.model, messages=wired, max_tokens=max_tokens, n=1, temperature=0, **extra)
        except openai.APIError as error:
            raise self._fault(error) from None
        seconds = time.perf_counter() - started
        status = raw.http_response.status_code
        body = raw.http_response.content
        where = f"the VLM endpoint {self.url} answered HTTP {status} with"
        if len(body) > MAX_BODY_BYTES:
            raise VlmEndpointError(f"{where} a body of {len(body)} bytes, more than the {MAX_BODY_BYTES} read",
                                   transport=True)
        try:
            reply = parse_json(body, "its body")
        except JsonError:
            raise VlmEndpointError(f"{where} a body that is not JSON", transport=True) from None
        try:
            check_shape(reply, _REPLY_SHAPE, "the completion")
        except InputError as error:
            raise VlmEndpointError(f"{where} a body that is not a chat completion ({first_line(error)[:120]})",
                                   transport=True) from None
        if not reply["choices"]:
            raise VlmEndpointError(f"{where} no choices", transport=True)
        return reply, seconds

    @staticmethod
    def _tokens(reply: dict[str, Any]) -> tuple[int, int, int]:
        """(prompt, prefilled, generated) tokens from ``usage`` (0 where the endpoint gives none)."""
        usage = reply.get("usage") or {}
        count = lambda value: value if type(value) is int and value >= 0 else 0  # noqa: E731
        prompt = count(usage.get("prompt_tokens"))
        details = usage.get("prompt_tokens_details")
        cached = count(details.get("cached_tokens")) if isinstance(details, dict) else 0
        return prompt, max(0, prompt - cached), count(usage.get("completion_tokens"))

    def chat(self, messages: Sequence[Message], max_tokens: int) -> ChatReply:
        return self._chat(self.wire_messages(messages), max_tokens)

    def _chat(self, wired: list[dict[str, Any]], max_tokens: int) -> ChatReply:
        reply, seconds = self.request(wired, max_tokens)
        choice = reply["choices"][0]
        text = choice["message"].get("content")
        prompt, prefilled, generated = self._tokens(reply)
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        return ChatReply(text if isinstance(text, str) else "", prompt, prefilled, generated, seconds, finish)

    def chat_many(self, conversations: Sequence[Sequence[Message]], max_tokens: int) -> list[ChatReply]:
        """The replies, requested concurrently (the server batches them); the first fault is raised."""
        wired = [self.wire_messages(messages) for messages in conversations]  # each photo encoded once, here
        if len(wired) <= 1:
            return [self._chat(request, max_tokens) for request in wired]
        with ThreadPoolExecutor(max_workers=min(CONCURRENCY, len(wired))) as pool:
            futures = [pool.submit(self._chat, request, max_tokens) for request in wired]
            return [future.result() for future in futures]

    def label_logprobs(self, messages: Sequence[Message], labels: Sequence[str]) -> LabelLogprobs | None:
        """Each label's log-probability read from the reply's top alternatives (:func:`label_scores`); None when
        the endpoint gives no log-probabilities, or when a label is a prefix of another (telling "1" from "12"
        needs the end-of-turn probability)."""
        check_labels(labels)
        if any(a != b and b.startswith(a) for a in labels for b in labels):
            return None
        longest = max(len(label.encode("utf-8")) for label in labels)
        reply, seconds = self.request(self.wire_messages(messages), longest, logprobs=True,
                                      top_logprobs=TOP_LOGPROBS)
        logprobs = reply["choices"][0].get("logprobs")
        content = logprobs.get("content") if isinstance(logprobs, dict) else None
        if not isinstance(content, list) or not content:
            return None
        steps = []
        for entry in content:
            if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
                return None
            alternatives = {alt["token"]: float(alt["logprob"]) for alt in entry.get("top_logprobs") or []
                            if isinstance(alt, dict) and isinstance(alt.get("token"), str)
                            and isinstance(alt.get("logprob"), int | float)}
            logprob = entry.get("logprob")
            steps.append((entry["token"], float(logprob) if isinstance(logprob, int | float) else -math.inf,
                          alternatives))
        prompt, prefilled, generated = self._tokens(reply)
        return LabelLogprobs(label_scores(steps, labels), prompt_tokens=prompt, prefilled_tokens=prefilled,
                             generated_tokens=generated, seconds=seconds)
