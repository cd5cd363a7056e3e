"""Proposal sources by name: FreeSOLO (the paper's), SAM 2, SAM and SAM 3 (per phrase).

A registry in the spirit of segment-anything's ``sam_model_registry``:
:func:`build_proposal_generator` turns a source name and command-line style
options into a ready generator, and :func:`proposal_cache_key` names what
the generator's output depends on, so a feature cache can keep its masks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..models.weights import library_versions, weights_identity
from . import PROPOSAL_KINDS
from .masks import ProposalGenerator
from .sam import (
    DEFAULT_SAM_SETTINGS,
    POINTS_PER_BATCH,
    SAM_OPTION_NAMES,
    SAM_SETTINGS,
    SAM2Generator,
    SAMGenerator,
    check_settings,
)
from .sam_weights import DEFAULT_SAM2_MODEL, DEFAULT_SAM_MODEL, default_sam_weights, load_sam, load_sam2

# SAM 3's own options (see Sam3ConceptSource); SAM 2's options apply to its optional sam2 fallback step.
SAM3_OPTION_NAMES = frozenset({"sam3_threshold", "sam3_fallback", "sam3_below_k", "sam3_precision", "sam2_weights"})


def build_proposal_generator(
    kind: str,
    *,
    model: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    settings: str = DEFAULT_SAM_SETTINGS,
    max_proposals: int | None = None,
    device: str | torch.device = "cpu",
    keep_order: bool = False,
    precision: str = "fp32",
    **options: Any,
) -> ProposalGenerator:
    """A ready proposal source of ``kind`` (``freesolo``, ``sam2``, ``sam`` or ``sam3``), weights loaded.

    ``sam3`` gives a :class:`~globallocal.proposals.sam3.Sam3ConceptSource`:
    proposals per phrase (its ``answer``), not per image. ``weights`` is then
    SAM 3's folder (None: ``facebook/sam3`` from the hub); its options are
    ``sam3_threshold``, ``sam3_fallback``, ``sam3_below_k``, ``sam3_precision``;
    ``model``, ``settings``, ``sam2_weights`` and SAM's options build the SAM 2
    of the fallback step ``sam2`` and are refused without it.

    - ``model``: SAM 2 ``tiny|small|base-plus|large`` (default large) or SAM
      ``vit_h|vit_l|vit_b`` (default vit_h); FreeSOLO has one model.
    - ``weights``: checkpoint path (None: the default place or download, see
      :func:`load_sam2`, :func:`load_sam`, ``resolve_freesolo_weights``).
    - ``settings``: a :data:`SAM_SETTINGS` name the SAM options start from.
    - ``options``: generator keyword arguments; for SAM those of
      :class:`SAM2Generator` (points_per_side, pred_iou_thresh,
      stability_score_thresh, min_mask_region_area, box_nms_thresh,
      crop_n_layers, points_per_batch) override ``settings``; for FreeSOLO
      those of ``FreeSOLOGenerator``. Options that are None are ignored, so
      a command line can pass every option it has.
    - ``max_proposals``: keep the best this many (FreeSOLO: its own cap,
      100 by default).
    - ``precision``: FreeSOLO's and SAM 3's networks (``sam3_precision``
      overrides it for SAM 3); SAM and SAM 2 run in their packages' float32.
    - ``keep_order``: SAM's masks in the order its package returns them
      instead of best score first (a method's
      :attr:`~globallocal.methods.MethodSpec.keep_proposal_order`); FreeSOLO
      returns its own (score) order either way.
    """
    given: Mapping[str, Any] = {key: value for key, value in options.items() if value is not None}
    if kind == "sam3":
        return _build_sam3(model, weights, settings, max_proposals, device, keep_order, precision, dict(given))
    stray_sam3 = sorted(SAM3_OPTION_NAMES & set(given))
    if stray_sam3:
        raise InputError(f"{stray_sam3[0]} applies to SAM 3 proposals, not {kind}")
    if kind == "freesolo":
        stray = sorted(SAM_OPTION_NAMES & set(given))
        if stray or model is not None:
            raise InputError(f"{', '.join(stray) or 'a model name'} applies to SAM proposals, not FreeSOLO")
        from .freesolo import build_freesolo

        freesolo_options = {**given, "precision": precision}
        if max_proposals is not None:
            freesolo_options["max_proposals"] = max_proposals
        return build_freesolo(weights=weights, device=device, **freesolo_options)
    if kind not in ("sam2", "sam"):
        raise InputError(f"unknown proposal source {kind!r}; use {', '.join(PROPOSAL_KINDS)}")
    if settings not in SAM_SETTINGS:
        raise InputError(f"unknown SAM settings {settings!r}; use {', '.join(SAM_SETTINGS)}")
    unknown = sorted(set(given) - SAM_OPTION_NAMES)
    if unknown:
        raise InputError(f"{', '.join(unknown)} does not apply to {kind} proposals")
    generator_options = {"points_per_batch": POINTS_PER_BATCH, **SAM_SETTINGS[settings], **given}
    # Checked before a model loads (seconds to minutes), not after.
    check_settings("SAM 2" if kind == "sam2" else "SAM", generator_options, max_proposals)
    if kind == "sam2":
        name = model or DEFAULT_SAM2_MODEL
        return SAM2Generator(
            load_sam2(name, weights, device), max_proposals=max_proposals, model_name=name, keep_order=keep_order,
            **generator_options,
        )
    name = model or DEFAULT_SAM_MODEL
    return SAMGenerator(
        load_sam(name, weights, device), max_proposals=max_proposals, model_name=name, keep_order=keep_order,
        **generator_options,
    )


def _build_sam3(
    model: str | None,
    weights: str | os.PathLike[str] | None,
    settings: str,
    max_proposals: int | None,
    device: str | torch.device,
    keep_order: bool,
    precision: str,
    given: dict[str, Any],
) -> ProposalGenerator:
    """SAM 3's concept source; SAM 2 (``model``, SAM options) only for the fallback step ``sam2``."""
    from .sam3 import DEFAULT_BELOW_THRESHOLD_K, DEFAULT_FALLBACK, DEFAULT_THRESHOLD, check_sam3_settings

    own = {name: given.pop(name) for name in SAM3_OPTION_NAMES & set(given)}
    threshold = own.get("sam3_threshold", DEFAULT_THRESHOLD)
    below_k = own.get("sam3_below_k", DEFAULT_BELOW_THRESHOLD_K)
    steps = check_sam3_settings(threshold, own.get("sam3_fallback", DEFAULT_FALLBACK), below_k, max_proposals)
    sam2 = None
    if "sam2" in steps:
        sam2 = build_proposal_generator("sam2", model=model, weights=own.get("sam2_weights"), settings=settings,
                                        max_proposals=max_proposals, device=device, keep_order=keep_order, **given)
    elif given or model is not None or "sam2_weights" in own:
        stray = sorted(given) or ["a model name" if model is not None else "sam2_weights"]
        raise InputError(f"{stray[0]} applies to SAM 2, which SAM 3 uses only with the fallback step sam2")
    from .sam3 import Sam3ConceptSource
    from .sam3_weights import load_sam3

    loaded = load_sam3(weights, device, own.get("sam3_precision", precision))
    return Sam3ConceptSource.from_loaded(loaded, threshold=threshold, max_proposals=max_proposals, fallback=steps,
                                         below_threshold_k=below_k, sam2=sam2)


