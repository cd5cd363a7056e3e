"""CLIP models through open_clip: a registry of architectures and a factory.

Two image-tower families are supported because the global feature needs a
hook inside the tower: open_clip's ModifiedResNet (RN50, RN101, RN50x4, ...;
masked attention pooling) and its VisionTransformer with class-token pooling
(ViT-B-32, ViT-B-16, ViT-L-14, ...; masked tokens in the last k blocks).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.transformer import QuickGELU

from .errors import InputError, WeightsError, first_line
from .hub import require_hub_files
from .weights import unsafe_checkpoint, unsafe_message

# The architectures whose OpenAI weights the paper used or that are natural
# drop-ins; any other open_clip CLIP with a supported image tower works too.
OPENAI_ARCHITECTURES = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B-32", "ViT-B-16", "ViT-L-14")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class ClipBundle:
    """A CLIP model with what the pipeline needs to know about it."""

    model: open_clip.CLIP
    tokenizer: Callable[..., torch.Tensor]
    name: str
    weights: str
    family: str  # "resnet" or "vit"
    context_length: int

    @property
    def visual(self) -> torch.nn.Module:
        return self.model.visual

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def uses_quick_gelu(self) -> bool:
        return any(isinstance(module, QuickGELU) for module in self.model.modules())


@torch.no_grad()
def fold_batchnorm(tower: torch.nn.Module) -> torch.nn.Module:
    """Fold each eval-mode BatchNorm2d of a ModifiedResNet into the convolution before it.

    In inference a batch norm is a per-channel affine map, so conv + BN is one
    conv with scaled weights and a bias: a pass over every activation saved.
    Outputs change by float rounding only. The tower is for inference after this.
    """
    pairs = [(f"conv{i}", f"bn{i}") for i in (1, 2, 3)] + [("0", "1")]  # blocks and stem; downsample
    for module in tower.modules():
        for conv_name, norm_name in pairs:
            conv, norm = getattr(module, conv_name, None), getattr(module, norm_name, None)
            if isinstance(conv, torch.nn.Conv2d) and isinstance(norm, torch.nn.BatchNorm2d):
                scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
                bias = norm.bias - norm.running_mean * scale
                if conv.bias is not None:
                    bias = bias + conv.bias * scale
                conv.weight.mul_(scale.view(-1, 1, 1, 1))
                conv.bias = torch.nn.Parameter(bias, requires_grad=False)
                setattr(module, norm_name, torch.nn.Identity())
    return tower


def _architecture_config(name: str) -> dict[str, Any]:
    """open_clip's config for a built-in name, or the contents of a config JSON file."""
    if name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise InputError(f"CLIP model config file not found: {path}")
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read CLIP model config {path}: {error}") from None
        config = config.get("model_cfg", config)
    else:
        config = open_clip.get_model_config(name)
        if config is None:
            known = ", ".join(OPENAI_ARCHITECTURES)
            raise InputError(
                f"unknown CLIP model '{name}'; use an open_clip name (e.g. {known}) or a model-config .json file"
            )
        config = copy.deepcopy(config)
    if not isinstance(config, dict) or "vision_cfg" not in config or "text_cfg" not in config:
        raise InputError(f"'{name}' is not an open_clip model config (needs vision_cfg and text_cfg)")
    return config


def image_tower_family(config: dict[str, Any]) -> str:
    """'resnet' or 'vit' for a supported image tower; InputError otherwise."""
    vision, text = config["vision_cfg"], config["text_cfg"]
    unsupported = (
        "timm_model_name" in vision
        or "hf_model_name" in text
        or config.get("custom_text")
        or "multimodal_cfg" in config
        or vision.get("attentional_pool")
        or vision.get("pool_type", "tok") != "tok"
        or vision.get("final_ln_after_pool")
    )
    if unsupported:
        raise InputError(
            "this CLIP variant is not supported: globallocal needs open_clip's ModifiedResNet or a "
            "class-token VisionTransformer image tower with the standard text tower"
        )
    return "resnet" if isinstance(vision["layers"], (list, tuple)) else "vit"


