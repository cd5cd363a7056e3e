"""What every method's settings share: validation, overrides, a plain dict. Imports nothing heavy.

Settings are checked when the command line starts, before torch, open_clip
or spaCy are imported, so a bad value is refused in a fraction of a second.
"""

from __future__ import annotations

import types
from dataclasses import asdict, fields, replace
from typing import Any, get_type_hints

from ..data.bounded import NUMBER, check_shape, key_path
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

    @classmethod
    def from_record(cls, values: dict[str, Any], where: str, fix: str = "", at: tuple[str, ...] = ()):
        """The settings a file recorded (:meth:`to_dict`; e.g. a run's config.json ``where``, under the keys
        ``at``), each of its type and every check passed; one :class:`InputError` line naming ``where`` and the
        key otherwise. Keys that are not settings are left alone."""
        hints = get_type_hints(cls)
        shape = {}
        for setting in fields(cls):
            kind = hints[setting.name]
            kinds = kind.__args__ if isinstance(kind, types.UnionType) else (kind,)
            # A float setting may be written as an integer (1.0 as 1); settings are scalars.
            shape[setting.name] = tuple(t for k in kinds for t in (NUMBER if k is float else (k,)))
        check_shape(values, shape, where, fix, at=at)
        try:
            return cls(**{name: values[name] for name in shape})
        except InputError as error:
            raise InputError(f"{where}: {key_path(at)}: {error}{fix}") from None
