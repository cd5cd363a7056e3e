"""Tiny open_clip architectures: real code paths, random weights, seconds to run."""

TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
TINY_CONFIGS = {
    "vit": {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 64, "layers": 4, "width": 64, "head_width": 32, "patch_size": 16},
        "text_cfg": TEXT_CFG,
    },
    # 12 blocks, so HybridGL's masking block 9 and GEM's depth 7 apply unchanged.
    "vit12": {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 64, "layers": 12, "width": 64, "head_width": 32, "patch_size": 16},
        "text_cfg": TEXT_CFG,
    },
    "resnet": {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8},
        "text_cfg": TEXT_CFG,
    },
}
