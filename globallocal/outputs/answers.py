"""The JSON that `globallocal segment --json` writes: every number labelled, scores at full precision.

Sizes are ``{"height", "width"}``; boxes are ``{"x0", "y0", "x1", "y1"}``
in whole pixels (x to the right, y down), the tight box of the mask with x1
and y1 exclusive (:func:`globallocal.proposals.tight_box`; null for an empty
mask); a method whose scores follow SOLOv2's float projection boxes
(:func:`globallocal.proposals.projection_boxes`) reports them apart as
``projection_box`` (sizes and boxes are worded in
:mod:`globallocal.proposals.boxes_json`, shared with the proposals index).
Masks are COCO RLE (``{"size": [height, width], "counts": str}``,
pycocotools' compressed column-major run lengths). Proposal numbers are
0-based, in the order of the source (a folder's natural name order, an
index's order), and masks read from files name theirs (``file``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .. import __version__
from ..data.coco_masks import mask_rle
from ..data.images import photo_reading, save_png, save_text
from ..data.phrases import shown
from ..proposals.boxes_json import BOX_FORMAT, PROJECTION_BOX_FORMAT, box_json, pixel_box_json, size_json
from ..proposals.masks import Proposals
from .drawing import answer_picture, answers_picture, top_k_picture

# 2: labelled sizes and boxes, proposal source, chosen box and RLE, timings, version.
# 3: integer tight boxes (projection boxes apart), the proposal list with files, the expression as CLIP read it,
# the settings as used.
# 4: score and scores are the score that chose the answer (score_name says which; HybridGL's CLIP scores are
# clip_scores), the configuration as evaluate records it.
JSON_FORMAT = 4


class StageTimer:
    """Wall seconds per named stage, in the order the stages ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def proposal_fields(proposals: Proposals, index: int, projection: bool) -> dict[str, Any]:
    """What says which proposal ``index`` is beside its mask: its file (masks read from files) and, when the
    method's scores follow it (``projection``), its projection box."""
    fields: dict[str, Any] = {}
    if proposals.files is not None:
        fields["file"] = proposals.files[index]
    if projection:
        fields["projection_box"] = box_json(proposals.boxes[index])
    return fields


def proposal_list(proposals: Proposals | None, projection: bool) -> list[dict[str, Any]] | None:
    """Every proposal of the image by number: its box, area, and :func:`proposal_fields` (None: none)."""
    if proposals is None:
        return None
    return [
        {"index": i, "box": pixel_box_json(mask), "area": int(mask.sum()), **proposal_fields(proposals, i, projection)}
        for i, mask in enumerate(proposals.masks)
    ]


def result_json(result: Any, method: Any, proposals: Proposals | None, mask_path: str) -> dict[str, Any]:
    """One phrase's answer: the method's fields (every score at full precision), the expression as the
    ``method``'s CLIP read it (cut to its context; ``phrase`` is the whole phrase), the answer's box, RLE and area,
    and which of ``proposals`` (the ones ``result`` numbers; None for a method that draws its own mask) it is."""
    chosen = {}
    if proposals is not None and result.index is not None:
        chosen = proposal_fields(proposals, result.index, method.uses_projection_boxes())
    return {
        **result.to_json(),
        "expression": method.read_text(result.expression),
        "box": pixel_box_json(result.mask),
        **chosen,
        "rle": mask_rle(result.mask),
        "area": int(result.mask.sum()),
        "mask": mask_path,
    }


def segment_json(
    *,
    image: str,
    image_size: tuple[int, int],
    photo: dict[str, Any] | None = None,
    proposal_source: str | None,
    proposal_count: int | None,
    proposals: list[dict[str, Any]] | None,
    clip: dict[str, str] | None,
    method: str,
    settings: dict[str, Any],
    results: list[dict[str, Any]],
    seconds: dict[str, float],
    configuration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole report of one `segment` call (``proposals``: :func:`proposal_list`; ``configuration``: the
    call described as evaluate's config.json describes a run, :func:`~globallocal.runs.worker.run_description`;
    ``photo``: how the photo was read, :meth:`~globallocal.data.images.PhotoReading.to_json`)."""
    return {
        "format": JSON_FORMAT,
        "globallocal_version": __version__,
        "image": image,
        "image_size": size_json(*image_size),
        "photo": photo,
        "box_format": BOX_FORMAT,
        "projection_box_format": PROJECTION_BOX_FORMAT,
        "proposal_source": proposal_source,
        "proposals": proposal_count,
        "proposal_list": proposals,
        "clip": clip,
        "method": method,
        "settings": settings,
        **({"configuration": configuration} if configuration is not None else {}),
        "results": results,
        "seconds": seconds,
    }


def caption(result: Any, proposals: Proposals | None = None) -> str:
    """What a phrase (shortened) was answered with: the chosen proposal, with its file when ``proposals`` (the
    ones the result numbers) were read from files, and its score; or the area of a drawn mask."""
    phrase = shown(result.phrase)
    if result.no_candidate:
        return f"{phrase}: no candidate"
    if result.index is None:
        return f"{phrase}: {int(result.mask.sum())} pixels"
    index = result.index
    file = f" ({proposals.files[index]})" if proposals is not None and proposals.files is not None else ""
    return f"{phrase}: proposal {index}{file}, {chosen_score(result)}"


def chosen_score(result: Any) -> str:
    """The score that chose the answer, named, as summaries print it: the JSON's ``score`` to 4 decimals."""
    return f"{result.ranking_label} " + ("undefined" if result.score is None else f"{result.score:.4f}")


def write_pictures(picture, results, candidates, overlays, overlay_all, top_k_pictures, top_k) -> None:
    for result, path in zip(results, overlays):
        save_png(answer_picture(picture, result.mask.numpy(), caption(result)), path)
    if overlay_all:
        chosen = [result.mask.numpy() for result in results]
        save_png(answers_picture(picture, chosen, [caption(result) for result in results]), overlay_all)
    for result, path in zip(results, top_k_pictures):
        picture_k = top_k_picture(picture, result.among(candidates).masks.numpy(), result.ranking(), result.phrase,
                                  top_k, result.ranking_label)
        save_png(picture_k, path)


def settings_json(method, image_size: tuple[int, int]) -> dict[str, Any]:
    """Every setting (with TCL's, for a blend), defaults resolved as they were used on a photo of ``image_size``
    (H, W); the method's name is a field of its own in the JSON."""
    return {key: value for key, value in method.settings_used(image_size).items() if key != "method"}


def write_json(path, image, picture, segmenter, results, outputs, candidates, source, seconds,
               configuration=None) -> None:
    report = segment_json(
        image=str(image),
        image_size=(picture.height, picture.width),
        photo=photo_reading(picture).to_json(),
        proposal_source=source if candidates is not None or segmenter.phrase_dependent else None,
        proposal_count=len(candidates) if candidates is not None else None,
        proposals=proposal_list(candidates, segmenter.method.uses_projection_boxes()),
        clip=segmenter.clip_description(),
        method=segmenter.method.name,
        settings=settings_json(segmenter.method, (picture.height, picture.width)),
        results=[result_json(r, segmenter.method, r.among(candidates), str(out)) for r, out in zip(results, outputs)],
        seconds=seconds,
        configuration=configuration,
    )
    text = json.dumps(report, indent=1) + "\n"
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        save_text(text, path)
