"""bfloat16 on the CPU: every method runs, its features stay close to float32's, its outputs stay float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from globallocal import Segmenter
from globallocal.methods import build_method, get_method
from globallocal.methods.tcl import TCLHead
from globallocal.methods.tcl.method import TCL
from globallocal.models.clip import load_clip
from globallocal.proposals import Proposals


def _segmenter(method: str, config, checkpoint, precision: str, nlp) -> Segmenter:
    clip = load_clip(str(config), str(checkpoint), precision=precision)
    if method == "tcl":
        torch.manual_seed(2)
        head = TCLHead(**TCLHead.dims_for(clip))
        for parameter in head.parameters():
            torch.nn.init.normal_(parameter, std=0.05)
        return Segmenter(clip, nlp, method=TCL(clip, nlp, get_method("tcl").settings(), head, {"file": "random"}))
    return Segmenter(clip, nlp, method=build_method(method, clip, nlp))


@pytest.mark.parametrize(("family", "method"), [("vit", "global-local"), ("resnet", "global-local"),
                                                ("vit12", "hybridgl"), ("vit12", "tcl")])
def test_bf16_on_the_cpu_stays_close_to_fp32_and_writes_float32(family, method, tiny_config_paths, tiny_checkpoints,
                                                                 nlp):
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    masks = torch.zeros((4, 60, 80), dtype=torch.bool)
    for i, (top, left) in enumerate([(0, 0), (10, 30), (30, 10), (25, 50)]):
        masks[i, top : top + 25, left : left + 28] = True
    phrases = ["the man on the left", "a red car"]
    runs = {}
    for precision in ("fp32", "bf16"):
        segmenter = _segmenter(method, tiny_config_paths[family], tiny_checkpoints[family], precision, nlp)
        assert segmenter.clip.dtype == {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        segmenter.set_image(photo, Proposals.from_masks(masks) if segmenter.method.uses_proposals else None)
        runs[precision] = (segmenter.image_state.tensors, segmenter.predict_many(phrases))
    (reference, expected), (tensors, results) = runs["fp32"], runs["bf16"]
    assert tensors.keys() == reference.keys()
    for name, value in tensors.items():
        assert value.dtype == torch.float32, name
        if value.dim() > 1 and value.is_floating_point():
            cosine = F.cosine_similarity(value.flatten(1), reference[name].flatten(1), dim=-1)
            assert float(cosine.min()) > 0.999, name  # bfloat16 keeps 8 bits of mantissa
    assert any(not torch.equal(value, reference[name]) for name, value in tensors.items())  # it ran in bfloat16
    for result, plain in zip(results, expected):
        assert result.scores.dtype == result.dense_scores().dtype == torch.float32
        record = result.to_json()
        # full float32 values; null where a method did not score a proposal (HybridGL's non-candidates)
        assert record["scores"] == [None if value != value else float(value) for value in result.scores.tolist()]
        if hasattr(result, "soft_mask"):
            assert result.soft_mask.dtype == torch.float32
            assert float((result.soft_mask - plain.soft_mask).abs().max()) < 0.05
        else:
            # Scores are CLIP cosines (HybridGL's times CLIP's temperature tau): bfloat16 moves them by < 0.005.
            scale = float(getattr(segmenter.method, "tau", 1.0))
            assert float((result.dense_scores() - plain.dense_scores()).abs().max()) < 0.005 * scale
