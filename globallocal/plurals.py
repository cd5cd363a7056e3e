"""Counts in messages, one home for plurals: '1 proposal', '3 proposals', '2 CPUs'."""

from __future__ import annotations

__all__ = ["counted", "noun_for"]


def noun_for(count: float, noun: str, plural: str | None = None) -> str:
    """``noun`` as ``count`` of it reads: plural unless the count is one; ``plural`` for a noun not made plural by
    an 's' ('entries')."""
    return noun if count == 1 else plural or noun + "s"


def counted(count: float, noun: str, plural: str | None = None) -> str:
    """'0 sentences', '1 sentence', '1.5 CPUs': ``count`` and :func:`noun_for` it."""
    number = f"{count:g}" if isinstance(count, float) else str(count)
    return f"{number} {noun_for(count, noun, plural)}"
