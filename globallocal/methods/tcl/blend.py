"""A proposal method's score blended with TCL's proposal score (SPEC-tcl 9 b; globallocal's design).

TCL's score of proposal i is the mean of the phrase's soft mask S inside the
proposal minus its mean outside (an empty set's mean is 0; an empty proposal
is not scored: NaN, and standardised as 0). Both scores are standardised over
the image's proposals (population std; all 0 when the std is 0 or there is
one proposal) and mixed: (1 - lambda) z(method) + lambda z(TCL); the answer
is the argmax. :class:`TCLBlend` wraps any proposal method, so the
segmenter drives it like any other: image features are the inner method's
plus TCL's (prefixed ``tcl.``), answers are the inner method's re-ranked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch

from ...errors import InputError, WeightsError, first_line
from ...models.clip import ClipBundle, load_clip
from ...models.text import ParsedPhrase, encode_texts
from ...proposals import Proposals
from ..base import ImageFeatures, Method, SegmentResult, TextEncoder, json_floats
from .method import TCL, build_tcl
from .settings import TCL_CLIP_MODEL, TCLSettings, shares_openai_clip

PREFIX = "tcl."


def tcl_proposal_scores(soft: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N, P) float64: mean of each soft mask (N, H, W) inside each proposal (P, H, W) minus its mean outside."""
    soft = soft.double().flatten(1)
    inside = masks.flatten(1).to(soft.device, torch.float64)
    area = inside.sum(dim=1)
    pixels = inside.shape[1]
    inside_sum = soft @ inside.T
    outside_sum = soft.sum(dim=1, keepdim=True) - inside_sum
    inside_mean = torch.where(area > 0, inside_sum / area.clamp_min(1), 0.0)
    outside_mean = torch.where(area < pixels, outside_sum / (pixels - area).clamp_min(1), 0.0)
    scores = inside_mean - outside_mean
    return torch.where(area > 0, scores, float("nan"))


def standardize(scores: torch.Tensor) -> torch.Tensor:
    """z-scores over the finite entries (population std); 0 where not finite, or when the std is 0."""
    scores = scores.double()
    finite = torch.isfinite(scores)
    z = torch.zeros_like(scores)
    if int(finite.sum()) < 2:
        return z
    values = scores[finite]
    std = values.std(correction=0)
    if float(std) > 0:
        z[finite] = (values - values.mean()) / std
    return z


def blend_choice(method_scores: torch.Tensor, tcl_scores: torch.Tensor, weight: float) -> tuple[int, torch.Tensor]:
    """(answer, blended scores) for one phrase.

    At weight 0 (1) the answer is the method's (TCL's) own argmax: z-scores
    rank as the raw scores do, but rounding could tie two close ones.
    """
    blended = (1 - weight) * standardize(method_scores) + weight * standardize(tcl_scores)
    if weight == 0:
        return int(torch.argmax(method_scores)), blended
    if weight == 1:
        return int(torch.argmax(torch.nan_to_num(tcl_scores, nan=float("-inf")))), blended
    return int(torch.argmax(blended)), blended


@dataclass
class BlendResult(SegmentResult):
    """The inner method's answer re-ranked with TCL: ``scores`` are the blended ones."""

    ranking_label: ClassVar[str] = "blended score"

    inner: SegmentResult
    """The inner method's own answer."""
    tcl_scores: torch.Tensor
    """TCL's score of every proposal, float64 (NaN: empty proposal)."""
    tcl_weight: float
    soft_mask: torch.Tensor
    """TCL's soft mask S, float32 (H, W) at the photo's size."""

    def other_answers(self) -> dict[str, int]:
        own = {} if self.inner.index is None else {"without-tcl": self.inner.index}
        return {**self.inner.other_answers(), **own}

    def to_json(self) -> dict[str, Any]:
        inner = self.inner.to_json()
        return {
            **inner,
            **super().to_json(),
            "method_index": self.inner.index,
            "method_scores": json_floats(self.inner.dense_scores()),
            "tcl_scores": json_floats(self.tcl_scores),
            "tcl_weight": self.tcl_weight,
        }


