"""`globallocal serve`: the web page."""

from __future__ import annotations

from pathlib import Path

import typer

from ..data.bounded import MAX_MEGAPIXELS, PIXELS_VARIABLE
from ..errors import InputError
from .common import stderr
from .options import (
    CLIP_MODEL_HELP,
    CLIP_WEIGHTS_HELP,
    PRESET_HELP,
    BoxNmsOpt,
    CropLayersOpt,
    DeviceOpt,
    FreeSOLOWeightsOpt,
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
    check_models,
    setting_overrides,
)


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
    precision: PrecisionOpt = "fp32",
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
    max_megapixels: float = typer.Option(
        MAX_MEGAPIXELS, help=f"Refuse uploaded photos larger than this (at most every command's limit; "
        f"{PIXELS_VARIABLE} raises that)."
    ),
    top_k: int = typer.Option(8, help="Proposals shown in the ranked gallery."),
    examples: Path | None = typer.Option(None, help="Folder of example photos (default: the repository's)."),
) -> None:
    """Serve a web page to try phrases on your own photos (needs the [demo] extra: Gradio).

    Example: globallocal serve --proposals sam2, then open http://127.0.0.1:7860
    """
    from globallocal.methods import Sam3Options, VlmOptions, get_method  # torch-free, like every check below
    from globallocal.serve import check_port, require_gradio

    require_gradio()
    if not max_megapixels > 0 or top_k < 1:  # NaN too: it compares false with everything
        raise InputError(f"--max-megapixels must be a positive number (got {max_megapixels:g}) and --top-k at least 1 "
                         f"(got {top_k})")
    if max_megapixels > MAX_MEGAPIXELS:
        raise InputError(f"--max-megapixels {max_megapixels:g} is over every command's limit of {MAX_MEGAPIXELS:g} "
                         f"megapixels; set {PIXELS_VARIABLE} to raise that one too")
    spec = get_method(method)
    sam3 = Sam3Options.from_arguments(locals())
    sam3.check(spec, proposals)
    vlm = VlmOptions.from_arguments(locals())
    vlm.check(spec, proposals, preset)
    overrides = setting_overrides(
        alpha=alpha, beta=beta, masked_blocks=masked_blocks, chunk_size=chunk_size, short_side=short_side
    ) | sam3.method_overrides(method) | vlm.method_overrides(method)
    spec.settings(preset, **overrides)
    clip_model = check_models(spec, clip_model, clip_weights, device, precision)
    check_port(host, port)
    offered = servable_methods(method, clip_model, clip_weights)
    # The page's starting source; the proposal options apply to whichever source the page then uses.
    proposals = proposals or spec.proposals_for(preset) or "freesolo"
    sam_settings = sam_settings or spec.default_proposal_settings

    from dataclasses import replace

    from globallocal.models.clip import resolve_device
    from globallocal.segmenter import Segmenter
    from globallocal.serve import Engine, example_photos
    from globallocal.serve import serve as serve_page

    device = resolve_device(device)
    source = ProposalArgs.from_arguments(sam3.proposal_arguments(method, locals()))
    shared_file = Path(clip_weights).is_file()
    replace(source, kind="sam3").check()  # SAM 3's options, whichever source the page starts with

    def load_segmenter(name: str) -> Segmenter:
        # The command's model options are the served method's; another method starts from its own defaults,
        # except that a weights file fits one architecture, which every offered method then runs on.
        ours = name == method
        return Segmenter.from_pretrained(
            clip_model if ours or shared_file else None, clip_weights, preset if ours else None, device=device,
            precision=precision, spacy_model=spacy_model, method=name, **(overrides if ours else {}),
            method_options=(sam3.method_options(name) or vlm.method_options(name)) if ours else None,
        )

    engine = Engine(load_segmenter, lambda kind: replace(source, kind=kind).build(device, precision=precision), method,
                    max_megapixels=max_megapixels, allow_no_noun=not require_noun, methods=offered)
    with stderr.status("loading the models..."):
        engine.segmenter()
    if host not in ("127.0.0.1", "localhost", "::1"):
        stderr.print(f"[yellow]warning:[/] serving on {host}: anyone who can reach this computer can use the page")
    serve_page(engine, host, port, example_photos(examples), proposals, top_k)


def servable_methods(served: str, clip_model: str | None, clip_weights: str) -> list[str]:
    """The methods the page offers, the served one first, and a note for each one left out.

    With a pretrained tag (``openai``) each method loads its own default CLIP. A weights file fits one
    architecture, so another method is offered only if it runs on that one (HybridGL and TCL need a ViT,
    TCL's head ViT-B-16); a method with a model of its own (SAM 3) only when it is the one served. The note
    says what to restart with to serve it.
    """
    from globallocal.methods import available_methods, get_method

    offered = [served]
    for name in available_methods():
        spec = get_method(name)
        if name == served:
            continue
        if not spec.offered_beside_others:
            stderr.print(f"[yellow]note:[/] the page does not offer {name}, which loads a model of its own; to "
                         f"serve it, restart with --method {name}")
        elif not Path(clip_weights).is_file() or spec.runs_on(clip_model):
            offered.append(name)
        else:
            stderr.print(f"[yellow]note:[/] the page does not offer {name}, which does not run on {clip_model}; "
                         f"to serve it, restart with --method {name} --clip-model {spec.default_clip_model} "
                         "--clip-weights PATH")
    return offered
