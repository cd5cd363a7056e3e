"""The registry of scoring methods: one folder per method, built by name.

Each method folder's ``settings.py`` defines ``SPEC``, a :class:`MethodSpec`
with its settings class, named presets, defaults and where its code lives;
its ``method.py`` holds that code. ``settings.py`` imports nothing heavy, so
the command line checks a method's name, preset, settings and CLIP model
before torch is imported; the code is imported when a method is built.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from ..lazy import lazy_exports
from ..models.architectures import architecture_config, check_clip_weights, image_tower_family, same_architecture
from .settings import MethodSettings

if TYPE_CHECKING:
    from .base import Method

__all__ = [
    "ANSWERS_ANY",
    "ANSWERS_AT_MOST_ONE",
    "ANSWERS_ONE",
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

# name -> module defining SPEC (torch-free); the first is the default.
_MODULES = {
    "global-local": "globallocal.methods.global_local.settings",
    "hybridgl": "globallocal.methods.hybridgl.settings",
    "tcl": "globallocal.methods.tcl.settings",
    "sam3": "globallocal.methods.sam3.settings",
    "vlm": "globallocal.methods.vlm.settings",
}
DEFAULT_METHOD = "global-local"

# How many objects one answer can hold (MethodSpec.answers): what decides whether a method can score on
# gRefCOCO's no-target and multi-target expressions at all.
ANSWERS_ONE = "exactly one"
ANSWERS_AT_MOST_ONE = "none or one"
ANSWERS_ANY = "none, one or several"


@dataclass(frozen=True)
class MethodSpec:
    """A method's registry entry."""

    name: str
    summary: str
    implementation: str
    """``module:Class`` of the method's code, imported when it is built."""
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
    dataset_proposal_settings: Mapping[str, str] = field(default_factory=dict)
    """The named SAM generator settings of the paper's setting per dataset, where they differ from
    ``default_proposal_settings`` (HybridGL's PhraseCut column)."""
    keep_proposal_order: bool = False
    """Whether the method takes SAM's proposals in the order the generator returns them (HybridGL's
    section 2) rather than best predicted IoU first."""
    builder: str | None = None
    """``module:function`` of a builder ``(clip, nlp, settings, **options) -> Method`` when the class alone is
    not enough (extra weights)."""
    image_tower: str | None = None
    """The CLIP image tower family the method needs ("vit": patch tokens); None: any supported one."""
    built_on: str | None = None
    """The CLIP architecture the method's own weights were trained on (TCL: ViT-B-16); others are warned."""
    display_name: str = ""
    """The method's name in prose ("HybridGL"); the registry name when empty."""
    offered_beside_others: bool = True
    """Whether ``serve`` offers the method on a page that serves another one (False: it loads a model of its
    own that the page's options do not name, e.g. SAM 3's weights)."""
    sweep_module: str | None = None
    """The module that replays the method's runs from a feature cache (``globallocal sweep``): it defines
    ``sweep(run, axes, started)`` (a :class:`~.sweeps.SweptRun` in, a :class:`~.sweeps.Sweep` out) and
    ``format_table(result)``; None: its runs cannot be swept."""
    sweep_settings: tuple[str, ...] = ()
    """The settings such a sweep can vary (its axes)."""
    preset_proposals: Mapping[str, str] = field(default_factory=dict)
    """Presets that bring their own default proposal source (``global-local-sam3``: ``sam3``)."""
    uses_clip: bool = True
    """Whether the method scores with CLIP (False: SAM 3 alone, which is built with ``clip=None``, so no CLIP
    loads and the CLIP options do not apply)."""
    cache_keeps: str | None = None
    """What ``--cache`` keeps for a method without CLIP features (the VLM: its replies); None: nothing."""
    answers: str | Mapping[str, str] = ANSWERS_ONE
    """How many objects one answer holds: :data:`ANSWERS_ONE` (a selector of one proposal: never none, never
    several), :data:`ANSWERS_AT_MOST_ONE` or :data:`ANSWERS_ANY`; or, where a setting decides, that setting's
    values (:attr:`answers_setting`) mapped to those. An image without any proposal is answered with nothing
    whatever the method (counted apart)."""
    answers_setting: str | None = None
    """The setting whose value :attr:`answers` maps (SAM 3's ``answer``: top or union)."""
    model_files: str | None = None
    """``module:function`` listing the method's own weights files that are not on this machine, from its builder's
    options (``(options) -> list[MissingFile]``), so that every missing file is named before any model loads; None:
    it loads none beyond CLIP."""
    defers_model: bool = False
    """Whether the method's builder takes ``deferred=True`` (with ``device``): its own model is then described at
    once and loaded at its first use, so a Ray driver, which only records what its actors run, describes it at the
    actors' device and never loads it (the VLM)."""

    @property
    def display(self) -> str:
        return self.display_name or self.name

    @property
    def method_class(self) -> type[Method]:
        return _load(self.implementation)

    def answer_kind(self, settings: Mapping[str, Any] | None = None, phrase_dependent: bool = False) -> str:
        """How many objects an answer holds under ``settings`` (a run's settings; default: the method's default
        preset's). Chosen among ``phrase_dependent`` candidates (``--proposals sam3``), one proposal may be none:
        a phrase whose noun phrase finds nothing is answered "no target"."""
        if isinstance(self.answers, str):
            kind = self.answers
        else:
            default = self.settings().to_dict()[self.answers_setting]  # a run that does not record it: the default
            kind = self.answers.get((settings or {}).get(self.answers_setting, default), self.answers[default])
        return ANSWERS_AT_MOST_ONE if phrase_dependent and kind == ANSWERS_ONE else kind

    @property
    def uses_proposals(self) -> bool:
        """Whether the method ranks mask proposals: such a method names its default source."""
        return self.default_proposals is not None

    def check_clip(self, clip_model: str | None, clip_weights: str = "openai") -> str:
        """The CLIP architecture to load (default: the method's), refused when its image tower does not fit
        the method and warned about when it is not the one the method's weights were trained on; the
        weights path checked (:func:`~globallocal.models.architectures.check_clip_weights`). Loads nothing."""
        name = clip_model or self.default_clip_model
        config = architecture_config(name)  # an unknown name or a bad config file is refused, whatever the method
        check_clip_weights(clip_weights, name)
        if not self._tower_fits(config):
            raise InputError(
                f"method={self.name} needs a ViT CLIP (it works on the image tower's patch tokens); "
                f"clip_model={name} is a ResNet: use {self.default_clip_model} (the paper's), ViT-B-32 or ViT-L-14"
            )
        if not self._trained_on(name):
            warnings.warn(
                f"{self.display} was trained on CLIP {self.built_on}; with clip_model={name} its weights see "
                f"features they were not trained on: use clip_model={self.default_clip_model}",
                stacklevel=1,  # the place of the check: the warning names no caller
            )
        return name

    def missing_files(self, options: Mapping[str, Any] | None = None) -> list[Any]:
        """The method's own weights files that are not on this machine (:attr:`model_files`), as
        :class:`~globallocal.models.hub.MissingFile`; ``options``: its builder's."""
        return _load(self.model_files)(options) if self.model_files else []

    def runs_on(self, clip_model: str) -> bool:
        """Whether the method runs on CLIP ``clip_model`` as it was meant to: its image tower and, for a method
        with weights of its own (TCL), the architecture they were trained on."""
        return self._tower_fits(architecture_config(clip_model)) and self._trained_on(clip_model)

    def _tower_fits(self, config: dict[str, Any]) -> bool:
        return self.image_tower is None or image_tower_family(config) == self.image_tower

    def _trained_on(self, name: str) -> bool:
        return self.built_on is None or same_architecture(name, self.built_on)

    def __post_init__(self) -> None:
        # The aliases ("paper") are presets too, for whoever lists them: the same settings under a second name.
        aliased = {alias: self.presets[target] for alias, target in self.preset_aliases.items()}
        object.__setattr__(self, "presets", {**self.presets, **aliased})

    def preset_names(self) -> list[str]:
        return list(self.presets)

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

    def borrowed_preset(self, dataset: str) -> tuple[str, str] | None:
        """(preset, dataset) when ``dataset`` has no preset of the method's own and :meth:`preset_for` gives
        another dataset's (Global-Local's paper sets alpha per RefCOCO dataset and none for PhraseCut), so a run
        can say so; None when the preset is the dataset's own or serves every dataset."""
        preset = self.preset_for(dataset)
        if dataset in self.dataset_presets:
            return None
        owner = next((name for name, value in self.dataset_presets.items() if value == preset), None)
        return None if owner is None else (preset, owner)

    def proposal_settings_for(self, dataset: str | None) -> str | None:
        """The named SAM generator settings of the paper's setting for a dataset."""
        return self.dataset_proposal_settings.get(dataset or "", self.default_proposal_settings)


# Names of one method's module that the rest of the package uses, imported on first use (PEP 562): the
# registry is the one place outside a method's folder that knows where its code lives.
_LAZY_EXPORTS = {
    "GlobalLocalSettings": "globallocal.methods.global_local.settings",
    "TCLOptions": "globallocal.methods.tcl.options",
    "Sam3Options": "globallocal.methods.sam3.options",
    "VlmOptions": "globallocal.methods.vlm.options",
    # The interface every method implements: torch, so imported on first use too.
    "ImageFeatures": "globallocal.methods.base",
    "Method": "globallocal.methods.base",
    "SegmentResult": "globallocal.methods.base",
    "TextEncoder": "globallocal.methods.base",
}


def _load(reference: str) -> Any:
    """The object a ``module:name`` reference names."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


__getattr__ = lazy_exports(__name__, _LAZY_EXPORTS)


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
    if spec.builder is not None:
        return _load(spec.builder)(clip, nlp, settings, **(options or {}))
    if options:
        raise InputError(f"method {name} takes no options ({', '.join(options)})")
    return spec.method_class(clip, nlp, settings)
