"""The command line's shared option declarations: help texts, option types, the proposal options.

Declared once and used by every command that takes them (segment, proposals,
evaluate, batch, serve). Nothing heavy is imported here, so ``--help`` and
argument errors stay fast.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..data.phrases import clean_phrase
from ..errors import InputError
from ..models.devices import check_device_precision
from ..proposals import PROPOSAL_KINDS
from .common import check_image_file

if TYPE_CHECKING:
    from ..methods import MethodSpec

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
PRESET_HELP = (
    "Named settings of the method (default: its paper preset; for evaluate the dataset's). global-local: "
    "paper-refcoco | paper-refcoco+ | paper-refcocog (alpha 0.85) | paper (= paper-refcoco) | no-quirks | "
    "global-local-sam3 (paper-refcoco's settings, SAM 3 proposals by default). hybridgl: hybridgl-paper | "
    "hybridgl-no-quirks | hybridgl-sam3 (hybridgl-paper's settings, SAM 3 proposals by default)."
)
METHOD_HELP = (
    "Scoring method: global-local (Yu et al., CVPR 2023; the default), hybridgl (Liu and Li, CVPR 2025), "
    "tcl (Cha et al., CVPR 2023), where installed, or sam3 (SAM 3 alone: its own instances, no CLIP; "
    "presets sam3, sam3-union, sam3-expression)."
)


def setting_overrides(**values) -> dict:
    """The method settings given on the command line (options left out are None and not passed)."""
    return {name: value for name, value in values.items() if value is not None}


def check_models(
    spec: MethodSpec, clip_model: str | None, clip_weights: str, device: str, precision: str
) -> str | None:
    """What can be checked of the models without torch: the device and precision (fp16 on a CPU without its units
    too), the CLIP architecture (and that it fits the method), the weights path. Returns the architecture to load
    (None: the method uses no CLIP, and --clip-model / --clip-weights are refused)."""
    check_device_precision(device, precision)
    if not spec.uses_clip:
        given = [flag for flag, value in (("--clip-model", clip_model), ("--clip-weights", clip_weights))
                 if value not in (None, "openai")]
        if given:
            raise InputError(f"{given[0]} does not apply to --method {spec.name}: it scores with no CLIP")
        return None
    return spec.check_clip(clip_model, clip_weights)


def check_applicable(spec, overrides: dict, source: ProposalArgs, masks: Path | None = None,
                     extra_kinds: tuple[str, ...] = ()) -> None:
    """Refuse, naming it, an option the method does not use: a setting it lacks, proposals it does not take;
    and an unknown proposal source (``extra_kinds``: the command's own, such as evaluate's ``gt``)."""
    known = {field.name for field in fields(spec.settings())}
    for name in overrides:
        if name not in known:
            raise InputError(f"--{name.replace('_', '-')} does not apply to --method {spec.name}")
    kinds = (*PROPOSAL_KINDS, *extra_kinds)
    if source.kind is not None and source.kind not in kinds:
        raise InputError(f"unknown --proposals '{source.kind}'; use {', '.join(kinds)}")
    if not spec.uses_proposals:
        given = [*source.given(), *(["--masks"] if masks is not None else [])]
        if given:
            raise InputError(f"{given[0]} does not apply to --method {spec.name}: it draws its own mask")


ProposalsOpt = Annotated[str | None, typer.Option(
    "--proposals", help="Mask proposal source: freesolo (the paper's), sam2 (SAM 2.1), sam (original SAM) or sam3 "
    "(SAM 3's instances of each phrase's noun phrase: candidates per phrase). Default: the method's or the "
    "preset's (freesolo for global-local, sam for hybridgl, sam3 for the -sam3 presets).", show_default=False)]
ProposalKindOpt = Annotated[str, typer.Option(
    "--proposals", help="Mask proposal source: freesolo (the paper's; the default), sam2 (SAM 2.1) or sam "
    "(original SAM).", show_default=False)]
MethodOpt = Annotated[str, typer.Option("--method", help=METHOD_HELP)]
FreeSOLOWeightsOpt = Annotated[Path | None, typer.Option(
    help="FreeSOLO checkpoint (default: FreeSOLO_R101_30k_pl.pth in ./freesolo_weights/, then in freesolo_weights/ "
    "of the globallocal clone, then the Hugging Face cache; downloaded into that cache when absent).")]
ScoreThresholdOpt = Annotated[float | None, typer.Option(
    help="FreeSOLO: keep grid cells whose category score exceeds this (default 0.1).")]
MaxProposalsOpt = Annotated[int | None, typer.Option(
    help="Keep at most this many proposals, best first (FreeSOLO default 100; SAM: all; SAM 3: per noun phrase, "
    "all above the threshold).")]
Sam3WeightsOpt = Annotated[Path | None, typer.Option(
    "--sam3-weights", help="SAM 3 folder in the transformers layout (config.json, model.safetensors, processor "
    "files), from any mirror. Default: facebook/sam3 from the Hugging Face hub, which is gated: accept its licence "
    "on its page and run `hf auth login`.")]
Sam3ThresholdOpt = Annotated[float | None, typer.Option(
    "--sam3-threshold", help="SAM 3: a noun phrase's candidates (--method sam3: the instances it answers with) "
    "are its instances scoring (presence x detection) above this (default 0.5).")]
Sam3PromptOpt = Annotated[str | None, typer.Option(
    "--sam3-prompt", help="--method sam3: SAM 3's prompt is the phrase's noun-phrase (default) or its whole "
    "expression (cut to SAM 3's 32 text tokens, with a warning).")]
Sam3AnswerOpt = Annotated[str | None, typer.Option(
    "--sam3-answer", help="--method sam3: top (its best instance; default) or union (every instance above the "
    "threshold; the phrasecut preset's).")]
Sam3FallbackOpt = Annotated[str | None, typer.Option(
    "--sam3-fallback", help="SAM 3: what answers a noun phrase with no instance above the threshold, tried in this "
    "order: head-noun (its head noun alone), below-threshold (its best instances below it), sam2 (SAM 2's "
    "automatic proposals). Comma-separated, or none; by default head-noun, then below-threshold.")]
VlmBackendOpt = Annotated[str | None, typer.Option(
    "--vlm-backend", metavar="NAME", help="--method vlm: where the VLM runs: transformers (in this "
    "process, on --device; default) or openai (any OpenAI-compatible chat endpoint: vLLM, SGLang, llama.cpp's "
    "server, a hosted API; --vlm-url).")]
VlmModelOpt = Annotated[str | None, typer.Option(
    "--vlm-model", metavar="ID|DIR", help="--method vlm: the model: a Hugging Face id or a folder in the "
    "transformers layout (default Qwen/Qwen3-VL-8B-Instruct, 17.5 GB in bf16); with an endpoint, the model name "
    "it serves.")]
VlmUrlOpt = Annotated[str | None, typer.Option(
    "--vlm-url", metavar="URL", help="--vlm-backend openai: the endpoint, e.g. http://127.0.0.1:8000/v1.")]
VlmApiKeyEnvOpt = Annotated[str | None, typer.Option(
    "--vlm-api-key-env", metavar="NAME", help="--vlm-backend openai: the environment variable holding the API key "
    "(default OPENAI_API_KEY); the key is never written anywhere.")]
VlmFamilyOpt = Annotated[str | None, typer.Option(
    "--vlm-family", metavar="NAME", help="--method vlm: the model family, qwen2.5-vl, qwen3-vl or other, which "
    "decides how the box preset reads boxes (default: what the model's name or config says).")]
VlmMaxPixelsOpt = Annotated[int | None, typer.Option(
    "--vlm-max-pixels", help="--method vlm: the photo given to the VLM is resized to at most this many pixels "
    "(default 1048576, about 1 MP).")]
VlmPromptsOpt = Annotated[Path | None, typer.Option(
    "--vlm-prompts", metavar="DIR", help="--method vlm: a folder of prompt files replacing this project's texts "
    "(e.g. your copy of SAM 3 Agent's system_prompt.txt and system_prompt_iterative_checking.txt; docs/vlm.md).")]
VlmShortlistOpt = Annotated[str | None, typer.Option(
    "--vlm-shortlist", metavar="NAME", help="--preset marks: whose scores pick the candidates drawn with numbers: "
    "source (the proposal source's; default), global-local or hybridgl (a CLIP method's).")]
VlmPrecisionOpt = Annotated[str | None, typer.Option(
    "--vlm-precision", metavar="NAME", help="--method vlm: the in-process VLM's precision, fp32, fp16 or bf16 "
    "(default bf16 on CUDA, fp32 on the CPU; --precision is CLIP's and the proposal models').")]
VlmBoxFormatOpt = Annotated[str | None, typer.Option(
    "--vlm-box-format", metavar="NAME", help="--preset box: how the VLM's box numbers read: auto (default: "
    "Qwen2.5-VL pixels of the image it saw, Qwen3-VL a 0-1000 grid), seen-pixels, grid-1000 or photo-pixels.")]
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
SamSettingsOpt = Annotated[str | None, typer.Option(
    help="Named SAM generator settings: paper-later (8 points per side, IoU and stability thresholds 0.7, "
    "min area 800: what later zero-shot papers used), hybridgl (the same, HybridGL's RefCOCO column), "
    "hybridgl-phrasecut (HybridGL's PhraseCut column), sam-default or sam2-default. "
    "Default: the method's (hybridgl for hybridgl), else paper-later.")]
FusionModeOpt = Annotated[str | None, typer.Option(
    help="hybridgl: how the global and local streams meet in the last blocks: G2L (the default), L2G or G2L&L2G.")]
StickyTopkOpt = Annotated[bool | None, typer.Option(
    "--sticky-topk/--no-sticky-topk", help="hybridgl: the authors' split loop (Q-sticky-k): K1, K2 never rise "
    "again after an image with few proposals (default: the preset's, off).")]
PointsPerSideOpt = Annotated[int | None, typer.Option(help="SAM: point grid per image side (settings').")]
PredIouOpt = Annotated[float | None, typer.Option(help="SAM: predicted-IoU threshold (settings').")]
StabilityOpt = Annotated[float | None, typer.Option(help="SAM: stability-score threshold (settings').")]
MinRegionAreaOpt = Annotated[int | None, typer.Option(help="SAM: remove regions and holes below this area.")]
BoxNmsOpt = Annotated[float | None, typer.Option(help="SAM: box NMS IoU threshold (settings').")]
CropLayersOpt = Annotated[int | None, typer.Option(help="SAM: extra crop layers (settings').")]
DeviceOpt = Annotated[str, typer.Option(help=DEVICE_HELP)]
PrecisionOpt = Annotated[str, typer.Option(
    help="The CLIP towers', TCL's, FreeSOLO's and SAM 3's (the VLM's is --vlm-precision): fp32 (the paper "
    "presets' reference), bf16 (CUDA, or the CPU: bfloat16 matrix units where it has them) or fp16 (CUDA). Scores "
    "are written in float32 whatever the precision.")]
TCLWindowOpt = Annotated[str | None, typer.Option(
    "--tcl-window", help="TCL: slide (448 windows, stride 224; default), whole (one window) or demo (the "
    "authors' notebook: short side 224).")]
TCLPamrOpt = Annotated[bool | None, typer.Option(
    "--tcl-pamr/--no-tcl-pamr", help="TCL: refine the masks with PAMR (default on).", show_default=False)]
TCLTemplatesOpt = Annotated[str | None, typer.Option(
    "--tcl-templates", help="TCL: identity (the phrase as typed; default) or custom (TCL's 9 templates).")]
TCLKpWeightOpt = Annotated[float | None, typer.Option(
    "--tcl-kp-weight", help="TCL: weight of the KP branch (default 0.3; 0 switches it off).")]
TCLThresholdOpt = Annotated[float | None, typer.Option(
    "--tcl-threshold", help="--method tcl: the answer is soft mask > this (default 0.4 with PAMR, 0.5 without).")]
TCLCheckpointOpt = Annotated[Path | None, typer.Option(
    "--tcl-checkpoint", help="TCL's own checkpoint, tcl.pth (default: $GLOBALLOCAL_TCL_WEIGHTS, else "
    "tcl_weights/tcl.pth, downloaded when absent). Formerly --tcl-weights.", metavar="PATH")]
TCLBlendOpt = Annotated[float | None, typer.Option(
    "--tcl-blend", help="Blend TCL's proposal score into a proposal method's: (1 - LAMBDA) z(method) + "
    "LAMBDA z(TCL); 0 gives exactly the method's answer. Formerly --tcl-weight.", metavar="LAMBDA")]
TCLClipWeightsOpt = Annotated[Path | None, typer.Option(
    "--tcl-clip-weights", help="--tcl-blend: a local file of OpenAI's CLIP ViT-B/16, which TCL runs on (default: "
    "the method's CLIP when it is that model, else 'openai' through the Hugging Face hub).", metavar="PATH")]


def _renamed(old: str, new: str):
    """A callback for an option's old spelling: it still works, with a note naming the new one."""

    def note(value):
        if value is not None:
            warnings.warn(f"{old} is now called {new} (the old name still works)", stacklevel=1)
        return value

    return note


