"""The ``box`` preset: one grounding call per phrase, then the candidate whose box fits the VLM's box best.

The VLM is asked for the box of the expression as JSON. Its numbers are read
tolerantly (:func:`read_box`): the think block and code fences set aside,
JSON first (``[{"bbox_2d": [x1, y1, x2, y2], "label": ...}]``, one such
object, a bare list of four numbers), else the first four numbers of the
answer; then mapped to the photo's pixels by the box convention (Qwen2.5-VL:
pixels of the image as the model saw it; Qwen3-VL: a 0-1000 grid), the
corners ordered and the box clipped to the photo. The answer is the candidate
whose tight box has the highest IoU with it; below ``box_threshold``, the mask
that a promptable segmenter gives for the box (outcome ``fallback``), where
one is given. An unreadable reply is ``vlm_error``, answered by the
``fallback`` setting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

from ...proposals import Proposals, tight_boxes
from .answer import Transcript, Usage, VlmAnswer, fallback_chosen, record_reply
from .chat import ChatBackend, Conversation, image_part, is_transport_error, text_part, user
from .prompts import Prompts, builtin_prompts
from .replies import answer_text, json_value, numbers
from .settings import VlmSettings, box_format_for
from .steps import ChatRequest, Steps, run_steps

__all__ = ["Box", "SegmentBox", "box_ious", "box_request", "box_steps", "read_box", "run_box"]

Box = tuple[float, float, float, float]
"""(x0, y0, x1, y1) in the photo's pixels, x0 < x1 and y0 < y1."""
SegmentBox = Callable[[Box], "torch.Tensor | None"]
"""A promptable segmenter's mask for a box prompt on the photo, bool (H, W), or None when it has none."""
_BOX_KEYS = ("bbox_2d", "bbox", "box")


def box_request(photo: Image.Image, query: str, prompts: Prompts) -> Conversation:
    """The grounding request: the photo, then the question."""
    return [user(image_part(photo), text_part(prompts.fill("box_request", query=query)))]


def _four_numbers(value: Any) -> list[float] | None:
    if isinstance(value, list) and len(value) == 4 and all(
        isinstance(number, (int, float)) and not isinstance(number, bool) for number in value
    ):
        return [float(number) for number in value]
    return None


def _json_box(value: Any) -> list[float] | None:
    """The first box in a JSON answer: a list of four numbers, or an object's ``bbox_2d`` (or ``bbox``, ``box``),
    alone or in a list."""
    if _four_numbers(value):
        return _four_numbers(value)
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, dict):
            found = next((_four_numbers(item.get(key)) for key in _BOX_KEYS if _four_numbers(item.get(key))), None)
            if found:
                return found
        elif _four_numbers(item):
            return _four_numbers(item)
    return None


def read_box(text: str, box_format: str, photo_size: tuple[int, int], seen_size: tuple[int, int] | None = None
             ) -> Box | None:
    """The VLM's box in the photo's pixels, or None when no box can be read (or it lies outside the photo).

    ``photo_size`` and ``seen_size`` are (width, height); ``seen_size`` (the image as the model saw it) is needed
    for ``box_format="seen-pixels"``.
    """
    body = answer_text(text)
    values = _json_box(json_value(body, "the VLM's box"))
    if values is None:
        found = numbers(body)
        values = found[:4] if len(found) >= 4 else None
    if values is None:
        return None
    width, height = photo_size
    if box_format == "seen-pixels":
        if seen_size is None:
            raise ValueError("box_format seen-pixels needs the size of the image as the model saw it")
        scale_x, scale_y = width / seen_size[0], height / seen_size[1]
    elif box_format == "grid-1000":
        scale_x, scale_y = width / 1000, height / 1000
    elif box_format == "photo-pixels":
        scale_x = scale_y = 1.0
    else:
        raise ValueError(f"unknown box format {box_format!r}")
    xs = sorted(min(max(value * scale_x, 0.0), float(width)) for value in values[0::2])
    ys = sorted(min(max(value * scale_y, 0.0), float(height)) for value in values[1::2])
    if xs[0] >= xs[1] or ys[0] >= ys[1]:
        return None
    return xs[0], ys[0], xs[1], ys[1]


