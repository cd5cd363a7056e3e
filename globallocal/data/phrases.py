"""The one check of a phrase and of an output id a user gives, before anything parses or writes them.

Every way in (``segment``'s arguments, batch lines, the page, the Python
API, dataset sentences) cleans its phrases here, so a phrase that only
looks non-empty, is not valid Unicode, or is too long for the parser is
handled the same everywhere. Nothing heavy is imported.
"""

from __future__ import annotations

import re
import unicodedata
import warnings
from typing import Any

from ..errors import InputError

__all__ = [
    "MAX_ID_BYTES", "MAX_PHRASE_CHARS", "EMPTY_PHRASE", "SHOWN_CHARS", "check_output_id", "clean_phrase", "shown",
]

# CLIP reads at most 77 tokens (a few hundred characters); spaCy refuses texts over 1,000,000 characters and
# needs about 1 GB per 100,000 of them. No real referring expression comes near this.
MAX_PHRASE_CHARS = 2000
# File names are limited to 255 bytes; an id also gets "_<k>" for several phrases and ".png".
MAX_ID_BYTES = 200
# How much of a phrase a message or summary line quotes.
SHOWN_CHARS = 60
EMPTY_PHRASE = "the phrase is empty; describe the object, e.g. \"the man on the right\""
_SURROGATE = re.compile("[\ud800-\udfff]")
# Characters that show nothing: spaces, line breaks, and format characters such as zero-width spaces and joiners.
_INVISIBLE = ("Zs", "Zl", "Zp", "Cc", "Cf")


def _visible(text: str) -> bool:
    return any(not char.isspace() and unicodedata.category(char) not in _INVISIBLE for char in text)


def shown(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` quoted for a message or summary line: whole up to ``limit`` characters, else its first ``limit``
    followed by "..."."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}..."


def clean_phrase(phrase: Any) -> str:
    """The phrase to parse: refused when not a string, not valid Unicode or invisible; cut (with a warning)
    beyond :data:`MAX_PHRASE_CHARS` characters, which CLIP would truncate anyway."""
    if not isinstance(phrase, str):
        raise InputError(f"a phrase must be a string, got {type(phrase).__name__}")
    if _SURROGATE.search(phrase):
        raise InputError(
            f"the phrase {phrase.encode('utf-8', 'replace').decode()[:60]!r} is not valid Unicode text (it holds "
            "a lone surrogate, e.g. from bytes that are not UTF-8); give it as UTF-8 text"
        )
    if not _visible(phrase):
        raise InputError(EMPTY_PHRASE)
    if len(phrase) > MAX_PHRASE_CHARS:
        warnings.warn(
            f"phrase of {len(phrase)} characters was cut to its first {MAX_PHRASE_CHARS} (CLIP reads at most "
            f"77 tokens of it anyway): {shown(phrase)}",
            stacklevel=2,
        )
        phrase = phrase[:MAX_PHRASE_CHARS]
    return phrase


def check_output_id(value: Any) -> str:
    """A batch line's id as the name of its output files: refused when it cannot name a file everywhere."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError("id must be a string or an integer")
    value = str(value)
    shown = value.encode("utf-8", "replace").decode()[:40]
    if _SURROGATE.search(value) or any(unicodedata.category(char) == "Cc" for char in value):
        raise ValueError(f"id {shown!r} holds a control character or is not valid Unicode; use letters, "
                         "digits, '-' and '_'")
    if len(value.encode("utf-8")) > MAX_ID_BYTES:
        raise ValueError(f"id {shown!r}... is longer than {MAX_ID_BYTES} bytes, too long for a file name")
    if not _visible(value) or "/" in value or "\\" in value or value.startswith("."):
        raise ValueError(f"id {shown!r} cannot name a mask file (empty, a path, or starting with '.')")
    return value
