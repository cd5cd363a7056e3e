"""TCL (Cha et al., CVPR 2023) as a method: the phrase's thresholded soft mask is the answer (SPEC-tcl 9 a).

No proposals: TCL draws its own mask. The soft mask S (at the photo's size)
of each phrase is cut at ``threshold``, strictly greater: TCL's own
background rule with a single text (0.4 with PAMR, 0.5 without). Phrases do
not compete; an empty answer is reported as such. The text is the phrase as
given (CLIP's tokenizer cleans and lower-cases it), in the chosen template set.

The blend with a proposal method (SPEC-tcl 9 b) is :mod:`globallocal.methods.tcl.blend`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from ...models.text import ParsedPhrase
from ...models.weights import weights_identity
from ...proposals import Proposals
from ..base import ImageFeatures, Method, SegmentResult, TextEncoder
from .model import TCLModel
from .network import TCLHead
from .settings import TEMPLATES, TCLSettings
from .weights import load_tcl_head, resolve_tcl_weights
from .windows import SLIDE_STRIDE


def threshold_mask(soft: torch.Tensor, threshold: float) -> torch.Tensor:
    """The binary answer: pixels whose soft value is strictly greater than ``threshold``."""
    return soft > threshold


def phrase_text_embeddings(encode: TextEncoder, phrases: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Unit text embeddings (N, C): raw features averaged over the templates, then normalised (SPEC-tcl 5)."""
    texts = [template.format(phrase) for phrase in phrases for template in templates]
    raw = encode(texts).float().view(len(phrases), len(templates), -1)
    return F.normalize(raw.mean(dim=1), dim=-1, eps=1e-6)


@dataclass
class TCLResult(SegmentResult):
    """A TCL answer: the thresholded soft mask."""

    soft_mask: torch.Tensor
    """S, float32 (H, W) in [0, 1] at the photo's size."""
    threshold: float
    """The answer is soft_mask > threshold."""

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "threshold": self.threshold, "area": self.area}


class TCL(Method):
    """TCL's text-grounded soft masks (SPEC-tcl), thresholded."""

    name = "tcl"
    uses_proposals = False
    visual_settings = ("window", "input_preprocessing", "pamr")
    settings: TCLSettings

    def __init__(self, clip, nlp, settings: TCLSettings, head: TCLHead, weights: dict[str, Any] | None = None) -> None:
        super().__init__(clip, nlp, settings)
        self.model = TCLModel(clip, head)
        self.weights = weights or {}
        """The checkpoint: {"file": path, "size", "sha256"} (empty: a head given in memory)."""

    def visual_identity(self) -> dict[str, Any]:
        # The image features depend on the head's weights, wherever the file lies.
        fingerprint = {key: value for key, value in self.weights.items() if key != "file"}
        return {**super().visual_identity(), "tcl_weights": fingerprint}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "tcl_weights": self.weights}

    def settings_used(self, image_size: tuple[int, int]) -> dict[str, Any]:
        """The threshold and preprocessing a default left open, resolved, and the geometry of the photo's pass:
        the network's input size (after the preprocessing's resize), its windows and their stride."""
        s = self.settings
        plan = self.model.layout(*image_size, s.window, s.input_preprocessing)
        first = plan.windows[0]
        return {
            **self.describe(),
            "threshold": s.mask_threshold,
            "preprocessing": s.input_preprocessing,
            "input_size": {"height": plan.size[0], "width": plan.size[1]},
            "windows": len(plan.windows),
            "window_size": {"height": first.height, "width": first.width},
            "window_stride": SLIDE_STRIDE if s.window == "slide" else None,
        }

    def image_features(self, image: Image.Image, proposals: Proposals | None) -> dict[str, torch.Tensor]:
        s = self.settings
        return self.model.image_features(image, s.window, s.input_preprocessing, s.pamr)

    def templates(self) -> tuple[str, ...]:
        return TEMPLATES[self.settings.templates]

    def text_strings(self, parsed: ParsedPhrase) -> list[str]:
        return [template.format(parsed.phrase) for template in self.templates()]

    def soft_masks(self, image: ImageFeatures, parsed: Sequence[ParsedPhrase], encode: TextEncoder) -> torch.Tensor:
        """S (len(parsed), H, W), float32 at the photo's size: all phrases in one batch."""
        s = self.settings
        texts = phrase_text_embeddings(encode, [item.phrase for item in parsed], self.templates())
        size = (image.image.height, image.image.width)
        return self.model.soft_masks(
            image.tensors, texts, size, s.window, s.input_preprocessing, s.pamr, s.kp_weight
        )

    def answer(self, image: ImageFeatures, parsed: Sequence[ParsedPhrase], encode: TextEncoder) -> list[SegmentResult]:
        threshold = self.settings.mask_threshold
        results: list[SegmentResult] = []
        for item, soft in zip(parsed, self.soft_masks(image, parsed, encode)):
            results.append(
                TCLResult(
                    phrase=item.phrase,
                    expression=item.expression,
                    noun_phrase=item.noun_phrase,
                    index=None,
                    mask=threshold_mask(soft, threshold),
                    scores=torch.zeros(0),
                    truncated=self.truncated(self.text_strings(item)),
                    has_noun=item.has_noun,
                    soft_mask=soft,
                    threshold=threshold,
                )
            )
        return results


def build_tcl(clip, nlp, settings: TCLSettings, weights: str | None = None) -> TCL:
    """A TCL method on ``clip`` (OpenAI's ViT-B/16) with the released head (found or downloaded)."""
    path = resolve_tcl_weights(weights)
    head = load_tcl_head(path, clip)
    return TCL(clip, nlp, settings, head, {"file": str(path), **weights_identity(path)})
