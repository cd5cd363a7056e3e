"""`globallocal evaluate`: a RefCOCO / RefCOCO+ / RefCOCOg, PhraseCut, gRefCOCO or ReasonSeg split, resumable."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer
from rich.console import Console

from ..errors import InputError
from ..plurals import counted
from .common import default_run_dir, stderr
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
    StickyTopkOpt,
    TCLBlendOpt,
    TCLCheckpointOpt,
    TCLClipWeightsOpt,
    TCLKpWeightOpt,
    TCLPamrOpt,
    TCLTemplatesOpt,
    TCLThresholdOpt,
    TCLWeightOldOpt,
    TCLWeightsOldOpt,
    TCLWindowOpt,
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


def evaluate(
    dataset: str = typer.Option(..., help="refcoco, refcoco+, refcocog, phrasecut, grefcoco or reasonseg."),
    split: str = typer.Option(
        ..., help="val, testA, testB (refcoco, refcoco+, grefcoco); val, test (refcocog umd, reasonseg); val, test, "
        "miniv, val_miniv (phrasecut)."
    ),
    data_root: Path = typer.Option(
        ..., help="REFER root holding DATASET/ with refs(SPLIT_BY).p and instances.json (grefcoco/ with "
        "grefs(unc).p or .json), the VGPhraseCut_v0 folder (refer_SPLIT.json, image_data_split.json, images/), or "
        "the ReasonSeg folder (SPLIT/NAME.jpg beside NAME.json)."
    ),
    images: Path | None = typer.Option(
        None, help="COCO train2014 image folder (required for RefCOCO* and grefcoco; PhraseCut default: "
        "DATA_ROOT/images; ReasonSeg's photos lie beside their JSON files)."
    ),
    split_by: str | None = typer.Option(None, help="unc (refcoco, refcoco+), umd or google (refcocog)."),
    subset: str = typer.Option(
        "all", help="phrasecut: all, unseen (tasks whose category is not a COCO class: the paper's zero-shot "
        "setting) or seen; reasonseg: all, short or long (its is_sentence queries)."
    ),
    method: MethodOpt = "global-local",
    proposals: str | None = typer.Option(
        None, help="freesolo (the paper's), sam2, sam, sam3 (SAM 3's instances of each sentence's noun phrase), or "
        "gt (ground-truth instance masks: the oracle). Default: the method's or the preset's."
    ),
    out: Path | None = typer.Option(
        None, help="Run folder for records.jsonl and the report (default: a folder of runs/ named by the "
        "dataset, split, subset, method, preset, model and proposals joined by _ (the report line names it), plus "
        "_aALPHA / _bBETA when given). Running the same command again resumes it; so does running it "
        "with a larger --limit or none."
    ),
    limit: int | None = typer.Option(None, help="Evaluate only the first N images of the split."),
    save_masks: str | None = typer.Option(
        None, help="Keep every predicted mask: rle (COCO RLE in each record of records.jsonl), png (a PNG per "
        "sentence in OUT/masks/) or a folder for the PNGs: REF_SENT.png (RefCOCO*, grefcoco), TASK_ID.png "
        "(phrasecut), NAME.png (reasonseg). Resumed with the run.", metavar="rle|png|DIR",
    ),
    overlap: str = typer.Option(
        "paper", help="Ground truth of multi-part polygons: paper (pixels covered exactly once) or union."
    ),
    clip_model: str | None = typer.Option(None, help="Default: the method's. " + CLIP_MODEL_HELP),
    clip_weights: str = typer.Option("openai", help=CLIP_WEIGHTS_HELP),
    preset: str | None = typer.Option(None, help=PRESET_HELP),
    alpha: float | None = typer.Option(None, help="Global-context weight of the visual feature."),
    beta: float | None = typer.Option(None, help="Whole-expression weight of the text feature."),
    masked_blocks: int | None = typer.Option(None, help="ViT: number of last blocks with masked tokens."),
    fusion_mode: FusionModeOpt = None,
    sticky_topk: StickyTopkOpt = None,
    chunk_size: int | None = typer.Option(
        None, help="Masked crops per image-tower batch, which bounds memory (default: 8 on the CPU, 64 on CUDA)."
    ),
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    spacy_model: str | None = typer.Option(None, help="spaCy pipeline for the noun phrase."),
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
    tcl_window: TCLWindowOpt = None,
    tcl_pamr: TCLPamrOpt = None,
    tcl_templates: TCLTemplatesOpt = None,
    tcl_kp_weight: TCLKpWeightOpt = None,
    tcl_threshold: TCLThresholdOpt = None,
    tcl_checkpoint: TCLCheckpointOpt = None,
    tcl_blend: TCLBlendOpt = None,
    tcl_clip_weights: TCLClipWeightsOpt = None,
    tcl_weights: TCLWeightsOldOpt = None,
    tcl_weight: TCLWeightOldOpt = None,
    cache: Path | None = typer.Option(
        None, help="Feature cache folder: proposals and CLIP features per image, text features per phrase, keyed by "
        "model, weights and visual settings (not alpha/beta). Later runs sharing images skip the models; "
        "'globallocal sweep' needs it. Shareable between runs and processes. --method vlm keeps the VLM's replies "
        "there, so a rerun asks only what it has not asked."
    ),
    ray: RayOpt = None,
    ray_actors: RayActorsOpt = None,
    ray_gpus_per_actor: RayGpusOpt = None,
    ray_cpus_per_actor: RayCpusOpt = None,
) -> None:
    """Evaluate on a RefCOCO / RefCOCO+ / RefCOCOg or PhraseCut split (oIoU, mIoU, precision@0.5..0.9), a gRefCOCO
    split (GRES's gIoU, cIoU, N-acc, T-acc, Pr@0.7..0.9) or a ReasonSeg split (LISA's gIoU, cIoU).

    Proposals and visual features are computed once per image and shared by
    all its sentences. Interrupt at any time; the same command resumes.
    Runs under torchrun too (e.g. torchrun --nproc_per_node 4 -m cli evaluate ...):
    images are shared out between the processes and rank 0 writes the report;
    or with --ray, over a pool of Ray actors on one machine or a cluster.
    """
    from globallocal.methods import Sam3Options, TCLOptions, VlmOptions, get_method  # torch-free, as below
    from globallocal.runs.evaluation_config import EvaluationConfig, check_evaluation_inputs

    spec = get_method(method)
    tcl = TCLOptions.from_arguments(locals())
    tcl.check(spec)
    sam3 = Sam3Options.from_arguments(locals())
    sam3.check(spec, proposals)
    vlm = VlmOptions.from_arguments(locals())
    vlm.check(spec, proposals, preset)
    if cache is not None and not spec.uses_clip and spec.cache_keeps is None:
        raise InputError(f"--cache keeps CLIP features; --method {method} computes none: drop --cache")
    borrowed = spec.borrowed_preset(dataset) if preset is None else None
    preset = preset or spec.preset_for(dataset)
    proposals = proposals or spec.proposals_for(preset)
    sam_settings = sam_settings or spec.proposal_settings_for(dataset)
    overrides = setting_overrides(
        alpha=alpha, beta=beta, masked_blocks=masked_blocks, chunk_size=chunk_size, short_side=short_side,
        fusion_mode=fusion_mode, sticky_topk=sticky_topk,
    ) | tcl.method_overrides(method) | sam3.method_overrides(method) | vlm.method_overrides(method)
    source_args = ProposalArgs.from_arguments(sam3.proposal_arguments(method, locals()))
    check_applicable(spec, overrides, source_args, extra_kinds=("gt",))
    source_args.check()
    spec.settings(preset, **overrides)
    clip_model = clip_model or (spec.default_clip_model if spec.uses_clip else None)
    selection = split if subset == "all" else f"{split}_{subset}"
    out = out or default_run_dir(
        dataset, selection, tcl.run_tag(method), preset, clip_model, proposals or "none", alpha, beta
    )
    check_evaluation_inputs(EvaluationConfig(
        dataset=dataset, split=split, data_root=data_root, images_dir=images, out_dir=out, split_by=split_by,
        limit=limit, save_masks=save_masks, overlap=overlap, subset=subset,
    ))
    check_models(spec, clip_model, clip_weights, device, precision)
    if borrowed is not None:  # said once the options are known to be right
        stderr.print(f"evaluate: {spec.display} has no {dataset} preset (its paper sets none); using {borrowed[0]}, "
                     f"its {borrowed[1]} preset (choose another with --preset)")
    from .recipe import ray_options

    pool = ray_options(ray, ray_actors, ray_gpus_per_actor, ray_cpus_per_actor)  # Ray not imported yet

    from globallocal.runs.cache import FeatureCache
    from globallocal.runs.distributed import distributed_session, from_environment
    from globallocal.runs.evaluate import run_evaluation
    from globallocal.runs.evaluation_step import per_image

    from .recipe import ModelRecipe, ray_session

    if ray is not None and from_environment().world_size > 1:
        raise InputError("--ray and torchrun do not mix: run one process with --ray, or torchrun without it")
    recipe = ModelRecipe(
        method, clip_model, clip_weights, preset, device, precision, spacy_model, overrides,
        generator=source_args if proposals not in ("gt", None) else None, proposals=proposals,
        record_proposals=True, keep_order=spec.keep_proposal_order, tcl=tcl,
        method_options=sam3.method_options(method) or vlm.method_options(method, cache), cache_key=True,
    )
    recipe.check_files()  # offline, every missing model file at once, before Ray starts or any model loads
    with ray_session(pool, device) as (cluster, device):
        with distributed_session(device) as place:
            recipe = replace(recipe, device=device)
            # The recorded device as given, not this process's cuda:LOCAL_RANK: all processes of torchrun must
            # agree on the configuration.
            worker = recipe.build_description() if cluster is not None else recipe.build(place.device(device))
            source = worker.source if worker.source in ("gt", None) else per_image(worker.image_source())
            config = EvaluationConfig(
                dataset=dataset, split=split, data_root=data_root, images_dir=images, out_dir=out,
                split_by=split_by, limit=limit, save_masks=save_masks, overlap=overlap, settings=worker.settings,
                weights=worker.weights, subset=subset,
            )
            # Without CLIP there are no features to keep (the VLM keeps its replies there itself).
            feature_cache = FeatureCache.for_segmenter(cache, worker.segmenter, clip_model) \
                if cache and spec.uses_clip else None
            run_evaluation(
                config, worker.segmenter, source, progress=place.is_main, cache=feature_cache,
                proposal_key=worker.proposal_key, distributed=place, ray=cluster, recipe=recipe,
            )
    if place.is_main:
        from globallocal.runs.report import format_report_table

        Console(highlight=False).print(format_report_table([out]))
        stderr.print(f"report: {out / 'report.md'}")
        if cluster is not None and cluster.retried:
            stderr.print(f"{counted(cluster.retried, 'image')} retried after a worker died")
