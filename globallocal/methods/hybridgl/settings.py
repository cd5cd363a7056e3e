"""HybridGL's settings, presets and registry entry: what the command line checks before torch loads."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .. import MethodSpec
from ..settings import MethodSettings

__all__ = ["FUSION_MODES", "PRESETS", "SPEC", "SWEPT_SETTINGS", "HybridGLSettings"]

FUSION_MODES = ("G2L", "L2G", "G2L&L2G")


@dataclass(frozen=True)
class HybridGLSettings(MethodSettings):
    """Everything that decides a HybridGL answer, apart from the models themselves."""

    fusion_mode: str = "G2L"
    """How the global and local streams meet in the hybrid blocks: G2L, L2G or G2L&L2G (section 4)."""
    beta: float = 0.5
    """Weight of the whole-expression text feature (1 - beta: noun phrase), raw features mixed."""
    masking_block: int = 9
    """The first hybrid block (blocks masking_block .. last)."""
    hybrid_weight: float = 2.0
    """The factor of the other stream added in a hybrid block (x + 2 tm(g))."""
    top_k: int = 3
    """K1: candidates by CLIP score (capped at the number of proposals)."""
    negative_k: int = 6
    """K2: partners by other-noun score (capped at the number of proposals)."""
    relation_weight: float = 0.4
    """Weight of the relation term in the final mix (1 - it: the GEM score)."""
    gem_k_big: float = 1.95
    """k of the GEM score when the relation flag is "big"."""
    gem_k_small: float = 1.5
    """k of the GEM score when the relation flag is "small"."""
    gem_k_other: float = 1.8
    """k of the GEM score otherwise."""
    gem_depth: int = 7
    """GEM's self-self attention runs in the last gem_depth - 1 blocks."""
    gem_iterations: int = 1
    """Self-self attention iterations in GEM."""
    gem_size: int = 448
    """GEM's square input size."""
    gem_prompt: str = "a photo of a {}."
    """Quirk Q-gem-prompt: GEM's text, with "a " before the noun phrase, which usually has its own article."""
    input_normalization: str = "imagenet"
    """Quirk Q-imagenet-stats: the hybrid inputs use ImageNet mean/std; "clip" uses CLIP's."""
    local_fill: str = "paper"
    """Quirk Q-fill: the local image's outside is CLIP's mean numbers in an ImageNet-normalised tensor
    ("paper"); "mean" fills with the normalisation's own mean (0)."""
    mask_antialias: bool = False
    """Quirk Q-mask-grid: the 14 x 14 token mask is resized without antialias (point-sampled)."""
    right_relation: bool = False
    """Quirk Q-right-never: "right"/"east" never set the relation flag; True lets them."""
    vertical_masks: bool = False
    """Quirk Q-vertical-off: up/down give no position mask; True applies a vertical ramp."""
    fallback_target_chunk: str = "other"
    """Quirk Q-np-fallback: when the noun phrase falls back to the whole expression every chunk is an
    other noun ("other"); "leading" drops a chunk that starts the expression (the target's own)."""
    double_minmax: bool = True
    """Quirk Q-double-minmax: the heat map is min-max normalised again after its resize; False skips it."""
    nan_wins: bool = True
    """Quirk Q-gem-empty: a NaN final score (empty or full-frame mask) wins, as PyTorch's argmax ranks
    NaN highest; False ranks it lowest."""
    within_guard: bool = False
    """Quirk Q-within-zero: a zero-area box divides by zero in the "within" term; True makes its term 0."""
    sticky_topk: bool = False
    """Quirk Q-sticky-k: K1, K2 become min(K, the smallest proposal count seen so far) across calls,
    as the authors' split loop; off: min(K, this image's count)."""
    chunk_size: int | None = None
    """Proposals per batch through CLIP's blocks (bounds memory); None: 8 on the CPU, 32 on CUDA."""

    def checks(self) -> list[tuple[bool, str]]:
        return [
            (self.fusion_mode in FUSION_MODES, f"fusion mode must be one of {', '.join(FUSION_MODES)}, "
                                               f"got {self.fusion_mode!r}"),
            (0.0 <= self.beta <= 1.0, f"beta must be in [0, 1], got {self.beta}"),
            (0.0 <= self.relation_weight <= 1.0, f"relation weight must be in [0, 1], got {self.relation_weight}"),
            (self.masking_block >= 0, f"masking block must be >= 0, got {self.masking_block}"),
            (self.top_k >= 1 and self.negative_k >= 1, f"top k and negative k must be >= 1, got {self.top_k}, "
                                                       f"{self.negative_k}"),
            (self.gem_depth >= 1, f"GEM depth must be >= 1, got {self.gem_depth}"),
            (self.gem_iterations >= 1, f"GEM iterations must be >= 1, got {self.gem_iterations}"),
            (self.gem_size >= 32, f"GEM size must be >= 32, got {self.gem_size}"),
            ("{}" in self.gem_prompt, f"the GEM prompt must contain {{}} for the noun phrase, got {self.gem_prompt!r}"),
            (self.input_normalization in ("imagenet", "clip"), "input_normalization must be 'imagenet' or 'clip'"),
            (self.local_fill in ("paper", "mean"), "local_fill must be 'paper' or 'mean'"),
            (self.fallback_target_chunk in ("other", "leading"), "fallback_target_chunk must be 'other' or 'leading'"),
            (self.chunk_size is None or self.chunk_size >= 1, f"chunk size must be >= 1, got {self.chunk_size}"),
        ]


_PAPER = HybridGLSettings()
PRESETS: dict[str, HybridGLSettings] = {
    "hybridgl-paper": _PAPER,
    # The paper's scoring and spatial guidance among SAM 3's instances of the noun phrase (SPEC's preset_proposals).
    "hybridgl-sam3": _PAPER,
    # Every quirk off, for ablations; not validated to score better.
    "hybridgl-no-quirks": replace(
        _PAPER, gem_prompt="a photo of {}.", input_normalization="clip", local_fill="mean", mask_antialias=True,
        right_relation=True, vertical_masks=True, fallback_target_chunk="leading", double_minmax=False,
        nan_wins=False, within_guard=True,
    ),
}


SWEPT_SETTINGS = ("beta", "relation_weight", "gem_k_big", "gem_k_small", "gem_k_other")
"""The HybridGL settings a sweep can vary without the models (:mod:`.sweep`)."""

SPEC = MethodSpec(
    name="hybridgl",
    summary="HybridGL (Liu and Li, CVPR 2025): hybrid global-local CLIP features with spatial guidance",
    implementation="globallocal.methods.hybridgl.method:HybridGL",
    presets=PRESETS,
    default_preset="hybridgl-paper",
    preset_aliases={"paper": "hybridgl-paper", "no-quirks": "hybridgl-no-quirks"},
    default_clip_model="ViT-B-16",
    default_proposals="sam",
    preset_proposals={"hybridgl-sam3": "sam3"},
    default_proposal_settings="hybridgl",
    dataset_proposal_settings={"phrasecut": "hybridgl-phrasecut"},  # SPEC-hybridgl sections 2 and 12
    keep_proposal_order=True,
    display_name="HybridGL",
    image_tower="vit",
    sweep_module="globallocal.methods.hybridgl.sweep",
    sweep_settings=SWEPT_SETTINGS,
)