class TCLBlend(Method):
    """``inner``'s proposal scores blended with TCL's (weight lambda in [0, 1])."""

    uses_proposals = True

    def __init__(self, inner: Method, tcl: TCL, weight: float) -> None:
        if not inner.uses_proposals:
            raise InputError(f"--tcl-blend blends a proposal method's scores; {inner.name} has no proposals")
        if not 0.0 <= weight <= 1.0:
            raise InputError(f"TCL weight must be in [0, 1], got {weight}")
        self.inner, self.tcl, self.weight = inner, tcl, weight
        super().__init__(inner.clip, inner.nlp, inner.settings)
        self.name = f"{inner.name}+tcl"
        self.per_proposal = inner.per_proposal
        self.shares_clip = tcl.clip is inner.clip
        self._tcl_texts: dict[str, torch.Tensor] = {}

    @property
    def settings(self):
        """The inner method's settings: assigning a changed copy re-ranks as it would without the blend."""
        return self.inner.settings

    @settings.setter
    def settings(self, settings) -> None:
        self.inner.settings = settings

    def visual_identity(self) -> dict[str, Any]:
        return {"method": self.name, "inner": self.inner.visual_identity(), "tcl": self.tcl.visual_identity()}

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "tcl_weight": self.weight, "tcl": self.tcl.describe()}

    def settings_used(self, image_size: tuple[int, int]) -> dict[str, Any]:
        # A blend scores proposals with the soft mask: TCL's threshold plays no part.
        tcl = {key: value for key, value in self.tcl.settings_used(image_size).items() if key != "threshold"}
        return {**self.inner.settings_used(image_size), "tcl_weight": self.weight, "tcl": tcl}

    def uses_projection_boxes(self) -> bool:
        return self.inner.uses_projection_boxes()

    def image_context(self, image) -> Any:
        return self.inner.image_context(image)

    def shared_features(self, image, context: Any) -> dict[str, torch.Tensor]:
        """The inner method's per-image tensors and all of TCL's (TCL's features take no proposal)."""
        tcl = {PREFIX + key: value for key, value in self.tcl.image_features(image, None).items()}
        return {**self.inner.shared_features(image, context), **tcl}

    def proposal_features(self, image, proposals: Proposals | None, context: Any) -> dict[str, torch.Tensor]:
        """The inner method's: TCL's proposal scores are computed when answering, standardised over the
        proposals answered from."""
        return self.inner.proposal_features(image, proposals, context)

    def feature_shapes(self, count: int) -> dict[str, tuple[int | None, ...]]:
        return self.inner.feature_shapes(count)

    def local_noun_phrase(self, parsed: ParsedPhrase) -> str:
        return self.inner.local_noun_phrase(parsed)

    def text_strings(self, parsed: ParsedPhrase) -> list[str]:
        own = self.tcl.text_strings(parsed) if self.shares_clip else []
        return [*self.inner.text_strings(parsed), *own]

    def _tcl_encode(self, texts: Sequence[str]) -> torch.Tensor:
        """TCL's own CLIP's raw text features, when it is not the inner method's (cached per string)."""
        missing = [text for text in dict.fromkeys(texts) if text not in self._tcl_texts]
        if missing:
            self._tcl_texts.update(zip(missing, encode_texts(missing, self.tcl.clip).cpu()))
        return torch.stack([self._tcl_texts[text] for text in texts])

    def split(self, image: ImageFeatures) -> tuple[ImageFeatures, ImageFeatures]:
        """The inner method's and TCL's views of the image features."""
        inner = {key: value for key, value in image.tensors.items() if not key.startswith(PREFIX)}
        tcl = {key[len(PREFIX) :]: value for key, value in image.tensors.items() if key.startswith(PREFIX)}
        return ImageFeatures(image.image, image.proposals, inner), ImageFeatures(image.image, None, tcl)

    def answer(self, image: ImageFeatures, parsed: Sequence[ParsedPhrase], encode: TextEncoder) -> list[SegmentResult]:
        assert image.proposals is not None
        inner_image, tcl_image = self.split(image)
        inner_results = self.inner.answer(inner_image, parsed, encode)
        soft = self.tcl.soft_masks(tcl_image, parsed, encode if self.shares_clip else self._tcl_encode)
        all_tcl_scores = tcl_proposal_scores(soft, image.proposals.masks)
        results: list[SegmentResult] = []
        for inner, soft_mask, tcl_scores in zip(inner_results, soft, all_tcl_scores):
            index, blended = blend_choice(inner.dense_scores(), tcl_scores, self.weight)
            base = {f.name: getattr(inner, f.name) for f in fields(SegmentResult)}
            base.update(index=index, mask=image.proposals.masks[index], scores=blended)
            results.append(
                BlendResult(**base, inner=inner, tcl_scores=tcl_scores, tcl_weight=self.weight, soft_mask=soft_mask)
            )
        return results


def tcl_clip_for(inner: Method, clip_weights: str | None = None) -> ClipBundle:
    """TCL's CLIP, OpenAI's ViT-B/16: ``clip_weights`` (a local file) when given; else the inner method's when it
    is that model (``openai``, or a local file under the QuickGELU name, as OpenAI's weights need); else that
    model loaded beside it through the hub, a failure naming the option that supplies it offline."""
    clip = inner.clip
    precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(clip.dtype, "fp32")
    if clip_weights is not None:
        return load_clip(TCL_CLIP_MODEL, clip_weights, device=clip.device, precision=precision)
    if shares_openai_clip(clip.name, clip.weights, clip.uses_quick_gelu):
        return clip
    try:
        return load_clip(TCL_CLIP_MODEL, "openai", device=clip.device, precision=precision)
    except WeightsError as error:
        reason = first_line(error).split("; ")[0]  # the loader's own advice names --clip-weights, not TCL's option
        raise WeightsError(f"TCL runs on OpenAI's CLIP ViT-B/16: {reason}; run once with network access to cache "
                           "it, or pass its file with --tcl-clip-weights PATH") from None


def blend_with_tcl(
    inner: Method,
    weight: float,
    settings: TCLSettings | None = None,
    weights: str | None = None,
    clip: ClipBundle | None = None,
    clip_weights: str | None = None,
) -> TCLBlend:
    """``inner`` blended with TCL at ``weight``; TCL's head from ``weights`` (found or downloaded), its CLIP
    ``clip`` or else :func:`tcl_clip_for` (``clip_weights``: a local file of it)."""
    tcl = build_tcl(clip or tcl_clip_for(inner, clip_weights), inner.nlp, settings or TCLSettings(), weights)
    return TCLBlend(inner, tcl, weight)