def box_ious(box: Box, boxes: torch.Tensor) -> torch.Tensor:
    """IoU of ``box`` with every box (N, 4) (x0, y0, x1, y1), float64; 0 where both are empty."""
    boxes = boxes.double()
    x0 = boxes[:, 0].clamp(min=box[0])
    y0 = boxes[:, 1].clamp(min=box[1])
    x1 = boxes[:, 2].clamp(max=box[2])
    y1 = boxes[:, 3].clamp(max=box[3])
    inter = (x1 - x0).clamp(min=0) * (y1 - y0).clamp(min=0)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = areas + (box[2] - box[0]) * (box[3] - box[1]) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


def box_steps(photo: Image.Image, query: str, candidates: Proposals, settings: VlmSettings, prompts: Prompts,
              box_format: str, seen_size: tuple[int, int] | None = None, segment_box: SegmentBox | None = None
              ) -> Steps:
    """One phrase's grounding call and choice, as a generator of requests (:mod:`.steps`)."""
    usage, transcript = Usage(), Transcript()
    transcript.name_image(photo, "photo")
    details: dict[str, Any] = {"box_format": box_format}

    def answer(chosen: Sequence[int], outcome: str, reason: str | None = None, mask: torch.Tensor | None = None
               ) -> VlmAnswer:
        result = VlmAnswer.of(candidates, chosen, outcome, reason, usage=usage, transcript=transcript.to_json(),
                              details=details)
        if mask is not None:
            result.mask = mask
        return result

    if len(candidates) == 0 and segment_box is None:
        return answer((), "no_mask", "no_candidates")
    messages = box_request(photo, query, prompts)
    try:
        (reply,) = yield [ChatRequest(messages)]
    except Exception as error:
        if not is_transport_error(error):
            raise
        return answer(fallback_chosen(candidates, settings.fallback), "vlm_error", "transport")
    box = read_box(record_reply(usage, transcript, "box", messages, reply), box_format, photo.size, seen_size)
    if box is None:
        return answer(fallback_chosen(candidates, settings.fallback), "vlm_error", "unreadable_box")
    details["box"] = list(box)
    best, iou = None, 0.0
    if len(candidates):
        ious = box_ious(box, tight_boxes(candidates.masks))
        best = int(torch.argmax(ious))  # the first of equals: the source's order
        iou = float(ious[best])
        details.update(box_candidate=best, box_iou=iou)
    if iou < settings.box_threshold and segment_box is not None:
        mask = segment_box(box)
        if mask is not None:
            mask = torch.as_tensor(mask).bool().cpu()
            if tuple(mask.shape) != (photo.height, photo.width):
                raise ValueError(f"the box prompt's mask is {tuple(mask.shape)}, not the photo's (H, W)")
            return answer((), "fallback", mask=mask)
    if best is None:
        return answer((), "no_mask", "no_candidates")
    return answer((best,), "select")


def run_box(backend: ChatBackend, photo: Image.Image, queries: Sequence[str], candidates: Sequence[Proposals],
            settings: VlmSettings, prompts: Prompts | None = None, segment_box: SegmentBox | None = None
            ) -> list[VlmAnswer]:
    """Every phrase of a photo (each with its candidates), the grounding calls sent together."""
    prompts = prompts or builtin_prompts("box")
    box_format = box_format_for(settings, backend.family)
    seen = backend.seen_size(photo) if box_format == "seen-pixels" else None
    generators = [box_steps(photo, query, among, settings, prompts, box_format, seen, segment_box)
                  for query, among in zip(queries, candidates, strict=True)]
    return run_steps(generators, backend, settings.max_tokens)
