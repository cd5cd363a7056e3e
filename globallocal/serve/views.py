"""What the page shows of an answer: the overlay, the ranked proposals, the summary, timings, downloads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.images import photo_reading, save_mask_png, save_text
from ..data.overlay import overlay_picture
from ..methods import SegmentResult
from ..outputs.answers import chosen_score, proposal_list, result_json, segment_json, settings_json
from ..segmenter import Segmenter
from .engine import PROPOSAL_LABELS, Answer, ImageSession, reranking_weights

DISPLAY_SIDE = 1600
"""Longest side of the overlay sent to the browser (the downloaded mask keeps the photo's size)."""
THUMBNAIL_SIDE = 224


def _fit(image: Image.Image, mask: np.ndarray, side: int) -> tuple[Image.Image, np.ndarray]:
    """The image and mask scaled down so the longest side is at most ``side``."""
    scale = side / max(image.size)
    if scale >= 1:
        return image, mask
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    small_mask = Image.fromarray(mask).resize(size, Image.NEAREST)
    return image.resize(size, Image.BILINEAR), np.asarray(small_mask)


def display_overlay(image: Image.Image, mask: torch.Tensor | np.ndarray) -> np.ndarray:
    """The photo with the mask tinted and outlined, at display size."""
    mask = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else mask
    small, small_mask = _fit(image, mask.astype(bool), DISPLAY_SIDE)
    return overlay_picture(small, small_mask)


def display_photo(image: Image.Image) -> np.ndarray:
    """The photo alone, at display size."""
    scale = min(1.0, DISPLAY_SIDE / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return np.asarray(image if scale == 1.0 else image.resize(size, Image.BILINEAR))


def thumbnail(image: Image.Image, mask: np.ndarray, margin: float = 0.15) -> np.ndarray:
    """A proposal tinted on the part of the photo around it (its box plus a margin)."""
    rows, cols = np.nonzero(mask)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    pad_y, pad_x = int((y1 - y0) * margin) + 2, int((x1 - x0) * margin) + 2
    y0, y1 = max(0, y0 - pad_y), min(image.height, y1 + pad_y)
    x0, x1 = max(0, x0 - pad_x), min(image.width, x1 + pad_x)
    crop, crop_mask = _fit(image.crop((x0, y0, x1, y1)), mask[y0:y1, x0:x1], THUMBNAIL_SIDE)
    return overlay_picture(crop, crop_mask)


def ranked_gallery(session: ImageSession, answer: Answer, shown: int, top_k: int) -> list[tuple[np.ndarray, str]]:
    """The first ``top_k`` proposals of phrase ``shown``'s ranking (the answer first, by the score the method chose
    with): (thumbnail, "rank, proposal, score, parts")."""
    result, parts = answer.results[shown], answer.parts[shown]
    proposals = result.among(session.state.proposals)
    if proposals is None or result.scores.numel() == 0:
        return []
    masks = proposals.masks
    entries = []
    for rank, (index, value) in enumerate(result.ranking()[:top_k], start=1):
        caption = f"#{rank} · proposal {index} · {value:.4f}"
        if parts:
            caption += " = " + " + ".join(f"{name} {float(values[index]):.4f}" for name, values in parts.items())
        entries.append((thumbnail(session.state.image, masks[index].cpu().numpy()), caption))
    return entries


def summary(session: ImageSession, answer: Answer) -> str:
    """Markdown: per phrase, the noun phrase that was used and the chosen proposal."""
    lines = []
    for result in answer.results:
        proposals = result.among(session.state.proposals)
        count = f" of {len(proposals)}" if proposals is not None else ""
        if result.index is not None:
            chosen = f"proposal {result.index}{count}, {chosen_score(result)}"
        else:
            chosen = "no candidate" if result.no_candidate else f"{int(result.mask.sum())} pixels"
        note = " (cut to CLIP's context length)" if result.truncated else ""
        lines.append(f"- **{_escape(result.phrase)}** → noun phrase *{_escape(result.noun_phrase)}*{note}: {chosen}")
    return "\n".join(lines)


def _escape(text: str) -> str:
    return "".join("\\" + char if char in "\\`*_{}[]<>()#+-.!|" else char for char in text)


def timing_line(session: ImageSession, answer: Answer, image_tower_ran: bool) -> str:
    """Seconds per stage; says when the image side came from the session's cache."""
    source = PROPOSAL_LABELS.get(session.source, session.source)
    text = f"text + ranking {answer.seconds * 1000:.0f} ms"
    if image_tower_ran:
        stages = " · ".join(f"{name} {seconds:.2f} s" for name, seconds in session.timings.items())
        return f"Timing: {stages} ({source}) · {text}"
    return f"Timing: image features: cached for this photo, image tower not run · {text}"


def segment_report(photo_name: str, segmenter: Segmenter, session: ImageSession, answer: Answer,
                   mask_names: list[str]) -> dict[str, Any]:
    """The JSON ``globallocal segment --json`` writes (:func:`~globallocal.outputs.answers.segment_json`)."""
    image, proposals = session.state.image, session.state.proposals
    per_phrase = session.state.concepts is not None
    return segment_json(
        image=photo_name,
        image_size=(image.height, image.width),
        photo=photo_reading(image).to_json(),
        proposal_source=session.source if proposals is not None or per_phrase else None,
        proposal_count=len(proposals) if proposals is not None else None,
        proposals=proposal_list(proposals, segmenter.method.uses_projection_boxes()),
        clip=segmenter.clip_description(),
        method=segmenter.method.name,
        # the page's sliders re-rank with their own weights: those replace the served ones
        settings={**settings_json(segmenter.method, (image.height, image.width)),
                  **reranking_weights(answer.settings, segmenter.method.visual_settings)},
        results=[result_json(result, segmenter.method, result.among(proposals), name)
                 for result, name in zip(answer.results, mask_names)],
        seconds={**session.timings, "answer": answer.seconds},
    )


def write_downloads(folder: Path, segmenter: Segmenter, session: ImageSession, answer: Answer) -> list[Path]:
    """Mask PNGs (one per phrase, 0/255 at the photo's size) and the JSON report, in ``folder``."""
    stem = Path(session.photo_name).stem
    results: list[SegmentResult] = answer.results
    # Numbered from 0 as `segment` numbers its outputs.
    names = [f"{stem}_mask.png"] if len(results) == 1 else [f"{stem}_mask_{i}.png" for i in range(len(results))]
    paths = []
    for result, name in zip(results, names):
        save_mask_png(result.mask, folder / name)
        paths.append(folder / name)
    report = segment_report(session.photo_name, segmenter, session, answer, names)
    save_text(json.dumps(report, indent=1) + "\n", folder / f"{stem}.json")
    return [*paths, folder / f"{stem}.json"]
