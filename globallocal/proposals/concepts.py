"""Proposals that depend on the phrase: a concept source (SAM 3), and what the segmenter keeps per image.

A class-agnostic source (FreeSOLO, SAM) proposes the same masks whatever the
phrase; a concept source is asked for the instances of a noun phrase, so a
phrase's candidates are the instances of its own noun phrase. The
:class:`~globallocal.Segmenter` drives any source with ``phrase_dependent``
set: the image is given once (:meth:`ConceptSource.set_image`), then the
distinct noun phrases of the phrases asked are sent as one batch
(:meth:`ConceptSource.answer`, queries and answers as
:mod:`globallocal.proposals.sam3` defines them); :class:`ConceptImage` keeps
the answers and every mask's features for the current image.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from PIL import Image

from . import Proposals, check_image_size
from .sam3 import ConceptAnswer, ConceptQuery

if TYPE_CHECKING:
    from ..methods import Method

_UNSET = object()  # ConceptImage's context before it is computed (a method's context may be None)
_SHOWN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Per concept source, the ConceptImage whose photo it holds now."""


class ConceptSource(Protocol):
    """A phrase-dependent proposal source (``globallocal.proposals.sam3.Sam3ConceptSource``)."""

    phrase_dependent: ClassVar[bool]
    answer_steps: ClassVar[tuple[str, ...]]
    """Every ``step`` its answers can name (a cached answer naming another is damaged)."""
    settings: dict[str, Any]

    def set_image(self, image: Image.Image) -> None: ...

    def answer(self, queries: Sequence[ConceptQuery]) -> list[ConceptAnswer]: ...


def is_phrase_dependent(source: object) -> bool:
    """Whether a proposal source answers per noun phrase (has ``phrase_dependent`` set)."""
    return bool(getattr(source, "phrase_dependent", False))


def mask_digests(proposals: Proposals) -> list[str]:
    """One digest per proposal of its mask and box: what that proposal's features depend on."""
    masks = proposals.masks.cpu()
    shape = repr(tuple(masks.shape[1:])).encode()
    digests = []
    for mask, box in zip(masks, proposals.boxes.cpu()):
        digest = hashlib.sha256(shape)
        digest.update(mask.numpy().tobytes())
        digest.update(box.numpy().tobytes())
        digests.append(digest.hexdigest())
    return digests


class MaskFeatures:
    """Per-proposal feature rows of one image, kept by mask: a mask seen again is not encoded again."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, torch.Tensor]] = {}

    def missing(self, digests: Sequence[str]) -> list[int]:
        """Indices of the first occurrence of each digest not kept yet."""
        seen: set[str] = set()
        indices = []
        for index, digest in enumerate(digests):
            if digest not in self.rows and digest not in seen:
                seen.add(digest)
                indices.append(index)
        return indices

    def add(self, digests: Sequence[str], tensors: dict[str, torch.Tensor]) -> None:
        """Keep row i of every tensor under ``digests[i]``."""
        for i, digest in enumerate(digests):
            self.rows[digest] = {name: tensor[i] for name, tensor in tensors.items()}

    def stack(self, digests: Sequence[str], names: Sequence[str]) -> dict[str, torch.Tensor]:
        """The kept rows of ``digests`` stacked per tensor name, in that order."""
        return {name: torch.stack([self.rows[digest][name] for digest in digests]) for name in names}


class ConceptImage:
    """The current image under a phrase-dependent source: each query's candidates, each mask's features.

    The source's vision pass and the method's per-image work run once, when
    first needed (at ``set_image``, or never when a feature cache holds every
    answer); a mask's per-proposal features are computed once, whichever
    noun phrases return it (kept by :func:`~globallocal.proposals.concepts.mask_digests`).
    """

    def __init__(self, image: Image.Image, source: ConceptSource, method: Method) -> None:
        self.image, self.source, self.method = image, source, method
        self.answers: dict[ConceptQuery, ConceptAnswer] = {}
        self.masks = MaskFeatures()
        self._context: Any = _UNSET
        self._shared: dict[str, torch.Tensor] | None = None

    def prepare(self) -> None:
        """Pay for the image now: the source's vision pass and the method's per-image features."""
        self._show_source()
        self.shared()

    def _show_source(self) -> None:
        # A source holds one image: it is set again when another ConceptImage (another photo, e.g. another
        # browser session's) has set it since.
        if _SHOWN.get(self.source) is not self:
            self.source.set_image(self.image)
            _SHOWN[self.source] = self

    def context(self) -> Any:
        if self._context is _UNSET:
            self._context = self.method.image_context(self.image)
        return self._context

    def shared(self) -> dict[str, torch.Tensor]:
        """The method's per-image tensors."""
        if self._shared is None:
            self._shared = self.method.shared_features(self.image, self.context())
        return self._shared

    def answer(self, queries: Sequence[ConceptQuery]) -> list[ConceptAnswer]:
        """The answers to ``queries``; the source is asked once, for those not answered before."""
        new = [query for query in dict.fromkeys(queries) if query not in self.answers]
        if new:
            self._show_source()
            answers = self.source.answer(new)
            if len(answers) != len(new):
                raise ValueError(f"the proposal source answered {len(answers)} of {len(new)} queries")
            for query, answer in zip(new, answers):
                self.answers[query] = _candidates(self.image, answer)
        return [self.answers[query] for query in queries]

    def features(self, proposals: Proposals) -> dict[str, torch.Tensor]:
        """The method's image features for these candidates: per-image ones, and per-proposal rows of the
        masks seen before reused (the image tower runs for the new masks only)."""
        digests = mask_digests(proposals)
        missing = self.masks.missing(digests)
        names = self.method.per_proposal
        if missing:
            new = self.method.proposal_features(self.image, proposals.select(torch.tensor(missing)), self.context())
            if sorted(new) != sorted(names):
                raise ValueError(f"{self.method.name} computed {sorted(new)}, not its per_proposal {sorted(names)}")
            self.masks.add([digests[i] for i in missing], new)
        return {**self.shared(), **self.masks.stack(digests, names)}

    def add(self, query: ConceptQuery, answer: ConceptAnswer, tensors: Mapping[str, torch.Tensor]) -> None:
        """Take a query's answer and its features as computed before (a feature cache): neither is computed."""
        answer = _candidates(self.image, answer)
        self.answers[query] = answer
        if len(answer.proposals) == 0:
            return
        names = self.method.per_proposal
        if self._shared is None:
            self._shared = {name: value for name, value in tensors.items() if name not in names}
        self.masks.add(mask_digests(answer.proposals), {name: tensors[name] for name in names})


def _candidates(image: Image.Image, answer: ConceptAnswer) -> ConceptAnswer:
    """A source's answer with its empty masks dropped (nothing to choose); step "none" when no mask is left."""
    proposals = answer.proposals
    if len(proposals) > 0:
        check_image_size(image, proposals)
    kept = proposals.drop_empty()
    if len(kept) == 0:
        return ConceptAnswer(kept, "none", "")
    return answer if len(kept) == len(proposals) else ConceptAnswer(kept, answer.step, answer.prompt)