def proposal_weights_file(kind: str, generator: Any, weights: str | os.PathLike[str] | None) -> Path | None:
    """The weights file a built generator loaded (given, or found at its default place); None for hub weights."""
    if kind == "freesolo":
        from .freesolo_checkpoint import resolve_freesolo_weights

        return resolve_freesolo_weights(weights)
    if kind == "sam3":
        return generator.weights_file  # the hub snapshot's file too: SAM 3 is identified by content either way
    if weights is None and kind == "sam":
        return default_sam_weights(generator.settings["model"])
    return None if weights is None else Path(weights)


def proposal_cache_key(
    kind: str, generator: Any, weights: str | os.PathLike[str] | None, device: str | torch.device
) -> dict[str, Any]:
    """What a generator's proposals depend on: source, model, weights content, settings, device type.

    Weights given as a file (or found at their default place) are identified
    by content; SAM 2 weights taken from the hub by their hub model name.
    SAM 3's key holds its settings (threshold, fallback chain, the SAM 2 of
    its fallback, transformers' version) and its safetensors' content; the
    prompts are the caller's part of the key.
    """
    settings = dict(generator.settings)
    path = proposal_weights_file(kind, generator, weights)
    if kind == "sam3" and path is None:
        raise InputError("a SAM 3 model given in memory has no weights file to identify it; load it with load_sam3")
    if path is None:
        return {"source": kind, "weights": f"hub:{settings['model']}", "options": settings,
                "device": torch.device(device).type}
    return proposal_source_key(kind, path, settings, device)


def proposal_source_key(
    source: str, weights: str | os.PathLike[str], options: dict[str, Any], device: str | torch.device
) -> dict[str, Any]:
    """The cache key of a deterministic proposal generator (e.g. FreeSOLO): its weights, options and device type."""
    return {
        "source": source,
        "weights": weights_identity(weights),
        "options": options,
        "device": torch.device(device).type,
        **library_versions(),
    }