# The old spellings, hidden from --help: --tcl-weight and --tcl-weights differed by one letter.
TCLWeightOldOpt = Annotated[float | None, typer.Option(
    "--tcl-weight", hidden=True, callback=_renamed("--tcl-weight", "--tcl-blend"))]
TCLWeightsOldOpt = Annotated[Path | None, typer.Option(
    "--tcl-weights", hidden=True, callback=_renamed("--tcl-weights", "--tcl-checkpoint"))]


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
    sam_settings: str | None = None
    points_per_side: int | None = None
    pred_iou_thresh: float | None = None
    stability_thresh: float | None = None
    min_region_area: int | None = None
    box_nms_thresh: float | None = None
    crop_layers: int | None = None
    sam3_weights: Path | None = None
    sam3_threshold: float | None = None
    sam3_fallback: str | None = None

    @classmethod
    def from_arguments(cls, arguments: dict) -> ProposalArgs:
        """The proposal options among a command's arguments (its ``locals()``; ``proposals`` is the kind)."""
        names = [field.name for field in fields(cls) if field.name != "kind"]
        # A command without SAM 3's options (proposals: per-image masks only) leaves them at their defaults.
        return cls(arguments["proposals"], **{name: arguments[name] for name in names if name in arguments})

    @property
    def weights(self) -> Path | None:
        return {"freesolo": self.freesolo_weights, "sam3": self.sam3_weights}.get(self.kind, self.sam_weights)

    @property
    def phrase_dependent(self) -> bool:
        """Whether the source proposes per phrase (SAM 3's concepts), so the segmenter asks it per phrase."""
        return self.kind == "sam3"

    def check(self) -> None:
        """What can be refused before any model loads (torch-free): the proposal cap, a SAM model name of the
        other family; SAM 3's options without SAM 3, its threshold, fallback chain and weights folder."""
        from globallocal.proposals.requirements import check_proposal_options

        check_proposal_options(self.kind, self.sam_model, self.max_proposals)
        own = [f"--{name.replace('_', '-')}" for name in ("sam3_weights", "sam3_threshold", "sam3_fallback")
               if getattr(self, name) is not None]
        if self.kind != "sam3":
            if own:
                raise InputError(f"{own[0]} applies to --proposals sam3, not {self.kind or 'this method'}")
            return
        from globallocal.proposals.sam3_settings import (
            DEFAULT_BELOW_THRESHOLD_K,
            DEFAULT_FALLBACK,
            DEFAULT_THRESHOLD,
            check_sam3_settings,
        )
        from globallocal.proposals.sam3_weights import check_sam3_folder

        threshold = DEFAULT_THRESHOLD if self.sam3_threshold is None else self.sam3_threshold
        fallback = DEFAULT_FALLBACK if self.sam3_fallback is None else self.sam3_fallback
        check_sam3_settings(threshold, fallback, DEFAULT_BELOW_THRESHOLD_K, self.max_proposals)
        if self.sam3_weights is not None:
            check_sam3_folder(self.sam3_weights)

    def missing_files(self) -> list:
        """The source's weights files that are not on this machine (:class:`~globallocal.models.hub.MissingFile`)."""
        from globallocal.proposals.requirements import missing_proposal_files

        return missing_proposal_files(self.kind, self.sam_model, self.weights, self.sam3_fallback)

    def given(self) -> list[str]:
        """The flags of the options given (changed from their defaults); --proposals when a kind is set.

        Built from a command's arguments before the method's defaults are filled in, it names what the user typed.
        """
        changed = [f for f in fields(self) if f.name != "kind" and getattr(self, f.name) != f.default]
        return [*(["--proposals"] if self.kind else []), *(f"--{f.name.replace('_', '-')}" for f in changed)]

    def build(self, device: str, keep_order: bool = False, precision: str = "fp32"):
        """The generator; ``keep_order``: the masks in the generator's order (the method's keep_proposal_order);
        ``precision``: its network's (FreeSOLO, SAM 3), the command's --precision."""
        from globallocal.proposals.sources import build_proposal_generator

        # Every option goes through (None = not given), so one that does not apply to the source is refused.
        options = {
            "score_threshold": self.score_threshold, "min_area": self.min_area,
            # The short side also sizes CLIP's input, so it is not an error for SAM, only not its business.
            "short_side": self.short_side if self.kind == "freesolo" else None,
            "points_per_side": self.points_per_side, "pred_iou_thresh": self.pred_iou_thresh,
            "stability_score_thresh": self.stability_thresh, "min_mask_region_area": self.min_region_area,
            "box_nms_thresh": self.box_nms_thresh, "crop_n_layers": self.crop_layers,
            "sam3_threshold": self.sam3_threshold, "sam3_fallback": self.sam3_fallback,
        }
        return build_proposal_generator(
            self.kind, model=self.sam_model, weights=self.weights, max_proposals=self.max_proposals, device=device,
            keep_order=keep_order, precision=precision,
            # None: the proposal source's own default settings.
            **({"settings": self.sam_settings} if self.sam_settings else {}), **options,
        )

    def settings(self, generator) -> dict:
        """What goes into a run's configuration about the proposals: every option of the generator."""
        return {self.kind: dict(generator.settings)}


