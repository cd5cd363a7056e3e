"""The candidate masks of one image (:class:`Proposals`) and the rules every generator shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from ..data.images import wrong_size
from ..errors import InputError

if TYPE_CHECKING:
    from ..data.images import ImageInput

__all__ = ["ProposalGenerator", "Proposals", "postprocess", "projection_boxes", "tight_box", "tight_boxes"]


@dataclass
class Proposals:
    """Candidate masks for one image.

    ``masks`` is a bool tensor (N, H, W) at the image's size, ``boxes`` a float
    tensor (N, 4) of (x0, y0, x1, y1) following :func:`projection_boxes`, and
    ``scores`` a float tensor (N,) of the generator's confidences (ones for
    masks supplied by the user). ``files`` names the file (or index entry) each mask
    was read from, for masks supplied as files; None otherwise.
    """

    masks: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor
    files: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        n = self.masks.shape[0]
        if self.masks.dim() != 3 or self.masks.dtype != torch.bool:
            raise ValueError("Proposals.masks must be a bool tensor of shape (N, H, W)")
        if self.boxes.shape != (n, 4) or self.scores.shape != (n,):
            raise ValueError("Proposals.boxes must be (N, 4) and scores (N,) for N masks")
        if self.files is not None and len(self.files) != n:
            raise ValueError("Proposals.files must name one file per mask")

    def __len__(self) -> int:
        return self.masks.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the image the masks belong to."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    @classmethod
    def from_arrays(cls, masks: np.ndarray) -> Proposals:
        """Proposals from a bool (N, H, W) array (scores 1), such as a dataset's ``instance_masks``."""
        return cls.from_masks(torch.from_numpy(masks))

    @classmethod
    def from_masks(
        cls, masks: torch.Tensor, scores: torch.Tensor | None = None, files: tuple[str, ...] | None = None
    ) -> Proposals:
        """Build proposals from bool masks, with boxes by SPEC's projection rule."""
        masks = masks.bool()
        if scores is None:
            scores = torch.ones(masks.shape[0], dtype=torch.float32)
        return cls(masks=masks, boxes=projection_boxes(masks), scores=scores.float(), files=files)

    def select(self, keep: torch.Tensor) -> Proposals:
        """The proposals at the indices (or bool selector) ``keep``."""
        files = None if self.files is None else tuple(self.files[i] for i in torch.arange(len(self))[keep].tolist())
        return Proposals(self.masks[keep], self.boxes[keep], self.scores[keep], files)

    def drop_empty(self) -> Proposals:
        """The proposals whose mask has at least one pixel."""
        return self.select(self.masks.flatten(1).any(dim=1))


def check_image_size(image, proposals: Proposals) -> None:
    """Refuse masks that are not at the PIL ``image``'s size."""
    if proposals.image_size != (image.height, image.width):
        raise InputError(wrong_size("masks are", proposals.image_size, (image.height, image.width)))


def projection_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Boxes of the published code (SOLOv2's), not min/max boxes.

    For each mask, the column projection p_x marks the columns the mask
    touches (likewise the row projection p_y). The box width is the number of
    touched columns, centred on the mean of their x indices; same for the
    height. On a mask with holes between columns this differs from the tight
    box, and the crop of the local feature depends on it, so it is kept.
    Returns float32 (N, 4) boxes (x0, y0, x1, y1); empty masks give zeros.
    """
    masks = masks.bool()
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    p_x = masks.any(dim=1).float()  # (N, W)
    p_y = masks.any(dim=2).float()  # (N, H)
    xs = torch.arange(w, dtype=torch.float32, device=masks.device)
    ys = torch.arange(h, dtype=torch.float32, device=masks.device)
    width = p_x.sum(dim=1)
    height = p_y.sum(dim=1)
    cx = (p_x * xs).sum(dim=1) / width.clamp(min=1e-6)
    cy = (p_y * ys).sum(dim=1) / height.clamp(min=1e-6)
    return torch.stack(
        [cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2], dim=1
    ).cpu()


def tight_box(mask: torch.Tensor | np.ndarray) -> tuple[int, int, int, int] | None:
    """The min/max box (x0, y0, x1, y1) of a bool (H, W) mask in whole pixels, x1 and y1 exclusive (one past the
    last column and row); None for an empty mask."""
    mask = torch.as_tensor(mask).bool()
    columns = torch.nonzero(mask.any(dim=0)).flatten()
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    if len(columns) == 0:
        return None
    return int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1


def tight_boxes(masks: torch.Tensor) -> torch.Tensor:
    """:func:`tight_box` of every bool mask (N, H, W) as float32 (N, 4); zeros for empty masks."""
    boxes = torch.zeros((masks.shape[0], 4), dtype=torch.float32)
    for i, mask in enumerate(masks):
        box = tight_box(mask)
        if box is not None:
            boxes[i] = torch.tensor(box, dtype=torch.float32)
    return boxes


def postprocess(proposals: Proposals, max_proposals: int | None = None, keep_order: bool = False) -> Proposals:
    """What every proposal source hands on: non-empty masks, best score first, SPEC's boxes.

    Drops empty masks (a generator's clean-up, e.g. SAM's small-region
    removal, can empty one), sorts by descending score (stable, so equal
    scores keep the generator's order), keeps the best ``max_proposals``
    when given, and recomputes every box with :func:`projection_boxes`:
    generators report min/max boxes, but the local crops follow SPEC's rule
    whatever made the masks.

    ``keep_order``: the masks stay in the order the generator returned them
    (SPEC-hybridgl section 2; HybridGL's ties and candidate lists depend on
    it); ``max_proposals`` still keeps the best-scored ones.
    """
    if max_proposals is not None and max_proposals < 1:
        raise InputError(f"max_proposals must be at least 1, got {max_proposals}")
    kept = proposals.drop_empty()
    order = torch.argsort(kept.scores, descending=True, stable=True)[:max_proposals]
    if keep_order:
        order = torch.sort(order).values
    return Proposals.from_masks(kept.masks[order], kept.scores[order])


class ProposalGenerator(Protocol):
    """Anything that turns an image into proposals (FreeSOLO's, SAM 2's and SAM's generators)."""

    def generate(self, image: ImageInput) -> Proposals: ...
