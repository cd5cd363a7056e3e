"""Global-Local CLIP (Yu, Seo and Son, CVPR 2023): the project's first method.

Every proposal gets a global-context feature (the whole image seen through
the mask) and a local-context feature (the masked crop); they are blended by
alpha, the text features of the expression and its target noun phrase by
beta, and the best-scoring proposal is the answer. ``paper-*`` presets
reproduce the published code, quirks included: each quirk is a settings
field, so it can be switched off one at a time and measured.

The blend, normalisation and dot-vs-cosine rules live here once
(:func:`visual_blend`, :func:`text_blend`, :func:`scoring_visual`,
:func:`proposal_scores`); the method and ``globallocal sweep`` both call them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image

from ...data.images import IMAGENET_MEAN, IMAGENET_STD, x800
from ...models.text import ParsedPhrase
from ...proposals import Proposals, tight_boxes
from ..base import ImageFeatures, Method, SegmentResult, TextEncoder
from .settings import GlobalLocalSettings
from .visual import (
    crop_boxes,
    local_features,
    resize,
    resnet_masked_features,
    resnet_trunk,
    vit_masked_features,
    vit_trunk,
)

# -- the scoring rules, shared with the sweep (sweep.py) ----------------------------


def visual_blend(
    global_features: torch.Tensor, local_features: torch.Tensor, alpha: float, feature_norm: str, family: str
) -> torch.Tensor:
    """Blended visual features (N, D)."""
    global_part, local_part = global_features, local_features
    if feature_norm == "unit":
        global_part = F.normalize(global_part, dim=-1)
        local_part = F.normalize(local_part, dim=-1)
    elif family == "resnet":
        # The reference normalises the ResNet crop feature but not the pooled one.
        local_part = F.normalize(local_part, dim=-1)
    return alpha * global_part + (1 - alpha) * local_part


def text_blend(
    expressions: torch.Tensor, noun_phrases: torch.Tensor, beta: float, feature_norm: str, family: str
) -> torch.Tensor:
    """Mixed text features (S, D) from raw ones."""
    if feature_norm == "unit" or family == "resnet":
        expressions = F.normalize(expressions, dim=-1)
        noun_phrases = F.normalize(noun_phrases, dim=-1)
    return beta * expressions + (1 - beta) * noun_phrases


def _dot_product(feature_norm: str, family: str) -> bool:
    # The reference scores ResNet features by a plain dot product, everything else by cosine.
    return feature_norm == "paper" and family == "resnet"


def scoring_visual(visual: torch.Tensor, feature_norm: str, family: str) -> torch.Tensor:
    """The visual side of a score: the blend, L2-normalised for cosine scoring (once per alpha)."""
    return visual if _dot_product(feature_norm, family) else F.normalize(visual, dim=-1)


def proposal_scores(text: torch.Tensor, visual: torch.Tensor, feature_norm: str, family: str) -> torch.Tensor:
    """Scores (S, N) of mixed text features against :func:`scoring_visual`."""
    if _dot_product(feature_norm, family):
        return text @ visual.T
    return F.normalize(text, dim=-1) @ visual.T


def feature_shapes(count: int | None, width: int | None) -> dict[str, tuple[int | None, ...]]:
    """The image features of ``count`` proposals with CLIP features ``width`` wide (None: any)."""
    return {"global": (count, width), "local": (count, width)}


# -- the method -------------------------------------------------------------------


class _ImageInputs(NamedTuple):
    """What every proposal's features start from (:meth:`GlobalLocal.image_context`)."""

    trunk: torch.Tensor
    """The unmasked part of the global pass: ViT tokens after the first L-k blocks, or ResNet's normalised map."""
    full: torch.Tensor
    """The shared input tensor resized to the photo's size, which the crops are cut from."""


