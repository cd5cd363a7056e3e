"""Where an in-process VLM comes from, checked before anything is built (no torch, no transformers here).

``--vlm-model`` is a hub id (``Qwen/Qwen3-VL-8B-Instruct``: the Hugging Face
cache, else a download there) or a local folder in the transformers layout:
``config.json`` of a family the transformers backend runs, the processor's
and tokenizer's files, a chat template, and safetensors weights (one file, or
an index and every shard it names). Anything else is refused in one line
naming everything missing. The files are data: each is a bounded regular
file, and the sizes a config or processor file declares (layers, widths,
vocabulary, pixels) are bounded before a model is built from them.

:func:`check_vlm_model` is what the command line calls before any model
loads: offline with the model neither cached nor a folder, it says at once
how to get it.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from ...data.bounded import check_shape, read_regular
from ...errors import WeightsError, first_line
from ..hub import MissingFile, cached_snapshot, require_files
from ..model_folder import Bound, check_bounds, check_file_size, read_config

__all__ = [
    "CONFIG_BOUNDS",
    "MODEL_TYPES",
    "PROCESSOR_BOUNDS",
    "check_vlm_folder",
    "check_vlm_model",
    "cached_vlm_snapshot",
    "is_hub_id",
    "missing_vlm_model",
    "model_files_digest",
    "vlm_snapshot",
    "weights_files",
]

# config.json model_type -> family, for the architectures the transformers backend runs (their multimodal rope
# is what its prefix cache computes). Other VLMs run behind an OpenAI-compatible endpoint.
MODEL_TYPES = {"qwen2_5_vl": "qwen2.5-vl", "qwen3_vl": "qwen3-vl"}
# What a snapshot needs (the hub repositories also hold README and licence files: not fetched).
HUB_PATTERNS = ["*.json", "*.jinja", "*.txt", "*.safetensors"]
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
# Every file besides the weights that decides what the model is given or answers (its identity hashes them).
MODEL_FILES = ("config.json", "generation_config.json", *PROCESSOR_FILES, "video_preprocessor_config.json",
               "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
               "added_tokens.json", *TEMPLATE_FILES)
# Bytes each small file may have (a real Qwen tokenizer.json is 11 MB, its configs a few kB).
SMALL_FILE_BYTES = 1 << 20
TOKENIZER_BYTES = 64 << 20
INDEX_BYTES = 16 << 20
# The largest value each size a config may declare (keys at any depth), far above the largest released
# models' (Qwen2.5-VL 72B: hidden 8192, 80 layers, vocabulary 152064) and far below what would exhaust memory
# while the model is built.
CONFIG_BOUNDS = {key: Bound(1, high) for key, high in {
    "hidden_size": 1 << 15, "intermediate_size": 1 << 17, "num_hidden_layers": 256, "depth": 256,
    "num_attention_heads": 512, "num_heads": 512, "num_key_value_heads": 512, "head_dim": 1024,
    "vocab_size": 1 << 20, "out_hidden_size": 1 << 15, "patch_size": 1024, "spatial_merge_size": 64,
    "temporal_patch_size": 64, "max_position_embeddings": 1 << 24, "num_position_embeddings": 1 << 20,
}.items()}
# The image processor's: patches, and the pixels a photo may be resized to (64 MP at most).
PROCESSOR_BOUNDS = {key: Bound(1, high) for key, high in {
    "patch_size": 1024, "merge_size": 64, "temporal_patch_size": 64, "shortest_edge": 1 << 26,
    "longest_edge": 1 << 26, "min_pixels": 1 << 26, "max_pixels": 1 << 26,
}.items()}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _fix(model: str) -> str:
    return (f"download {model} where the hub is reachable (`hf download {model}`), or pass vlm_model=DIR "
            "(a local copy in the transformers layout)")


def is_hub_id(model: str) -> bool:
    """Whether ``model`` names a hub repository (``org/name``) rather than a local folder."""
    return bool(_HUB_ID.fullmatch(model)) and not Path(model).expanduser().exists()


def weights_files(folder: Path) -> list[Path]:
    """The safetensors files of a folder: ``model.safetensors``, or every shard its index names (checked)."""
    fix = _fix(str(folder))
    if (folder / WEIGHTS_FILE).is_file():
        return [folder / WEIGHTS_FILE]
    index = read_config(folder / WEIGHTS_INDEX, "weights index", fix, INDEX_BYTES)
    check_shape(index, {"weight_map": {"*": str}}, f"{folder / WEIGHTS_INDEX}", f"; {fix}")
    names = sorted(set(index["weight_map"].values()))
    unsafe = [name for name in names if Path(name).name != name or not name.endswith(".safetensors")]
    if unsafe or not names:
        raise WeightsError(f"{folder / WEIGHTS_INDEX} names {unsafe[0] if unsafe else 'no shard'}, not a "
                           f"safetensors file of the folder; {fix}")
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise WeightsError(f"{folder} lacks {len(missing)} of the {len(names)} weights shards its index names "
                           f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); {fix}")
    return [folder / name for name in names]


def model_files_digest(folder: Path) -> str:
    """SHA-256 of the folder's :data:`MODEL_FILES` (names and bytes, each a bounded regular file)."""
    digest = hashlib.sha256()
    for name in MODEL_FILES:
        if (folder / name).exists():
            data = read_regular(folder / name, TOKENIZER_BYTES, what="VLM model file")
            digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()


