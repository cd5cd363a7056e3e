"""SOLOv2 as FreeSOLO uses it: the network and its inference (SPEC section 2).

The network is rebuilt from torchvision parts (ResNet-101 with frozen batch
norm, FPN with a max-pool P6) plus the two SOLOv2 heads, so that the released
detectron2 checkpoint loads into it through an explicit key map (see
``freesolo.py``). Module names of the two heads equal the checkpoint's.

Inference follows the authors' code step by step; the only differences are
in how the work is scheduled (chunked dynamic convolution that keeps only the
candidates that can still reach the top ``max_before_nms``, Matrix NMS within
each label, full-resolution resizing of the final masks only), none of which
changes a result beyond float rounding.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet101
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

__all__ = [
    "FreeSOLONet",
    "HeadOutputs",
    "matrix_nms",
    "point_nms",
    "select_instances",
    "resize_masks",
    "SIZE_DIVISIBILITY",
]

# The FPN's coarsest level (P5) has stride 32: the input is padded to a multiple of it.
SIZE_DIVISIBILITY = 32
NUM_GRIDS = (40, 36, 24, 16, 12)
# Stride of each instance level; a candidate mask must cover more stride-4
# pixels than its level's stride to survive (the reference's filter).
INSTANCE_STRIDES = (8, 8, 16, 32, 32)
NUM_CLASSES = 2  # the class-agnostic FreeSOLO checkpoint still predicts two channels
NUM_KERNELS = 256  # = channels of the mask features
FPN_CHANNELS = 256
INSTANCE_CHANNELS = 512
MASK_CHANNELS = 128
NUM_EMBEDDINGS = 128
# Elements of one float block of candidate mask logits; bounds the memory of
# the dynamic convolution (64 MB in float32) whatever the number of candidates.
_CHUNK_ELEMENTS = 1 << 24
# Elements of one full-resolution float block when resizing the final masks (16 MB).
_RESIZE_ELEMENTS = 1 << 22


def _coord_features(feature: torch.Tensor) -> torch.Tensor:
    """CoordConv channels (x, y), each spanning [-1, 1] across the map."""
    n, _, h, w = feature.shape
    xs = torch.linspace(-1, 1, w, device=feature.device, dtype=feature.dtype)
    ys = torch.linspace(-1, 1, h, device=feature.device, dtype=feature.dtype)
    x = xs.view(1, 1, 1, w).expand(n, 1, h, w)
    y = ys.view(1, 1, h, 1).expand(n, 1, h, w)
    return torch.cat([x, y], dim=1)


def _conv_gn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv (no bias) + GroupNorm(32) + ReLU: indices 0, 1, 2 as in the checkpoint."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.GroupNorm(32, out_channels),
        nn.ReLU(inplace=True),
    )


class InstanceHead(nn.Module):
    """Category and kernel prediction on an S x S grid per level.

    Each level's feature (plus CoordConv channels) is resized to S x S with
    bilinear interpolation; the category tower sees it without the coordinate
    channels. ``emb_pred`` exists only so the checkpoint loads strictly: the
    embeddings were a training signal and are not computed here.
    """

    def __init__(self) -> None:
        super().__init__()
        self.num_grids = NUM_GRIDS
        for name, first_in in (("cate_tower", FPN_CHANNELS), ("kernel_tower", FPN_CHANNELS + 2)):
            layers: list[nn.Module] = []
            for i in range(4):
                layers.extend(_conv_gn_relu(first_in if i == 0 else INSTANCE_CHANNELS, INSTANCE_CHANNELS))
            self.add_module(name, nn.Sequential(*layers))
        self.cate_pred = nn.Conv2d(INSTANCE_CHANNELS, NUM_CLASSES, kernel_size=3, padding=1)
        self.kernel_pred = nn.Conv2d(INSTANCE_CHANNELS, NUM_KERNELS, kernel_size=3, padding=1)
        self.emb_pred = nn.Conv2d(INSTANCE_CHANNELS, NUM_EMBEDDINGS, kernel_size=3, padding=1)

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        cate_logits, kernels = [], []
        for feature, grid in zip(features, self.num_grids, strict=True):
            feature = torch.cat([feature, _coord_features(feature)], dim=1)
            feature = F.interpolate(feature, size=(grid, grid), mode="bilinear", align_corners=False)
            kernels.append(self.kernel_pred(self.kernel_tower(feature)))
            cate_logits.append(self.cate_pred(self.cate_tower(feature[:, :-2])))
        return cate_logits, kernels


class MaskHead(nn.Module):
    """Unified mask features at stride 4 from P2..P5.

    Level i has i conv blocks (one for P2), each but P2's followed by a 2x
    bilinear upsample; P5 gets CoordConv channels. The levels are summed and
    projected by a 1x1 conv + GroupNorm + ReLU to the 256 channels the
    dynamic kernels act on.
    """

    def __init__(self) -> None:
        super().__init__()
        self.convs_all_levels = nn.ModuleList()
        for level in range(4):
            blocks: OrderedDict[str, nn.Module] = OrderedDict()
            for j in range(max(level, 1)):
                if j == 0:
                    in_channels = FPN_CHANNELS + 2 if level == 3 else FPN_CHANNELS
                else:
                    in_channels = MASK_CHANNELS
                blocks[f"conv{j}"] = _conv_gn_relu(in_channels, MASK_CHANNELS)
                if level > 0:
                    blocks[f"upsample{j}"] = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            self.convs_all_levels.append(nn.Sequential(blocks))
        self.conv_pred = nn.Sequential(
            nn.Conv2d(MASK_CHANNELS, NUM_KERNELS, kernel_size=1, bias=False),
            nn.GroupNorm(32, NUM_KERNELS),
            nn.ReLU(inplace=True),
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        summed = self.convs_all_levels[0](features[0])
        for level in range(1, 4):
            feature = features[level]
            if level == 3:
                feature = torch.cat([feature, _coord_features(feature)], dim=1)
            summed = summed + self.convs_all_levels[level](feature)
        return self.conv_pred(summed)


@dataclass
class HeadOutputs:
    """Raw SOLOv2 predictions for one image (batch dimension 1).

    ``cate_logits[l]`` is (1, 2, S_l, S_l), ``kernels[l]`` (1, 256, S_l, S_l),
    ``mask_features`` (1, 256, H/4, W/4) of the padded input.
    """

    cate_logits: list[torch.Tensor]
    kernels: list[torch.Tensor]
    mask_features: torch.Tensor


class FreeSOLONet(nn.Module):
    """ResNet-101-FPN + SOLOv2 heads, laid out for FreeSOLO's checkpoint.

    ``backbone.body`` is torchvision's ResNet (stride in the 3x3 conv, frozen
    batch norm with eps 1e-5, like detectron2's with ``STRIDE_IN_1X1=False``)
    and ``backbone.fpn`` torchvision's FPN (biased 1x1 laterals and 3x3
    outputs, nearest top-down, P6 = max-pool(P5, 1, stride 2)).
    ``block_counts`` exists so tests can build a shallow variant; the
    checkpoint needs the default ResNet-101 (3, 4, 23, 3).
    """

    def __init__(self, block_counts: tuple[int, int, int, int] = (3, 4, 23, 3)) -> None:
        super().__init__()
        resnet = resnet101(weights=None, norm_layer=FrozenBatchNorm2d)
        if tuple(block_counts) != (3, 4, 23, 3):
            for index, count in enumerate(block_counts, start=1):
                layer = getattr(resnet, f"layer{index}")
                setattr(resnet, f"layer{index}", nn.Sequential(*list(layer.children())[:count]))
        self.backbone = BackboneWithFPN(
            resnet,
            return_layers={"layer1": "p2", "layer2": "p3", "layer3": "p4", "layer4": "p5"},
            in_channels_list=[256, 512, 1024, 2048],
            out_channels=FPN_CHANNELS,
            extra_blocks=LastLevelMaxPool(),
        )
        self.ins_head = InstanceHead()
        self.mask_head = MaskHead()

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """FPN levels P2..P6 of a normalised, size-32-padded batch (N, 3, H, W)."""
        return list(self.backbone(images).values())

    def heads(self, features: list[torch.Tensor]) -> HeadOutputs:
        """Both SOLOv2 heads on P2..P6.

        The instance head reads (P2 halved, P3, P4, P5, P6 resized to P5's
        size), bilinear without antialias as in the reference.
        """
        p2, p3, p4, p5, p6 = features
        instance_inputs = [
            F.interpolate(p2, scale_factor=0.5, mode="bilinear", align_corners=False),
            p3,
            p4,
            p5,
            F.interpolate(p6, size=p5.shape[-2:], mode="bilinear", align_corners=False),
        ]
        cate_logits, kernels = self.ins_head(instance_inputs)
        return HeadOutputs(cate_logits, kernels, self.mask_head([p2, p3, p4, p5]))

    def forward(self, images: torch.Tensor) -> HeadOutputs:
        return self.heads(self.features(images))

    @torch.no_grad()
    def fold_frozen_batchnorm(self) -> FreeSOLONet:
        """Fold every frozen batch norm of the ResNet into the conv before it.

        A frozen batch norm is an affine map per channel, so conv + BN equals
        one conv with scaled weights and a bias; this saves two full passes
        over every ResNet activation. Outputs change only by float rounding
        (relative 1e-6), the same order as between two BLAS libraries. Call it
        after loading weights: the folded model no longer has the
        checkpoint's layout.
        """
        for module in self.backbone.body.modules():
            pairs = [(f"conv{i}", f"bn{i}") for i in (1, 2, 3)]
            if isinstance(module, nn.Sequential) and len(module) == 2:
                pairs = [("0", "1")]
            for conv_name, norm_name in pairs:
                conv, norm = getattr(module, conv_name, None), getattr(module, norm_name, None)
                if isinstance(conv, nn.Conv2d) and isinstance(norm, FrozenBatchNorm2d):
                    scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
                    # New tensors, not in place: the weights may be shared with a checkpoint dict.
                    conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
                    conv.bias = nn.Parameter(norm.bias - norm.running_mean * scale, requires_grad=False)
                    setattr(module, norm_name, nn.Identity())
        return self


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
