"""The soft-mask outputs: a float32 .npy at full precision and a heatmap with a legend."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from globallocal.outputs.heatmap import colour_map, heatmap, save_soft_mask


def test_soft_mask_npy_keeps_float32_exactly(tmp_path):
    soft = torch.rand(7, 9, dtype=torch.float32)
    save_soft_mask(soft, tmp_path / "s.npy")
    loaded = np.load(tmp_path / "s.npy")
    assert loaded.dtype == np.float32 and loaded.shape == (7, 9)
    assert np.array_equal(loaded, soft.numpy())
    assert [p.name for p in tmp_path.iterdir()] == ["s.npy"]  # no temporary file left


def test_heatmap_is_the_photo_plus_a_legend():
    photo = Image.new("RGB", (400, 40), (128, 128, 128))
    soft = np.zeros((40, 400), dtype=np.float32)
    soft[:, 200:] = 1.0
    picture = heatmap(photo, soft, alpha=1.0)
    assert picture.shape[1] == 400 and picture.shape[0] > 40 and picture.dtype == np.uint8
    assert np.array_equal(picture[0, 0], np.round(colour_map(np.float32(0.0))).astype(np.uint8))
    assert np.array_equal(picture[0, 399], np.round(colour_map(np.float32(1.0))).astype(np.uint8))
    assert not np.array_equal(colour_map(np.float32(0.0)), colour_map(np.float32(1.0)))


class _Answer:
    def __init__(self, soft, phrase="the man"):
        self.soft_mask = soft
        self.phrase = phrase


def _numbered(path, index, count):
    return path if count == 1 else path.with_name(f"{path.stem}_{index + 1}{path.suffix}")


def test_soft_outputs_are_numbered_per_phrase(tmp_path):
    from globallocal.errors import InputError
    from globallocal.outputs.heatmap import save_soft_outputs

    photo = Image.new("RGB", (12, 8))
    answers = [_Answer(torch.rand(8, 12)), _Answer(torch.rand(8, 12))]
    save_soft_outputs(photo, answers, tmp_path / "s.npy", tmp_path / "h.png", _numbered)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h_1.png", "h_2.png", "s_1.npy", "s_2.npy"]
    assert np.array_equal(np.load(tmp_path / "s_2.npy"), answers[1].soft_mask.numpy())
    written = np.asarray(Image.open(tmp_path / "h_1.png"))
    assert np.array_equal(written, heatmap(photo, answers[0].soft_mask, caption="'the man': soft mask"))
    assert written.shape[1] == 320  # a tiny photo drawn scaled up, as every captioned picture
    with pytest.raises(InputError, match="--method tcl"):
        save_soft_outputs(photo, [object()], tmp_path / "x.npy", None, _numbered)
