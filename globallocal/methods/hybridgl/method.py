"""HybridGL (Liu and Li, CVPR 2025): hybrid global-local features with spatial guidance.

Each SAM proposal gets one CLIP feature that mixes a "blurred context" view
of the image with a "masked region" view inside CLIP's last blocks. The
proposals CLIP scores highest against the expression (mixed with its target
noun phrase) are the candidates; among them, the answer is decided by a mix
of two guidances: how the candidates' boxes relate to the other objects the
expression names ("left of", "behind", "bigger"), and how much of a GEM heat
map of the target noun phrase, tilted towards the named direction, falls
inside each mask. The answer without guidance is reported too ("pure").

``hybridgl-paper`` reproduces the authors' code, quirks included
(SPEC-hybridgl section 11); each quirk is a settings field.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...models.text import ParsedPhrase
from ...proposals import Proposals
from ..base import ImageFeatures, Method, SegmentResult, TextEncoder, json_floats
from .gem import gem_input, gem_tokens
from .settings import HybridGLSettings
from .text import (
    TextAnalysis,
    analyse_text,
    clip_scores,
    gem_k,
    guided_answer,
    heat_map_region_means,
)
from .visual import blurred, clip_inputs, hybrid_features

NEGATIVE_PROMPT = "a photo of {}"
"""The other noun phrases' prompt (no article added: "a photo of the plant")."""


def xywh_boxes(masks: torch.Tensor) -> torch.Tensor:
    """SAM's ``bbox`` of each mask, float32 (N, 4): x = min column, y = min row, w, h = max - min
    (inclusive extremes, so a one-pixel-wide mask has w = 0); an empty mask gives (0, 0, 0, 0)."""
    n = masks.shape[0]
    boxes = torch.zeros((n, 4), dtype=torch.float32)
    columns, rows = masks.any(dim=1).cpu(), masks.any(dim=2).cpu()
    for i in range(n):
        xs, ys = torch.nonzero(columns[i]).flatten(), torch.nonzero(rows[i]).flatten()
        if len(xs):
            boxes[i] = torch.tensor([xs[0], ys[0], xs[-1] - xs[0], ys[-1] - ys[0]], dtype=torch.float32)
    return boxes


def feature_shapes(count: int | None, width: int | None) -> dict[str, tuple[int | None, ...]]:
    """The image features of ``count`` proposals with CLIP features ``width`` wide (None: any): each proposal's
    hybrid feature and SAM box, and GEM's tokens of the photo."""
    return {"features": (count, width), "boxes_xywh": (count, 4), "gem_tokens": (None, width)}


@dataclass
class HybridGLResult(SegmentResult):
    """A HybridGL answer: the guided answer (``index``), the pure one, and what decided between them.

    ``scores`` are the final scores that chose the answer: one per candidate, NaN for the proposals that are not
    candidates (and for a candidate whose GEM score is undefined, which wins under ``nan_wins``)."""

    clip_scores: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    """The CLIP score s_i of every proposal (N,), which chose the candidates and the pure answer."""
    pure_index: int = 0
    """The answer without spatial guidance: the best CLIP score."""
    gem: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    """gem_i of every proposal (N,), NaN for an empty or full-frame mask."""
    candidates: list[int] = field(default_factory=list)
    """The top-K1 proposals by CLIP score, best first."""
    relation: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    """rho per candidate (K1,)."""
    other_noun_phrases: list[str] = field(default_factory=list)
    direction: str = "none"
    relation_flag: str = "none"
    k1: int = 0
    """K1 as applied: top_k capped at the proposal count (with Q-sticky-k, the smallest count so far)."""
    k2: int = 0
    """K2 as applied, likewise."""

    ranking_label: ClassVar[str] = "final score"

    @property
    def final(self) -> torch.Tensor:
        """The final score per candidate (K1,), in the candidates' order."""
        return self.scores[self.candidates]

    def dense_scores(self) -> torch.Tensor:
        return self.clip_scores

    def other_answers(self) -> dict[str, int]:
        return {"pure": self.pure_index}

    def ranking(self) -> list[tuple[int, float]]:
        """The K1 candidates by final score, the answer first (NaN scores after the numbers): what decided."""
        final = dict(zip(self.candidates, (float(value) for value in self.final)))
        others = sorted((i for i in final if i != self.index),
                        key=lambda i: (math.isnan(final[i]), 0.0 if math.isnan(final[i]) else -final[i]))
        return [(i, final[i]) for i in (self.index, *others)]

    def record_fields(self) -> dict[str, Any]:
        # The text analysis and the K's as applied: with the cached features, all a sweep needs to replay
        # this answer at other weights, in any image order (Q-sticky-k included) and without spaCy.
        return {
            "other_noun_phrases": list(self.other_noun_phrases),
            "direction": self.direction,
            "relation_flag": self.relation_flag,
            "k1": self.k1,
            "k2": self.k2,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            **super().to_json(),
            "clip_scores": json_floats(self.clip_scores),
            "pure_index": self.pure_index,
            "gem": json_floats(self.gem),
            "candidates": list(self.candidates),
            "relation": json_floats(self.relation),
            "other_noun_phrases": list(self.other_noun_phrases),
            "direction": self.direction,
            "relation_flag": self.relation_flag,
        }


