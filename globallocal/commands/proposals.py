"""`globallocal proposals`: a photo's mask proposals written as a folder `--masks` reads back."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import InputError
from .common import stderr
from .options import (
    BoxNmsOpt,
    CropLayersOpt,
    DeviceOpt,
    FreeSOLOWeightsOpt,
    MaxProposalsOpt,
    MinAreaOpt,
    MinRegionAreaOpt,
    PointsPerSideOpt,
    PredIouOpt,
    ProposalArgs,
    ProposalKindOpt,
    SamModelOpt,
    SamSettingsOpt,
    SamWeightsOpt,
    ScoreThresholdOpt,
    ShortSideOpt,
    StabilityOpt,
)


def proposals(
    image: Path = typer.Argument(..., help="Photo to propose masks for."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for NNN.png masks and proposals.json."),
    proposals: ProposalKindOpt = "freesolo",
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
    if source.phrase_dependent:
        raise InputError(f"{proposals} proposes per phrase, not per photo; use `globallocal segment IMAGE PHRASE "
                         f"--proposals {proposals} --top-k-picture top.png` to see a phrase's candidates")

    from globallocal.data.images import load_image
    from globallocal.errors import NoProposalsError
    from globallocal.models.clip import resolve_device
    from globallocal.plurals import counted
    from globallocal.proposals.files import check_replaceable, save_proposals
    from globallocal.runs.progress import status
    from globallocal.runs.worker import run_description

    from .recipe import describe_generator

    check_replaceable(output)
    picture = load_image(image)
    device = resolve_device(device)
    generator = source.build(device)
    with status(stderr, f"{proposals} proposals...", "proposals"):
        found = generator.generate(picture)
    if len(found) == 0:
        hint = "--score-threshold" if proposals == "freesolo" else "--pred-iou-thresh / --stability-thresh"
        raise NoProposalsError(f"{proposals} found no masks in {image}; try a lower {hint}")
    # What made them, as evaluate's config.json records its proposal source, and from which photo.
    settings, weights = describe_generator(source, generator)
    configuration = run_description({**settings, "device": device, "precision": "fp32"}, weights)
    save_proposals(found, output, {"image": str(image), "configuration": configuration})
    stderr.print(f"{counted(len(found), 'proposal')} written to {output}")
