"""The models a command's options name, as one picklable recipe: this process builds them from it, and so
does every Ray actor (``--ray``), which must end up with the same settings and weights."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from ..runs.worker import Worker
from .common import stderr
from .options import ProposalArgs

__all__ = ["ModelRecipe", "check_model_files", "describe_generator", "ray_options", "ray_session"]


def check_model_files(
    clip_model: str | None, clip_weights: str, spacy_model: str | None, generator: ProposalArgs | None,
    method: str, method_options: dict[str, Any] | None = None, tcl: Any = None,
) -> None:
    """Before any model loads: every file the command's models need that is missing and cannot be had now, in one
    message (offline, loading them one by one would name one per attempt): CLIP's weights, the method's own (its
    registry entry lists them from its builder ``method_options``: TCL's checkpoint, SAM 3's), TCL's checkpoint
    and CLIP in a blend (``tcl``, the TCLOptions), the proposal source's (``generator``: FreeSOLO, SAM, SAM 2,
    SAM 3) and the spaCy parser."""
    from ..methods import get_method
    from ..models.clip import missing_clip_weights
    from ..models.hub import require_files
    from ..models.text import missing_parser

    missing = [missing_clip_weights(clip_model, clip_weights) if clip_model is not None else None]
    missing += get_method(method).missing_files(method_options)
    if tcl is not None:
        missing += tcl.missing_files(method, clip_model, clip_weights)
    if generator is not None:
        missing += generator.missing_files()
    missing.append(missing_parser(spacy_model))
    require_files([file for file in missing if file is not None])


def describe_generator(generator: ProposalArgs, built: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A built proposal generator as a run records it: its settings (``{"proposals": kind, kind: {...}}``) and
    its weights file (``{kind: path}``; none for weights named on the hub)."""
    from ..proposals.sources import proposal_weights_file

    weights_file = proposal_weights_file(generator.kind, built, generator.weights)
    settings = {"proposals": generator.kind, **generator.settings(built)}
    return settings, ({generator.kind: weights_file} if weights_file else {})


