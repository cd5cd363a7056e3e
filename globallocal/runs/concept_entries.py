"""An evaluated image's phrase-dependent candidates in the feature cache: one entry per query.

With a phrase-dependent source (SAM 3's concepts) the proposals depend on
the sentence, so the cache keeps one entry per image and query (noun phrase
and head noun) under the source's key: the query's candidates, the step that
found them and the method's features of them. Before the image's sentences
are answered, every query the cache holds is given to the segmenter
(:meth:`~globallocal.Segmenter.add_concept`), so neither the source nor the
image tower runs for it; each other query is stored once it is answered.
Each sentence record names its entry (``cache_entry``), which is what
``globallocal sweep`` replays it from.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from PIL import Image

from ..proposals.concepts import ConceptAnswer, ConceptQuery, concept_key
from .cache import FeatureCache, image_digest


class ConceptEntries:
    """The cache entries of one image's queries."""

    def __init__(self, cache: FeatureCache, proposal_key: dict[str, Any], image_id: int, image: Image.Image) -> None:
        self.cache, self.proposal_key, self.image_id = cache, proposal_key, image_id
        self.pixels, self.image_size = image_digest(image), (image.height, image.width)
        self.stored: set[ConceptQuery] = set()

    def name(self, query: ConceptQuery) -> str:
        return self.cache.entry_name(self.image_id, self.pixels, concept_key(self.proposal_key, query))

    def seed(self, segmenter: Any, queries: Iterable[ConceptQuery]) -> None:
        """Give the segmenter every query's answer and features that the cache holds (one that is damaged or
        names a step the source has not is computed again, with a warning)."""
        steps = segmenter.proposal_source.answer_steps

        def check_answer(info: dict[str, Any]) -> None:
            if info.get("step") not in steps:
                raise ValueError(f"its answer's step {info.get('step')!r:.40} is not one of {', '.join(steps)}")
            if not isinstance(info.get("prompt"), str):
                raise ValueError(f"its answer's prompt {info.get('prompt')!r:.40} is not text")

        for query in dict.fromkeys(queries):
            entry = self.cache.visual.load(self.name(query), segmenter.method.feature_shapes, self.image_size,
                                           check_answer)
            if entry is not None:
                answer = ConceptAnswer(entry.proposals(), entry.info["step"], entry.info["prompt"])
                segmenter.add_concept(query, answer, entry.tensors)
                self.stored.add(query)

    def store(self, segmenter: Any, query: ConceptQuery) -> str:
        """The query's entry name, its answer and features written first when the cache lacks them."""
        name = self.name(query)
        if query not in self.stored:
            answer, tensors = segmenter.concept_entry(query)
            self.cache.visual.save(name, answer.proposals, tensors, {"step": answer.step, "prompt": answer.prompt})
            self.stored.add(query)
        return name
