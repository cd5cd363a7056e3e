"""What a method's command-line options share: read from a command's arguments, named by their flags."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, ClassVar, TypeVar

__all__ = ["CommandOptions"]

_Options = TypeVar("_Options", bound="CommandOptions")  # typing.Self is Python 3.11's; 3.10 is supported


class CommandOptions:
    """Base of a frozen dataclass of a method's options as a command received them (None: not given).

    ``ARGUMENTS`` maps each field to the command's argument (``vlm_model``), whose flag is ``--vlm-model``.
    """

    ARGUMENTS: ClassVar[dict[str, str]] = {}

    @classmethod
    def from_arguments(cls: type[_Options], arguments: dict[str, Any]) -> _Options:
        """The options among a command's arguments (its ``locals()``)."""
        return cls(**{name: arguments.get(argument) for name, argument in cls.ARGUMENTS.items()})

    def flag(self, name: str) -> str:
        """The command-line flag of the field ``name``."""
        return f"--{self.ARGUMENTS[name].replace('_', '-')}"

    def given(self) -> list[str]:
        """The flags of the options given, in declaration order."""
        return [self.flag(f.name) for f in fields(self) if getattr(self, f.name) is not None]
