"""The soft-mask outputs: a float32 .npy at full precision and a heatmap with a legend."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from globallocal.heatmap import colour_map, heatmap, save_soft_mask


def test_soft_mask_npy_keeps_float32_exactly(tmp_path):
    soft = torch.rand(7, 9, dtype=torch.float32)
    save_soft_mask(soft, tmp_path / "s.npy")
    loaded = np.load(tmp_path / "s.npy")
    assert loaded.dtype == np.float32 and loaded.shape == (7, 9)
    assert np.array_equal(loaded, soft.numpy())
    assert [p.name for p in tmp_path.iterdir()] == ["s.npy"]  # no temporary file left


def test_heatmap_is_the_photo_plus_a_legend():
    photo = Image.new("RGB", (60, 40), (128, 128, 128))
    soft = np.zeros((40, 60), dtype=np.float32)
    soft[:, 30:] = 1.0
    picture = heatmap(photo, soft, alpha=1.0)
    assert picture.shape[1] == 60 and picture.shape[0] > 40 and picture.dtype == np.uint8
    assert np.array_equal(picture[0, 0], np.round(colour_map(np.float32(0.0))).astype(np.uint8))
    assert np.array_equal(picture[0, 59], np.round(colour_map(np.float32(1.0))).astype(np.uint8))
    assert not np.array_equal(colour_map(np.float32(0.0)), colour_map(np.float32(1.0)))
