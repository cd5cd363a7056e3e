"""CLIP architectures by name, read without importing torch or open_clip.

open_clip describes each architecture by a JSON file in its package
(``open_clip/model_configs/NAME.json``); reading those directly lets the
command line check ``--clip-model`` and what a method needs of it (HybridGL
and TCL need a ViT) in milliseconds, before any heavy library loads.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import sys
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..data.bounded import read_json
from ..errors import InputError

FAMILIES = ("resnet", "vit")
"""The CLIP image towers the methods support: ModifiedResNet and the class-token VisionTransformer."""

# The architectures whose OpenAI weights the paper used or that are natural
# drop-ins; any other open_clip CLIP with a supported image tower works too.
OPENAI_ARCHITECTURES = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B-32", "ViT-B-16", "ViT-L-14")
QUICKGELU_SUFFIX = "-quickgelu"
_REMOTE_PREFIXES = ("hf-hub:", "local-dir:")


@lru_cache(maxsize=1)
def _builtin_configs() -> dict[str, Path]:
    """open_clip's config files by architecture name (empty when open_clip is not installed)."""
    spec = importlib.util.find_spec("open_clip")
    folders = [Path(location) / "model_configs" for location in (spec.submodule_search_locations or [])] if spec \
        else []
    return {path.stem: path for folder in folders if folder.is_dir() for path in folder.glob("*.json")}


def builtin_architectures() -> list[str]:
    return sorted(_builtin_configs())


def architecture_config(name: str) -> dict[str, Any]:
    """open_clip's config of a built-in name, or the contents of a model-config .json file; InputError if neither."""
    if name.startswith(_REMOTE_PREFIXES):
        import open_clip  # the hub's configs are fetched by open_clip itself

        config = open_clip.get_model_config(name)
        if config is None:
            raise InputError(f"no open_clip model config at '{name}'")
        return _checked(name, copy.deepcopy(config))
    if name.endswith(".json"):
        path = Path(name)
        if not path.exists():
            raise InputError(f"CLIP model config file not found: {path}")
        return _sizes_checked(path, _checked(name, _read_json(path)))
    builtin = _builtin_configs().get(name)
    if builtin is None and "open_clip" in sys.modules:
        # A config registered at run time (open_clip.add_model_config) is known to a loaded open_clip only.
        registered = sys.modules["open_clip"].get_model_config(name)
        if registered is not None:
            return _checked(name, copy.deepcopy(registered))
    if builtin is None:
        known = ", ".join(OPENAI_ARCHITECTURES)
        raise InputError(
            f"unknown CLIP model '{name}'; use an open_clip name (e.g. {known}) or a model-config .json file"
        )
    return _checked(name, _read_json(builtin))


def _read_json(path: Path) -> Any:
    config = read_json(path, what="CLIP model config", max_bytes=1 << 20)
    return config.get("model_cfg", config) if isinstance(config, dict) else config


# The largest sizes a config file may ask for: beyond every published CLIP (ViT-bigG: width 1664, 48 blocks),
# so a typo or a hostile file is refused instead of allocating terabytes.
_SIZE_LIMITS = {"embed_dim": 4096, "width": 4096, "layers": 96, "heads": 64, "image_size": 1024, "patch_size": 64,
                "context_length": 1024, "vocab_size": 1 << 20, "head_width": 1024, "mlp_ratio": 16}


def _sizes_checked(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """A config file's sizes, positive and within :data:`_SIZE_LIMITS` (a ResNet's layers are a list)."""
    for prefix, tower in (("", config), ("vision_cfg.", config["vision_cfg"]), ("text_cfg.", config["text_cfg"])):
        for key, limit in _SIZE_LIMITS.items():
            value = tower.get(key)
            for number in value if isinstance(value, list) else [value]:
                if number is not None and (isinstance(number, bool) or not isinstance(number, (int, float))
                                           or not 0 < number <= limit):
                    raise InputError(f"CLIP model config {path}: {prefix}{key} is {number!r}; it must be a number "
                                     f"from 1 to {limit}")
    return config


def _checked(name: str, config: Any) -> dict[str, Any]:
    if not isinstance(config, dict) or not isinstance(config.get("vision_cfg"), dict) \
            or not isinstance(config.get("text_cfg"), dict):
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


def same_architecture(name: str, other: str) -> bool:
    """Whether two architectures (names or config files) build the same towers, QuickGELU aside."""
    def towers(config: dict[str, Any]) -> tuple:
        return config.get("embed_dim"), config["vision_cfg"], config["text_cfg"]

    return towers(architecture_config(name)) == towers(architecture_config(other))


_WEIGHTS_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def check_clip_weights(weights: str, name: str) -> None:
    """Refuse a ``--clip-weights`` path that is a folder or missing; warn where OpenAI-style weights meet GELU.

    A pretrained tag (``openai``, ``laion2b_s34b_b79k``) is left to open_clip. OpenAI trained CLIP with
    QuickGELU, and ``openai`` switches it on by itself, but for a local file the architecture name decides:
    a plain OpenAI architecture name (``ViT-B-16``) builds GELU, and the scores move by about 1 %.
    """
    path = Path(weights)
    if path.is_dir():
        inside = sorted(child.name for child in path.iterdir() if child.suffix in _WEIGHTS_SUFFIXES)
        example = f"; it holds {', '.join(inside[:3])}" if inside else ""
        raise InputError(f"clip_weights={weights} is a folder; give the checkpoint file itself{example}")
    if not path.is_file():
        if os.sep in weights or weights.endswith(_WEIGHTS_SUFFIXES):
            raise InputError(f"CLIP weights file not found: {weights}")
        return
    if name in OPENAI_ARCHITECTURES:
        warnings.warn(
            f"clip_model={name} builds GELU; OpenAI's CLIP weights need QuickGELU: if {path.name} is OpenAI's, "
            f"pass clip_model={name}{QUICKGELU_SUFFIX} (the scores move without it)",
            stacklevel=1,  # the place of the check: the warning names no caller
        )
