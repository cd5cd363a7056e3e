"""What every method's settings share: validation, overrides, a plain dict. Imports nothing heavy.

Settings are checked when the command line starts, before torch, open_clip
or spaCy are imported, so a bad value is refused in a fraction of a second.
"""

from __future__ import annotations

from dataclasses import asdict, fields, replace
from typing import Any

from ..errors import InputError


class MethodSettings:
    """Mixin for a method's frozen settings dataclass: validation, overrides, a plain dict."""

    def checks(self) -> list[tuple[bool, str]]:
        """(condition, message) pairs; a false condition is refused with its message."""
        return []

    def __post_init__(self) -> None:
        for ok, message in self.checks():
            if not ok:
                raise InputError(message)

    def with_overrides(self, **overrides: Any):
        """A copy with the given fields changed; ``None`` values are ignored, unknown names refused."""
        names = {field.name for field in fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise InputError(f"unknown setting(s) for this method: {', '.join(unknown)}")
        return replace(self, **{key: value for key, value in overrides.items() if value is not None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
