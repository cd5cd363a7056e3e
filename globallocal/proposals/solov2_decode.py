"""SOLOv2's inference as FreeSOLO runs it: point NMS, the dynamic convolution, Matrix NMS, the final resize.

It follows the authors' code step by step; the only differences are in how
the work is scheduled (chunked dynamic convolution that keeps only the
candidates that can still reach the top ``max_before_nms``, Matrix NMS within
each label, full-resolution resizing of the final masks only), none of which
changes a result beyond float rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .solov2 import INSTANCE_STRIDES, HeadOutputs

__all__ = ["matrix_nms", "point_nms", "resize_masks", "select_instances"]

# Elements of one float block of candidate mask logits; bounds the memory of
# the dynamic convolution (64 MB in float32) whatever the number of candidates.
_CHUNK_ELEMENTS = 1 << 24
# Elements of one full-resolution float block when resizing the final masks (16 MB).
_RESIZE_ELEMENTS = 1 << 22



def point_nms(heat: torch.Tensor) -> torch.Tensor:
    """Zero every cell that is not the maximum of its 2x2 window (itself, up, left, up-left).

    ``heat`` is (N, C, S, S) of probabilities; ties keep all tied cells.
    """
    window_max = F.max_pool2d(heat, kernel_size=2, stride=1, padding=1)[..., :-1, :-1]
    return heat * (window_max == heat)


def matrix_nms(
    labels: torch.Tensor,
    masks: torch.Tensor,
    areas: torch.Tensor,
    scores: torch.Tensor,
    sigma: float = 2.0,
    kernel: str = "gaussian",
) -> torch.Tensor:
    """SOLOv2's Matrix NMS: each score decayed by its overlaps with higher-scored masks.

    Inputs are sorted by descending score: ``masks`` (n, P) bool, ``areas``
    (n,) their pixel counts, ``labels`` (n,). For mask j the decay is the
    minimum over higher-ranked masks i of the same label of
    f(iou_ij) / f(max IoU of i with any mask above it), with f(x) =
    exp(-sigma x^2) (gaussian) or 1 - x (linear). Masks of different labels
    never interact, so the IoU matrix is computed per label, and only its
    upper triangle (in row blocks), which gives the reference's values at a
    fraction of the cost.
    """
    if kernel not in ("gaussian", "linear"):
        raise ValueError(f"unknown Matrix NMS kernel {kernel!r}; use 'gaussian' or 'linear'")
    decay = torch.ones_like(scores)
    for label in torch.unique(labels).tolist():
        index = (labels == label).nonzero().squeeze(1)
        group = masks[index].float()
        area = areas[index].float()
        n = len(index)
        inter = group.new_zeros((n, n))
        block = max(128, math.ceil(n / 4))
        for start in range(0, n, block):
            inter[start : start + block, start:] = group[start : start + block] @ group[start:].T
        iou = (inter / (area[:, None] + area[None, :] - inter)).triu(diagonal=1)
        compensate = iou.max(dim=0).values[:, None]  # row i: the largest IoU of mask i with any above it
        if kernel == "gaussian":
            ratio = torch.exp(-sigma * iou**2) / torch.exp(-sigma * compensate**2)
        else:
            ratio = (1 - iou) / (1 - compensate)
        decay[index] = ratio.min(dim=0).values
    return scores * decay


def _flatten_levels(outputs: HeadOutputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cells, 2) category probabilities after point-NMS, (cells, 256) kernels, (cells,) strides.

    Cells are ordered level by level, row-major within a level, as in the reference.
    """
    probs, kernels, strides = [], [], []
    levels = zip(outputs.cate_logits, outputs.kernels, INSTANCE_STRIDES, strict=True)
    for logits, kernel, stride in levels:
        probs.append(point_nms(logits.sigmoid())[0].permute(1, 2, 0).reshape(-1, logits.shape[1]))
        kernels.append(kernel[0].permute(1, 2, 0).reshape(-1, kernel.shape[1]))
        cells = kernel.shape[-2] * kernel.shape[-1]
        strides.append(torch.full((cells,), float(stride), device=kernel.device))
    return torch.cat(probs), torch.cat(kernels), torch.cat(strides)


