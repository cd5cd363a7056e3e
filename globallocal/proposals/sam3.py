"""SAM 3 concept proposals: a noun phrase in, every matching instance out, with scores.

SAM 3 (Meta, Nov 2025) segments every instance of a short noun phrase,
scoring each by its presence head times its detection head. It runs here
through Hugging Face transformers (``Sam3Model``, ``Sam3Processor``):
:meth:`Sam3ConceptSource.set_image` runs the vision tower once per image
(``get_vision_features``); :meth:`Sam3ConceptSource.answer` runs the text
encoder and the DETR decoder for all prompts of the image in one batch, and
transformers' ``post_process_instance_segmentation`` turns the queries into
scored masks at the image's size.

It implements the generic phrase-dependent interface of :mod:`.concepts`.
When the noun phrase finds nothing above the threshold, a named fallback
chain answers, and the :class:`~.concepts.ConceptAnswer` records which step did: the noun
phrase's head noun alone, then the noun phrase's best instances below the
threshold, then (optionally) SAM 2's automatic proposals, else none.

Weights (the gated ``facebook/sam3`` or a local folder): :mod:`.sam3_weights`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image

from ..data.images import ImageInput, load_image
from ..data.phrases import shown
from ..errors import InputError
from . import Proposals, postprocess
from .concepts import ConceptAnswer, ConceptQuery
from .masks import ProposalGenerator
from .sam3_settings import (
    ANSWER_STEPS,
    DEFAULT_BELOW_THRESHOLD_K,
    DEFAULT_FALLBACK,
    DEFAULT_THRESHOLD,
    FALLBACK_STEPS,
    SAM3_TEXT_TOKENS,
    check_sam3_settings,
    parse_fallback,
    sam3_checks,
)
from .sam3_weights import Sam3Weights, load_sam3

__all__ = [
    "DEFAULT_FALLBACK",
    "FALLBACK_STEPS",
    "Sam3ConceptSource",
    "check_sam3_settings",
    "load_sam3",  # its home is .sam3_weights
    "parse_fallback",
    "sam3_checks",
]

MASK_THRESHOLD = 0.5  # transformers' default cut of the mask probabilities


@dataclass
class _Decoded:
    above: Proposals
    below: Proposals | None  # when nothing is above: the best instances below the threshold (None: not asked for)
    found: Proposals  # the instances above the threshold as SAM 3 returns them: its order, empty masks, no cap


class Sam3ConceptSource:
    """Per-phrase proposals from SAM 3: vision tower once per image, prompts batched, fallback chain."""

    phrase_dependent: ClassVar[bool] = True
    """Proposals depend on the phrase (the segmenter asks :meth:`answer`, not ``generate``)."""
    answer_steps: ClassVar[tuple[str, ...]] = ANSWER_STEPS

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        max_proposals: int | None = None,
        fallback: str | Sequence[str] = DEFAULT_FALLBACK,
        below_threshold_k: int = DEFAULT_BELOW_THRESHOLD_K,
        sam2: ProposalGenerator | None = None,
        device: str | torch.device | None = None,
        weights: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.processor = processor
        self.sam2 = sam2
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.weights = dict(weights or {})
        """``{"size", "sha256"}`` of the weights (empty: a model given in memory)."""
        self.weights_file: Path | None = None
        """The safetensors file the model was loaded from (set by :meth:`from_loaded`)."""
        self._transformers = metadata.version("transformers")
        self.configure(threshold=threshold, max_proposals=max_proposals, fallback=fallback,
                       below_threshold_k=below_threshold_k)
        self.image: Image.Image | None = None
        """The current image (None before :meth:`set_image`)."""
        self._vision: Any = None
        self._sam2_proposals: Proposals | None = None

    @classmethod
    def from_loaded(cls, loaded: Sam3Weights, **options: Any) -> Sam3ConceptSource:
        """A source on a model :func:`load_sam3` loaded, identified by its weights file."""
        source = cls(loaded.model, loaded.processor, weights=loaded.identity, **options)
        source.weights_file = loaded.weights_file
        return source

    def configure(
        self,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        max_proposals: int | None = None,
        fallback: str | Sequence[str] = DEFAULT_FALLBACK,
        below_threshold_k: int = DEFAULT_BELOW_THRESHOLD_K,
    ) -> None:
        """Set the answer settings; the image's vision features are kept, decoded prompts forgotten on a change."""
        steps = check_sam3_settings(threshold, fallback, below_threshold_k, max_proposals)
        if ("sam2" in steps) != (self.sam2 is not None):
            raise InputError("the SAM 3 fallback step sam2 needs a SAM 2 generator (--sam3-fallback with sam2), "
                             "and a SAM 2 generator that step")
        settings = {
            "threshold": float(threshold),
            "mask_threshold": MASK_THRESHOLD,
            "max_proposals": max_proposals,
            "fallback": list(steps),
            "below_threshold_k": below_threshold_k,
            "sam2": dict(self.sam2.settings) if self.sam2 is not None else None,
            "weights": self.weights,
            "transformers": self._transformers,
        }
        if settings == getattr(self, "settings", None):
            return
        self.settings: dict[str, Any] = settings
        """Everything the answers depend on besides the image and the prompts (run configs, cache keys)."""
        self.threshold = float(threshold)
        self.max_proposals = max_proposals
        self.fallback = steps
        self.below_threshold_k = below_threshold_k
        self._decoded: dict[str, _Decoded] = {}

    # -- image ------------------------------------------------------------

    @torch.inference_mode()
    def set_image(self, image: ImageInput) -> None:
        """Run SAM 3's vision tower on ``image`` once; every later :meth:`answer` reuses its features."""
        rgb = load_image(image)
        self.image, self._vision, self._decoded, self._sam2_proposals = None, None, {}, None
        pixels = self.processor(images=rgb, return_tensors="pt")["pixel_values"]
        self._vision = self.model.get_vision_features(pixel_values=pixels.to(self.device, self.dtype))
        self.image = rgb

    def _require_image(self) -> Image.Image:
        if self.image is None:
            raise InputError("no image is set; call set_image() first")
        return self.image

    # -- prompts ----------------------------------------------------------

    def truncated(self, text: str) -> bool:
        """Whether ``text`` is longer than SAM 3's 32 text tokens (it is then cut to them, with a warning)."""
        return len(self.processor.tokenizer(text)["input_ids"]) > SAM3_TEXT_TOKENS

    @torch.inference_mode()
    def _decode(self, prompts: Sequence[str], below: bool) -> None:
        """Run the text encoder and decoder on ``prompts`` (one batch) and keep each prompt's instances."""
        for prompt in prompts:
            if self.truncated(prompt):
                warnings.warn(f"prompt is longer than SAM 3's {SAM3_TEXT_TOKENS} tokens and was truncated: "
                              f"{shown(prompt)}", stacklevel=3)
        text = self.processor.tokenizer(list(prompts), padding="max_length", max_length=SAM3_TEXT_TOKENS,
                                        truncation=True, return_tensors="pt").to(self.device)
        n = len(prompts)
        vision = type(self._vision)(
            last_hidden_state=self._vision.last_hidden_state.expand(n, -1, -1),
            fpn_hidden_states=tuple(t.expand(n, -1, -1, -1) for t in self._vision.fpn_hidden_states),
            fpn_position_encoding=tuple(t.expand(n, -1, -1, -1) for t in self._vision.fpn_position_encoding),
        )
        outputs = self.model(vision_embeds=vision, input_ids=text["input_ids"], attention_mask=text["attention_mask"])
        image = self._require_image()
        size = (image.height, image.width)
        kept = self.processor.post_process_instance_segmentation(
            outputs, threshold=self.threshold, mask_threshold=MASK_THRESHOLD, target_sizes=[size] * n)
        for row, (prompt, above) in enumerate(zip(prompts, kept)):
            found = self._proposals(above, self.max_proposals)
            rest = self._below_threshold(outputs, row, size) if below and not len(found) else None
            as_found = Proposals.from_masks(above["masks"].bool().cpu(), above["scores"].float().cpu())
            self._decoded[prompt] = _Decoded(found, rest, as_found)

    def _below_threshold(self, outputs: Any, row: int, size: tuple[int, int]) -> Proposals:
        """The best ``below_threshold_k`` instances of one prompt, whatever their score (empty masks dropped).

        Only those k masks are resized to the image (SAM 3 has 200 queries), by transformers' own
        post-processing on the outputs cut to them; the queries are ranked by its detection scores.
        """
        from transformers.models.sam3.modeling_sam3 import Sam3ImageSegmentationOutput

        def cut(rows: slice, queries: Any = slice(None)) -> Sam3ImageSegmentationOutput:
            return Sam3ImageSegmentationOutput(
                pred_logits=outputs.pred_logits[rows][:, queries], pred_boxes=outputs.pred_boxes[rows][:, queries],
                pred_masks=outputs.pred_masks[rows][:, queries], presence_logits=outputs.presence_logits[rows])

        one = slice(row, row + 1)
        [scored] = self.processor.post_process_object_detection(cut(one), threshold=-1.0)  # every query, in order
        k = min(self.below_threshold_k, self.max_proposals or self.below_threshold_k, len(scored["scores"]))
        best = torch.topk(scored["scores"], k).indices
        [result] = self.processor.post_process_instance_segmentation(
            cut(one, best), threshold=-1.0, mask_threshold=MASK_THRESHOLD, target_sizes=[size])
        return self._proposals(result, k)

    def _proposals(self, result: dict[str, torch.Tensor], limit: int | None) -> Proposals:
        masks = result["masks"].bool().cpu()
        return postprocess(Proposals.from_masks(masks, result["scores"].float().cpu()), limit)

    def _ensure(self, prompts: Sequence[str], below: bool) -> None:
        def known(prompt: str) -> bool:
            entry = self._decoded.get(prompt)
            return entry is not None and not (below and not len(entry.above) and entry.below is None)

        missing = [prompt for prompt in dict.fromkeys(prompts) if not known(prompt)]
        if missing:
            self._decode(missing, below)

    def _empty(self) -> Proposals:
        image = self._require_image()
        return Proposals.from_masks(torch.zeros((0, image.height, image.width), dtype=torch.bool))

    def answer(self, queries: Sequence[ConceptQuery]) -> list[ConceptAnswer]:
        """Each query's instances, by the first step of the chain that finds any (an ``exact`` query: its
        prompt's instances above the threshold as SAM 3 returns them, in its order, empty masks and all, with
        no cap and no fallback).

        Prompts of all queries run in one decoder call per step; identical
        prompts share one result (kept for the image, so a prompt asked again is not decoded again).
        """
        self._require_image()
        answers: list[ConceptAnswer | None] = [None] * len(queries)
        below = "below-threshold" in self.fallback
        self._ensure([q.noun_phrase for q in queries], below and not all(q.exact for q in queries))
        for i, query in enumerate(queries):
            decoded = self._decoded[query.noun_phrase]
            found = decoded.found if query.exact else decoded.above
            if len(found):
                answers[i] = ConceptAnswer(found, "noun-phrase", query.noun_phrase)
        if "head-noun" in self.fallback:
            heads = [q.head_noun for q, a in zip(queries, answers) if a is None and q.head_noun]
            self._ensure(heads, False)
            for i, query in enumerate(queries):
                if answers[i] is None and query.head_noun and len(self._decoded[query.head_noun].above):
                    answers[i] = ConceptAnswer(self._decoded[query.head_noun].above, "head-noun", query.head_noun)
        for i, query in enumerate(queries):
            if answers[i] is None and query.exact:
                answers[i] = ConceptAnswer(self._empty(), "none", "")
            if answers[i] is not None:
                continue
            rest = self._decoded[query.noun_phrase].below if below else None
            if rest is not None and len(rest):
                answers[i] = ConceptAnswer(rest, "below-threshold", query.noun_phrase)
            elif self.sam2 is not None and len(self._sam2()):
                answers[i] = ConceptAnswer(self._sam2(), "sam2", "")
            else:
                answers[i] = ConceptAnswer(self._empty(), "none", "")
        return answers  # type: ignore[return-value]

    def _sam2(self) -> Proposals:
        if self._sam2_proposals is None:
            self._sam2_proposals = self.sam2.generate(self._require_image())
        return self._sam2_proposals

    def generate_for(self, image: ImageInput, prompts: Sequence[str]) -> list[ConceptAnswer]:
        """:meth:`set_image` then :meth:`answer` for bare prompts (no head-noun step)."""
        self.set_image(image)
        return self.answer([ConceptQuery(prompt, None) for prompt in prompts])