class GlobalLocal(Method):
    """Global-Local CLIP scoring of mask proposals (SPEC.md)."""

    name = "global-local"
    per_proposal = ("global", "local")
    visual_settings = ("clip_normalization", "antialias", "crop_fill", "crop_box", "short_side", "masked_blocks",
                       "chunk_size")
    settings: GlobalLocalSettings

    @property
    def crop_chunk_size(self) -> int:
        """Masked crops per image-tower batch: the setting, else 8 on the CPU and 64 on CUDA."""
        return self.settings.chunk_size or (64 if self.device.type == "cuda" else 8)

    def _input_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.settings.clip_normalization == "clip":
            visual = self.clip.visual
            mean = getattr(visual, "image_mean", None) or OPENAI_DATASET_MEAN
            std = getattr(visual, "image_std", None) or OPENAI_DATASET_STD
            return tuple(mean), tuple(std)
        return IMAGENET_MEAN, IMAGENET_STD

    def image_context(self, image: Image.Image) -> _ImageInputs:
        """The shared input tensor at CLIP's size through the unmasked trunk, and at the photo's size for crops."""
        settings = self.settings
        mean, std = self._input_stats()
        shared = x800(image, settings.short_side, mean, std).to(self.device)
        size = self.clip.image_size
        clip_input = resize(shared, (size, size), settings.antialias)[None]
        if self.clip.family == "resnet":
            trunk = resnet_trunk(self.clip, clip_input)
        else:
            trunk = vit_trunk(self.clip, clip_input, settings.masked_blocks)
        return _ImageInputs(trunk, resize(shared, (image.height, image.width), settings.antialias))

    def proposal_features(self, image: Image.Image, proposals: Proposals | None,
                          context: _ImageInputs) -> dict[str, torch.Tensor]:
        """Every proposal's unblended global and local features (SPEC 1, 3, 4); a row depends on its own mask
        and box only (the crops are per mask, the soft masks per mask)."""
        assert proposals is not None
        settings = self.settings
        if self.clip.family == "resnet":
            global_features = resnet_masked_features(
                self.clip, context.trunk, proposals.masks, antialias=settings.antialias
            )
        else:
            global_features = vit_masked_features(
                self.clip, context.trunk, proposals.masks, settings.masked_blocks, antialias=settings.antialias
            )
        boxes = proposals.boxes if settings.crop_box == "projection" else tight_boxes(proposals.masks)
        windows = crop_boxes(boxes, image.height, image.width)
        fill = torch.tensor(IMAGENET_MEAN) if settings.crop_fill == "paper" else torch.zeros(3)
        local = local_features(
            self.clip, context.full, proposals.masks, windows, fill, self.crop_chunk_size, settings.antialias
        )
        return {"global": global_features, "local": local}

    def feature_shapes(self, count: int) -> dict[str, tuple[int | None, ...]]:
        return feature_shapes(count, self.clip.embed_dim)

    def uses_projection_boxes(self) -> bool:
        return self.settings.crop_box == "projection"

    def visual_features(self, image: ImageFeatures) -> torch.Tensor:
        """Blended visual features (N, D) of an image, per the settings."""
        s = self.settings
        return visual_blend(image.tensors["global"], image.tensors["local"], s.alpha, s.feature_norm,
                            self.clip.family)

    def text_features(self, parsed: Sequence[ParsedPhrase], encode: TextEncoder) -> torch.Tensor:
        """Mixed text features (len(parsed), D), per the settings."""
        s = self.settings
        expressions = encode([item.expression for item in parsed])
        noun_phrases = encode([item.noun_phrase for item in parsed])
        return text_blend(expressions, noun_phrases, s.beta, s.feature_norm, self.clip.family)

    def scores(self, image: ImageFeatures, text: torch.Tensor) -> torch.Tensor:
        """Scores (len(text), N) of every proposal for each mixed text feature."""
        s, family = self.settings, self.clip.family
        visual = scoring_visual(self.visual_features(image).to(text.device), s.feature_norm, family)
        return proposal_scores(text, visual, s.feature_norm, family)

    def score_parts(
        self, image: ImageFeatures, parsed: Sequence[ParsedPhrase], encode: TextEncoder
    ) -> list[dict[str, torch.Tensor]]:
        """How much of each proposal's score came from its global and its local feature.

        The score is linear in the blended visual feature alpha * g + (1 - alpha) * l
        once the blend's norm is fixed (cosine scoring divides by it, dot-product
        scoring does not), so the two terms scored apart add up to the score.
        """
        settings, family = self.settings, self.clip.family
        g, local = image.tensors["global"], image.tensors["local"]
        global_term = visual_blend(g, local, 1.0, settings.feature_norm, family)
        local_term = visual_blend(g, local, 0.0, settings.feature_norm, family)
        blend = self.visual_features(image)
        scale = (scoring_visual(blend, settings.feature_norm, family).norm(dim=-1) / blend.norm(dim=-1))[:, None]
        text = self.text_features(parsed, encode)
        alpha = settings.alpha
        global_scores = proposal_scores(text, alpha * global_term * scale, settings.feature_norm, family).cpu()
        local_scores = proposal_scores(text, (1 - alpha) * local_term * scale, settings.feature_norm, family).cpu()
        return [{"global": gs, "local": ls} for gs, ls in zip(global_scores, local_scores)]

    def answer(self, image: ImageFeatures, parsed: Sequence[ParsedPhrase], encode: TextEncoder) -> list[SegmentResult]:
        assert image.proposals is not None
        all_scores = self.scores(image, self.text_features(parsed, encode)).cpu()
        results = []
        for item, scores in zip(parsed, all_scores):
            index = int(torch.argmax(scores))
            results.append(
                SegmentResult(
                    phrase=item.phrase,
                    expression=item.expression,
                    noun_phrase=item.noun_phrase,
                    index=index,
                    mask=image.proposals.masks[index],
                    scores=scores.clone(),
                    # The noun phrase is part of the expression: only the expression can overflow.
                    truncated=self.truncated([item.expression]),
                    has_noun=item.has_noun,
                )
            )
        return results
