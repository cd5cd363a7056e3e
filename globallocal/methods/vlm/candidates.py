"""The agent's candidates from SAM 3's instances for a prompt (SPEC-vlm, step 4 a-d), as the authors make them.

(a) Overlap removal, only with two or more instances: visit them by score,
    descending; drop one whose intersection over the smaller area (the area
    clamped to at least 1, computed in float32 as torch does) with any
    instance already kept exceeds the threshold; the kept ones stay in their
    original order. (b) Stable sort by score, descending. (c) Drop instances
    whose COCO compressed RLE counts string has at most 4 characters (a quirk
    of the authors' code: it meant "near-empty", but the test is on the RLE
    text, so it depends on the photo's size too). (d) The rest are numbered
    1..N in this order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from pycocotools import mask as coco_mask

from ...proposals import Proposals

__all__ = [
    "OVERLAP_THRESHOLD",
    "SHORT_RLE_CHARS",
    "agent_candidates",
    "by_score",
    "intersections",
    "overlap_survivors",
    "rle_counts",
]

OVERLAP_THRESHOLD = 0.3
SHORT_RLE_CHARS = 4
# Pixels per block of the intersection product: float32 sums of 0/1 are exact below 2**24.
_BLOCK = 1 << 18


def intersections(masks: torch.Tensor) -> torch.Tensor:
    """The pixel count of every pairwise intersection of bool masks (N, H, W), as int64 (N, N)."""
    flat = masks.flatten(1)
    n = flat.shape[0]
    total = torch.zeros((n, n), dtype=torch.float64, device=flat.device)
    for start in range(0, flat.shape[1], _BLOCK):
        block = flat[:, start:start + _BLOCK].float()
        total += (block @ block.T).double()
    return total.round().long().cpu()


def by_score(scores: torch.Tensor | Sequence[float]) -> list[int]:
    """Indices by score, descending; equal scores keep their order (Python's stable sort, as the authors')."""
    values = [float(value) for value in scores]
    return sorted(range(len(values)), key=lambda i: values[i], reverse=True)


def overlap_survivors(masks: torch.Tensor, scores: torch.Tensor, threshold: float = OVERLAP_THRESHOLD) -> list[int]:
    """(a): the indices kept, in their original order; every index when there are fewer than two masks."""
    n = masks.shape[0]
    if n <= 1:
        return list(range(n))
    inter = intersections(masks)
    areas = inter.diagonal()
    kept: list[int] = []
    for i in by_score(scores):
        if kept:
            others = torch.tensor(kept)
            smaller = torch.minimum(areas[i], areas[others]).clamp(min=1).float()
            iom = inter[i, others].float() / (smaller + 1e-8)  # float32, as the authors' torch code
            if bool((iom > threshold).any()):
                continue
        kept.append(i)
    return sorted(kept)


def rle_counts(masks: torch.Tensor) -> list[bytes]:
    """The compressed COCO RLE counts string of each bool mask (N, H, W), as pycocotools writes it."""
    if masks.shape[0] == 0:
        return []
    array = np.asfortranarray(masks.cpu().numpy().transpose(1, 2, 0).astype(np.uint8))
    return [rle["counts"] for rle in coco_mask.encode(array)]


def agent_candidates(
    proposals: Proposals, overlap_threshold: float = OVERLAP_THRESHOLD, short_rle_chars: int = SHORT_RLE_CHARS
) -> Proposals:
    """SAM 3's instances for one prompt made the agent's candidates, numbered 1..N in the returned order:
    overlap removal, sort by score, the short-RLE drop (``short_rle_chars`` 0 keeps every mask)."""
    kept = proposals.select(torch.tensor(overlap_survivors(proposals.masks, proposals.scores, overlap_threshold),
                                         dtype=torch.long))
    ordered = kept.select(torch.tensor(by_score(kept.scores), dtype=torch.long))
    long_enough = [len(counts) > short_rle_chars for counts in rle_counts(ordered.masks)]
    return ordered.select(torch.tensor(long_enough, dtype=torch.bool))
