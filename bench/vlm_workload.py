"""bench/vlm.py's workload: two photos, 9 expressions each, scripted candidates and scripted replies.

- Photos: the example COCO photo 80472 as it is (640x427, as RefCOCO's photos
  are) and photo 44266 enlarged to 2560x1920 (a phone photo's 4.9 MP), which
  the VLM sees capped at ``--vlm-max-pixels`` (about 1 MP: the default image
  size).
- Candidates: a phrase-dependent source standing in for SAM 3 (the default
  ``--proposals sam3``): a prompt naming a category word gets that category's
  instances, rectangles that do not overlap, best first.
- Replies: what a VLM following the tools would write, forced as the model's
  own output tokens (``TransformersBackend.reply_script``). The agent segments
  the category, then selects the target's number; for two expressions per
  photo (the third and the seventh) it examines the masks first (every check
  accepts), then selects. The box preset answers the target's box in the
  family's convention. The marks preset reads the model's own
  log-probabilities over the numbers (nothing is scripted there: its choice is
  the random model's).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from concept_fixtures import FakeConceptSource
from PIL import Image
from vlm_script import tool

from globallocal.methods.vlm.prompt_texts import AGENT
from globallocal.methods.vlm.settings import FAMILY_BOX_FORMATS

__all__ = ["PHOTOS", "Expression", "Photo", "concept_source", "reply_script"]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
Box = tuple[float, float, float, float]
"""(x0, y0, x1, y1) as fractions of the photo."""


@dataclass(frozen=True)
class Expression:
    text: str
    category: str
    """The noun the agent prompts SAM 3 with (and which the stand-in answers)."""
    target: int
    """The referred instance, 1-based, in the category's order (best first)."""
    examine: bool = False
    """The agent checks every mask (examine_each_mask) before selecting."""


@dataclass(frozen=True)
class Photo:
    name: str
    file: str
    size: tuple[int, int] | None
    """(width, height) the photo is enlarged to, or None to keep it as it is."""
    instances: dict[str, list[Box]]
    words: dict[str, tuple[str, ...]]
    """Words naming each category in a prompt (the noun phrases of box and marks say "guy", "lady")."""
    expressions: list[Expression]

    def image(self) -> Image.Image:
        image = Image.open(EXAMPLES / self.file).convert("RGB")
        return image.resize(self.size, Image.Resampling.BICUBIC) if self.size else image


PHOTOS = [
    Photo(
        "44266 at 2560x1920 (seen at 1 MP)", "img_44266.jpg", (2560, 1920),
        instances={"chair": [(0.05, 0.45, 0.25, 0.95), (0.3, 0.5, 0.45, 0.9), (0.5, 0.55, 0.62, 0.85),
                             (0.7, 0.6, 0.78, 0.75)],
                   "table": [(0.3, 0.2, 0.6, 0.45), (0.8, 0.3, 0.98, 0.5)],
                   "plant": [(0.02, 0.05, 0.12, 0.3), (0.85, 0.02, 0.95, 0.25)]},
        words={"chair": ("chair",), "table": ("table",), "plant": ("plant",)},
        expressions=[
            Expression("the wooden chair", "chair", 1), Expression("chair in the middle", "chair", 2),
            Expression("the smallest chair", "chair", 4, examine=True),
            Expression("the chair closest to the camera", "chair", 1),
            Expression("empty chair on the right", "chair", 4), Expression("the table", "table", 1),
            Expression("a small table near the window", "table", 2, examine=True),
            Expression("the plant in the corner", "plant", 2), Expression("potted plant on the left", "plant", 1),
        ],
    ),
    Photo(
        "80472 at 640x427 (as in RefCOCO)", "img_80472.jpg", None,
        instances={"man": [(0.05, 0.2, 0.2, 0.95), (0.4, 0.25, 0.52, 0.9), (0.75, 0.15, 0.95, 0.98)],
                   "woman": [(0.22, 0.3, 0.33, 0.9), (0.56, 0.3, 0.68, 0.85)],
                   "car": [(0.0, 0.0, 0.3, 0.15), (0.55, 0.0, 0.9, 0.12)]},
        words={"man": ("man", "guy"), "woman": ("woman", "lady"), "car": ("car",)},
        expressions=[
            Expression("the man on the right", "man", 3), Expression("right guy", "man", 3),
            Expression("man behind the car", "man", 2, examine=True), Expression("the woman holding an umbrella",
                                                                                 "woman", 1),
            Expression("lady on the left", "woman", 1), Expression("woman with a red bag", "woman", 2),
            Expression("car parked on the left", "car", 1, examine=True), Expression("the white car", "car", 1),
            Expression("the second man from the left", "man", 2),
        ],
    ),
]


