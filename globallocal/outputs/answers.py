"""The JSON that `globallocal segment --json` writes: every number labelled, scores at full precision.

Sizes are ``{"height", "width"}``; boxes are ``{"x0", "y0", "x1", "y1"}`` in
pixels (x to the right, y down; SOLOv2's projection boxes, see
:func:`globallocal.proposals.projection_boxes`); masks are COCO RLE
(``{"size": [height, width], "counts": str}``, pycocotools' compressed
column-major run lengths). Proposal numbers are 0-based, as in file names.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from .. import __version__
from ..data.images import save_png, save_text
from .drawing import answer_picture, answers_picture, top_k_picture

JSON_FORMAT = 2  # 2: labelled sizes and boxes, proposal source, chosen box and RLE, timings, version


def size_json(height: int, width: int) -> dict[str, int]:
    return {"height": int(height), "width": int(width)}


def box_json(box: Sequence[float] | torch.Tensor) -> dict[str, float]:
    x0, y0, x1, y1 = (float(value) for value in box)
    return {"x0": x0, "y0": y0, "x1": x1, "y1": y1}


def mask_rle(mask: np.ndarray | torch.Tensor) -> dict[str, Any]:
    """A bool (H, W) mask as compressed COCO RLE with a text ``counts``."""
    if isinstance(mask, torch.Tensor):
        mask = mask.cpu().numpy()
    with warnings.catch_warnings():
        # pycocotools' compiled code trips NumPy 2's __array__ copy-keyword deprecation; the result is right.
        warnings.simplefilter("ignore", DeprecationWarning)
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


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


def result_json(result: Any, boxes: torch.Tensor | None, mask_path: str) -> dict[str, Any]:
    """One phrase's answer: the method's fields (every score at full precision), the mask's box, RLE and area.

    ``boxes``: the proposals' boxes, for the chosen one's; None for a method that draws its own mask.
    """
    chosen = {"box": box_json(boxes[result.index])} if boxes is not None and result.index is not None else {}
    return {
        **result.to_json(),
        **chosen,
        "rle": mask_rle(result.mask),
        "area": int(result.mask.sum()),
        "mask": mask_path,
    }


def segment_json(
    *,
    image: str,
    image_size: tuple[int, int],
    proposal_source: str | None,
    proposal_count: int | None,
    clip: dict[str, str] | None,
    method: str,
    settings: dict[str, Any],
    results: list[dict[str, Any]],
    seconds: dict[str, float],
) -> dict[str, Any]:
    """The whole report of one `segment` call."""
    return {
        "format": JSON_FORMAT,
        "globallocal_version": __version__,
        "image": image,
        "image_size": size_json(*image_size),
        "box_format": "x0 y0 x1 y1 in pixels",
        "proposal_source": proposal_source,
        "proposals": proposal_count,
        "clip": clip,
        "method": method,
        "settings": settings,
        "results": results,
        "seconds": seconds,
    }


def caption(result) -> str:
    """What a phrase was answered with: the chosen proposal and its score, or the area of a drawn mask."""
    if result.concept is not None and result.index is None:
        return f"{result.phrase!r}: no candidate"
    if result.index is None:
        return f"{result.phrase!r}: {int(result.mask.sum())} pixels"
    index, value = result.ranking()[0]
    return f"{result.phrase!r}: proposal {index}, {result.ranking_label} {value:.4f}"


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


def proposal_boxes(proposals) -> torch.Tensor | None:
    """The boxes of proposals (None: none), for :func:`result_json`."""
    return None if proposals is None else proposals.boxes


def write_json(path, image, picture, segmenter, results, outputs, candidates, source, seconds) -> None:
    report = segment_json(
        image=str(image),
        image_size=(picture.height, picture.width),
        proposal_source=source if candidates is not None or segmenter.phrase_dependent else None,
        proposal_count=len(candidates) if candidates is not None else None,
        clip=segmenter.clip_description(),
        method=segmenter.method.name,
        # every setting (with TCL's, for a blend), as a run's configuration records them
        settings={key: value for key, value in segmenter.method.describe().items() if key != "method"},
        results=[result_json(r, proposal_boxes(r.among(candidates)), str(out)) for r, out in zip(results, outputs)],
        seconds=seconds,
    )
    text = json.dumps(report, indent=1) + "\n"
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        save_text(text, path)
