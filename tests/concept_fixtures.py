"""A stand-in for SAM 3's concept source, with exactly its interface, counting what it is asked.

:class:`FakeConceptSource` answers a noun phrase with the masks a table gives
it (or, for the synthetic REFER photos, with a choice of the photo's
instances that depends on the noun phrase), so the segmenter's and the
evaluation's handling of phrase-dependent proposals can be tested without
SAM 3's weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from refer_fixtures import IMAGES, shifted_proposals

from globallocal.proposals import Proposals, postprocess
from globallocal.proposals.concepts import ConceptAnswer, ConceptQuery

Masks = Callable[[Image.Image, str], np.ndarray | None]
"""(image, prompt) -> bool masks (N, H, W), or None for no instance."""


class FakeConceptSource:
    """SAM 3's interface: ``set_image`` once per photo (counted), ``answer`` a batch of queries (recorded).

    A noun phrase with no masks falls back to its head noun, as SAM 3's chain does.
    """

    phrase_dependent: ClassVar[bool] = True
    answer_steps: ClassVar[tuple[str, ...]] = ("noun-phrase", "head-noun", "none")

    def __init__(self, masks: Masks, settings: dict[str, Any] | None = None) -> None:
        self.masks = masks
        self.settings = settings or {"model": "fake", "threshold": 0.5, "fallback": ["head-noun"]}
        self.weights_file = None  # a model in memory: no weights file to identify it by
        self.image: Image.Image | None = None
        self.vision_calls = 0
        self.batches: list[list[ConceptQuery]] = []

    def set_image(self, image: Image.Image) -> None:
        self.image = image
        self.vision_calls += 1

    def _proposals(self, prompt: str) -> Proposals | None:
        found = self.masks(self.image, prompt)
        if found is None or len(found) == 0:
            return None
        masks = torch.as_tensor(np.asarray(found, dtype=bool))
        # Scores fall with the mask's place, so the source's order is kept by postprocess.
        scores = torch.tensor([0.9 - 0.1 * i for i in range(len(masks))], dtype=torch.float32)
        return postprocess(Proposals.from_masks(masks, scores))

    def answer(self, queries: Sequence[ConceptQuery]) -> list[ConceptAnswer]:
        assert self.image is not None, "answer() before set_image()"
        self.batches.append(list(queries))
        answers = []
        for query in queries:
            steps = [("noun-phrase", query.noun_phrase), ("head-noun", query.head_noun)]
            for step, prompt in steps:
                found = self._proposals(prompt) if prompt else None
                if found is not None:
                    answers.append(ConceptAnswer(found, step, prompt))
                    break
            else:
                height, width = self.image.height, self.image.width
                empty = Proposals.from_masks(torch.zeros((0, height, width), dtype=torch.bool))
                answers.append(ConceptAnswer(empty, "none", ""))
        return answers


def table_masks(table: dict[str, np.ndarray]) -> Masks:
    """Masks looked up by prompt."""
    return lambda image, prompt: table.get(prompt)


def refer_masks(dataset) -> Masks:
    """For a synthetic REFER photo: some of its shifted instances, from a place set by the prompt's letters.

    Nothing for a prompt naming a box (so "tall box right" gets no candidate at all: "box" is its head noun
    too), nor for a longer prompt naming a blob (so "round blob top left" is answered by its head noun).
    """
    sizes = {(width, height): image_id for image_id, (height, width, _) in IMAGES.items()}

    def masks(image: Image.Image, prompt: str) -> np.ndarray | None:
        if "box" in prompt or ("blob" in prompt and prompt != "blob"):
            return None
        instances = shifted_proposals(dataset.instance_masks(sizes[image.size])).masks.numpy()
        return instances[sum(map(ord, prompt)) % len(instances):]

    return masks