class _Held:
    """Evaluated candidates that may still be among the best ``limit`` by score.

    Entries arrive in chunks; once ``limit`` are held, anything scoring below
    the ``limit``-th best score can never enter, and the store is compacted
    whenever it holds twice the limit, so memory stays near ``limit`` masks.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[tuple[torch.Tensor, ...]] = []
        self.cutoff: float | None = None

    def add(self, ids: torch.Tensor, scores: torch.Tensor, areas: torch.Tensor, masks: torch.Tensor) -> None:
        self.parts.append((ids, scores, areas, masks))
        count = sum(len(part[0]) for part in self.parts)
        if count > 2 * self.limit:
            self.parts = [self.best()]
        if count >= self.limit:
            scores = torch.cat([part[1] for part in self.parts])
            self.cutoff = float(torch.topk(scores, self.limit).values[-1])

    def best(self) -> tuple[torch.Tensor, ...]:
        """(ids, scores, areas, masks) of the best ``limit``: score descending, ties by candidate id."""
        ids, scores, areas, masks = (torch.cat(column) for column in zip(*self.parts, strict=True))
        order = torch.sort(ids).indices
        order = order[torch.sort(scores[order], descending=True, stable=True).indices[: self.limit]]
        return ids[order], scores[order], areas[order], masks[order]


@torch.inference_mode()
def select_instances(
    outputs: HeadOutputs,
    score_threshold: float = 0.1,
    mask_threshold: float = 0.5,
    max_before_nms: int = 500,
    nms_kernel: str = "gaussian",
    nms_sigma: float = 2.0,
    update_threshold: float = 0.05,
    max_instances: int = 100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SOLOv2 inference up to the stride-4 soft masks of the kept instances.

    Returns (masks (K, H/4, W/4) float in [0, 1], scores (K,)) sorted by
    descending score, K <= ``max_instances``; K = 0 is a normal outcome.
    Steps as in the reference: cells with point-NMS'd probability above
    ``score_threshold`` (either channel; the channel is the label) become
    candidates; a candidate's mask is sigmoid(kernel . features) binarised at
    ``mask_threshold`` (>= 0); candidates whose binary area is not larger
    than their level's stride are dropped; score = probability x maskness
    (mean soft value inside the binary mask); the best ``max_before_nms``
    go through Matrix NMS; those whose decayed score is at least
    ``update_threshold`` are kept, best ``max_instances`` first.

    Since maskness is at most 1, a candidate's score cannot exceed its
    probability: candidates are evaluated in chunks by descending
    probability and evaluation stops once no remaining one can reach the
    best ``max_before_nms``, which changes nothing in the result.
    """
    probs, kernels, strides = _flatten_levels(outputs)
    features = outputs.mask_features[0]
    height, width = features.shape[-2:]
    features = features.reshape(features.shape[0], -1)
    empty = (features.new_zeros((0, height, width)), features.new_zeros((0,)))

    candidates = (probs > score_threshold).nonzero()
    if len(candidates) == 0:
        return empty
    cells, labels = candidates[:, 0], candidates[:, 1]
    cand_scores = probs[cells, labels]

    held = _Held(max_before_nms)
    chunk = max(1, _CHUNK_ELEMENTS // features.shape[1])
    buffer = features.new_empty((min(chunk, len(cells)), features.shape[1]))
    by_probability = torch.sort(cand_scores, descending=True, stable=True).indices
    for start in range(0, len(cells), chunk):
        ids = by_probability[start : start + chunk]
        if held.cutoff is not None and float(cand_scores[ids[0]]) < held.cutoff:
            break
        # In place in one reused buffer: logits -> soft -> soft inside the
        # mask (0 outside) -> 0/1 mask, summing as it goes.
        values = torch.mm(kernels[cells[ids]], features, out=buffer[: len(ids)])
        torch.sigmoid_(values)
        F.threshold_(values, mask_threshold, 0.0)
        inside = values.sum(dim=1)
        binary = torch.ceil_(values)
        areas = binary.sum(dim=1)
        scores = cand_scores[ids] * (inside / areas)
        keep = areas > strides[cells[ids]]
        if held.cutoff is not None:
            keep &= scores >= held.cutoff
        if bool(keep.any()):
            rows = keep.nonzero().squeeze(1)
            held.add(ids[rows], scores[rows], areas[rows], binary.bool()[rows])
    if not held.parts:
        return empty
    ids, scores, areas, masks = held.best()

    scores = matrix_nms(labels[ids], masks, areas, scores, sigma=nms_sigma, kernel=nms_kernel)
    keep = (scores >= update_threshold).nonzero().squeeze(1)
    if len(keep) == 0:
        return empty
    order = keep[torch.sort(scores[keep], descending=True, stable=True).indices[:max_instances]]
    soft = torch.sigmoid(kernels[cells[ids[order]]] @ features)
    return soft.reshape(-1, height, width), scores[order]


@torch.inference_mode()
def resize_masks(
    soft_masks: torch.Tensor,
    input_size: tuple[int, int],
    image_size: tuple[int, int],
    mask_threshold: float = 0.5,
) -> torch.Tensor:
    """Stride-4 soft masks to bool masks at the image's size, as the reference does it.

    Bilinear (no antialias) upsampling by the integer ratio between the
    network input and the mask features (4), crop of the padding to
    ``input_size`` (the unpadded input's (h, w)), bilinear resize to
    ``image_size`` (H0, W0), threshold. Done a few masks at a time, so the
    full-resolution float stack never exists at once and each step stays in
    cache (twice as fast as one large call).
    """
    height, width = input_size
    feat_h, feat_w = soft_masks.shape[-2:]
    ratio = max(math.ceil(height / feat_h), math.ceil(width / feat_w))
    upsampled = (feat_h * ratio, feat_w * ratio)
    out = torch.zeros((len(soft_masks), *image_size), dtype=torch.bool, device=soft_masks.device)
    largest = max(upsampled[0] * upsampled[1], image_size[0] * image_size[1])
    per_step = max(1, _RESIZE_ELEMENTS // largest)
    for start in range(0, len(soft_masks), per_step):
        block = soft_masks[start : start + per_step, None]
        block = F.interpolate(block, size=upsampled, mode="bilinear", align_corners=False)
        block = block[..., :height, :width]
        block = F.interpolate(block, size=image_size, mode="bilinear", align_corners=False)
        out[start : start + per_step] = block[:, 0] > mask_threshold
    return out
