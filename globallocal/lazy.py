"""Names a package exports but imports on first use (PEP 562).

The command line checks every option before torch, open_clip or spaCy are
imported; packages whose modules need them export those names lazily, so
importing a light module beside them (``globallocal.methods.tcl.settings``,
``globallocal.proposals``'s names) stays light.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: each name is imported from its module (``.sub`` is relative to
    the package) when first asked for, then kept in the package's namespace."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
