"""The random VLMs of bench/vlm.py: a tokenizer with real merges, a CPU-sized model, the real-size configurations.

No weights are downloaded: every model is a real Qwen2.5-VL or Qwen3-VL of
transformers (the same classes, multimodal rope, vision tower) with random
weights, built directly on the device in the precision asked.

- The tokenizer is Qwen's byte-level BPE (its special tokens and the chat
  template of tests/tiny_vlm.py) with merges trained here, in about two
  seconds, on Python's own documentation (``pydoc_data``): English prose
  the bench's texts are not part of. It writes the bench's texts in about 3.2
  characters a token, where Qwen's 151k-token vocabulary takes about 4, so
  text counts here run some 25% high; the visual tokens are exact (the
  processors are the families' own resize rules).
- ``bench`` size: each family at a width two CPU cores run in minutes (text
  256 wide, 4 layers; vision tower 128 wide, 2 blocks). Its photo tokens are
  those of the real models; its seconds are a toy's.
- ``real`` sizes: the published configurations of Qwen2.5-VL 7B Instruct and
  Qwen3-VL 4B Instruct (layers, widths, heads, vocabulary, vision tower),
  written here from transformers' config classes; about 8.3 and 4.4 billion
  parameters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from tiny_vlm import SPECIAL_TOKENS, tiny_vlm_processor
from tokenizers import AddedToken
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)

__all__ = ["MODELS", "BenchModel", "bench_tokenizer", "build_model", "count_parameters", "processor"]

# The processors' own bound (the real Qwen3-VL processor's 16 MP); the backend lowers it to --vlm-max-pixels.
PROCESSOR_MAX_PIXELS = 16 * 1024 * 1024
BPE_VOCABULARY = 8192


@dataclass(frozen=True)
class BenchModel:
    """One model of the bench: its family, its text and vision sizes, and the published parameter count."""

    name: str
    family: str
    text: dict[str, Any]
    vision: dict[str, Any]
    published: float | None = None
    """Parameters of the released model (billions), for the real sizes."""
    tied: bool = False


def _rope(family: str, theta: float, sections: list[int]) -> dict[str, Any]:
    rope = {"rope_type": "default", "rope_theta": theta, "mrope_section": sections}
    return {**rope, "mrope_interleaved": True} if family == "qwen3-vl" else rope


def _bench(family: str) -> BenchModel:
    """Each family at a width two CPU cores run: the real models' photo tokens, a toy's compute."""
    sections = [8, 12, 12] if family == "qwen2.5-vl" else [12, 10, 10]  # 32 rotary frequencies of a 64-wide head
    text = {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 64, "max_position_embeddings": 32768,
            "rope_parameters": _rope(family, 1e6, sections)}
    vision = {"hidden_size": 128, "intermediate_size": 512, "num_heads": 4, "depth": 2, "out_hidden_size": 256,
              "spatial_merge_size": 2, "temporal_patch_size": 2}
    if family == "qwen2.5-vl":
        vision |= {"patch_size": 14, "window_size": 112, "fullatt_block_indexes": [1]}
    else:
        vision |= {"patch_size": 16, "num_position_embeddings": 2304, "deepstack_visual_indexes": [0, 1]}
    return BenchModel(f"{family} bench size", family, text, vision)


# The released configurations (config.json of Qwen/Qwen2.5-VL-7B-Instruct and Qwen/Qwen3-VL-4B-Instruct).
QWEN25_VL_7B = BenchModel(
    "Qwen2.5-VL 7B (random)", "qwen2.5-vl",
    text={"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
          "num_key_value_heads": 4, "max_position_embeddings": 128000, "rms_norm_eps": 1e-6, "vocab_size": 152064,
          "rope_parameters": _rope("qwen2.5-vl", 1e6, [16, 24, 24])},
    vision={"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 3584,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31], "hidden_act": "silu", "tokens_per_second": 2},
    published=8.3,
)
QWEN3_VL_4B = BenchModel(
    "Qwen3-VL 4B (random)", "qwen3-vl",
    text={"hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32,
          "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 262144, "rms_norm_eps": 1e-6,
          "vocab_size": 151936, "rope_parameters": _rope("qwen3-vl", 5e6, [24, 20, 20])},
    vision={"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16, "out_hidden_size": 2560,
            "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [5, 11, 17], "hidden_act": "gelu_pytorch_tanh"},
    published=4.4, tied=True,
)
MODELS = {"bench": [_bench("qwen3-vl"), _bench("qwen2.5-vl")], "real": [QWEN25_VL_7B, QWEN3_VL_4B]}
"""The models of each ``--models`` choice."""


def bench_tokenizer() -> Qwen2Tokenizer:
    """Qwen's tokenizer with byte-level BPE merges trained on Python's documentation, Qwen's special tokens after
    the trained vocabulary."""
    import pydoc_data.topics

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCABULARY, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    trained.train_from_iterator(list(pydoc_data.topics.topics.values()), trainer)
    model = json.loads(trained.to_str())["model"]
    merges = [tuple(merge) if isinstance(merge, list) else tuple(merge.split(" ")) for merge in model["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=model["vocab"], merges=merges, unk_token=None, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>")
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS],
                         special_tokens=True)
    return tokenizer


def processor(family: str, tokenizer: Qwen2Tokenizer) -> Any:
    """The family's processor (its resize rule, patches merged 2x2) with the bench's tokenizer."""
    return tiny_vlm_processor(family, PROCESSOR_MAX_PIXELS, tokenizer)


def config(model: BenchModel, tokenizer: Qwen2Tokenizer) -> Qwen2_5_VLConfig | Qwen3VLConfig:
    """The model's transformers config, its special tokens the tokenizer's (the real sizes keep their published
    vocabulary: the ids the tokenizer uses are a few of its rows)."""
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    stops = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    vocabulary = -(-len(tokenizer) // 64) * 64  # rounded up, as real vocabularies are
    text = {"vocab_size": vocabulary, "pad_token_id": stops[1], "bos_token_id": None, "eos_token_id": stops,
            "tie_word_embeddings": model.tied, **model.text}
    config_class = Qwen2_5_VLConfig if model.family == "qwen2.5-vl" else Qwen3VLConfig
    return config_class(text_config=text, vision_config=model.vision, tie_word_embeddings=model.tied, **ids)


def _model_class(family: str) -> type:
    return Qwen2_5_VLForConditionalGeneration if family == "qwen2.5-vl" else Qwen3VLForConditionalGeneration


def count_parameters(model: BenchModel, tokenizer: Qwen2Tokenizer) -> int:
    """Parameters of the model, built on the meta device (no memory, no time)."""
    with torch.device("meta"):
        built = _model_class(model.family)(config(model, tokenizer))
    return sum(parameter.numel() for parameter in built.parameters())


def build_model(model: BenchModel, tokenizer: Qwen2Tokenizer, device: str, dtype: torch.dtype,
                seed: int = 0) -> torch.nn.Module:
    """The model with random weights (seeded), built directly on ``device`` in ``dtype``, in eval mode."""
    torch.manual_seed(seed)
    built_config = config(model, tokenizer)
    with torch.device(device):
        built = _model_class(model.family)._from_config(built_config, dtype=dtype)
    built.eval().requires_grad_(False)
    generation = built.generation_config
    generation.eos_token_id = built_config.text_config.eos_token_id
    generation.pad_token_id = built_config.text_config.pad_token_id
    generation.do_sample = False
    return built
