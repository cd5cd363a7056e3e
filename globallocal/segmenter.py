"""The pipeline: pay for an image once, then answer phrase after phrase.

Shaped like segment-anything's SamPredictor: :meth:`Segmenter.set_image`
computes every proposal's global and local visual features and caches them;
:meth:`Segmenter.predict` parses a phrase, encodes it, and picks the best
mask. Visual features are cached unblended, so alpha can change between
calls without touching the image again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import spacy
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image

from .clip_models import ClipBundle, load_clip
from .errors import InputError, NoProposalsError
from .images import IMAGENET_MEAN, IMAGENET_STD, ImageInput, load_image, x800
from .presets import Settings, get_preset
from .proposals import Proposals
from .text import ParsedPhrase, count_tokens, encode_texts, load_parser, parse_phrase
from .visual import crop_boxes, local_features, resize, resnet_global_features, tight_boxes, vit_global_features

ProposalSource = Callable[[Image.Image], Proposals]


@dataclass
class SegmentResult:
    """The answer to one phrase."""

    phrase: str
    """The phrase as given."""
    expression: str
    """What CLIP read: lower-cased, spaCy tokens joined by single spaces."""
    noun_phrase: str
    """The target noun phrase (the whole expression when the parse has none)."""
    index: int
    """Index of the chosen proposal."""
    mask: torch.Tensor
    """The chosen mask, bool (H, W) at the image's size."""
    scores: torch.Tensor
    """Score of every proposal, float (N,)."""
    truncated: bool
    """Whether the expression or noun phrase was cut to CLIP's context length."""
    has_noun: bool
    """Whether spaCy found a noun in the phrase."""

    @property
    def score(self) -> float:
        return float(self.scores[self.index])


@dataclass
class ImageState:
    """What :meth:`Segmenter.set_image` computed for the current image."""

    image: Image.Image
    proposals: Proposals
    global_features: torch.Tensor  # (N, D), as the image tower gives them
    local_features: torch.Tensor  # (N, D), as the image tower gives them


