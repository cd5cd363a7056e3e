"""Tiny random Qwen2.5-VL and Qwen3-VL in the transformers layout, built offline (tests and benchmarks).

Each is a real model of its family (the same classes, the same multimodal
rope, Qwen3-VL's deepstack) at toy sizes: two decoder layers of width 64, a
two-block vision tower of width 32. The tokenizer is Qwen's byte-level BPE
with no merges (every byte is a token) plus Qwen's special tokens, so any
text tokenizes without a downloaded vocabulary; the chat template is written
here and renders Qwen's format (``<|im_start|>role\\n...<|im_end|>\\n``, an
image as ``<|vision_start|><|image_pad|><|vision_end|>``). ``save_tiny_vlm``
writes model, processor and tokenizer with ``save_pretrained`` so that tests
load them through the real loading path.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import AddedToken
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
)
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

FAMILIES = ("qwen2.5-vl", "qwen3-vl")
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>")
BYTES = sorted(ByteLevel.alphabet())
# Token ids: the 256 bytes first, then the special tokens; a few spare rows, as real vocabularies have.
TOKEN_IDS = {token: len(BYTES) + index for index, token in enumerate(SPECIAL_TOKENS)}
VOCAB_SIZE = 272
TEXT_HIDDEN = 64
VISION_HIDDEN = 32
# The photo a tiny model sees is at most this many pixels (a few dozen visual tokens keep the tests fast).
MAX_PIXELS = 128 * 128
MIN_PIXELS = 32 * 32
# Qwen's chat format, in this project's own words of Jinja.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message.role + '\\n' -}}"
    "{%- if message.content is string -%}{{- message.content -}}"
    "{%- else -%}{%- for part in message.content -%}"
    "{%- if part.type == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part.type == 'text' -%}{{- part.text -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def tiny_qwen_tokenizer() -> Qwen2Tokenizer:
    """Qwen's tokenizer over a byte vocabulary (no merges) and Qwen's special tokens: offline, deterministic."""
    vocab = {char: index for index, char in enumerate(BYTES)} | TOKEN_IDS
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>")
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS],
                         special_tokens=True)
    assert all(tokenizer.convert_tokens_to_ids(token) == index for token, index in TOKEN_IDS.items())
    return tokenizer


def _text_config(family: str) -> dict:
    text = {
        "vocab_size": VOCAB_SIZE, "hidden_size": TEXT_HIDDEN, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
        "pad_token_id": TOKEN_IDS["<|endoftext|>"], "bos_token_id": None,
        "eos_token_id": [TOKEN_IDS["<|im_end|>"], TOKEN_IDS["<|endoftext|>"]],
    }
    if family == "qwen2.5-vl":  # head size 16: 8 rotary frequencies in (temporal, height, width) sections
        return {**text, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                            "mrope_section": [2, 3, 3]}}
    return {**text, "head_dim": 16, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                        "mrope_section": [2, 3, 3], "mrope_interleaved": True}}


def tiny_vlm_config(family: str) -> Qwen2_5_VLConfig | Qwen3VLConfig:
    """The config of a tiny VLM of ``family`` ("qwen2.5-vl" or "qwen3-vl")."""
    ids = {"image_token_id": TOKEN_IDS["<|image_pad|>"], "video_token_id": TOKEN_IDS["<|video_pad|>"],
           "vision_start_token_id": TOKEN_IDS["<|vision_start|>"],
           "vision_end_token_id": TOKEN_IDS["<|vision_end|>"]}
    vision = {"hidden_size": VISION_HIDDEN, "intermediate_size": 64, "num_heads": 2, "depth": 2,
              "out_hidden_size": TEXT_HIDDEN, "spatial_merge_size": 2, "temporal_patch_size": 2}
    if family == "qwen2.5-vl":
        vision = {**vision, "patch_size": 14, "window_size": 56, "fullatt_block_indexes": [1]}
        return Qwen2_5_VLConfig(text_config=_text_config(family), vision_config=vision, **ids)
    if family == "qwen3-vl":
        vision = {**vision, "patch_size": 16, "num_position_embeddings": 64, "deepstack_visual_indexes": [0, 1]}
        return Qwen3VLConfig(text_config=_text_config(family), vision_config=vision, **ids)
    raise ValueError(f"unknown family {family!r}; use one of {FAMILIES}")


def tiny_vlm_processor(family: str, max_pixels: int = MAX_PIXELS,
                       tokenizer: Qwen2Tokenizer | None = None) -> Qwen2_5_VLProcessor | Qwen3VLProcessor:
    """The family's processor: its image resize rule (patches of 14 or 16, merged 2x2), photos of at most
    ``max_pixels`` (toy sizes by default; a benchmark gives a realistic bound), ``tokenizer`` (default
    :func:`tiny_qwen_tokenizer`; a benchmark gives one with merges)."""
    size = {"shortest_edge": MIN_PIXELS, "longest_edge": max_pixels}
    tokenizer = tokenizer or tiny_qwen_tokenizer()
    if family == "qwen2.5-vl":
        images = Qwen2VLImageProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2)
        videos = Qwen2VLVideoProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2)
        return Qwen2_5_VLProcessor(images, tokenizer, videos, chat_template=CHAT_TEMPLATE)
    half = [0.5, 0.5, 0.5]
    images = Qwen2VLImageProcessor(size=size, patch_size=16, merge_size=2, temporal_patch_size=2,
                                   image_mean=half, image_std=half)
    videos = Qwen3VLVideoProcessor(size=size, patch_size=16, merge_size=2, temporal_patch_size=2)
    return Qwen3VLProcessor(images, tokenizer, videos, chat_template=CHAT_TEMPLATE)


def build_tiny_vlm(family: str, seed: int = 0) -> torch.nn.Module:
    """A random tiny VLM of ``family`` in eval mode (seeded)."""
    torch.manual_seed(seed)
    config = tiny_vlm_config(family)
    model_class = Qwen2_5_VLForConditionalGeneration if family == "qwen2.5-vl" else Qwen3VLForConditionalGeneration
    model = model_class(config).eval()
    model.generation_config.eos_token_id = [TOKEN_IDS["<|im_end|>"], TOKEN_IDS["<|endoftext|>"]]
    model.generation_config.pad_token_id = TOKEN_IDS["<|endoftext|>"]
    model.generation_config.do_sample = False
    return model


def save_tiny_vlm(folder: str | Path, family: str, seed: int = 0, max_pixels: int = MAX_PIXELS) -> Path:
    """Write a tiny random VLM as ``save_pretrained`` does (config.json, model.safetensors, generation config,
    processor, tokenizer and chat template files)."""
    folder = Path(folder)
    build_tiny_vlm(family, seed).save_pretrained(folder)
    tiny_vlm_processor(family, max_pixels).save_pretrained(folder)
    return folder
