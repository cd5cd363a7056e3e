"""Global-Local's settings, presets and registry entry: what the command line checks before torch loads."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ...data.bounded import MAX_SHORT_SIDE
from .. import MethodSpec
from ..settings import MethodSettings

__all__ = ["PRESETS", "SPEC", "SWEPT_SETTINGS", "GlobalLocalSettings"]


@dataclass(frozen=True)
class GlobalLocalSettings(MethodSettings):
    """Everything that decides a Global-Local score, apart from the models themselves."""

    alpha: float = 0.95
    """Weight of the global-context visual feature (1 - alpha: local)."""
    beta: float = 0.5
    """Weight of the whole-expression text feature (1 - beta: noun phrase)."""
    masked_blocks: int = 3
    """ViT: how many last blocks see masked patch tokens (k)."""
    clip_normalization: str = "imagenet"
    """Quirk: the reference feeds CLIP ImageNet mean/std; "clip" uses CLIP's own."""
    antialias: bool = False
    """Quirk: the reference resizes tensors without antialiasing."""
    crop_fill: str = "paper"
    """Quirk: outside-mask pixels of a crop are (0.485, 0.456, 0.406) in the normalised
    tensor, a light grey ("paper"); "mean" fills with the normalisation mean (0)."""
    crop_box: str = "projection"
    """Quirk: crops use SOLOv2's projection boxes ("projection"); "tight" uses min/max boxes."""
    feature_norm: str = "paper"
    """Quirk: "paper" normalises as the reference per family (ResNet: global raw, local unit,
    text unit before mixing, dot-product score; ViT: raw blends, cosine score); "unit"
    L2-normalises every feature before blending and scores by cosine."""
    short_side: int = 800
    """Short side of the shared input tensor (SPEC section 1)."""
    chunk_size: int | None = None
    """Masked crops encoded per batch for the local features (bounds memory); None: 8 on the CPU,
    where small batches run fastest, 64 on CUDA."""

    def checks(self) -> list[tuple[bool, str]]:
        return [
            (0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha}"),
            (0.0 <= self.beta <= 1.0, f"beta must be in [0, 1], got {self.beta}"),
            (self.masked_blocks >= 0, f"masked blocks must be >= 0, got {self.masked_blocks}"),
            (self.clip_normalization in ("imagenet", "clip"), "clip_normalization must be 'imagenet' or 'clip'"),
            (self.crop_fill in ("paper", "mean"), "crop_fill must be 'paper' or 'mean'"),
            (self.crop_box in ("projection", "tight"), "crop_box must be 'projection' or 'tight'"),
            (self.feature_norm in ("paper", "unit"), "feature_norm must be 'paper' or 'unit'"),
            (32 <= self.short_side <= MAX_SHORT_SIDE,
             f"short side must be from 32 to {MAX_SHORT_SIDE} (memory grows with its square), got {self.short_side}"),
            (self.chunk_size is None or self.chunk_size >= 1, f"chunk size must be >= 1, got {self.chunk_size}"),
        ]


_PAPER = GlobalLocalSettings()
PRESETS: dict[str, GlobalLocalSettings] = {
    "paper-refcoco": _PAPER,
    "paper-refcoco+": _PAPER,
    "paper-refcocog": replace(_PAPER, alpha=0.85),
    # The paper's scoring among SAM 3's instances of the noun phrase (its default proposals: SPEC below).
    "global-local-sam3": _PAPER,
    # Every quirk off, for ablations; not validated to score better.
    "no-quirks": replace(
        _PAPER, clip_normalization="clip", antialias=True, crop_fill="mean", crop_box="tight", feature_norm="unit"
    ),
}


SWEPT_SETTINGS = ("alpha", "beta")
"""The settings a sweep can vary without the models (:mod:`.sweep`)."""

SPEC = MethodSpec(
    name="global-local",
    summary="Global-Local CLIP (Yu et al., CVPR 2023): global and local CLIP features of each mask proposal",
    implementation="globallocal.methods.global_local.method:GlobalLocal",
    presets=PRESETS,
    default_preset="paper-refcoco",
    preset_aliases={"paper": "paper-refcoco"},
    default_clip_model="ViT-B-32",
    default_proposals="freesolo",
    preset_proposals={"global-local-sam3": "sam3"},
    dataset_presets={"refcoco": "paper-refcoco", "refcoco+": "paper-refcoco+", "refcocog": "paper-refcocog"},
    sweep_module="globallocal.methods.global_local.sweep",
    sweep_settings=SWEPT_SETTINGS,
)
