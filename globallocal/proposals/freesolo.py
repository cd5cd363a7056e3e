"""FreeSOLO mask proposals: the generator (SPEC section 2), in the style of segment-anything's
``SamAutomaticMaskGenerator``: :class:`FreeSOLOGenerator` turns an image into :class:`Proposals`.

The released weights and how they load: :mod:`.freesolo_checkpoint`.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ..data.bounded import MAX_SHORT_SIDE
from ..data.images import ImageInput, load_image, x800
from ..errors import InputError
from ..models.clip import precision_dtype
from . import Proposals, projection_boxes
from .freesolo_checkpoint import load_freesolo, resolve_freesolo_weights
from .solov2 import SIZE_DIVISIBILITY, FreeSOLONet, HeadOutputs
from .solov2_decode import resize_masks, select_instances

__all__ = ["FreeSOLOGenerator", "build_freesolo"]


class FreeSOLOGenerator:
    """Class-agnostic mask proposals from FreeSOLO, like SAM's automatic mask generator.

    Every default is the reference's setting (SPEC section 2 and FreeSOLO's
    config): ``score_threshold`` on the point-NMS'd category probability,
    ``mask_threshold`` for binarising masks (at stride 4 and at full size),
    ``max_before_nms`` candidates into Matrix NMS (``nms_kernel``,
    ``nms_sigma``), ``update_threshold`` on the decayed scores,
    ``max_proposals`` kept, input resized to ``short_side``; final masks of
    at most ``min_area`` pixels are dropped (0: only empty ones, as the
    reference does). ``precision``: the network's (fp32, the reference; bf16
    about twice as fast on a CPU with bfloat16 units); its outputs are
    decoded in float32 either way.
    """

    def __init__(
        self,
        model: FreeSOLONet,
        score_threshold: float = 0.1,
        mask_threshold: float = 0.5,
        update_threshold: float = 0.05,
        max_before_nms: int = 500,
        max_proposals: int = 100,
        nms_kernel: str = "gaussian",
        nms_sigma: float = 2.0,
        short_side: int = 800,
        min_area: int = 0,
        precision: str = "fp32",
    ) -> None:
        for name, value in (
            ("score_threshold", score_threshold),
            ("mask_threshold", mask_threshold),
            ("update_threshold", update_threshold),
        ):
            if not 0.0 <= value <= 1.0:
                raise InputError(f"FreeSOLO {name} must be in [0, 1], got {value}")
        counts = (
            ("max_before_nms", max_before_nms),
            ("max_proposals", max_proposals),
            ("short_side", short_side),
        )
        for name, value in counts:
            if value < 1:
                raise InputError(f"FreeSOLO {name} must be at least 1, got {value}")
        if short_side > MAX_SHORT_SIDE:
            raise InputError(f"FreeSOLO short_side must be at most {MAX_SHORT_SIDE} (memory grows with its square), "
                             f"got {short_side}")
        if nms_kernel not in ("gaussian", "linear"):
            raise InputError(f"FreeSOLO nms_kernel must be 'gaussian' or 'linear', got {nms_kernel!r}")
        if nms_sigma <= 0:
            raise InputError(f"FreeSOLO nms_sigma must be positive, got {nms_sigma}")
        if min_area < 0:
            raise InputError(f"FreeSOLO min_area must be at least 0, got {min_area}")
        self.dtype = precision_dtype(precision, next(model.parameters()).device)
        self.precision = precision
        self.model = model.eval().to(self.dtype)
        self.score_threshold = score_threshold
        self.mask_threshold = mask_threshold
        self.update_threshold = update_threshold
        self.max_before_nms = max_before_nms
        self.max_proposals = max_proposals
        self.nms_kernel = nms_kernel
        self.nms_sigma = nms_sigma
        self.short_side = short_side
        self.min_area = min_area

    @property
    def settings(self) -> dict[str, object]:
        """Every option that decides the proposals, for run records and cache keys (as SAM's generators give)."""
        names = (
            "score_threshold", "mask_threshold", "update_threshold", "max_before_nms", "max_proposals",
            "nms_kernel", "nms_sigma", "short_side", "min_area",
        )
        settings = {name: getattr(self, name) for name in names}
        # Only when it is not the reference's float32, so that the runs and caches made before keep their keys.
        return settings if self.precision == "fp32" else {**settings, "precision": self.precision}

    @property
    def device(self) -> torch.device:
        """Where the model runs; inputs are moved there, results come back on the CPU."""
        return next(self.model.parameters()).device

    def generate(self, image: ImageInput) -> Proposals:
        """Proposals for an image (path, PIL image or uint8 array), masks at the image's size."""
        rgb = load_image(image)
        return self.generate_from_tensor(x800(rgb, short=self.short_side), (rgb.height, rgb.width))

    def __call__(self, image: ImageInput) -> Proposals:
        """Same as :meth:`generate`, so a generator can serve as a segmenter's proposal source."""
        return self.generate(image)

    def generate_from_tensor(self, tensor: torch.Tensor, image_size: tuple[int, int]) -> Proposals:
        """Proposals from the already normalised network input (SPEC's ``x800``).

        ``tensor`` is (3, h, w); ``image_size`` is the original (H0, W0) the
        masks are resized to. Lets a caller compute ``x800`` once for both
        FreeSOLO and CLIP.
        """
        if tensor.dim() != 3 or tensor.shape[0] != 3 or not tensor.is_floating_point():
            raise InputError(f"FreeSOLO input must be a float (3, H, W) tensor, got {tuple(tensor.shape)}")
        with torch.inference_mode():
            outputs = self.model(self.prepare(tensor))
            if self.dtype != torch.float32:
                outputs = HeadOutputs([c.float() for c in outputs.cate_logits], [k.float() for k in outputs.kernels],
                                      outputs.mask_features.float())
            return self.postprocess(outputs, (tensor.shape[-2], tensor.shape[-1]), image_size)

    def prepare(self, tensor: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) batch on the model's device, zero-padded bottom/right to a multiple of 32.

        Channels-last on the CPU, where oneDNN's convolutions are faster on it.
        """
        height, width = tensor.shape[-2:]
        pad_h = -height % SIZE_DIVISIBILITY
        pad_w = -width % SIZE_DIVISIBILITY
        batch = tensor.to(self.device, self.dtype)[None]
        if pad_h or pad_w:
            batch = F.pad(batch, (0, pad_w, 0, pad_h))
        return batch.contiguous(memory_format=torch.channels_last) if self.device.type == "cpu" else batch

    def postprocess(
        self, outputs: HeadOutputs, input_size: tuple[int, int], image_size: tuple[int, int]
    ) -> Proposals:
        """Head outputs to proposals at ``image_size``: instance selection, resizing, boxes."""
        soft, scores = select_instances(
            outputs,
            score_threshold=self.score_threshold,
            mask_threshold=self.mask_threshold,
            max_before_nms=self.max_before_nms,
            nms_kernel=self.nms_kernel,
            nms_sigma=self.nms_sigma,
            update_threshold=self.update_threshold,
            max_instances=self.max_proposals,
        )
        masks = resize_masks(soft, input_size, image_size, self.mask_threshold)
        flat = masks.flatten(1)
        # any() is several times faster than summing bools, and all the default needs.
        if self.min_area == 0:
            keep = flat.any(dim=1)
        else:
            keep = flat.view(torch.uint8).sum(dim=1, dtype=torch.int32) > self.min_area
        masks, scores = _compact(masks, keep), scores[keep]
        return Proposals(masks=masks.cpu(), boxes=projection_boxes(masks), scores=scores.float().cpu())


def _compact(masks: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``masks[keep]`` without a second copy of the stack: kept masks move up in place, the rest is cut off.

    At full size the stack is the largest thing a proposal run holds (2.4 GB
    for 100 masks of a 6000x4000 photo); boolean indexing would copy it. The
    returned view keeps the dropped masks' memory until it is released, which
    is at most the stack that already existed.
    """
    kept = keep.nonzero()[:, 0].tolist()
    for target, source in enumerate(kept):
        if target != source:
            masks[target] = masks[source]
    return masks[: len(kept)]


def build_freesolo(
    weights: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu", **options: object
) -> FreeSOLOGenerator:
    """A ready FreeSOLOGenerator: weights resolved (downloaded if needed), loaded on ``device``.

    ``options`` are FreeSOLOGenerator's keyword arguments.
    """
    model = load_freesolo(resolve_freesolo_weights(weights), device)
    return FreeSOLOGenerator(model, **options)