def _names_a_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except OSError:  # too long to be a file name
        return False


def check_phrases(image: Path, phrases: list[str], allow_split: bool = False) -> list[str]:
    """The phrases cleaned (:func:`~globallocal.data.phrases.clean_phrase`); refuse a phrase that is a file
    (several images given), and three or more one-word phrases (a phrase typed without quotes) unless
    ``allow_split``."""
    phrases = [clean_phrase(phrase) for phrase in phrases]
    for phrase in phrases:
        if Path(phrase).suffix and _names_a_file(phrase):
            raise InputError(
                f"the phrase {phrase!r} is a file: segment takes one image, then phrases; for several images "
                f"use `globallocal batch` or run `globallocal segment` once per image"
            )
    check_image_file(image)
    if len(phrases) > 2 and all(" " not in phrase.strip() for phrase in phrases) and not allow_split:
        raise InputError(
            f"{len(phrases)} one-word phrases; if they are one phrase, quote it: \"{' '.join(phrases)}\" "
            "(or pass --allow-split-phrases to answer each word)"
        )
    return phrases


def _foreign(phrase: str) -> bool:
    """Letters beyond ASCII (accents, other scripts): most likely not English."""
    return any(ord(char) > 127 and char.isalpha() for char in phrase)


def no_noun(phrase: str, phrases: list[str], require_noun: bool) -> None:
    """Refuse (--require-noun) or warn about a phrase without a noun, with the likely reason."""
    if _foreign(phrase):
        quotes = "; the noun-phrase parser and CLIP read English: describe the object in English"
    elif len(phrases) > 1 and " " not in phrase.strip():
        quotes = "; if it is part of a longer phrase, quote the whole phrase, e.g. \"the man on the left\""
    else:
        quotes = ""
    if require_noun:
        raise InputError(
            f"no noun found in the phrase {phrase!r}; name the object (e.g. \"the red car\"){quotes}, "
            "or leave out --require-noun"
        )
    warnings.warn(
        f"no noun found in the phrase {phrase!r}: the whole phrase stands in for the noun phrase{quotes}",
        stacklevel=2,
    )


