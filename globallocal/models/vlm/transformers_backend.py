"""The in-process backend: a Qwen2.5-VL or Qwen3-VL through transformers, greedy, paying for a photo once.

``AutoModelForImageTextToText`` and ``AutoProcessor`` from a hub id or a
folder (:mod:`.loading` checks it first), bf16 on CUDA and fp32 on the CPU
unless a precision is given. The photo is capped at ``max_pixels`` (the
processor's own bound is lowered to it). Decoding is plain greedy (the
argmax of the logits: the sampling settings of the model's generation config,
temperature, top-p, repetition penalty, are not applied), bounded by
``max_tokens``, with the photo prefix's KV cache reused across calls
(:mod:`.decoding`).

``reply_script`` is the benchmark's hook: a function of the messages
returning the reply to force (or None); its tokens are fed to the model as its
own output, so every prefill and decoding step still runs on the real model.
"""

from __future__ import annotations

import copy
import functools
import os
import threading
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ...data.images import image_digest
from ...errors import InputError, WeightsError, first_line
from ..clip import PRECISIONS, check_precision, precision_dtype, resolve_device
from ..weights import weights_identity
from .backend import DEFAULT_MAX_PIXELS, IN_MEMORY, ChatReply, LabelLogprobs, check_labels, check_max_tokens
from .decoding import (
    Encoded,
    ForcedReply,
    Prefilled,
    PrefixCache,
    decode_greedy,
    prefill,
    prefix_key,
    step_positions,
)
from .loading import MODEL_TYPES, check_vlm_folder, check_vlm_model, model_files_digest, vlm_snapshot, weights_files
from .messages import Message, check_messages, message_images

__all__ = ["DEFAULT_PREFIX_CACHE_SIZE", "DeferredBackend", "TransformersBackend", "backend_identity"]

# Prefix KV caches kept: the photo being answered, and a few more, so that queries of several photos interleave
# or the marks preset's pictures of several candidate sets stay (each costs about 150 MB per 1000 tokens of
# prefix with an 8B model in bf16).
DEFAULT_PREFIX_CACHE_SIZE = 4
# Qwen's processors refuse photos more elongated than this.
MAX_ASPECT = 200


