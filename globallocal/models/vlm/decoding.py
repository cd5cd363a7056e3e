"""Greedy decoding of a Qwen VLM that pays for a photo once: prefix KV caches, explicit rope positions.

A conversation's tokens start with the system prompt and the raw photo; the
same start serves every phrase of that photo and the first turn of every
agent query. Its KV cache (the prefix up to the end of the first image's
tokens, keyed by those token ids and the image's pixel digest) is kept in a
small LRU; a later call whose tokens start with it prefills only the rest.
When further images follow the first one directly (the marks preset's
numbered picture after the photo), the prefix up to the end of each of them
is kept too, keyed by every image's digest up to it: the phrases that share
their candidates share that picture, and prefill only their question.

Qwen's multimodal rope gives image tokens 2-D positions and text after an
image positions shifted by the image's size, so positions are computed here
for the whole conversation at once (the model's own ``get_rope_index``) and
each forward pass gets its slice: the prefixes, the rest (with any later
image, e.g. the agent's marks image), then one decoding step at a time at
``index + rope delta``. The model's own position bookkeeping (its stored
``rope_deltas``) is never used, so a cached prefix and a fresh one see the
same positions, and greedy decoding gives the same tokens as
``model.generate`` (the tests compare them token for token).
"""

from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import torch
from transformers import LogitsProcessor

__all__ = ["Encoded", "ForcedReply", "PrefixCache", "Prefilled", "decode_greedy", "prefill", "step_positions"]


