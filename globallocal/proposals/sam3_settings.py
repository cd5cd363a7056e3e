"""SAM 3's settings and their checks, torch-free: the command line checks them before any model loads."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import InputError
from .concepts import QUERY_TEXTS

SAM3_TEXT_TOKENS = 32  # SAM 3's text encoder has 32 positions (the processor pads to them)
FALLBACK_STEPS = ("head-noun", "below-threshold", "sam2")
ANSWER_STEPS = ("noun-phrase", *FALLBACK_STEPS, "none")
"""Every step an answer can come from: the noun phrase, a fallback, or none (no candidate)."""
DEFAULT_FALLBACK = ("head-noun", "below-threshold")
DEFAULT_THRESHOLD = 0.5
PROMPTS = QUERY_TEXTS  # what of a phrase SAM 3 is prompted with
DEFAULT_BELOW_THRESHOLD_K = 3


def parse_fallback(text: str | Sequence[str]) -> tuple[str, ...]:
    """Fallback steps from ``"head-noun,below-threshold"`` (or a sequence); ``""`` or ``"none"``: no fallback.

    The chain always runs in :data:`FALLBACK_STEPS` order; a step named twice or an unknown step is refused.
    """
    steps = [step.strip() for step in text.split(",")] if isinstance(text, str) else [str(s) for s in text]
    steps = [step for step in steps if step and step != "none"]
    unknown = [step for step in steps if step not in FALLBACK_STEPS]
    if unknown:
        raise InputError(f"unknown SAM 3 fallback step {unknown[0]!r}; use {', '.join(FALLBACK_STEPS)} or none")
    if len(set(steps)) != len(steps):
        raise InputError(f"a SAM 3 fallback step is named twice in {','.join(steps)}")
    return tuple(step for step in FALLBACK_STEPS if step in steps)


def sam3_checks(threshold: float, below_threshold_k: int) -> list[tuple[bool, str]]:
    """(condition, message) pairs of SAM 3's numeric settings (a false condition is refused with its message)."""
    return [
        (0.0 <= threshold <= 1.0, f"SAM 3 threshold must be in [0, 1], got {threshold}"),
        (below_threshold_k >= 1, f"SAM 3 below-threshold k must be at least 1, got {below_threshold_k}"),
    ]


def check_sam3_settings(
    threshold: float, fallback: str | Sequence[str], below_threshold_k: int, max_proposals: int | None = None
) -> tuple[str, ...]:
    """Refuse unusable SAM 3 settings (before a model loads); returns the fallback steps."""
    steps = parse_fallback(fallback)
    checks = [*sam3_checks(threshold, below_threshold_k),
              (max_proposals is None or max_proposals >= 1, f"max_proposals must be at least 1, got {max_proposals}")]
    for ok, message in checks:
        if not ok:
            raise InputError(message)
    return steps
