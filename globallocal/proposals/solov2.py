"""SOLOv2 as FreeSOLO uses it: the network (SPEC section 2); its inference is :mod:`.solov2_decode`.

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

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet101
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

__all__ = ["FreeSOLONet", "HeadOutputs", "SIZE_DIVISIBILITY"]

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