def _category(photo: Photo, prompt: str) -> str | None:
    words = set(re.findall(r"[a-z]+", prompt.lower()))
    return next((category for category, names in photo.words.items() if words & set(names)), None)


def _masks(photo: Photo, category: str, width: int, height: int) -> np.ndarray:
    masks = np.zeros((len(photo.instances[category]), height, width), dtype=bool)
    for mask, (x0, y0, x1, y1) in zip(masks, photo.instances[category]):
        mask[round(y0 * height):round(y1 * height), round(x0 * width):round(x1 * width)] = True
    return masks


def concept_source(photo: Photo) -> FakeConceptSource:
    """SAM 3's interface: a prompt with a category word gets its instances (best first), anything else none."""

    def masks(image: Image.Image, prompt: str) -> np.ndarray | None:
        category = _category(photo, prompt)
        return None if category is None else _masks(photo, category, image.width, image.height)

    return FakeConceptSource(masks, {"model": "bench stand-in", "threshold": 0.5, "fallback": ["head-noun"]})


def _texts(messages: Sequence[dict]) -> list[str]:
    texts = []
    for message in messages:
        content = message["content"]
        texts += [content] if isinstance(content, str) else [p["text"] for p in content if p["type"] == "text"]
    return texts


def _box(photo: Photo, expression: Expression, box_format: str, seen: tuple[int, int]) -> list[int]:
    x0, y0, x1, y1 = photo.instances[expression.category][expression.target - 1]
    width, height = (1000, 1000) if box_format == "grid-1000" else seen
    return [round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height)]


def reply_script(photos: Sequence[Photo], family: str, seen_size: Callable[[Image.Image], tuple[int, int]]
                 ) -> Callable[[Sequence[dict]], str | None]:
    """The reply a VLM following the tools would write to ``messages`` (see the module docstring)."""
    known = {f"'{e.text}'": (photo, e) for photo in photos for e in photo.expressions}
    box_format = FAMILY_BOX_FORMATS[family]

    def script(messages: Sequence[dict]) -> str | None:
        texts = _texts(messages)
        found = next(((photo, e) for text in texts for quoted, (photo, e) in known.items() if quoted in text), None)
        if found is None:
            return None
        photo, expression = found
        noun = expression.category
        if messages[0]["content"] == AGENT["system_prompt_iterative_checking"]:
            return (f"<think>The mask covers a whole {noun}, which is what the query '{expression.text}' is "
                    f"about.</think>\n<verdict>Accept</verdict>")
        if messages[0]["content"] == AGENT["system_prompt"]:
            said = [text for message in messages if message["role"] == "assistant" for text in _texts([message])]
            if not said:
                return tool("segment_phrase", think=f"The query asks for {expression.text}. The target is a {noun}; "
                            f"I will segment every {noun} and then choose.", text_prompt=noun)
            if expression.examine and not any("examine_each_mask" in text for text in said):
                return tool("examine_each_mask", think=f"The {noun} masks are close together and some are small; "
                            "I will check each one before choosing.")
            number = expression.target
            return tool("select_masks_and_return", think=f"Mask {number} is the {noun} that fits "
                        f"'{expression.text}': its place and look match the query.", final_answer_masks=[number])
        if "bbox_2d" not in texts[-1]:
            return None  # marks: the model's own log-probabilities choose
        image = next(p["image"] for m in messages if isinstance(m["content"], list) for p in m["content"]
                     if p["type"] == "image")
        box = _box(photo, expression, box_format, seen_size(image))
        return "```json\n" + json.dumps([{"bbox_2d": box, "label": noun}]) + "\n```"

    return script
