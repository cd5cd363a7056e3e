"""The VLM method's settings, presets and registry entry (torch-free; the logic is in the folder's modules).

Presets (SPEC-vlm): ``sam3-agent`` is SAM 3 Agent's loop as the authors
run it, every quirk kept; ``sam3-agent-retry`` is the same loop with a short
format reminder and a bounded retry where the authors raise on a malformed
reply; ``box`` is one grounding call per phrase; ``marks`` one call over the
numbered candidates.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .. import ANSWERS_ANY, ANSWERS_AT_MOST_ONE, MethodSpec
from ..settings import MethodSettings

__all__ = [
    "BOX_FORMATS",
    "FALLBACKS",
    "FAMILY_BOX_FORMATS",
    "MODES",
    "PRESETS",
    "SHORTLISTS",
    "SPEC",
    "VlmSettings",
    "box_format_for",
]

MODES = ("agent", "box", "marks")
BOX_FORMATS = ("auto", "seen-pixels", "grid-1000", "photo-pixels")
FAMILY_BOX_FORMATS = {"qwen2.5-vl": "seen-pixels", "qwen3-vl": "grid-1000", "other": "grid-1000"}
"""``box_format="auto"`` per model family: Qwen2.5-VL answers in pixels of the image as it saw it (after its
processor's resize), Qwen3-VL (and GLM-V) on a 0-1000 grid."""
FALLBACKS = ("best", "none")
SHORTLISTS = ("source", "global-local", "hybridgl")
MAX_TOKENS = 32768
MAX_FORMAT_RETRIES = 10
MAX_GENERATIONS = 1000
MAX_MARKS = 99


@dataclass(frozen=True)
class VlmSettings(MethodSettings):
    """Everything that decides the VLM method's answer, apart from the model and the prompts (by digest)."""

    mode: str = "agent"
    """agent (SAM 3 Agent's loop), box (one grounding call) or marks (one call over numbered candidates)."""
    max_tokens: int = 4096
    """The most tokens one reply may have (the authors' 4096)."""
    # ---- agent (SAM 3 answers its prompts at the source's --sam3-threshold, 0.5 by default as the authors', with
    # no fallback step: the agent's queries are exact)
    overlap_threshold: float = 0.3
    """Step 4a: an instance overlapping a better-scored kept one by more than this (intersection over the
    smaller area) is dropped."""
    short_rle_chars: int = 4
    """Quirk (step 4c): instances whose COCO RLE counts string has at most this many characters are dropped;
    0 keeps them all."""
    max_generations: int = 100
    """Turns after the first that the agent may take (the authors' counter: the query ends as ``vlm_error`` when
    the turns that did not end it exceed this; mask checks are not counted)."""
    format_retries: int = 0
    """0: a malformed reply ends the query as ``vlm_error`` (the authors raise). More: that many times per query
    (per mask check, for verdicts) the model is reminded of the format and asked again."""
    # ---- box
    box_format: str = "auto"
    """How the VLM's box numbers read: seen-pixels (of the image as the model saw it), grid-1000 (0-1000 on
    each axis), photo-pixels, or auto (by the model family, FAMILY_BOX_FORMATS)."""
    box_threshold: float = 0.5
    """Below this IoU between the VLM's box and the best-fitting candidate's, the mask of the box prompt from a
    promptable segmenter answers instead (outcome ``fallback``), where one is available."""
    # ---- box and marks
    fallback: str = "best"
    """When the reply cannot be read: best (the source's best candidate) or none (the empty answer)."""
    # ---- marks
    marks_k: int = 9
    """The most candidates drawn with numbers (the shortlist)."""
    shortlist: str = "source"
    """Whose scores pick the shortlist: the proposal source's, or another method's (global-local, hybridgl)."""
    logprobs: bool = True
    """Read the chosen number from the log-probabilities of the valid labels where the backend gives them."""

    def checks(self) -> list[tuple[bool, str]]:
        def one_of(name: str, choices: tuple[str, ...]) -> tuple[bool, str]:
            value = getattr(self, name)
            return value in choices, f"VLM {name.replace('_', ' ')} must be one of {', '.join(choices)}, got {value!r}"

        def within(name: str, low: float, high: float) -> tuple[bool, str]:
            value = getattr(self, name)
            return low <= value <= high, f"VLM {name.replace('_', ' ')} must be in [{low}, {high}], got {value}"

        return [
            one_of("mode", MODES),
            one_of("box_format", BOX_FORMATS),
            one_of("fallback", FALLBACKS),
            one_of("shortlist", SHORTLISTS),
            within("max_tokens", 1, MAX_TOKENS),
            within("overlap_threshold", 0.0, 1.0),
            within("short_rle_chars", 0, 64),
            within("max_generations", 1, MAX_GENERATIONS),
            within("format_retries", 0, MAX_FORMAT_RETRIES),
            within("box_threshold", 0.0, 1.0),
            within("marks_k", 1, MAX_MARKS),
        ]


def box_format_for(settings: VlmSettings, family: str) -> str:
    """The box convention in use: the setting, or the family's default for ``auto``."""
    if settings.box_format != "auto":
        return settings.box_format
    return FAMILY_BOX_FORMATS.get(family, FAMILY_BOX_FORMATS["other"])


_AGENT = VlmSettings()
PRESETS: dict[str, VlmSettings] = {
    "sam3-agent": _AGENT,
    # The authors' loop, but a malformed reply gets a format reminder and is asked again (twice at most).
    "sam3-agent-retry": replace(_AGENT, format_retries=2),
    "box": replace(_AGENT, mode="box", max_tokens=1024),
    "marks": replace(_AGENT, mode="marks", max_tokens=1024),
}

SPEC = MethodSpec(
    name="vlm",
    summary="a vision-language model picks the referred object: SAM 3 Agent's loop, or one call (box, marks)",
    implementation="globallocal.methods.vlm.method:VlmMethod",
    presets=PRESETS,
    default_preset="sam3-agent",
    default_clip_model="ViT-B-16",
    default_proposals="sam3",
    builder="globallocal.methods.vlm.method:build_vlm",
    model_files="globallocal.methods.vlm.options:missing_method_files",
    defers_model=True,
    display_name="VLM",
    offered_beside_others=False,
    uses_clip=False,
    cache_keeps="the VLM's replies",
    # The agent selects any number of SAM 3's instances, or reports none; one call picks one candidate (or none:
    # no candidate, or an unreadable reply with fallback none).
    answers={"agent": ANSWERS_ANY, "box": ANSWERS_AT_MOST_ONE, "marks": ANSWERS_AT_MOST_ONE},
    answers_setting="mode",
)