class Segmenter:
    """Zero-shot referring segmentation with global-local CLIP features."""

    def __init__(
        self,
        clip: ClipBundle,
        nlp: spacy.Language,
        settings: Settings | None = None,
        proposal_source: ProposalSource | None = None,
        text_cache_size: int = 4096,
    ) -> None:
        self.clip = clip
        self.nlp = nlp
        self.settings = settings or Settings()
        self.proposal_source = proposal_source
        self._state: ImageState | None = None
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._text_cache_size = text_cache_size

    @classmethod
    def from_pretrained(
        cls,
        clip_model: str = "ViT-B-32",
        clip_weights: str = "openai",
        preset: str = "paper-refcoco",
        device: str = "cpu",
        precision: str = "fp32",
        spacy_model: str | None = None,
        proposal_source: ProposalSource | None = None,
        **overrides,
    ) -> Segmenter:
        """Load CLIP and the parser; ``overrides`` change fields of the preset's :class:`Settings`."""
        settings = get_preset(preset).with_overrides(**overrides)
        nlp = load_parser(spacy_model)
        clip = load_clip(clip_model, clip_weights, device=device, precision=precision)
        return cls(clip, nlp, settings, proposal_source)

    # -- image side -------------------------------------------------------

    @property
    def image_state(self) -> ImageState:
        if self._state is None:
            raise InputError("no image is set; call set_image() first")
        return self._state

    def _input_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.settings.clip_normalization == "clip":
            visual = self.clip.visual
            mean = getattr(visual, "image_mean", None) or OPENAI_DATASET_MEAN
            std = getattr(visual, "image_std", None) or OPENAI_DATASET_STD
            return tuple(mean), tuple(std)
        return IMAGENET_MEAN, IMAGENET_STD

    @torch.inference_mode()
    def set_image(self, image: ImageInput, proposals: Proposals | None = None) -> None:
        """Decode ``image`` and compute the visual features of every proposal.

        ``proposals`` default to the segmenter's proposal source (FreeSOLO
        from the CLI). Raises :class:`NoProposalsError` when there are none.
        """
        self._state = None
        rgb = load_image(image)
        if proposals is None:
            if self.proposal_source is None:
                raise InputError("no proposals given and no proposal source configured")
            proposals = self.proposal_source(rgb)
        _check_image_size(rgb, proposals)
        if len(proposals) == 0 or not bool(proposals.masks.any()):
            what = "there are no mask proposals" if len(proposals) == 0 else f"all {len(proposals)} masks are empty"
            raise NoProposalsError(f"{what} for this image, so there is nothing to choose from")
        settings = self.settings
        mean, std = self._input_stats()
        device = self.clip.device
        shared = x800(rgb, settings.short_side, mean, std).to(device)
        size = self.clip.image_size
        clip_input = resize(shared, (size, size), settings.antialias)[None]
        if self.clip.family == "resnet":
            global_features = resnet_global_features(
                self.clip, clip_input, proposals.masks, antialias=settings.antialias
            )
        else:
            global_features = vit_global_features(
                self.clip, clip_input, proposals.masks, settings.masked_blocks, antialias=settings.antialias
            )
        full = resize(shared, (rgb.height, rgb.width), settings.antialias)
        boxes = proposals.boxes if settings.crop_box == "projection" else tight_boxes(proposals.masks)
        windows = crop_boxes(boxes, rgb.height, rgb.width)
        fill = torch.tensor(IMAGENET_MEAN) if settings.crop_fill == "paper" else torch.zeros(3)
        local = local_features(
            self.clip, full, proposals.masks, windows, fill, self.crop_chunk_size, settings.antialias
        )
        self._state = ImageState(rgb, proposals, global_features, local)

    def set_features(
        self, image: ImageInput, proposals: Proposals, global_features: torch.Tensor, local_features: torch.Tensor
    ) -> None:
        """Set the current image from visual features :meth:`set_image` computed earlier (e.g. a feature cache).

        The image tower is not run: the features must be the unblended
        ``image_state`` features of this image, proposals, model and settings.
        """
        self._state = None
        rgb = load_image(image)
        n = len(proposals)
        _check_image_size(rgb, proposals)
        if global_features.dim() != 2 or global_features.shape[0] != n or local_features.shape != global_features.shape:
            raise InputError(
                f"features {tuple(global_features.shape)} and {tuple(local_features.shape)} do not fit {n} proposals"
            )
        device = self.clip.device
        self._state = ImageState(
            rgb, proposals, global_features.to(device, torch.float32), local_features.to(device, torch.float32)
        )

    def add_text_features(self, texts: Sequence[str], features: torch.Tensor) -> None:
        """Seed the text cache with raw features (as :func:`encode_texts` gives them): these texts are not encoded."""
        for text, feature in zip(texts, features.to(self.clip.device, torch.float32), strict=True):
            self._text_cache[text] = feature
            self._text_cache.move_to_end(text)
            if len(self._text_cache) > self._text_cache_size:
                self._text_cache.popitem(last=False)

    @property
    def crop_chunk_size(self) -> int:
        """Masked crops per image-tower batch: the setting, else 8 on the CPU and 64 on CUDA."""
        return self.settings.chunk_size or (64 if self.clip.device.type == "cuda" else 8)

    def visual_features(self) -> torch.Tensor:
        """Blended visual features (N, D) of the current image, per the settings."""
        state = self.image_state
        alpha = self.settings.alpha
        global_part, local_part = state.global_features, state.local_features
        if self.settings.feature_norm == "unit":
            global_part = F.normalize(global_part, dim=-1)
            local_part = F.normalize(local_part, dim=-1)
        elif self.clip.family == "resnet":
            # The reference normalises the ResNet crop feature but not the pooled one.
            local_part = F.normalize(local_part, dim=-1)
        return alpha * global_part + (1 - alpha) * local_part

    # -- text side --------------------------------------------------------

    def parse(self, phrase: str) -> ParsedPhrase:
        """The expression and target noun phrase that would be scored."""
        return parse_phrase(phrase, self.nlp)

    def _encode_cached(self, texts: Sequence[str]) -> torch.Tensor:
        missing = list(dict.fromkeys(text for text in texts if text not in self._text_cache))
        if missing:
            self.add_text_features(missing, encode_texts(missing, self.clip))
        for text in texts:
            self._text_cache.move_to_end(text)
        return torch.stack([self._text_cache[text] for text in texts])

    def text_features(self, parsed: Sequence[ParsedPhrase]) -> torch.Tensor:
        """Mixed text features (len(parsed), D), per the settings."""
        expressions = self._encode_cached([item.expression for item in parsed])
        noun_phrases = self._encode_cached([item.noun_phrase for item in parsed])
        beta = self.settings.beta
        if self.settings.feature_norm == "unit" or self.clip.family == "resnet":
            expressions = F.normalize(expressions, dim=-1)
            noun_phrases = F.normalize(noun_phrases, dim=-1)
        return beta * expressions + (1 - beta) * noun_phrases

    # -- answers ----------------------------------------------------------

    def scores(self, text: torch.Tensor) -> torch.Tensor:
        """Scores (len(text), N) of every proposal for each mixed text feature."""
        visual = self.visual_features().to(text.device)
        if self.settings.feature_norm == "paper" and self.clip.family == "resnet":
            # The reference scores ResNet features by a plain dot product.
            return text @ visual.T
        return F.normalize(text, dim=-1) @ F.normalize(visual, dim=-1).T

    @torch.inference_mode()
    def predict_many(self, phrases: Sequence[str], require_noun: bool = False) -> list[SegmentResult]:
        """Answer several phrases about the current image (text encoded in one batch).

        ``require_noun``: refuse a phrase in which spaCy finds no noun (the
        CLI does; evaluation follows the reference and scores it anyway).
        """
        state = self.image_state
        parsed = [self.parse(phrase) for phrase in phrases]
        if require_noun:
            for item in parsed:
                if not item.has_noun:
                    raise InputError(
                        f"no noun found in the phrase {item.phrase!r}; name the object, e.g. \"the red car\""
                    )
        all_scores = self.scores(self.text_features(parsed)).cpu()
        results = []
        for item, scores in zip(parsed, all_scores):
            index = int(torch.argmax(scores))
            results.append(
                SegmentResult(
                    phrase=item.phrase,
                    expression=item.expression,
                    noun_phrase=item.noun_phrase,
                    index=index,
                    mask=state.proposals.masks[index],
                    scores=scores.clone(),
                    # The noun phrase is part of the expression: only the expression can overflow.
                    truncated=count_tokens(item.expression, self.clip) > self.clip.context_length,
                    has_noun=item.has_noun,
                )
            )
        return results

    def predict(self, phrase: str, require_noun: bool = False) -> SegmentResult:
        """Answer one phrase about the current image."""
        return self.predict_many([phrase], require_noun)[0]

    def segment(
        self, image: ImageInput, phrases: Sequence[str], proposals: Proposals | None = None
    ) -> list[SegmentResult]:
        """:meth:`set_image` then :meth:`predict_many`."""
        self.set_image(image, proposals)
        return self.predict_many(phrases)


def _check_image_size(image: Image.Image, proposals: Proposals) -> None:
    if proposals.image_size != (image.height, image.width):
        h, w = proposals.image_size
        raise InputError(
            f"masks are {w}x{h} but the image is {image.width}x{image.height}; masks must be at the image's size"
        )