class TransformersBackend:
    """A Qwen VLM in this process (see the module docstring); build it with :meth:`load`."""

    def __init__(self, model: Any, processor: Any, *, family: str, folder: Path | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, prefix_cache_size: int = DEFAULT_PREFIX_CACHE_SIZE) -> None:
        self.model = model
        self.processor = copy.deepcopy(processor)  # its photo bound is lowered below: not the caller's
        self.family = family
        self.folder = folder
        self.max_pixels = max_pixels
        self.prefixes = PrefixCache(prefix_cache_size)
        self.reply_script: Callable[[Sequence[Message]], str | None] | None = None
        images = self.processor.image_processor
        # The photo is capped here once, so the processor and seen_size apply the same bound.
        images.size = {"shortest_edge": min(images.size["shortest_edge"], max_pixels),
                       "longest_edge": min(images.size["longest_edge"], max_pixels)}
        config = model.config
        self._vision_start, self._vision_end = config.vision_start_token_id, config.vision_end_token_id
        self._merge = config.vision_config.spatial_merge_size
        stops = model.generation_config.eos_token_id
        stops = [stops] if isinstance(stops, int) else list(stops or [processor.tokenizer.eos_token_id])
        self.stop_ids = stops
        self._identity: dict[str, Any] | None = None
        # One call at a time (a web page's requests may come from several threads): the model and its kept
        # prefixes are shared state.
        self._lock = threading.RLock()

    @classmethod
    def load(cls, model: str | os.PathLike[str], *, device: str = "auto", precision: str | None = None,
             max_pixels: int = DEFAULT_MAX_PIXELS, family: str | None = None,
             prefix_cache_size: int = DEFAULT_PREFIX_CACHE_SIZE,
             deferred: bool = False) -> TransformersBackend | DeferredBackend:
        """Load ``model`` (a hub id or a folder) on ``device`` at ``precision`` (default: bf16 on CUDA, fp32
        on the CPU). ``deferred``: check the folder and describe the model now, load it at its first use
        (:class:`DeferredBackend`; ``device`` need not be this machine's)."""
        name = str(model)
        folder = check_vlm_model(name) or vlm_snapshot(name)
        config = check_vlm_folder(folder)
        family = family or MODEL_TYPES[config["model_type"]]
        device = resolve_device(device)
        precision = precision or ("bf16" if torch.device(device).type == "cuda" else "fp32")
        load = functools.partial(cls._load_checked, folder, device, precision, max_pixels, family, prefix_cache_size)
        if not deferred:
            return load()
        check_precision(precision)
        identity = backend_identity(folder, family, PRECISIONS[precision], torch.device(device).type, max_pixels)
        return DeferredBackend(identity, family, load)

    @classmethod
    def _load_checked(cls, folder: Path, device: str, precision: str, max_pixels: int, family: str,
                      prefix_cache_size: int) -> TransformersBackend:
        """The model of a checked ``folder``, loaded (:meth:`load` resolved the arguments)."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        dtype = precision_dtype(precision, device)
        try:
            loaded = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype)
            processor = AutoProcessor.from_pretrained(folder)
        except Exception as error:  # a folder that passed the checks but does not load: name it, no traceback
            raise WeightsError(f"the VLM in {folder} does not load ({first_line(error)}); pass vlm_model=DIR "
                               "holding a Qwen2.5-VL or Qwen3-VL in the transformers layout") from None
        loaded = loaded.to(device).eval().requires_grad_(False)
        return cls(loaded, processor, family=family, folder=folder, max_pixels=max_pixels,
                   prefix_cache_size=prefix_cache_size)

    @property
    def identity(self) -> dict[str, Any]:
        """:func:`backend_identity` of the loaded model; marked when its replies are scripted."""
        if self._identity is None:
            self._identity = backend_identity(self.folder, self.family, self.model.dtype, self.model.device.type,
                                              self.max_pixels)
        identity = dict(self._identity)
        if self.reply_script is not None:
            identity["scripted"] = True  # scripted replies are not the model's: never mixed with real ones
        return identity

    # ---- the photo -----------------------------------------------------------------------------------

    def seen_size(self, image: Image.Image) -> tuple[int, int]:
        """(width, height) of ``image`` after the processor's resize (multiples of patch x merge size)."""
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        images = self.processor.image_processor
        if max(image.size) > MAX_ASPECT * min(image.size):
            raise InputError(f"a {image.width}x{image.height} photo is more elongated than the VLM takes "
                             f"({MAX_ASPECT}:1); crop it")
        height, width = smart_resize(image.height, image.width, factor=images.patch_size * images.merge_size,
                                     min_pixels=images.size["shortest_edge"], max_pixels=images.size["longest_edge"])
        return width, height

    # ---- encoding ------------------------------------------------------------------------------------

    def encode(self, messages: Sequence[Message], *, generation_prompt: bool = True) -> Encoded:
        """The conversation's tokens, images and rope positions, on the model's device."""
        check_messages(messages)
        images = message_images(messages)
        for image in images:
            self.seen_size(image)  # refuses what the processor cannot resize
        text = self.processor.apply_chat_template(list(messages), tokenize=False,
                                                  add_generation_prompt=generation_prompt)
        inputs = self.processor(text=[text], images=images or None, return_tensors="pt")
        device = self.model.device
        input_ids = inputs["input_ids"].to(device)
        kinds = inputs["mm_token_type_ids"].to(device)
        grids = inputs.get("image_grid_thw")
        grids = grids.to(device) if grids is not None else None
        positions, deltas = self.model.model.get_rope_index(input_ids, mm_token_type_ids=kinds,
                                                            image_grid_thw=grids)
        pixel_values = inputs.get("pixel_values")
        prefixes = []
        starts = (input_ids[0] == self._vision_start).nonzero()[:, 0].tolist()
        ends = (input_ids[0] == self._vision_end).nonzero()[:, 0].tolist()
        digests: list[str] = []
        for index, end in enumerate(ends[:len(images)]):
            if index and starts[index] != ends[index - 1] + 1:
                break  # a text between: what follows is the question, not the opening
            digests.append(image_digest(images[index]))
            prefixes.append((end + 1, prefix_key(input_ids, end + 1, digests)))
        tokens = [] if grids is None else [int(grid.prod()) // self._merge**2 for grid in grids]
        return Encoded(input_ids, kinds, pixel_values.to(device) if pixel_values is not None else None, grids,
                       positions, int(deltas.reshape(-1)[0]), prefixes, tokens)

    def _check_length(self, encoded: Encoded, extra: int) -> int:
        """How many tokens may follow the conversation: ``extra``, or what is left of the model's context when
        that is less (a reply then ends at the context, with finish reason "length", as it would at
        max_tokens); a conversation that leaves no room is refused."""
        limit = self.model.config.get_text_config().max_position_embeddings
        if encoded.length + extra > limit and encoded.length >= limit:
            raise InputError(f"the conversation has {encoded.length} tokens, which fill the VLM's context of "
                             f"{limit}; shorten it (a smaller vlm_max_pixels=N)")
        return min(extra, limit - encoded.length)

    # ---- the calls -----------------------------------------------------------------------------------

    def generate(self, messages: Sequence[Message], max_tokens: int) -> tuple[list[int], ChatReply]:
        """The greedy reply's token ids (its stop token included) and the reply (:meth:`chat`)."""
        check_max_tokens(max_tokens)
        started = time.perf_counter()
        encoded = self.encode(messages)
        max_tokens = self._check_length(encoded, max_tokens)
        processors = None
        script = self.reply_script(messages) if self.reply_script is not None else None
        if script is not None:
            processors = ForcedReply(self.processor.tokenizer.encode(script, add_special_tokens=False)
                                     + self.stop_ids[:1])
        with self._lock:
            state = prefill(self.model, encoded, self.prefixes)
            tokens, finish = decode_greedy(self.model, encoded, state, max_tokens, self.stop_ids, processors)
        text = self.processor.tokenizer.decode([t for t in tokens if t not in self.stop_ids],
                                               skip_special_tokens=True)
        return tokens, ChatReply(text, encoded.length, encoded.length - state.reused, len(tokens),
                                 time.perf_counter() - started, finish)

    def chat(self, messages: Sequence[Message], max_tokens: int) -> ChatReply:
        """The greedy reply of at most ``max_tokens`` tokens."""
        return self.generate(messages, max_tokens)[1]

    def chat_many(self, conversations: Sequence[Sequence[Message]], max_tokens: int) -> list[ChatReply]:
        """One reply per conversation, one after the other, each reusing the photo's prefix.

        Not one batched generate call: padding the phrases of a photo to one
        length changes the order of float sums (other matrix shapes, masked
        positions), which in bf16 can change a greedy token, so a reply
        would depend on which other phrases were asked with it (and a cached
        reply could differ from a fresh one). The photo, the dominant cost,
        is prefilled once either way.
        """
        return [self.chat(messages, max_tokens) for messages in conversations]

    def label_logprobs(self, messages: Sequence[Message], labels: Sequence[str]) -> LabelLogprobs:
        """The log-probability of each label, then the end of the turn, as the reply (teacher-forced).

        A label's tokens are all scored ("12" is "1" then "2" with Qwen's
        tokenizer), and so is the end-of-turn token after them, so "1" and
        "12" are told apart. The conversation is prefilled once (its photo
        prefix reused); each label runs on its KV cache, which is cut back
        after it.
        """
        check_labels(labels)
        started = time.perf_counter()
        encoded = self.encode(messages)
        sequences = [self.processor.tokenizer.encode(label, add_special_tokens=False) + self.stop_ids[:1]
                     for label in labels]
        needed = max(map(len, sequences))
        if self._check_length(encoded, needed) < needed:
            raise InputError(f"the conversation leaves no room in the VLM's context for labels of {needed} tokens; "
                             "shorten it (a smaller vlm_max_pixels=N)")
        with self._lock:
            state = prefill(self.model, encoded, self.prefixes)
            first = torch.log_softmax(state.logits.float(), dim=-1)
            values = {label: self._label_logprob(encoded, state, first, tokens)
                      for label, tokens in zip(labels, sequences)}
        return LabelLogprobs(values, prompt_tokens=encoded.length, prefilled_tokens=encoded.length - state.reused,
                             generated_tokens=sum(len(tokens) - 1 for tokens in sequences),
                             seconds=time.perf_counter() - started)

    def _label_logprob(self, encoded: Encoded, state: Prefilled, first: torch.Tensor, tokens: list[int]) -> float:
        """log P(tokens) after the prefilled conversation: the first from its last logits, the others from one
        pass of all but the last token on its cache, which is then cut back."""
        total = first[tokens[0]]
        if len(tokens) > 1:
            device = encoded.input_ids.device
            given = torch.tensor([tokens[:-1]], device=device)
            positions = torch.cat([step_positions(encoded.length + i, encoded.rope_delta, device)
                                   for i in range(len(tokens) - 1)], dim=2)
            with torch.inference_mode():
                output = self.model(input_ids=given, position_ids=positions, past_key_values=state.cache,
                                    use_cache=True)
            scores = torch.log_softmax(output.logits[0].float(), dim=-1)
            total = total + scores[torch.arange(len(tokens) - 1, device=device),
                                   torch.tensor(tokens[1:], device=device)].sum()
            state.cache.crop(-(len(tokens) - 1))
        return float(total)


def backend_identity(folder: Path | None, family: str, dtype: torch.dtype, device_type: str,
                     max_pixels: int) -> dict[str, Any]:
    """What the replies depend on: the weights (content digests; "in memory" for a model built from objects),
    the processor files, dtype, device type, photo cap and library versions."""
    identity: dict[str, Any] = {"backend": "transformers", "family": family}
    if folder is None:
        identity["weights"] = IN_MEMORY  # built from objects: nothing on disk says which weights
    else:
        identity["weights"] = {path.name: weights_identity(path) for path in weights_files(folder)}
        identity["files_sha256"] = model_files_digest(folder)
    identity.update({
        "dtype": str(dtype).removeprefix("torch."),
        "device": device_type,
        "max_pixels": max_pixels,
        "decoding": "greedy",
        **{name: metadata.version(name) for name in ("torch", "transformers")},
    })
    return identity


class DeferredBackend:
    """A :class:`TransformersBackend` described now and loaded at its first use.

    A Ray driver records the configuration its actors run and never asks the
    VLM: loading it there would put an 8B model on the driver's CPU in fp32,
    and describe it at the driver's device and dtype rather than the actors'.
    """

    def __init__(self, identity: dict[str, Any], family: str, load: Callable[[], TransformersBackend]) -> None:
        self.identity = identity
        self.family = family
        self._load = load
        self._backend: TransformersBackend | None = None

    @property
    def loaded(self) -> bool:
        return self._backend is not None

    def __getattr__(self, name: str) -> Any:
        # Only what the instance lacks comes here: the calls (seen_size, chat, ...) load the model first.
        if name.startswith("_"):
            raise AttributeError(name)
        if self._backend is None:
            self._backend = self._load()
        return getattr(self._backend, name)