@dataclass(frozen=True)
class ModelRecipe:
    """Segmenter and proposal generator of a run, and the settings its configuration records.

    ``device`` and ``precision`` are the ones recorded (and used when
    :meth:`build` is not told otherwise). ``generator``: the proposal options
    when the run needs a generator (None: user masks, ground truth, or a
    method that draws its own mask). ``proposals``: the kind recorded as the
    ``proposals`` setting even without a generator (``evaluate`` records
    ``gt`` and none); ``batch`` records it only with a generator.
    """

    method: str
    clip_model: str | None
    """None: the method uses no CLIP (SAM 3 alone)."""
    clip_weights: str
    preset: str | None
    device: str
    precision: str
    spacy_model: str | None
    overrides: dict[str, Any] = field(default_factory=dict)
    generator: ProposalArgs | None = None
    proposals: str | None = None
    record_proposals: bool = False
    keep_order: bool = False
    tcl: Any = None  # TCLOptions (evaluate)
    method_options: dict[str, Any] | None = None
    """The method's builder options besides TCL's (SAM 3's weights folder and cap with --method sam3)."""
    cache_key: bool = False
    """Whether the worker carries the generator's feature-cache key (evaluate)."""

    @property
    def builder_options(self) -> dict[str, Any] | None:
        """The method builder's options: TCL's checkpoint with --method tcl, else those the recipe names."""
        return (self.tcl.method_options(self.method) if self.tcl is not None else None) or self.method_options

    def check_files(self) -> None:
        """Every model file the recipe needs that is missing and cannot be had now, named at once
        (:func:`check_model_files`)."""
        check_model_files(self.clip_model, self.clip_weights, self.spacy_model, self.generator, self.method,
                          self.builder_options, self.tcl)

    def build(self, device: str | None = None, precision: str | None = None) -> Worker:
        """Load everything on ``device`` in ``precision`` (default: the recipe's); the settings keep the recipe's."""
        return self._build(device, precision, self.builder_options)

    def build_description(self) -> Worker:
        """Under ``--ray``, the driver's copy, which only names the configuration (the actors load their own): its
        models load on the CPU in fp32, except a method's own model that can wait for its first use
        (:attr:`~globallocal.methods.MethodSpec.defers_model`: the VLM), described at the actors' device and never
        loaded."""
        from ..methods import get_method

        options = self.builder_options
        if get_method(self.method).defers_model:
            options = {**(options or {}), "device": self.device, "deferred": True}
        return self._build("cpu", "fp32", options)

    def _build(self, device: str | None, precision: str | None, method_options: dict[str, Any] | None) -> Worker:
        from ..models.text import parser_label
        from ..segmenter import Segmenter

        self.check_files()
        device, precision = device or self.device, precision or self.precision
        segmenter = Segmenter.from_pretrained(
            self.clip_model, self.clip_weights, self.preset, device=device, precision=precision,
            spacy_model=self.spacy_model, method=self.method, method_options=method_options, **self.overrides,
        )
        if self.tcl is not None:
            segmenter.method = self.tcl.wrap(segmenter.method)
        # Weights files are identified by content in the run's configuration, not by the path typed.
        weights = {"clip": self.clip_weights} if os.path.isfile(self.clip_weights) else {}
        proposal_settings: dict[str, Any] = {"proposals": self.proposals} if self.record_proposals else {}
        source, proposal_key = ("gt" if self.proposals == "gt" else None), None
        if self.generator is not None:
            from ..proposals.sources import proposal_cache_key

            source = self.generator.build(device, keep_order=self.keep_order, precision=precision)
            if self.cache_key:
                # The recorded device, not this process's: a driver on the CPU describes actors on GPUs.
                proposal_key = proposal_cache_key(self.generator.kind, source, self.generator.weights, self.device)
            generator_settings, generator_weights = describe_generator(self.generator, source)
            weights.update(generator_weights)
            proposal_settings.update(generator_settings)
            if self.generator.phrase_dependent:
                segmenter.proposal_source, source = source, None  # asked per phrase by the segmenter
        settings = {
            "clip_model": self.clip_model,
            "clip_weights": None if self.clip_model is None else "file" if "clip" in weights else self.clip_weights,
            "preset": self.preset,
            **segmenter.method.describe(),
            "parser": parser_label(segmenter.nlp),
            **proposal_settings,
            "device": self.device,
            "precision": self.precision,
        }
        return Worker(segmenter, source, settings, weights, proposal_key)


def _actor_device(device: str, pool: Any) -> str:
    """``--device`` under ``--ray``: auto is the actors' (cuda with GPUs); cuda:N cannot name an actor's GPU."""
    if device == "auto":
        return pool.device
    if device.startswith("cuda:"):
        raise InputError(f"--device {device} does not apply with --ray: each actor sees its own GPUs; use cuda")
    return device


def ray_options(address: str | None, actors: int | None, gpus: float | None, cpus: float | None) -> Any:
    """The ``--ray`` options as a RayOptions, checked before anything loads (torch-free; Ray is not imported);
    None without ``--ray``, whose pool options are then refused."""
    if address is None:
        given = [flag for flag, value in (("--ray-actors", actors), ("--ray-gpus-per-actor", gpus),
                                          ("--ray-cpus-per-actor", cpus)) if value is not None]
        if given:
            raise InputError(f"{given[0]} needs --ray")
        return None
    from ..runs.ray_engine import RayOptions

    options = RayOptions(address, actors, gpus, cpus)
    options.check()
    return options


@contextmanager
def ray_session(options: Any, device: str) -> Iterator[tuple[Any, str]]:
    """(the entered RayRun or None, the device the run records) for :func:`ray_options`' answer."""
    if options is None:
        from ..models.clip import resolve_device

        yield None, resolve_device(device)
        return
    from ..runs.ray_engine import RayRun

    with RayRun(options, say=stderr.print) as run:
        yield run, _actor_device(device, run.pool)
