"""The registry of scoring methods: one module per method, built by name.

Each method module defines ``SPEC``, a :class:`MethodSpec` with its method
class, settings class, named presets and defaults. Modules are imported when
a method is asked for, so listing the methods (``--help``) costs nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from .base import ImageFeatures, Method, MethodSettings, SegmentResult, TextEncoder

__all__ = [
    "DEFAULT_METHOD",
    "ImageFeatures",
    "Method",
    "MethodSettings",
    "MethodSpec",
    "SegmentResult",
    "TextEncoder",
    "available_methods",
    "build_method",
    "get_method",
]

# name -> module defining SPEC; the first is the default.
_MODULES = {
    "global-local": "globallocal.methods.global_local.method",
    "hybridgl": "globallocal.methods.hybridgl.method",
    "tcl": "globallocal.methods.tcl.method",
    "sam3": "globallocal.methods.sam3.method",
}
DEFAULT_METHOD = "global-local"


@dataclass(frozen=True)
class MethodSpec:
    """A method's registry entry."""

    name: str
    summary: str
    method_class: type[Method]
    presets: Mapping[str, MethodSettings]
    default_preset: str
    default_clip_model: str
    default_proposals: str | None
    """The proposal source used when none is named (None: the method draws its own mask)."""
    default_proposal_settings: str | None = None
    """The named SAM generator settings used when none are named (None: the proposal source's default)."""
    preset_aliases: Mapping[str, str] = field(default_factory=dict)
    dataset_presets: Mapping[str, str] = field(default_factory=dict)
    """The preset of the paper's setting per dataset, where it differs from the default."""
    keep_proposal_order: bool = False
    """Whether the method takes SAM's proposals in the order the generator returns them (HybridGL's
    section 2) rather than best predicted IoU first."""
    build: Callable[..., Method] | None = None
    """Builder ``(clip, nlp, settings, **options) -> Method`` when the class alone is not enough (extra weights)."""
    display_name: str = ""
    """The method's name in prose ("HybridGL"); the registry name when empty."""
    sweep_module: str | None = None
    """The module that replays the method's runs from a feature cache (``globallocal sweep``): it defines
    ``sweep(run, axes, out_dir, started)`` and ``format_table(result)``; None: its runs cannot be swept."""
    sweep_settings: tuple[str, ...] = ()
    """The settings such a sweep can vary (its axes)."""
    preset_proposals: Mapping[str, str] = field(default_factory=dict)
    """Presets that bring their own default proposal source (``global-local-sam3``: ``sam3``)."""

    @property
    def display(self) -> str:
        return self.display_name or self.name

    def preset_names(self) -> list[str]:
        return [*self.presets, *self.preset_aliases]

    def settings(self, preset: str | None = None, **overrides: Any) -> MethodSettings:
        """The settings of a named preset (default: the method's), with ``overrides`` applied."""
        name = preset or self.default_preset
        key = self.preset_aliases.get(name, name)
        if key not in self.presets:
            raise InputError(
                f"unknown preset '{name}' for method {self.name}; choose one of {', '.join(self.preset_names())}"
            )
        return self.presets[key].with_overrides(**overrides)

    def proposals_for(self, preset: str | None) -> str | None:
        """The proposal source used when none is named: the preset's own, else the method's."""
        name = preset or self.default_preset
        return self.preset_proposals.get(self.preset_aliases.get(name, name), self.default_proposals)

    def preset_for(self, dataset: str | None) -> str:
        """The preset of the paper's setting for a dataset."""
        return self.dataset_presets.get(dataset or "", self.default_preset)


# Names of one method's module that the rest of the package uses, imported on first use (PEP 562): the
# registry is the one place outside a method's folder that knows where its code lives.
_LAZY_EXPORTS = {
    "GlobalLocalSettings": "globallocal.methods.global_local.method",
    "TCLOptions": "globallocal.methods.tcl.options",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY_EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY_EXPORTS[name]), name)


def available_methods() -> list[str]:
    """The names of the registered methods, the default first."""
    return list(_MODULES)


def get_method(name: str) -> MethodSpec:
    """The registry entry of a method."""
    if name not in _MODULES:
        raise InputError(f"unknown method '{name}'; choose one of {', '.join(_MODULES)}")
    return importlib.import_module(_MODULES[name]).SPEC


def build_method(
    name: str, clip, nlp, preset: str | None = None, options: Mapping[str, Any] | None = None, **overrides: Any
) -> Method:
    """A ready method: ``preset`` (default the method's) with ``overrides``; ``options`` go to its builder."""
    spec = get_method(name)
    settings = spec.settings(preset, **overrides)
    if spec.build is not None:
        return spec.build(clip, nlp, settings, **(options or {}))
    if options:
        raise InputError(f"method {name} takes no options ({', '.join(options)})")
    return spec.method_class(clip, nlp, settings)