def _has_template(folder: Path) -> bool:
    """Whether the folder holds a chat template: its own file, or a key of the tokenizer's or processor's config
    (looked for, not parsed: those files are transformers' to read, and its tokenizer configs hold integers
    beyond 64 bits)."""
    if any((folder / name).is_file() for name in TEMPLATE_FILES):
        return True
    return any((folder / name).is_file() and b'"chat_template"' in read_regular(folder / name, TOKENIZER_BYTES,
                                                                                 what="VLM tokenizer config")
               for name in ("tokenizer_config.json", *PROCESSOR_FILES))


def check_vlm_folder(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked ``config.json`` of a VLM folder; anything missing or out of bounds is one WeightsError line."""
    folder = Path(folder).expanduser()
    fix = "pass vlm_model=DIR holding a Qwen2.5-VL or Qwen3-VL in the transformers layout, or a hub id"
    if not folder.is_dir():
        raise WeightsError(f"VLM folder {folder} does not exist or is not a folder; {fix}")
    missing = []
    config: dict[str, Any] = {}
    if (folder / "config.json").is_file():
        config = read_config(folder / "config.json", "VLM config", fix, SMALL_FILE_BYTES)
        model_type = config.get("model_type")
        if model_type not in MODEL_TYPES:
            raise WeightsError(
                f"{folder} holds a {model_type or 'model of no model_type'} model (config.json), not a VLM the "
                f"transformers backend runs ({', '.join(MODEL_TYPES)}); {fix}, or serve it behind an "
                "OpenAI-compatible endpoint (vlm_backend=openai)")
        check_bounds(config, CONFIG_BOUNDS, folder / "config.json", fix)
    else:
        missing.append("config.json")
    processor = next((folder / name for name in PROCESSOR_FILES if (folder / name).is_file()), None)
    if processor is None:
        missing.append(" or ".join(PROCESSOR_FILES))
    else:
        check_bounds(read_config(processor, "VLM processor config", fix, SMALL_FILE_BYTES), PROCESSOR_BOUNDS, processor,
                     fix)
    if (folder / "tokenizer.json").is_file():
        check_file_size(folder / "tokenizer.json", "VLM tokenizer", fix, TOKENIZER_BYTES)
    elif not all((folder / name).is_file() for name in ("vocab.json", "merges.txt")):
        missing.append("tokenizer.json (or vocab.json and merges.txt)")
    if not _has_template(folder):
        missing.append(f"a chat template ({' or '.join(TEMPLATE_FILES)})")
    if not (folder / WEIGHTS_FILE).is_file() and not (folder / WEIGHTS_INDEX).is_file():
        missing.append(f"{WEIGHTS_FILE} (or {WEIGHTS_INDEX} and its shards)")
    if missing:
        raise WeightsError(f"{folder} is not a VLM folder in the transformers layout: missing "
                           f"{', '.join(missing)}; {fix}")
    weights_files(folder)
    return config


def cached_vlm_snapshot(model: str) -> Path | None:
    """The hub cache's complete snapshot of ``model``, or None."""
    return cached_snapshot(model, HUB_PATTERNS, check_vlm_folder)


def vlm_snapshot(model: str) -> Path:
    """The hub id ``model``'s snapshot: from the Hugging Face cache, else downloaded there (checked)."""
    from huggingface_hub import snapshot_download

    cached = cached_vlm_snapshot(model)
    if cached is not None:
        return cached
    check_vlm_model(model)
    try:
        folder = Path(snapshot_download(model, allow_patterns=HUB_PATTERNS))
    except Exception as error:  # a gated or unknown repository, or any hub failure: the same fix
        raise WeightsError(f"the VLM {model} could not be downloaded ({first_line(error)}); {_fix(model)}") \
            from None
    check_vlm_folder(folder)
    return folder


def missing_vlm_model(model: str) -> MissingFile | None:
    """The VLM as a missing file when it is a hub id not in the cache (for one message naming every missing
    file, :func:`~globallocal.models.hub.require_files`); None for a folder or a cached snapshot."""
    if not is_hub_id(model) or cached_vlm_snapshot(model) is not None:
        return None
    return MissingFile(f"the VLM {model}", _fix(model))


def check_vlm_model(model: str | os.PathLike[str]) -> Path | None:
    """Before any model loads: the folder ``model`` names (checked), or None for a hub id that is cached or
    can be downloaded now; offline and missing, one WeightsError line naming the model and --vlm-model DIR."""
    model = str(model)
    if not is_hub_id(model):
        check_vlm_folder(model)
        return Path(model).expanduser()
    missing = missing_vlm_model(model)
    require_files([missing] if missing is not None else [])
    return None