def _weights_fix(name: str, tag: str, repo_id: str, filename: str) -> str:
    """How to provide a pretrained tag's file by hand; OpenAI weights need the QuickGELU architecture."""
    where = f"https://huggingface.co/{repo_id}/resolve/main/{filename}" if repo_id else "the weights file"
    base = name.removesuffix("-quickgelu")
    architecture = f"{base}-quickgelu" if tag == "openai" else name
    return (
        f"run once with network access to cache it, or download {where} and pass "
        f"--clip-model {architecture} --clip-weights PATH"
    )


def load_clip(
    name: str = "ViT-B-32",
    weights: str = "openai",
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> ClipBundle:
    """Build an open_clip CLIP model for the pipeline, in eval mode.

    ``name``: an open_clip architecture name or a path to an open_clip model
    config JSON. ``weights``: ``"openai"`` (or another open_clip pretrained
    tag, fetched through the Hugging Face hub), a path to a local open_clip
    checkpoint, or ``"random"`` (random initialisation: tests, benchmarks).

    OpenAI's CLIP uses QuickGELU, and features differ by ~1% without it, so
    ``weights="openai"`` always builds the model with QuickGELU. For a local
    file the architecture name decides: use open_clip's ``-quickgelu`` names
    (e.g. ``ViT-B-32-quickgelu``) for OpenAI weights.
    """
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if precision != "fp32" and device.type != "cuda":
        raise InputError(f"precision {precision} is for CUDA; on the CPU use fp32")
    config = _architecture_config(name)
    family = image_tower_family(config)

    if weights == "random" or os.path.isfile(weights):
        model = open_clip.model.CLIP(**config)
        if weights != "random":
            try:
                open_clip.load_checkpoint(model, weights, strict=True, weights_only=True)
            except Exception as error:  # torch and open_clip raise many types for a bad file
                if unsafe_checkpoint(error, weights):
                    fix = "use an open_clip checkpoint of tensors"
                    raise WeightsError(unsafe_message(weights, error, fix)) from None
                raise WeightsError(f"cannot load CLIP weights {weights} into {name}: {first_line(error)}") from None
    elif name.endswith(".json"):
        raise WeightsError(f"CLIP weights file not found: {weights}; a model-config .json needs a weights file")
    else:
        model = _load_pretrained_tag(name, weights)
    model.eval()
    if family == "resnet":
        fold_batchnorm(model.visual)  # in float32, before any cast to half precision
    model = model.to(device=device, dtype=PRECISIONS[precision])
    if family == "resnet":
        # Convolutions in channels-last layout run about 1.3x faster on the CPU (oneDNN) and on tensor cores.
        model.visual.to(memory_format=torch.channels_last)
    model.requires_grad_(False)
    context_length = int(config["text_cfg"].get("context_length", 77))
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
    return ClipBundle(model, tokenizer, Path(name).stem if name.endswith(".json") else name, weights, family,
                      context_length)


def _load_pretrained_tag(name: str, tag: str) -> open_clip.CLIP:
    tags = open_clip.list_pretrained_tags_by_model(name)
    if tag not in tags:
        looks_like_path = os.sep in tag or tag.endswith((".pt", ".pth", ".bin", ".safetensors"))
        if looks_like_path:
            raise WeightsError(f"CLIP weights file not found: {tag}")
        raise WeightsError(
            f"no pretrained weights '{tag}' for {name}; known tags: {', '.join(tags) or 'none'}, or give a file path"
        )
    pretrained_cfg = open_clip.get_pretrained_cfg(name, tag)
    hub_id = pretrained_cfg.get("hf_hub", "")
    # open_clip writes "org/repo/" for the default file name, "org/repo/file" otherwise.
    repo_id, filename = os.path.split(hub_id)
    candidates = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    fix = _weights_fix(name, tag, repo_id, candidates[0])
    if hub_id:
        require_hub_files(repo_id, candidates, f"CLIP weights {name}/{tag} ({repo_id})", fix)
    try:
        # OpenAI trained with QuickGELU; open_clip's plain configs use nn.GELU.
        return open_clip.create_model(name, pretrained=tag, force_quick_gelu=tag == "openai")
    except Exception as error:
        raise WeightsError(f"cannot load CLIP weights {name}/{tag}: {first_line(error)}; {fix}") from None
