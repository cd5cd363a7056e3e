"""The pipeline: pay for an image once, then answer phrase after phrase.

Shaped like segment-anything's SamPredictor: :meth:`Segmenter.set_image`
computes what the scoring method needs from the image (for Global-Local,
every proposal's unblended global and local features) and keeps it;
:meth:`Segmenter.predict` parses a phrase and lets the method answer. The
image features are kept unblended, so weights such as alpha can change
between calls without touching the image again.

With a phrase-dependent proposal source (SAM 3's concepts,
:mod:`globallocal.proposals.concepts`) the proposals are not known at
``set_image``: it pays for what does not depend on them (the source's vision
pass, the method's per-image work), and each ``predict`` asks the source for
the noun phrases not asked before, in one batch, and encodes only the masks
not seen before (:class:`ConceptImage`). The method then picks among a
phrase's candidates exactly as among any proposals; a method that prompts
the source itself (:meth:`Method.prompts_source`) is handed the photo's
:class:`ConceptImage` instead, so its prompts share the one vision pass and
the photo's memory of answers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import spacy
import torch
from PIL import Image

from .data.images import ImageInput, load_image
from .errors import InputError, NoProposalsError
from .methods import DEFAULT_METHOD, ImageFeatures, Method, MethodSettings, SegmentResult, build_method, get_method
from .models.clip import ClipBundle, load_clip, resolve_device
from .models.text import ParsedPhrase, encode_texts, load_parser, parse_phrase
from .plurals import counted
from .proposals import Proposals, check_image_size
from .proposals.concept_image import ConceptImage
from .proposals.concepts import ConceptAnswer, ConceptQuery, ConceptSource, is_phrase_dependent

ProposalSource = Callable[[Image.Image], Proposals]


@dataclass
class ImageState:
    """What :meth:`Segmenter.set_image` computed for the current image (the method's :class:`ImageFeatures`)."""

    image: Image.Image
    proposals: Proposals | None
    tensors: dict[str, torch.Tensor]
    concepts: ConceptImage | None = None
    """With a phrase-dependent source and no proposals of its own: the candidates and features per query."""


class Segmenter:
    """Zero-shot referring segmentation: one scoring method, its models, and the current image.

    The method (:mod:`globallocal.methods`, Global-Local CLIP by default)
    decides the features and the answer; the segmenter keeps what every
    method shares: the image and its proposals, the parser, and an LRU cache
    of raw text features so a phrase asked again is not encoded again.
    """

    def __init__(
        self,
        clip: ClipBundle | None,
        nlp: spacy.Language,
        settings: MethodSettings | None = None,
        proposal_source: ProposalSource | ConceptSource | None = None,
        text_cache_size: int = 4096,
        method: Method | None = None,
    ) -> None:
        self.clip = clip
        self.nlp = nlp
        if method is None:
            method = build_method(DEFAULT_METHOD, clip, nlp)
        if settings is not None:
            method.settings = settings
        self.method = method
        self.proposal_source = proposal_source
        self._state: ImageState | None = None
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._text_cache_size = text_cache_size

    @classmethod
    def from_pretrained(
        cls,
        clip_model: str | None = None,
        clip_weights: str = "openai",
        preset: str | None = None,
        device: str = "auto",
        precision: str = "fp32",
        spacy_model: str | None = None,
        proposal_source: ProposalSource | ConceptSource | None = None,
        method: str = DEFAULT_METHOD,
        method_options: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> Segmenter:
        """Load CLIP (unless the method uses none), the parser and a method by name.

        ``clip_model`` defaults to the method's (ViT-B-32 for global-local);
        ``preset`` to the method's; ``device`` "auto" (CUDA when available,
        as on the command line), "cpu", "cuda" or "cuda:N"; ``overrides``
        change fields of its settings; ``method_options`` go to the method's
        builder (extra weights). A method that loads no CLIP (SAM 3 alone, a
        VLM) is given ``device`` and ``precision`` through its builder, since no
        CLIP carries them to its models.
        """
        spec = get_method(method)
        spec.settings(preset, **overrides)  # bad settings and a CLIP that does not fit fail before any model loads
        if spec.uses_clip:
            clip_model = spec.check_clip(clip_model, clip_weights)
        nlp = load_parser(spacy_model)
        # A method that scores with no CLIP (SAM 3 alone) loads none: its weights may not even be here.
        clip = load_clip(clip_model, clip_weights, device=device, precision=precision) if spec.uses_clip else None
        options = dict(method_options or {})
        if clip is None:
            options = {"device": resolve_device(device), "precision": precision, **options}
        built = build_method(method, clip, nlp, preset, options or None, **overrides)
        return cls(clip, nlp, proposal_source=proposal_source, method=built)

    def clip_description(self) -> dict[str, str] | None:
        """The CLIP the answers were scored with, as the JSON names it (None: the method uses no CLIP)."""
        return None if self.clip is None else {"model": self.clip.name, "weights": self.clip.weights}

    @property
    def settings(self) -> MethodSettings:
        """The method's settings; assign a changed copy (``dataclasses.replace``) to re-rank without the image."""
        return self.method.settings

    @settings.setter
    def settings(self, settings: MethodSettings) -> None:
        self.method.settings = settings

    # -- image side -------------------------------------------------------

    @property
    def image_state(self) -> ImageState:
        if self._state is None:
            raise InputError("no image is set; call set_image() first")
        return self._state

    @property
    def phrase_dependent(self) -> bool:
        """Whether proposals come per phrase (a phrase-dependent source and a method that takes proposals)."""
        return self.method.uses_proposals and is_phrase_dependent(self.proposal_source)

    @torch.inference_mode()
    def set_image(self, image: ImageInput, proposals: Proposals | None = None, *, lazy: bool = False) -> None:
        """Decode ``image`` and compute what the method needs from it, once.

        ``proposals`` default to the segmenter's proposal source (FreeSOLO
        from the CLI). Raises :class:`NoProposalsError` when there are none.
        With a phrase-dependent source and no ``proposals``, what does not
        depend on the phrase is computed here (``lazy``: when first needed,
        for a caller that may hold every answer already, see :meth:`add_concept`)
        and each phrase's candidates when it is asked. When it fails, the
        previous image stays the current one.
        """
        rgb = load_image(image)
        if proposals is None and self.phrase_dependent:
            concepts = ConceptImage(rgb, self.proposal_source, self.method)
            if not lazy:
                concepts.prepare()
            self._state = ImageState(rgb, None, {}, concepts)
            return
        if self.method.uses_proposals:
            if proposals is None:
                if self.proposal_source is None:
                    raise InputError("no proposals given and no proposal source configured")
                proposals = self.proposal_source(rgb)
            _check_proposals(rgb, proposals)
        self._state = ImageState(rgb, proposals, self.method.image_features(rgb, proposals))

    def set_features(self, image: ImageInput, proposals: Proposals | None, tensors: dict[str, torch.Tensor]) -> None:
        """Set the current image from features :meth:`set_image` computed earlier (e.g. a feature cache).

        The image tower is not run: ``tensors`` must be the ``image_state``
        tensors of this image, proposals, model and method settings.
        """
        rgb = load_image(image)
        if proposals is not None:
            check_image_size(rgb, proposals)
        device = self.method.device
        self._state = ImageState(rgb, proposals, {name: t.to(device, torch.float32) for name, t in tensors.items()})

    def add_text_features(self, texts: Sequence[str], features: torch.Tensor) -> None:
        """Seed the text cache with raw features (as :func:`encode_texts` gives them): these texts are not encoded."""
        for text, feature in zip(texts, features.to(self.method.device, torch.float32), strict=True):
            self._text_cache[text] = feature
            self._text_cache.move_to_end(text)
            if len(self._text_cache) > self._text_cache_size:
                self._text_cache.popitem(last=False)

    def concept_query(self, phrase: str) -> ConceptQuery:
        """What ``phrase`` asks a phrase-dependent source (the method's noun phrase and its head noun)."""
        return self.method.concept_query(self.parse(phrase))

    def restore(self, state: ImageState) -> None:
        """Make an earlier ``image_state`` (of this segmenter) current again: nothing is computed."""
        self._state = state

    def _concept_image(self) -> ConceptImage:
        concepts = self.image_state.concepts
        if concepts is None:
            raise InputError("the current image has proposals of its own; phrase-dependent candidates need "
                             "set_image() without proposals and a phrase-dependent proposal source")
        return concepts

    def add_concept(self, query: ConceptQuery, answer: ConceptAnswer, tensors: Mapping[str, torch.Tensor]) -> None:
        """Give the current image a query's candidates and their features as :meth:`concept_entry` returned
        them earlier (e.g. from a feature cache): neither the source nor the image tower runs for them."""
        device = self.method.device
        self._concept_image().add(query, answer, {name: t.to(device, torch.float32) for name, t in tensors.items()})

    def concept_entry(self, query: ConceptQuery) -> tuple[ConceptAnswer, dict[str, torch.Tensor]]:
        """A query answered on the current image: its candidates and the method's features of them (none
        without candidates), as a feature cache keeps them."""
        concepts = self._concept_image()
        answer = concepts.answer([query])[0]
        return answer, (concepts.features(answer.proposals) if len(answer.proposals) else {})

    # -- text side --------------------------------------------------------

    def parse(self, phrase: str) -> ParsedPhrase:
        """The expression and target noun phrase that would be scored."""
        return parse_phrase(phrase, self.nlp)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Raw CLIP text features (len(texts), D) through the cache; only the missing texts are encoded."""
        # One text at a time: how many were missing together changes float sums in the text tower, and a
        # text's features (so the scores written) must not depend on what the process saw before it (a resumed
        # run, a Ray actor given other photos).
        for text in dict.fromkeys(text for text in texts if text not in self._text_cache):
            self.add_text_features([text], encode_texts([text], self.clip))
        for text in texts:
            self._text_cache.move_to_end(text)
        return torch.stack([self._text_cache[text] for text in texts])

    # -- answers ----------------------------------------------------------

    @torch.inference_mode()
    def predict_many(self, phrases: Sequence[str], require_noun: bool = False) -> list[SegmentResult]:
        """Answer several phrases about the current image (texts encoded in one batch).

        ``require_noun``: refuse a phrase in which spaCy finds no noun
        (otherwise the whole phrase stands in for the noun phrase, as in the reference).
        """
        state = self.image_state
        parsed = [self.parse(phrase) for phrase in phrases]
        if require_noun:
            for item in parsed:
                if not item.has_noun:
                    raise InputError(
                        f"no noun found in the phrase {item.phrase!r}; name the object, e.g. \"the red car\""
                    )
        if state.concepts is not None:
            return self._answer_concepts(state.concepts, parsed)
        features = ImageFeatures(state.image, state.proposals, state.tensors, box_prompt=self._box_prompt(state.image))
        return self.method.answer(features, parsed, self.encode)

    def _box_prompt(self, image: Image.Image) -> Callable[[Sequence[float]], torch.Tensor] | None:
        """The proposal source's box prompt on ``image``, where the source takes one (SAM, SAM 2)."""
        segment_box = getattr(self.proposal_source, "segment_box", None)
        return None if segment_box is None else lambda box: segment_box(image, box)

    def _answer_concepts(self, concepts: ConceptImage, parsed: Sequence[ParsedPhrase]) -> list[SegmentResult]:
        """Each phrase answered among its own noun phrase's candidates; phrases that share it share them."""
        if self.method.prompts_source():
            features = ImageFeatures(concepts.image, None, concepts.shared(), concepts=concepts)
            return self.method.answer(features, parsed, self.encode)
        queries = [self.method.concept_query(item) for item in parsed]
        distinct = list(dict.fromkeys(queries))
        results: list[SegmentResult | None] = [None] * len(parsed)
        for query, answer in zip(distinct, concepts.answer(distinct)):
            positions = [i for i, other in enumerate(queries) if other == query]
            group = [parsed[i] for i in positions]
            if len(answer.proposals) == 0:
                answered = [self._no_candidates(item, query, concepts.image) for item in group]
            else:
                features = ImageFeatures(concepts.image, answer.proposals, concepts.features(answer.proposals))
                answered = self.method.answer(features, group, self.encode)
            for position, result in zip(positions, answered):
                result.concept = answer
                results[position] = result
        return results

    def _no_candidates(self, item: ParsedPhrase, query: ConceptQuery, image: Image.Image) -> SegmentResult:
        """The answer to a phrase whose noun phrase got no candidate: no index, an empty mask."""
        return SegmentResult(
            phrase=item.phrase, expression=item.expression, noun_phrase=query.noun_phrase, index=None,
            mask=torch.zeros((image.height, image.width), dtype=torch.bool), scores=torch.empty(0),
            truncated=self.method.truncated([item.expression]), has_noun=item.has_noun,
        )

    def predict(self, phrase: str, require_noun: bool = False) -> SegmentResult:
        """Answer one phrase about the current image."""
        return self.predict_many([phrase], require_noun)[0]

    def segment(
        self, image: ImageInput, phrases: Sequence[str], proposals: Proposals | None = None
    ) -> list[SegmentResult]:
        """:meth:`set_image` then :meth:`predict_many`."""
        self.set_image(image, proposals)
        return self.predict_many(phrases)


def _check_proposals(image: Image.Image, proposals: Proposals) -> None:
    check_image_size(image, proposals)
    if len(proposals) == 0 or not bool(proposals.masks.any()):
        what = "there are no mask proposals" if len(proposals) == 0 else \
            f"every mask is empty ({counted(len(proposals), 'mask')})"
        raise NoProposalsError(f"{what} for this image, so there is nothing to choose from")