def warn_no_candidates(results: list, source: str) -> None:
    """With phrase-dependent proposals, a phrase that got no candidate is answered "no target" (an empty mask, a
    valid answer: exit 0, whether a selector or SAM 3 alone answers): one warning per such phrase."""
    hint = "try a lower --sam3-threshold, or --sam3-fallback head-noun,below-threshold"
    for result in results:
        if result.no_candidate:
            warnings.warn(f"no target for the phrase {result.phrase!r}: {source} found no instance of "
                          f"{result.noun_phrase!r}, so its mask is empty; {hint}", stacklevel=2)


RayOpt = Annotated[str | None, typer.Option(
    "--ray", metavar="local|auto|ADDRESS", help="Share the units out to a pool of Ray actors: local (start Ray on "
    "this machine), auto (join RAY_ADDRESS or the cluster running here) or a head's ADDRESS (host:port). Outputs are "
    "those of a run without it, and either resumes the other. Needs pip install 'globallocal[ray]'.")]
RayActorsOpt = Annotated[int | None, typer.Option(
    "--ray-actors", help="Actors, each holding the models (default: one per GPU of the cluster, else one per 2 CPUs).")]
RayGpusOpt = Annotated[float | None, typer.Option(
    "--ray-gpus-per-actor", help="GPUs per actor, fractions allowed (default: 1 when the cluster has GPUs, else 0).")]
RayCpusOpt = Annotated[float | None, typer.Option(
    "--ray-cpus-per-actor", help="CPUs per actor (default: 1 with GPUs, else an equal share of the cluster's).")]
