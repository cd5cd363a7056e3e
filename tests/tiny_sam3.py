"""A tiny random SAM 3 in the transformers layout, built offline (tests and benchmarks).

The sizes follow transformers' own SAM 3 tests (hidden size 32, one or two
layers, 224-pixel input, 8 queries). The tokenizer is a CLIP byte-level BPE with no
merges, written by :func:`tiny_clip_tokenizer`: every byte is a token, so
any text tokenizes without a downloaded vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTokenizer, Sam3Config, Sam3Model, Sam3Processor
from transformers.models.sam3.configuration_sam3 import (
    Sam3DETRDecoderConfig,
    Sam3DETREncoderConfig,
    Sam3GeometryEncoderConfig,
    Sam3MaskDecoderConfig,
    Sam3VisionConfig,
    Sam3ViTConfig,
)
from transformers.models.sam3.image_processing_sam3 import Sam3ImageProcessor

HIDDEN = 32
IMAGE_SIZE = 224  # 16 patches of 14 pixels a side
NUM_QUERIES = 8
VOCAB_SIZE = 600  # two special tokens + 256 bytes, each also as an end of word
# Ten times the library's 0.02: the instance scores then spread over about 0.05-0.4 instead of 0.25 +- 0.002,
# so a test can put a threshold between two prompts' best instances.
INITIALIZER_RANGE = 0.2


def tiny_sam3_config(num_queries: int = NUM_QUERIES, initializer_range: float = INITIALIZER_RANGE) -> Sam3Config:
    """A Sam3Config of a few layers at hidden size 32."""
    common = {"num_attention_heads": 4, "intermediate_size": 64, "initializer_range": initializer_range}
    backbone = Sam3ViTConfig(
        hidden_size=HIDDEN, num_hidden_layers=2, image_size=IMAGE_SIZE, patch_size=14, window_size=8,
        global_attn_indexes=[0, 1], **common,
    )
    text = {
        "vocab_size": VOCAB_SIZE, "hidden_size": HIDDEN, "projection_dim": HIDDEN, "num_hidden_layers": 1,
        "max_position_embeddings": 32, "hidden_act": "gelu", "bos_token_id": 0, "eos_token_id": 1,
        "pad_token_id": 1, **common,
    }
    return Sam3Config(
        vision_config=Sam3VisionConfig(backbone_config=backbone, fpn_hidden_size=HIDDEN, scale_factors=[2.0, 1.0],
                                       initializer_range=initializer_range),
        text_config=text,
        geometry_encoder_config=Sam3GeometryEncoderConfig(hidden_size=HIDDEN, num_layers=1, **common),
        detr_encoder_config=Sam3DETREncoderConfig(hidden_size=HIDDEN, num_layers=1, **common),
        detr_decoder_config=Sam3DETRDecoderConfig(hidden_size=HIDDEN, num_layers=1, num_queries=num_queries,
                                                  **common),
        mask_decoder_config=Sam3MaskDecoderConfig(hidden_size=HIDDEN, num_upsampling_stages=2,
                                                  initializer_range=initializer_range),
        initializer_range=initializer_range,
    )


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """CLIP's tokenizer over a byte vocabulary (no merges): offline, deterministic."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for char in sorted(ByteLevel.alphabet()):
            vocab[char + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def tiny_sam3_processor() -> Sam3Processor:
    return Sam3Processor(
        image_processor=Sam3ImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        tokenizer=tiny_clip_tokenizer(),
    )


def build_tiny_sam3(seed: int = 0, **config: float | int) -> Sam3Model:
    """A random tiny Sam3Model in eval mode (seeded)."""
    torch.manual_seed(seed)
    return Sam3Model(tiny_sam3_config(**config)).eval()


def save_tiny_sam3(folder: str | Path, seed: int = 0, **config: float | int) -> Path:
    """Write a tiny random SAM 3 as ``save_pretrained`` does (config.json, model.safetensors, processor files)."""
    folder = Path(folder)
    build_tiny_sam3(seed, **config).save_pretrained(folder)
    tiny_sam3_processor().save_pretrained(folder)
    return folder
