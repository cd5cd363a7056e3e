"""What every scoring method provides: settings, per-image features, answers.

A method is built once (models loaded), then :meth:`Method.image_features`
is paid once per image and :meth:`Method.answer` answers phrase after
phrase from those features; :class:`~globallocal.Segmenter` drives both and
keeps what is shared between methods (the image, proposals, the parser, the
text-feature cache). Image features are a dict of named float tensors so that
the feature cache stores any method's without knowing what they mean.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from PIL import Image

from ..models.text import ParsedPhrase, is_truncated, read_text
from ..proposals import Proposals
from ..proposals.concept_image import ConceptImage
from ..proposals.concepts import ConceptAnswer, ConceptQuery, concept_query, step_fields
from .settings import MethodSettings

TextEncoder = Callable[[Sequence[str]], torch.Tensor]
"""Raw CLIP text features (len(texts), D), float32, through the segmenter's cache."""


def json_float(value: float | torch.Tensor) -> float | None:
    """A full-precision float, NaN as None (JSON has no NaN: it is written null)."""
    value = float(value)
    return None if value != value else value


def json_floats(values: torch.Tensor) -> list[float | None]:
    """:func:`json_float` of every value."""
    return [json_float(value) for value in values.tolist()]


@dataclass
class SegmentResult:
    """The answer to one phrase. Methods add their own fields in subclasses."""

    phrase: str
    """The phrase as given."""
    expression: str
    """What CLIP read: lower-cased, spaCy tokens joined by single spaces."""
    noun_phrase: str
    """The target noun phrase (the whole expression when the parse has none)."""
    index: int | None
    """Index of the chosen proposal (None for a method that draws its own mask)."""
    mask: torch.Tensor
    """The chosen mask, bool (H, W) at the image's size."""
    scores: torch.Tensor
    """The score that chose ``index``, of every proposal, float (N,): ``index`` is its maximum. NaN where the
    method did not score a proposal (HybridGL scores only its candidates); empty without proposals. A method's
    other scores are fields of their own (HybridGL's ``clip_scores``)."""
    truncated: bool
    """Whether the expression or noun phrase was cut to CLIP's context length."""
    has_noun: bool
    """Whether spaCy found a noun in the phrase."""
    concept: ConceptAnswer | None = field(default=None, kw_only=True)
    """With phrase-dependent proposals (SAM 3's concepts): the candidates of this phrase's query, which
    ``index`` numbers, and the step that found them; None with proposals of the image."""

    ranking_label: ClassVar[str] = "score"
    """What ``scores`` are called in captions and in the JSON's ``score_name`` ("final score" for HybridGL)."""

    @property
    def no_candidate(self) -> bool:
        """Whether the phrase-dependent source found no candidate for the phrase (the answer: no target)."""
        return self.concept is not None and len(self.concept.proposals) == 0

    @property
    def score(self) -> float | None:
        """The chosen proposal's score: None without a chosen proposal, or where its score is undefined (NaN)."""
        return None if self.index is None else json_float(self.scores[self.index])

    def dense_scores(self) -> torch.Tensor:
        """A defined score of every proposal, (N,), that re-ranking with another score starts from (a blend):
        ``scores``, or the score before a method narrowed its choice to some proposals (HybridGL's CLIP score)."""
        return self.scores

    def among(self, proposals: Proposals | None) -> Proposals | None:
        """The proposals ``index`` and ``scores`` number: this phrase's own candidates with phrase-dependent
        proposals, else the image's ``proposals``."""
        return self.concept.proposals if self.concept is not None else proposals

    def candidate_fields(self, aliases: bool = False) -> dict[str, Any]:
        """With phrase-dependent proposals: the source's score of every candidate and of the chosen one, the
        step that answered and its prompt (in the JSON and, ``aliases`` with their older names too, in records);
        nothing otherwise."""
        if self.concept is None:
            return {}
        scores = [float(value) for value in self.concept.proposals.scores]
        return {
            **step_fields(self.concept, aliases),
            "proposal_scores": scores,
            "proposal_score": None if self.index is None else scores[self.index],
        }

    def failure(self) -> str | None:
        """Why no answer could be given for a reason outside the method and the photo (an endpoint that did not
        answer); None for an answer. A command answering one photo stops with it; a long run records it and
        asks again when resumed."""
        return None

    def ranking(self) -> list[tuple[int, float]]:
        """(proposal, value) by the score the method chose with, the answer first, then best first; empty for
        a method that draws its own mask. Pictures and the page rank and caption by it."""
        if self.index is None:
            return []
        values = [float(value) for value in self.scores]
        others = sorted((i for i in range(len(values)) if i != self.index), key=lambda i: -values[i])
        return [(i, values[i]) for i in (self.index, *others)]

    def other_answers(self) -> dict[str, int]:
        """Further answers a method reports beside its own (HybridGL: "pure", without spatial guidance)."""
        return {}

    def record_fields(self) -> dict[str, Any]:
        """Method-specific fields an evaluation run keeps in each sentence record (small: what
        ``globallocal sweep`` needs to replay the answer without the parser)."""
        return {}

    def answer_fields(self) -> dict[str, Any]:
        """What a method says of how it answered, in every output (the JSON, batch results, evaluation records):
        a VLM's answer set, outcome, cost and transcript; nothing by default."""
        return {}

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-ready values, floats at full precision (Python floats are doubles)."""
        return {
            "phrase": self.phrase,
            "expression": self.expression,
            "noun_phrase": self.noun_phrase,
            "has_noun": self.has_noun,
            "index": self.index,
            "score_name": self.ranking_label,
            "score": self.score,
            "scores": json_floats(self.scores),
            "truncated": self.truncated,
            **self.candidate_fields(),
            **self.answer_fields(),
        }


def stop_on_failure(results: Sequence[SegmentResult]) -> None:
    """A photo's answers are all given, or none is: an answer that failed for a reason outside the method (an
    endpoint that did not answer, :meth:`SegmentResult.failure`) is one error, so that a command writes nothing
    and a page shows the error rather than an empty mask."""
    from ..errors import VlmEndpointError

    for result in results:
        reason = result.failure()
        if reason is not None:
            raise VlmEndpointError(f"{reason}; the phrase {result.phrase!r} got no answer", transport=True)


@dataclass
class ImageFeatures:
    """What a method computed for one image."""

    image: Image.Image
    proposals: Proposals | None
    tensors: dict[str, torch.Tensor]
    concepts: ConceptImage | None = None
    """With a phrase-dependent source: the photo's queries and answers, which a method that prompts the source
    itself (:meth:`Method.prompts_source`) asks; answers are kept, so a prompt asked again costs nothing."""
    box_prompt: Callable[[Sequence[float]], torch.Tensor] | None = None
    """With a promptable proposal source (SAM, SAM 2): the mask of a box prompt (x0, y0, x1, y1 in the photo's
    pixels) on this photo, bool (H, W); None without one."""


class Method(ABC):
    """A scoring method: its models, its settings, and how it answers a phrase."""

    name: ClassVar[str]
    uses_proposals: ClassVar[bool] = True
    visual_settings: ClassVar[tuple[str, ...]] = ()
    """The settings the image features depend on (the feature cache's key); the rest apply per phrase."""
    per_proposal: tuple[str, ...] = ()
    """The image-feature tensors with one row per proposal (first dim N), each row computed from its own
    proposal alone (:meth:`proposal_features`); the others are per image (:meth:`shared_features`). This
    split lets phrase-dependent proposals be encoded mask by mask, each mask once."""

    def __init__(self, clip, nlp, settings: MethodSettings) -> None:
        self.clip = clip
        self.nlp = nlp
        self.settings = settings

    def image_features(self, image: Image.Image, proposals: Proposals | None) -> dict[str, torch.Tensor]:
        """Everything the method needs from the image, as named tensors (computed once per image): the
        per-image ones and every proposal's."""
        context = self.image_context(image)
        return {**self.shared_features(image, context), **self.proposal_features(image, proposals, context)}

    def image_context(self, image: Image.Image) -> Any:
        """Work on the image that every proposal's features start from (resized inputs, a trunk pass); not
        kept among the features. None by default."""
        return None

    def shared_features(self, image: Image.Image, context: Any) -> dict[str, torch.Tensor]:
        """The per-image tensors, which no proposal changes; none by default."""
        return {}

    def proposal_features(
        self, image: Image.Image, proposals: Proposals | None, context: Any
    ) -> dict[str, torch.Tensor]:
        """The :attr:`per_proposal` tensors of ``proposals``, one row each; a method with proposals defines it."""
        raise NotImplementedError(f"method {self.name} computes its image features in image_features")

    def feature_shapes(self, count: int) -> dict[str, tuple[int | None, ...]]:
        """The shape of each image-feature tensor of ``count`` proposals, which features read back (a cache
        entry) must have (None: any size); by default, one row per proposal of each :attr:`per_proposal` one."""
        return {name: (count, None) for name in self.per_proposal}

    def local_noun_phrase(self, parsed: ParsedPhrase) -> str:
        """The target noun phrase this method scores beside the expression (its own parse)."""
        return parsed.noun_phrase

    def concept_query(self, parsed: ParsedPhrase) -> ConceptQuery:
        """What a phrase asks a phrase-dependent source: :meth:`local_noun_phrase` and its head noun (none
        when spaCy found no noun)."""
        return concept_query(parsed, self.nlp, noun_phrase=self.local_noun_phrase(parsed))

    def prompts_source(self) -> bool:
        """Whether the method sends a phrase-dependent source prompts of its own choosing (through
        :attr:`ImageFeatures.concepts`) instead of choosing among its :meth:`concept_query`'s candidates; the
        segmenter then asks the source nothing for it. No by default."""
        return False

    @abstractmethod
    def answer(self, image: ImageFeatures, parsed: Sequence[ParsedPhrase], encode: TextEncoder) -> list[SegmentResult]:
        """The answers to several parsed phrases about one image."""

    def score_parts(
        self, image: ImageFeatures, parsed: Sequence[ParsedPhrase], encode: TextEncoder
    ) -> list[dict[str, torch.Tensor]]:
        """Per phrase, named parts of every proposal's score that add up to it (the page shows them); none by
        default."""
        return [{} for _ in parsed]

    def text_strings(self, parsed: ParsedPhrase) -> list[str]:
        """The strings whose CLIP text features :meth:`answer` encodes for this phrase (cache seeding)."""
        return [parsed.expression, parsed.noun_phrase]

    def truncated(self, texts: Sequence[str]) -> bool:
        """Whether any of these texts is longer than CLIP's context (each is cut to it, with a warning)."""
        return any(is_truncated(text, self.clip) for text in texts)

    def read_text(self, text: str) -> str:
        """The part of ``text`` this method's CLIP reads (all of it for a method without CLIP)."""
        return text if self.clip is None else read_text(text, self.clip)

    def uses_projection_boxes(self) -> bool:
        """Whether the scores depend on the proposals' projection boxes (``Proposals.boxes``); the JSON then
        reports them beside the tight boxes. No by default."""
        return False

    def visual_identity(self) -> dict[str, Any]:
        """What decides the image features besides the model: the method and its visual settings."""
        return {"method": self.name, **{name: getattr(self.settings, name) for name in self.visual_settings}}

    def describe(self) -> dict[str, Any]:
        """The method and every setting, as a run's configuration records them."""
        return {"method": self.name, **self.settings.to_dict()}

    def settings_used(self, image_size: tuple[int, int]) -> dict[str, Any]:
        """:meth:`describe` with the values a setting left to a default resolved, as used on a photo of
        ``image_size`` (H, W): what the `segment` JSON reports. A run's configuration keeps :meth:`describe`, so
        that its identity does not change."""
        return self.describe()

    @property
    def device(self) -> torch.device:
        return self.clip.device
