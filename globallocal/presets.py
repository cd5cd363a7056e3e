"""Named settings. ``paper-*`` reproduce the published code, quirks included.

Each quirk of the published code (SPEC) is a field here, so it can be
switched off one at a time and measured; the ``paper`` presets keep them all.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .errors import InputError


@dataclass(frozen=True)
class Settings:
    """Everything that decides a score, apart from the models themselves."""

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

    def __post_init__(self) -> None:
        checks = [
            (0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha}"),
            (0.0 <= self.beta <= 1.0, f"beta must be in [0, 1], got {self.beta}"),
            (self.masked_blocks >= 0, f"masked blocks must be >= 0, got {self.masked_blocks}"),
            (self.clip_normalization in ("imagenet", "clip"), "clip_normalization must be 'imagenet' or 'clip'"),
            (self.crop_fill in ("paper", "mean"), "crop_fill must be 'paper' or 'mean'"),
            (self.crop_box in ("projection", "tight"), "crop_box must be 'projection' or 'tight'"),
            (self.feature_norm in ("paper", "unit"), "feature_norm must be 'paper' or 'unit'"),
            (self.short_side >= 32, f"short side must be >= 32, got {self.short_side}"),
            (self.chunk_size is None or self.chunk_size >= 1, f"chunk size must be >= 1, got {self.chunk_size}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with the given fields changed; ``None`` values are ignored."""
        names = {field.name for field in fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise InputError(f"unknown setting(s): {', '.join(unknown)}")
        return replace(self, **{key: value for key, value in overrides.items() if value is not None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_PAPER = Settings()
PRESETS: dict[str, Settings] = {
    "paper-refcoco": _PAPER,
    "paper-refcoco+": _PAPER,
    "paper-refcocog": replace(_PAPER, alpha=0.85),
    # Every quirk off, for ablations; not validated to score better.
    "no-quirks": replace(
        _PAPER, clip_normalization="clip", antialias=True, crop_fill="mean", crop_box="tight", feature_norm="unit"
    ),
}
PRESET_ALIASES = {"paper": "paper-refcoco"}


def get_preset(name: str) -> Settings:
    """The settings of a named preset."""
    key = PRESET_ALIASES.get(name, name)
    if key not in PRESETS:
        names = ", ".join([*PRESETS, *PRESET_ALIASES])
        raise InputError(f"unknown preset '{name}'; choose one of {names}")
    return PRESETS[key]


def paper_preset_for(dataset: str) -> str:
    """The paper preset of a dataset (alpha 0.85 for RefCOCOg, 0.95 otherwise)."""
    return {"refcoco": "paper-refcoco", "refcoco+": "paper-refcoco+", "refcocog": "paper-refcocog"}.get(
        dataset, "paper-refcoco"
    )