class HybridGL(Method):
    """HybridGL scoring of mask proposals (SPEC-hybridgl)."""

    name = "hybridgl"
    per_proposal = ("features", "boxes_xywh")
    visual_settings = ("fusion_mode", "masking_block", "hybrid_weight", "input_normalization", "local_fill",
                       "mask_antialias", "gem_depth", "gem_iterations", "gem_size", "chunk_size")
    settings: HybridGLSettings

    def __init__(self, clip, nlp, settings: HybridGLSettings) -> None:
        super().__init__(clip, nlp, settings)
        self.smallest_count: int | None = None
        """Q-sticky-k: the fewest proposals any image had so far (with ``sticky_topk``)."""
        self.analyse = lru_cache(maxsize=4096)(self._analyse)

    @property
    def chunk(self) -> int:
        return self.settings.chunk_size or (32 if self.device.type == "cuda" else 8)

    def image_context(self, image: Image.Image) -> np.ndarray:
        """The blurred photo every proposal's global view composites with."""
        return blurred(np.asarray(image))

    def shared_features(self, image: Image.Image, context: np.ndarray) -> dict[str, torch.Tensor]:
        """GEM's patch tokens of the photo (section 8)."""
        s = self.settings
        pixels = gem_input(image, size=s.gem_size).to(self.device)
        return {"gem_tokens": gem_tokens(self.clip, pixels, depth=s.gem_depth, iterations=s.gem_iterations)}

    def proposal_features(self, image: Image.Image, proposals: Proposals | None,
                          context: np.ndarray) -> dict[str, torch.Tensor]:
        """Every proposal's hybrid feature (sections 1, 3, 4) and SAM box. A row depends on its own mask only:
        its two views, token mask and box are its own; ranking among proposals (K1, K2, ties in the
        proposals' order) happens when answering, among the proposals answered from."""
        assert proposals is not None
        s, visual = self.settings, self.clip.visual
        masks = proposals.masks.to(self.device)
        features = []
        # The inputs of a few proposals at a time: each is two 224 x 224 images, whatever the photo's size.
        for start in range(0, len(masks), self.chunk):
            global_views, local_views, token_masks = clip_inputs(
                image, masks, blur=context, size=self.clip.image_size, grid=visual.grid_size[0],
                input_normalization=s.input_normalization, local_fill=s.local_fill, mask_antialias=s.mask_antialias,
                chunk=range(start, start + self.chunk),
            )
            features.append(hybrid_features(
                self.clip, global_views, local_views, token_masks, fusion_mode=s.fusion_mode,
                masking_block=s.masking_block, hybrid_weight=s.hybrid_weight, chunk_size=self.chunk,
            ))
        return {"features": torch.cat(features), "boxes_xywh": xywh_boxes(proposals.masks)}

    @property
    def tau(self) -> torch.Tensor:
        """CLIP's learned temperature exp(logit_scale), float32, that multiplies every CLIP score."""
        return self.clip.model.logit_scale.exp().float()

    def feature_shapes(self, count: int) -> dict[str, tuple[int | None, ...]]:
        return feature_shapes(count, self.clip.embed_dim)

    def describe(self) -> dict[str, Any]:
        # tau comes with the weights, not the settings; a run records it so that a sweep can replay the scores.
        return {**super().describe(), "tau": float(self.tau)}

    def _analyse(self, expression: str) -> TextAnalysis:
        s = self.settings
        return analyse_text(self.nlp(expression), right_relation=s.right_relation,
                            fallback_target_chunk=s.fallback_target_chunk)

    def negative_prompts(self, analysis: TextAnalysis) -> list[str]:
        return [NEGATIVE_PROMPT.format(other) for other in analysis.other_noun_phrases]

    def gem_prompt(self, analysis: TextAnalysis) -> str:
        return self.settings.gem_prompt.format(analysis.noun_phrase)

    def local_noun_phrase(self, parsed: ParsedPhrase) -> str:
        """HybridGL's own target noun phrase (section 5's analysis)."""
        return self.analyse(parsed.expression).noun_phrase

    def text_strings(self, parsed: ParsedPhrase) -> list[str]:
        analysis = self.analyse(parsed.expression)
        return [parsed.expression, analysis.noun_phrase, *self.negative_prompts(analysis), self.gem_prompt(analysis)]

    def candidate_counts(self, count: int) -> tuple[int, int]:
        """K1, K2 for an image with ``count`` proposals (Q-sticky-k: the smallest count so far)."""
        if self.settings.sticky_topk:
            self.smallest_count = count if self.smallest_count is None else min(self.smallest_count, count)
            count = self.smallest_count
        return min(self.settings.top_k, count), min(self.settings.negative_k, count)

    def answer(self, image: ImageFeatures, parsed: Sequence[ParsedPhrase], encode: TextEncoder) -> list[SegmentResult]:
        assert image.proposals is not None
        device = self.device
        masks = image.proposals.masks.to(device)
        features = F.normalize(image.tensors["features"].to(device).float(), dim=-1)
        tokens = image.tensors["gem_tokens"].to(device)
        boxes = image.tensors["boxes_xywh"].to(device)
        k1, k2 = self.candidate_counts(len(masks))
        tau = self.tau
        return [self._answer_one(item, masks, features, tokens, boxes, k1, k2, tau, encode) for item in parsed]

    def _answer_one(self, item: ParsedPhrase, masks: torch.Tensor, features: torch.Tensor, tokens: torch.Tensor,
                    boxes: torch.Tensor, k1: int, k2: int, tau: torch.Tensor, encode: TextEncoder) -> HybridGLResult:
        s = self.settings
        analysis = self.analyse(item.expression)
        device = features.device
        expression, noun_phrase = encode([item.expression, analysis.noun_phrase]).to(device)
        scores = clip_scores(features, s.beta * expression + (1 - s.beta) * noun_phrase, tau)
        negative_scores = None
        if analysis.other_noun_phrases:
            negatives = encode(self.negative_prompts(analysis)).to(device)
            negative_scores = clip_scores(features, negatives.sum(dim=0) / len(negatives), tau)
        gem_text = encode([self.gem_prompt(analysis)]).to(device)[0]
        inside, outside = heat_map_region_means(tokens, gem_text, masks, analysis.direction, gem_size=s.gem_size,
                                                double_minmax=s.double_minmax, vertical=s.vertical_masks)
        guided = guided_answer(
            scores, negative_scores, boxes, inside, outside, analysis.relation, top_k=k1, negative_k=k2,
            relation_weight=s.relation_weight, k=gem_k(analysis.relation, s.gem_k_big, s.gem_k_small, s.gem_k_other),
            within_guard=s.within_guard, nan_wins=s.nan_wins,
        )
        texts = [item.expression, *self.negative_prompts(analysis), self.gem_prompt(analysis)]
        # The final score of each candidate at its proposal's place; the other proposals were not scored.
        final = torch.full_like(scores, float("nan")).index_put_((guided.candidates,), guided.final.to(scores))
        return HybridGLResult(
            phrase=item.phrase,
            expression=item.expression,
            noun_phrase=analysis.noun_phrase,
            index=guided.index,
            mask=masks[guided.index].cpu(),
            scores=final.cpu(),
            truncated=self.truncated(texts),
            has_noun=item.has_noun,
            clip_scores=scores.cpu(),
            pure_index=guided.pure_index,
            gem=guided.gem.cpu(),
            candidates=[int(i) for i in guided.candidates],
            relation=guided.relation.cpu(),
            other_noun_phrases=list(analysis.other_noun_phrases),
            direction=analysis.direction,
            relation_flag=analysis.relation,
            k1=k1,
            k2=k2,
        )