@dataclass
class Encoded:
    """A conversation as the model takes it: token ids, their kinds, images and rope positions."""

    input_ids: torch.Tensor
    """(1, length) token ids."""
    mm_token_type_ids: torch.Tensor
    """(1, length): 0 text, 1 image."""
    pixel_values: torch.Tensor | None
    """Every image's patches, one image after the other."""
    image_grid_thw: torch.Tensor | None
    """(images, 3) patch grids."""
    positions: torch.Tensor
    """(3, 1, length) multimodal rope positions."""
    rope_delta: int
    """Position minus index of any text token after the last image."""
    prefixes: list[tuple[int, str]]
    """The prefixes that may be kept: (length, key) up to the end of the first image, and of each image that
    directly follows it; the key hashes the prefix's token ids and its images' pixel digests. None without an
    image."""
    image_tokens: list[int]
    """Tokens of each image (its patches merged)."""

    @property
    def length(self) -> int:
        return self.input_ids.shape[1]

    @property
    def prefix_length(self) -> int:
        """Tokens up to the end of the first image (0 without an image)."""
        return self.prefixes[0][0] if self.prefixes else 0

    def images_in(self, start: int, end: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Patches and grids of the images whose tokens lie in tokens ``start:end`` (a conversation is cut into
        pieces only after an image's end, so an image lies wholly in one piece)."""
        if self.image_grid_thw is None:
            return None, None
        kinds = self.mm_token_type_ids[0]
        before, inside = int((kinds[:start] == 1).sum()), int((kinds[start:end] == 1).sum())
        firsts = [0, *accumulate(self.image_tokens)][:-1]  # each image's first image token, counted
        chosen = [index for index, first in enumerate(firsts) if before <= first < before + inside]
        if not chosen:
            return None, None
        rows = [0, *accumulate(int(grid.prod()) for grid in self.image_grid_thw)]
        return (self.pixel_values[rows[chosen[0]]:rows[chosen[-1] + 1]],
                self.image_grid_thw[chosen[0]:chosen[-1] + 1])


def step_positions(index: int, rope_delta: int, device: torch.device) -> torch.Tensor:
    """(3, 1, 1) rope positions of a text token at ``index`` after the last image."""
    return torch.full((3, 1, 1), index + rope_delta, dtype=torch.long, device=device)


@dataclass
class Prefilled:
    """A conversation run through the model: its KV cache, the logits of its last token, what was reused."""

    cache: Any
    logits: torch.Tensor
    """(vocabulary,) of the last token."""
    reused: int
    """Tokens taken from a cached prefix."""


class PrefixCache:
    """A small LRU of prefix KV caches (with the logits of the prefix's last token), handed out as copies."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[str, tuple[Any, torch.Tensor]] = OrderedDict()

    def get(self, key: str) -> tuple[Any, torch.Tensor] | None:
        entry = self._entries.get(key) if self.size > 0 else None
        if entry is None:
            return None
        self._entries.move_to_end(key)
        # A copy: decoding appends to the cache it is given.
        return copy.deepcopy(entry[0]), entry[1]

    def put(self, key: str, cache: Any, logits: torch.Tensor) -> None:
        if self.size <= 0:
            return
        self._entries[key] = (copy.deepcopy(cache), logits)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def prefix_key(input_ids: torch.Tensor, prefix_length: int, image_digests: Sequence[str]) -> str:
    ids = input_ids[0, :prefix_length].to("cpu", torch.int64).numpy().tobytes()
    return hashlib.sha256(ids + " ".join(image_digests).encode()).hexdigest()


def _forward(model: Any, encoded: Encoded, start: int, end: int, cache: Any) -> tuple[Any, torch.Tensor]:
    """Run tokens ``start:end`` (with their images) on ``cache``; the cache and the last token's logits."""
    pixel_values, grids = encoded.images_in(start, end)
    with torch.inference_mode():
        output = model(
            input_ids=encoded.input_ids[:, start:end],
            mm_token_type_ids=encoded.mm_token_type_ids[:, start:end],
            pixel_values=pixel_values,
            image_grid_thw=grids,
            position_ids=encoded.positions[:, :, start:end],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
    return output.past_key_values, output.logits[0, -1]


def prefill(model: Any, encoded: Encoded, prefixes: PrefixCache) -> Prefilled:
    """The conversation's KV cache: the longest of its prefixes kept in ``prefixes``, then each longer prefix
    (kept in turn), then the rest.

    A conversation with an image is always computed in these pieces (cut at
    the end of each of its prefixes), cached or not, so that reusing a prefix
    changes which work is done, never a bit of its result (the same matrix
    shapes either way, on any device).
    """
    cache, logits, reused = None, None, 0
    for length, key in reversed(encoded.prefixes):
        hit = prefixes.get(key)
        if hit is not None:
            (cache, logits), reused = hit, length
            break
    done = reused
    for length, key in encoded.prefixes:
        if length > done:
            cache, logits = _forward(model, encoded, done, length, cache)
            prefixes.put(key, cache, logits)
            done = length
    if done < encoded.length:
        cache, logits = _forward(model, encoded, done, encoded.length, cache)
    return Prefilled(cache, logits, reused)


class ForcedReply(LogitsProcessor):
    """Forces the next token to be the script's, step by step (the benchmark's scripted replies: every prefill
    and decoding step runs on the real model, only the choice of token is the script's)."""

    def __init__(self, token_ids: Sequence[int]) -> None:
        self.token_ids = list(token_ids)
        self.step = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        forced = self.token_ids[min(self.step, len(self.token_ids) - 1)]
        self.step += 1
        out = torch.full_like(scores, float("-inf"))
        out[..., forced] = 0.0
        return out


def decode_greedy(
    model: Any, encoded: Encoded, state: Prefilled, max_tokens: int, stop_ids: Sequence[int],
    processors: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[list[int], str]:
    """Greedy tokens after the prefill (a stop token included) and the finish reason ("stop" or "length")."""
    device = encoded.input_ids.device
    generated: list[int] = []
    logits = state.logits
    sequence = encoded.input_ids
    for step in range(max_tokens):
        scores = logits.float()[None]
        if processors is not None:
            scores = processors(sequence, scores)
        token = int(scores[0].argmax())
        generated.append(token)
        if token in stop_ids:
            return generated, "stop"
        if step + 1 == max_tokens:
            break
        token_ids = torch.tensor([[token]], device=device)
        sequence = torch.cat([sequence, token_ids], dim=1)
        with torch.inference_mode():
            output = model(input_ids=token_ids, position_ids=step_positions(encoded.length + step,
                                                                            encoded.rope_delta, device),
                           past_key_values=state.cache, use_cache=True)
        state.cache, logits = output.past_key_values, output.logits[0, -1]
    return generated, "length"
