"""SAM 3 alone as a method: the baseline every SAM 3 combination is compared with.

The phrase's target noun phrase (``prompt="noun-phrase"``) or its whole
expression (``prompt="expression"``, cut to SAM 3's 32 text tokens with a
warning) is SAM 3's concept prompt; the answer is its top-scoring instance
(``answer="top"``) or the union of the instances it kept (``answer="union"``,
for PhraseCut's multi-instance phrases). No CLIP scores anything: the
answer is a pure function of SAM 3's
:class:`~globallocal.proposals.concepts.ConceptAnswer` (see
:func:`sam3_results`), so a segmenter that runs SAM 3 itself can feed it.
When the prompt finds nothing above the threshold, the fallback chain of
:class:`~globallocal.proposals.sam3.Sam3ConceptSource` answers and the
result's ``concept`` records which step did.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from ...models.text import ParsedPhrase
from ...proposals import Proposals
from ...proposals.concepts import ConceptAnswer, concept_query
from ...proposals.sam3 import Sam3ConceptSource
from ...proposals.sam3_weights import load_sam3
from ..base import ImageFeatures, Method, SegmentResult, TextEncoder
from .settings import Sam3Settings


def answer_mask(proposals: Proposals, answer: str) -> tuple[int | None, torch.Tensor]:
    """(index of the chosen instance or None, the bool mask): the top instance or the union of all."""
    if len(proposals) == 0:
        return None, torch.zeros(proposals.image_size, dtype=torch.bool)
    if answer == "top":
        return 0, proposals.masks[0]  # proposals are best first
    return None, proposals.masks.any(dim=0)


def sam3_results(
    parsed: Sequence[ParsedPhrase], answers: Sequence[ConceptAnswer], answer: str, truncated: Sequence[bool]
) -> list[SegmentResult]:
    """The method's answers, from SAM 3's instances per phrase alone (each result's ``concept`` is the answer
    of its phrase, with the step of the fallback chain that found it)."""
    results = []
    for item, concept, cut in zip(parsed, answers, truncated, strict=True):
        index, mask = answer_mask(concept.proposals, answer)
        results.append(SegmentResult(
            phrase=item.phrase, expression=item.expression, noun_phrase=item.noun_phrase, index=index, mask=mask,
            scores=concept.proposals.scores, truncated=cut, has_noun=item.has_noun, concept=concept,
        ))
    return results


class Sam3Method(Method):
    """SAM 3's own instances as the answer (no CLIP scoring)."""

    name = "sam3"
    uses_proposals = False
    settings: Sam3Settings

    def __init__(self, clip, nlp, settings: Sam3Settings, source: Sam3ConceptSource) -> None:
        super().__init__(clip, nlp, settings)
        self.source = source
        self._encoded: Image.Image | None = None  # the image the source's vision features are of

    @property
    def device(self) -> torch.device:
        return self.source.device

    def visual_identity(self) -> dict[str, Any]:
        return {**super().visual_identity(), "sam3_weights": self.source.weights}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "sam3": self.source.settings}

    def image_features(self, image: Image.Image, proposals: Proposals | None) -> dict[str, torch.Tensor]:
        # SAM 3's vision features stay in the source (SAM 3's own structure, not named tensors).
        self.source.set_image(image)
        self._encoded = image
        return {}

    def text_strings(self, parsed: ParsedPhrase) -> list[str]:
        return []  # no CLIP text features

    def answer(self, image: ImageFeatures, parsed: Sequence[ParsedPhrase], encode: TextEncoder) -> list[SegmentResult]:
        s = self.settings
        self.source.configure(threshold=s.threshold, max_proposals=self.source.max_proposals, fallback=s.fallback,
                              below_threshold_k=s.below_threshold_k)
        if image.image is not self._encoded:  # features restored from a cache: encode this image once
            self.image_features(image.image, None)
        queries = [concept_query(item, self.nlp, s.prompt) for item in parsed]
        truncated = [self.source.truncated(query.noun_phrase) for query in queries]
        return sam3_results(parsed, self.source.answer(queries), s.answer, truncated)


def build_sam3(
    clip,
    nlp,
    settings: Sam3Settings,
    weights: str | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    max_proposals: int | None = None,
    sam2: Any = None,
    source: Sam3ConceptSource | None = None,
) -> Sam3Method:
    """SAM 3 as a method: ``source`` when given (shared with a segmenter), else loaded from ``weights``."""
    if source is None:
        source = Sam3ConceptSource.from_loaded(
            load_sam3(weights, device, precision), threshold=settings.threshold, max_proposals=max_proposals,
            fallback=settings.fallback, below_threshold_k=settings.below_threshold_k, sam2=sam2,
        )
    return Sam3Method(clip, nlp, settings, source)
