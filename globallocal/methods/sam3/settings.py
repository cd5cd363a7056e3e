"""SAM 3 as a method: its settings, presets and registry entry (torch-free; the code is in :mod:`.method`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ...proposals.sam3_settings import (
    DEFAULT_BELOW_THRESHOLD_K,
    DEFAULT_FALLBACK,
    DEFAULT_THRESHOLD,
    PROMPTS,
    parse_fallback,
    sam3_checks,
)
from .. import ANSWERS_ANY, ANSWERS_AT_MOST_ONE, MethodSpec
from ..settings import MethodSettings

ANSWERS = ("top", "union")


@dataclass(frozen=True)
class Sam3Settings(MethodSettings):
    """Everything that decides SAM 3's answer to a phrase."""

    prompt: str = "noun-phrase"
    """noun-phrase (the target noun phrase of the parse) or expression (the whole expression)."""
    answer: str = "top"
    """top (the best instance) or union (every instance kept, OR-ed)."""
    threshold: float = DEFAULT_THRESHOLD
    """Instances scoring (presence x detection) above this are kept."""
    fallback: str = ",".join(DEFAULT_FALLBACK)
    """The steps tried, in order, when the prompt finds nothing above the threshold ("" or none: no fallback)."""
    below_threshold_k: int = DEFAULT_BELOW_THRESHOLD_K
    """How many of the prompt's best instances the below-threshold step keeps."""

    def checks(self) -> list[tuple[bool, str]]:
        parse_fallback(self.fallback)  # refuses an unknown step itself, naming it
        return [
            (self.prompt in PROMPTS, f"SAM 3 prompt must be one of {', '.join(PROMPTS)}, got {self.prompt!r}"),
            (self.answer in ANSWERS, f"SAM 3 answer must be one of {', '.join(ANSWERS)}, got {self.answer!r}"),
            *sam3_checks(self.threshold, self.below_threshold_k),
        ]


_DEFAULT = Sam3Settings()
PRESETS: dict[str, Sam3Settings] = {
    "sam3": _DEFAULT,
    # PhraseCut's phrases name every instance ("the cars"), and so do gRefCOCO's ("the two men", or none): their
    # union is the answer
    "sam3-union": replace(_DEFAULT, answer="union"),
    # The whole expression as the prompt: what SAM 3 does with a referring expression it is not built for
    "sam3-expression": replace(_DEFAULT, prompt="expression"),
}


SPEC = MethodSpec(
    name="sam3",
    summary="SAM 3 (Meta, 2025) alone: its top instance (or their union) for the noun phrase; no CLIP scoring",
    implementation="globallocal.methods.sam3.method:Sam3Method",
    presets=PRESETS,
    default_preset="sam3",
    default_clip_model="ViT-B-16",
    default_proposals=None,
    dataset_presets={"phrasecut": "sam3-union", "grefcoco": "sam3-union"},
    builder="globallocal.methods.sam3.method:build_sam3",
    model_files="globallocal.methods.sam3.options:missing_method_files",
    display_name="SAM 3",
    offered_beside_others=False,
    uses_clip=False,
    answers={"top": ANSWERS_AT_MOST_ONE, "union": ANSWERS_ANY},  # nothing when no instance passes the threshold
    answers_setting="answer",
)
