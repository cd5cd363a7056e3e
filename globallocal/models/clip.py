"""CLIP models through open_clip: a registry of architectures and a factory.

Two image-tower families are supported because the global feature needs a
hook inside the tower: open_clip's ModifiedResNet (RN50, RN101, RN50x4, ...;
masked attention pooling) and its VisionTransformer with class-token pooling
(ViT-B-32, ViT-B-16, ViT-L-14, ...; masked tokens in the last k blocks).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.transformer import QuickGELU

from ..errors import InputError, WeightsError, first_line
from .architectures import architecture_config, image_tower_family
from .devices import FP16_ON_CPU, PRECISION_NAMES, check_device, check_precision
from .hub import MissingFile, cached_hub_file, require_hub_files
from .weights import tensor_mismatch, unsafe_checkpoint, unsafe_message

PRECISIONS = dict(zip(PRECISION_NAMES, (torch.float32, torch.float16, torch.bfloat16)))


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

    @property
    def embed_dim(self) -> int:
        """The width of its image and text features (the joint embedding)."""
        return int(self.model.visual.output_dim)


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


def _weights_fix(name: str, tag: str, repo_id: str, filename: str) -> str:
    """How to provide a pretrained tag's file by hand; OpenAI weights need the QuickGELU architecture."""
    where = f"https://huggingface.co/{repo_id}/resolve/main/{filename}" if repo_id else "the weights file"
    base = name.removesuffix("-quickgelu")
    architecture = f"{base}-quickgelu" if tag == "openai" else name
    return (
        f"run once with network access to cache it, or download {where} and pass "
        f"clip_model={architecture} clip_weights=PATH"
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
    ``device``: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.

    OpenAI's CLIP uses QuickGELU, and features differ by ~1% without it, so
    ``weights="openai"`` always builds the model with QuickGELU. For a local
    file the architecture name decides: use open_clip's ``-quickgelu`` names
    (e.g. ``ViT-B-32-quickgelu``) for OpenAI weights.
    """
    device = torch.device(resolve_device(str(device)))
    dtype = precision_dtype(precision, device)
    config = architecture_config(name)
    family = image_tower_family(config)

    if weights == "random" or os.path.isfile(weights):
        model = open_clip.model.CLIP(**config)
        if weights != "random":
            _load_file(model, weights, name)
    elif name.endswith(".json"):
        raise WeightsError(f"CLIP weights file not found: {weights}; a model-config .json needs a weights file")
    else:
        model = _load_pretrained_tag(name, weights, config)
    model.eval()
    if family == "resnet":
        fold_batchnorm(model.visual)  # in float32, before any cast to half precision
    model = model.to(device=device, dtype=dtype)
    if family == "resnet":
        # Convolutions in channels-last layout run about 1.3x faster on the CPU (oneDNN) and on tensor cores.
        model.visual.to(memory_format=torch.channels_last)
    model.requires_grad_(False)
    context_length = int(config["text_cfg"].get("context_length", 77))
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
    return ClipBundle(model, tokenizer, Path(name).stem if name.endswith(".json") else name, weights, family,
                      context_length)


def cpu_has_fp16_units() -> bool:
    """Whether this CPU has float16 matrix instructions (AMX-FP16), as torch reports (False if it cannot say)."""
    return bool(getattr(torch.cpu, "_is_amx_fp16_supported", lambda: False)())


def precision_dtype(precision: str, device: str | torch.device) -> torch.dtype:
    """The dtype of a precision name, refused (one line) where the device cannot run it at speed: fp32 and
    bf16 run anywhere, fp16 on CUDA (or a CPU with AMX-FP16).

    On the CPU, torch's bfloat16 products go through oneDNN, which uses the
    CPU's bfloat16 matrix instructions (AVX512-BF16, AMX) where present.
    Its float16 products have such instructions only with AMX-FP16; without
    them they fall back to scalar code, measured here ~7x slower than fp32.
    """
    check_precision(precision)
    device = torch.device(resolve_device(str(device)))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device=cuda was asked for but no CUDA GPU is available; use device=cpu")
    if precision == "fp16" and device.type == "cpu" and not cpu_has_fp16_units():
        raise InputError(FP16_ON_CPU)
    return PRECISIONS[precision]


def resolve_device(device: str) -> str:
    """``"auto"``: ``"cuda"`` when a CUDA GPU is available, else ``"cpu"``; any other name as given."""
    check_device(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _load_file(model: open_clip.CLIP, path: str | os.PathLike[str], name: str) -> None:
    """Load a checkpoint file into ``model``: open_clip reads and converts it, and what it hands to
    ``load_state_dict`` must match the model's tensors one to one (:func:`tensor_mismatch`), or the file is
    refused naming the offenders and the open_clip names it looks like."""

    def check(module: torch.nn.Module, state: dict[str, Any], *_: Any) -> None:
        if not all(isinstance(value, torch.Tensor) for value in state.values()):
            return  # load_state_dict says what is wrong
        expected = module.state_dict()
        mismatch = tensor_mismatch(state, expected)
        if mismatch is not None:
            # Another architecture only when the names or shapes differ (a wrong dtype is this one's, damaged).
            fits = state.keys() == expected.keys() and all(state[key].shape == expected[key].shape for key in state)
            guesses = [] if fits else guess_architectures(state)
            likely = f"; the file looks like {' or '.join(guesses)}: pass that as clip_model=" if guesses else ""
            raise WeightsError(f"cannot load CLIP weights {path} into {name}: {mismatch}{likely}")

    hook = model.register_load_state_dict_pre_hook(check)
    try:
        open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True)
    except WeightsError:
        raise
    except Exception as error:  # torch and open_clip raise many types for a bad file
        if unsafe_checkpoint(error, path):
            raise WeightsError(unsafe_message(path, error, "use an open_clip checkpoint of tensors")) from None
        raise WeightsError(f"cannot load CLIP weights {path} into {name}: {first_line(error)}") from None
    finally:
        hook.remove()


def _count_blocks(state: dict[str, torch.Tensor], prefix: str) -> int:
    indices = {key[len(prefix):].split(".")[0] for key in state if key.startswith(prefix)}
    return len(indices)


def _image_tower_shape(state: dict[str, torch.Tensor]) -> dict[str, Any] | None:
    """The image tower's size, read off a CLIP state dict's tensors (None if it is not open_clip's CLIP)."""
    try:
        projection = state["text_projection"]
        text = {"embed_dim": int(projection.shape[1]), "text_width": int(projection.shape[0])}
        if "visual.attnpool.positional_embedding" in state:
            grid = round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
            return {
                "family": "resnet",
                **text,
                "width": int(state["visual.conv1.weight"].shape[0]) * 2,
                "layers": [_count_blocks(state, f"visual.layer{i}.") for i in (1, 2, 3, 4)],
                "image_size": grid * 32,
            }
        conv = state["visual.conv1.weight"]
        grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        return {
            "family": "vit",
            **text,
            "width": int(conv.shape[0]),
            "layers": _count_blocks(state, "visual.transformer.resblocks."),
            "patch_size": int(conv.shape[-1]),
            "image_size": grid * int(conv.shape[-1]),
        }
    except (KeyError, IndexError):
        return None


def guess_architectures(state: dict[str, torch.Tensor], limit: int = 3) -> list[str]:
    """open_clip names whose image tower and embedding size match a state dict's (plain names first)."""
    shape = _image_tower_shape(state)
    if shape is None:
        return []
    found = []
    for name in open_clip.list_models():
        config = open_clip.get_model_config(name) or {}
        try:
            image_tower_family(config)
        except (InputError, KeyError):
            continue
        vision = config["vision_cfg"]
        size, layers = vision.get("image_size"), vision.get("layers")
        candidate = {
            "family": "resnet" if isinstance(layers, (list, tuple)) else "vit",
            "embed_dim": config.get("embed_dim"),
            "width": vision.get("width"),
            "layers": list(layers) if isinstance(layers, (list, tuple)) else layers,
            "image_size": size[0] if isinstance(size, (list, tuple)) else size,
            "text_width": config["text_cfg"].get("width"),
        }
        if shape["family"] == "vit":
            candidate["patch_size"] = vision.get("patch_size")
        if candidate == shape:
            found.append(name)
    found.sort(key=lambda name: (name.endswith("-quickgelu"), len(name)))
    return found[:limit]


def _hub_files(name: str, tag: str, hub_id: str) -> tuple[str, list[str], MissingFile]:
    """A pretrained tag's hub repository, the file names it may have there, and what it is and how to provide it
    by hand should it be missing."""
    # open_clip writes "org/repo/" for the default file name, "org/repo/file" otherwise.
    repo_id, filename = os.path.split(hub_id)
    candidates = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    return repo_id, candidates, MissingFile(f"CLIP weights {name}/{tag} ({repo_id})",
                                            _weights_fix(name, tag, repo_id, candidates[0]))


def missing_clip_weights(name: str, weights: str) -> MissingFile | None:
    """The hub file of a pretrained tag when it is not in the cache (None for a local file, ``random``, or a tag
    that :func:`load_clip` refuses by itself), without loading anything."""
    if weights == "random" or os.path.isfile(weights) or name.endswith(".json"):
        return None
    if weights not in open_clip.list_pretrained_tags_by_model(name):
        return None
    hub_id = open_clip.get_pretrained_cfg(name, weights).get("hf_hub", "")
    repo_id, candidates, missing = _hub_files(name, weights, hub_id)
    if not hub_id or cached_hub_file(repo_id, candidates) is not None:
        return None
    return missing


def _load_pretrained_tag(name: str, tag: str, config: dict[str, Any]) -> open_clip.CLIP:
    """The model with an open_clip pretrained tag's weights: the cached hub file if there is one, else open_clip's."""
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
    repo_id, candidates, missing = _hub_files(name, tag, hub_id)
    fix = missing.fix
    # OpenAI trained with QuickGELU; open_clip's plain configs use nn.GELU.
    quick_gelu = tag == "openai"
    if hub_id:
        cached = cached_hub_file(repo_id, candidates)
        if cached is not None:
            # Loaded from the cache's path, so open_clip does not ask the hub for a newer revision (which,
            # with the network down and HF_HUB_OFFLINE unset, costs a long series of retries).
            model = open_clip.model.CLIP(**{**config, "quick_gelu": config.get("quick_gelu") or quick_gelu})
            _load_file(model, cached, name)
            model.visual.image_mean = pretrained_cfg.get("mean") or OPENAI_DATASET_MEAN
            model.visual.image_std = pretrained_cfg.get("std") or OPENAI_DATASET_STD
            return model
        require_hub_files(repo_id, candidates, missing.what, fix)
    try:
        return open_clip.create_model(name, pretrained=tag, force_quick_gelu=quick_gelu)
    except Exception as error:
        raise WeightsError(f"cannot load CLIP weights {name}/{tag}: {first_line(error)}; {fix}") from None
