"""Sizes and boxes as JSON, labelled: one wording for the proposals index (``globallocal proposals``) and the
answers of ``segment --json`` (:mod:`globallocal.outputs.answers`).

Sizes are ``{"height", "width"}``; boxes are ``{"x0", "y0", "x1", "y1"}``, x to the right and y down.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .masks import tight_box

__all__ = ["BOX_FORMAT", "PROJECTION_BOX_FORMAT", "box_json", "pixel_box_json", "size_json"]

BOX_FORMAT = "x0 y0 x1 y1 in whole pixels: the mask's tight box, x1 and y1 exclusive"
PROJECTION_BOX_FORMAT = "x0 y0 x1 y1 in pixels, floats: SOLOv2's projection box, which the local crops follow"


def size_json(height: int, width: int) -> dict[str, int]:
    return {"height": int(height), "width": int(width)}


def box_json(box: Sequence[float] | torch.Tensor) -> dict[str, float]:
    """A float box (a projection box), labelled."""
    x0, y0, x1, y1 = (float(value) for value in box)
    return {"x0": x0, "y0": y0, "x1": x1, "y1": y1}


def pixel_box_json(mask: np.ndarray | torch.Tensor) -> dict[str, int] | None:
    """The tight box of a bool (H, W) mask in whole pixels, x1 and y1 exclusive, labelled; None when empty."""
    box = tight_box(mask)
    return None if box is None else dict(zip(("x0", "y0", "x1", "y1"), box))
