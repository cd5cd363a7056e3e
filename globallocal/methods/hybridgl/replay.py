"""HybridGL answers replayed for other weights, from cached per-image tensors and per-phrase text features.

What ``globallocal sweep`` varies for HybridGL (beta, the relation / GEM
mix, the three k values) enters after every expensive step: the hybrid
features, GEM's tokens and every text feature stay as cached. Per sentence,
the quantities that no swept weight changes (the other-noun scores, the
heat map's region means) are computed once by :func:`sentence_quantities`;
:func:`replay` then decides at each point with the method's own rules
(:func:`~globallocal.methods.hybridgl.text.guided_answer`), so at the run's
own weights it picks what the run picked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .method import NEGATIVE_PROMPT, HybridGLSettings
from .text import Guided, clip_scores, gem_k, guided_answer, heat_map_region_means


@dataclass(frozen=True)
class SentenceQuantities:
    """One sentence's inputs to the decision that no swept weight changes."""

    expression: torch.Tensor
    """Raw text feature of the expression (D,)."""
    noun_phrase: torch.Tensor
    """Raw text feature of the noun phrase (D,)."""
    negative_scores: torch.Tensor | None
    """s_neg (N,), None without other noun phrases."""
    inside: torch.Tensor
    outside: torch.Tensor
    """The guided heat map's mean inside / outside each mask (N,)."""
    relation: str


def sentence_quantities(
    settings: HybridGLSettings,
    tensors: Mapping[str, torch.Tensor],
    masks: torch.Tensor,
    tau: float | torch.Tensor,
    text_features: Mapping[str, torch.Tensor],
    expression: str,
    noun_phrase: str,
    other_noun_phrases: list[str],
    direction: str,
    relation: str,
) -> SentenceQuantities:
    """The cached image tensors and the text features (by string) of one sentence, ready to replay."""
    unit = F.normalize(tensors["features"].float(), dim=-1)
    negative_scores = None
    if other_noun_phrases:
        negatives = torch.stack([text_features[NEGATIVE_PROMPT.format(other)] for other in other_noun_phrases])
        negative_scores = clip_scores(unit, negatives.sum(dim=0) / len(negatives), tau)
    inside, outside = heat_map_region_means(
        tensors["gem_tokens"], text_features[settings.gem_prompt.format(noun_phrase)], masks, direction,
        gem_size=settings.gem_size, double_minmax=settings.double_minmax, vertical=settings.vertical_masks,
    )
    return SentenceQuantities(text_features[expression], text_features[noun_phrase], negative_scores, inside,
                              outside, relation)


def replay(
    settings: HybridGLSettings,
    tensors: Mapping[str, torch.Tensor],
    sentence: SentenceQuantities,
    tau: float | torch.Tensor,
    top_k: int,
    negative_k: int,
    **point: float,
) -> Guided:
    """The decision at ``point`` (values for :data:`SWEPT_SETTINGS`; the others are ``settings``'s).
    ``top_k`` and ``negative_k`` are K1 and K2 as the run used them (capped, Q-sticky-k applied)."""
    s = settings.with_overrides(**point)
    unit = F.normalize(tensors["features"].float(), dim=-1)
    scores = clip_scores(unit, s.beta * sentence.expression + (1 - s.beta) * sentence.noun_phrase, tau)
    return guided_answer(
        scores, sentence.negative_scores, tensors["boxes_xywh"], sentence.inside, sentence.outside,
        sentence.relation, top_k=top_k, negative_k=negative_k, relation_weight=s.relation_weight,
        k=gem_k(sentence.relation, s.gem_k_big, s.gem_k_small, s.gem_k_other), within_guard=s.within_guard,
        nan_wins=s.nan_wins,
    )
