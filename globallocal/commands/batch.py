"""`globallocal batch`: every (photo, phrase) pair of a manifest, resumable."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from ..errors import InputError
from ..plurals import counted
from .common import stderr
from .options import (
    CLIP_MODEL_HELP,
    CLIP_WEIGHTS_HELP,
    PRESET_HELP,
    BoxNmsOpt,
    CropLayersOpt,
    DeviceOpt,
    FreeSOLOWeightsOpt,
    FusionModeOpt,
    MaxProposalsOpt,
    MethodOpt,
    MinAreaOpt,
    MinRegionAreaOpt,
    PointsPerSideOpt,
    PrecisionOpt,
    PredIouOpt,
    ProposalArgs,
    ProposalsOpt,
    RayActorsOpt,
    RayCpusOpt,
    RayGpusOpt,
    RayOpt,
    Sam3AnswerOpt,
    Sam3FallbackOpt,
    Sam3PromptOpt,
    Sam3ThresholdOpt,
    Sam3WeightsOpt,
    SamModelOpt,
    SamSettingsOpt,
    SamWeightsOpt,
    ScoreThresholdOpt,
    ShortSideOpt,
    StabilityOpt,
    VlmApiKeyEnvOpt,
    VlmBackendOpt,
    VlmBoxFormatOpt,
    VlmFamilyOpt,
    VlmMaxPixelsOpt,
    VlmModelOpt,
    VlmPrecisionOpt,
    VlmPromptsOpt,
    VlmShortlistOpt,
    VlmUrlOpt,
    check_applicable,
    check_models,
    setting_overrides,
)


def batch(
    pairs: Path = typer.Argument(..., help="Manifest of (photo, phrase) pairs: .jsonl (one JSON object a line) or .csv "
                                 "with columns image, phrase or phrases, optional id and masks."),
    out: Path = typer.Option(..., "--output", "-o", help="Run folder: masks/ID.png, results.jsonl, errors.jsonl. "
                             "Running the same command again resumes it."),
    masks: Path | None = typer.Option(
        None, "--masks", "-m", help="Mask proposals for the lines without their own 'masks' (instead of FreeSOLO)."
    ),
    overlays: bool = typer.Option(False, help="Also write overlays/ID.png: the photo with the chosen mask tinted."),
    rle: bool = typer.Option(False, help="Also put each mask in results.jsonl as COCO RLE."),
    method: MethodOpt = "global-local",
    clip_model: str | None = typer.Option(None, help="Default: the method's. " + CLIP_MODEL_HELP),
    clip_weights: str = typer.Option("openai", help=CLIP_WEIGHTS_HELP),
    preset: str | None = typer.Option(None, help=PRESET_HELP),
    alpha: float | None = typer.Option(None, help="Global-context weight of the visual feature."),
    beta: float | None = typer.Option(None, help="Whole-expression weight of the text feature."),
    masked_blocks: int | None = typer.Option(None, help="ViT: number of last blocks with masked tokens."),
    chunk_size: int | None = typer.Option(None, help="Masked crops per image-tower batch (memory bound)."),
    fusion_mode: FusionModeOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    spacy_model: str | None = typer.Option(None, help="spaCy pipeline for the noun phrase."),
    require_noun: bool = typer.Option(
        False, help="Set aside (in errors.jsonl) a line whose phrase has no noun; by default it is answered, the "
        "whole phrase standing in for the noun phrase."
    ),
    proposals: ProposalsOpt = None,
    freesolo_weights: FreeSOLOWeightsOpt = None,
    score_threshold: ScoreThresholdOpt = None,
    max_proposals: MaxProposalsOpt = None,
    min_area: MinAreaOpt = None,
    short_side: ShortSideOpt = None,
    sam_model: SamModelOpt = None,
    sam_weights: SamWeightsOpt = None,
    sam_settings: SamSettingsOpt = None,
    points_per_side: PointsPerSideOpt = None,
    pred_iou_thresh: PredIouOpt = None,
    stability_thresh: StabilityOpt = None,
    min_region_area: MinRegionAreaOpt = None,
    box_nms_thresh: BoxNmsOpt = None,
    crop_layers: CropLayersOpt = None,
    sam3_weights: Sam3WeightsOpt = None,
    sam3_threshold: Sam3ThresholdOpt = None,
    sam3_fallback: Sam3FallbackOpt = None,
    sam3_prompt: Sam3PromptOpt = None,
    sam3_answer: Sam3AnswerOpt = None,
    vlm_backend: VlmBackendOpt = None,
    vlm_model: VlmModelOpt = None,
    vlm_url: VlmUrlOpt = None,
    vlm_api_key_env: VlmApiKeyEnvOpt = None,
    vlm_family: VlmFamilyOpt = None,
    vlm_max_pixels: VlmMaxPixelsOpt = None,
    vlm_precision: VlmPrecisionOpt = None,
    vlm_prompts: VlmPromptsOpt = None,
    vlm_shortlist: VlmShortlistOpt = None,
    vlm_box_format: VlmBoxFormatOpt = None,
    ray: RayOpt = None,
    ray_actors: RayActorsOpt = None,
    ray_gpus_per_actor: RayGpusOpt = None,
    ray_cpus_per_actor: RayCpusOpt = None,
) -> None:
    """Segment every (photo, phrase) pair of a manifest; photos named by several lines are processed once.

    A line that cannot be used (missing photo, unreadable image, empty phrase, duplicate id) goes to
    OUT/errors.jsonl and the rest go on; the exit code is 1 when any line failed.

    Example: globallocal batch pairs.jsonl -o out/
    """
    # Everything cheap is checked before torch is imported and any model loads.
    from globallocal.data.images import check_writable_folder
    from globallocal.data.manifest import read_manifest
    from globallocal.methods import Sam3Options, VlmOptions, get_method
    from globallocal.runs.runfolder import check_free

    manifest = read_manifest(pairs)
    check_free(out)
    check_writable_folder(out / "masks", "output")
    spec = get_method(method)
    sam3 = Sam3Options.from_arguments(locals())
    sam3.check(spec, proposals)
    vlm = VlmOptions.from_arguments(locals())
    vlm.check(spec, proposals, preset)
    overrides = setting_overrides(
        alpha=alpha, beta=beta, masked_blocks=masked_blocks, chunk_size=chunk_size, short_side=short_side,
        fusion_mode=fusion_mode,
    ) | sam3.method_overrides(method) | vlm.method_overrides(method)
    proposals = proposals or spec.proposals_for(preset)
    sam_settings = sam_settings or spec.default_proposal_settings
    source_args = ProposalArgs.from_arguments(sam3.proposal_arguments(method, locals()))
    check_applicable(spec, overrides, source_args, masks)
    source_args.check()
    spec.settings(preset, **overrides)
    clip_model = check_models(spec, clip_model, clip_weights, device, precision)
    from .recipe import ray_options

    pool = ray_options(ray, ray_actors, ray_gpus_per_actor, ray_cpus_per_actor)  # Ray not imported yet
    if masks is not None and not masks.exists():
        raise InputError(f"mask source not found: {masks}; give a folder of PNG masks or an RLE .json file")

    from globallocal.runs.batch import lines_failed, run_batch

    from .recipe import ModelRecipe, ray_session

    needs_generator = spec.uses_proposals and masks is None and any(
        line.masks is None for line in manifest.lines
    )
    recipe = ModelRecipe(
        method, clip_model, clip_weights, preset, device, precision, spacy_model, overrides,
        generator=source_args if needs_generator else None, proposals=proposals,
        method_options=sam3.method_options(method) or vlm.method_options(method),
    )
    recipe.check_files()  # offline, every missing model file at once, before Ray starts or any model loads
    with ray_session(pool, device) as (cluster, device):
        recipe = replace(recipe, device=device)
        worker = recipe.build_description() if cluster is not None else recipe.build()
        summary = run_batch(
            manifest, out, worker.segmenter, worker.image_source(), masks=masks,
            settings=worker.settings, weights=worker.weights, rle=rle, overlays=overlays,
            allow_no_noun=not require_noun, ray=cluster, recipe=recipe,
        )
    failed = summary["failed_lines"]
    stderr.print(
        f"{counted(summary['results'], 'mask')} from {counted(summary['lines'], 'line')} "
        f"({counted(summary['photos'], 'photo')}) in {out}; {lines_failed(failed)}"
        + (f": see {summary['errors_file']}" if failed else "")
        + (f"; {counted(summary['retried_units'], 'photo')} retried after a worker died"
           if summary["retried_units"] else "")
    )
    if summary["failed_lines"]:
        raise typer.Exit(1)
