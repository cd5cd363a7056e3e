"""The feature cache: entries round-trip exactly, damage reads as a miss, keys follow what decides the values."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from globallocal.errors import InputError
from globallocal.methods.global_local.method import GlobalLocal, GlobalLocalSettings
from globallocal.models.weights import weights_identity
from globallocal.proposals import Proposals
from globallocal.runs.cache import (
    FeatureCache,
    TextStore,
    VisualStore,
    clip_identity,
    image_digest,
    proposals_digest,
)


def _proposals(seed: int = 0, n: int = 5, height: int = 23, width: int = 31) -> Proposals:
    generator = torch.Generator().manual_seed(seed)
    masks = torch.rand((n, height, width), generator=generator) > 0.6
    masks[0] = False
    masks[0, 3:9, 4:20] = True
    return Proposals.from_masks(masks, scores=torch.rand(n, generator=generator))


def _features(n: int, dim: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((n, dim), generator=generator), torch.randn((n, dim), generator=generator)


def test_image_entry_round_trips_exactly(tmp_path):
    store = VisualStore(tmp_path / "visual")
    proposals = _proposals()
    global_features, local_features = _features(len(proposals))
    store.save("11-abc", proposals, {"global": global_features, "local": local_features})

    entry = store.load("11-abc")
    assert entry is not None and entry.image_size == (23, 31)
    restored = entry.proposals()
    assert torch.equal(restored.masks, proposals.masks)
    assert torch.equal(restored.boxes, proposals.boxes) and torch.equal(restored.scores, proposals.scores)
    assert torch.equal(entry.tensors["global"], global_features)
    assert torch.equal(entry.tensors["local"], local_features)
    np.testing.assert_array_equal(entry.areas, proposals.masks.flatten(1).sum(1).numpy())
    assert store.load("12-abc") is None

    # No proposals at all: an entry all the same (so a costly source is not asked again).
    empty = Proposals.from_masks(torch.zeros((0, 7, 9), dtype=torch.bool))
    store.save("13-empty", empty, {})
    restored = store.load("13-empty").proposals()
    assert len(restored) == 0 and restored.image_size == (7, 9)


@pytest.mark.parametrize("damage", ["truncated", "flipped_byte", "garbage", "empty", "inconsistent"])
def test_a_damaged_image_entry_is_a_miss(tmp_path, damage):
    store = VisualStore(tmp_path / "visual")
    proposals = _proposals()
    global_features, local_features = _features(len(proposals))
    store.save("11-abc", proposals, {"global": global_features, "local": local_features})
    path = store.path("11-abc")
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flipped_byte":
        # Inside the stored float data of the features: only the zip's CRC-32 notices.
        start = data.find(global_features.numpy().tobytes()[:16])
        assert start > 0
        data[start + 8] ^= 0x40
        path.write_bytes(bytes(data))
    elif damage == "garbage":
        path.write_bytes(b"not an npz file at all")
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        # A well-formed file whose features do not fit its proposals.
        store.save("11-abc", proposals, dict(zip(("global", "local"), _features(len(proposals)), strict=True)))
        data = dict(np.load(path))
        data["boxes"] = data["boxes"][:-1]
        np.savez(path, **data)
    assert store.load("11-abc") is None


def test_text_store_round_trips_and_rejects_damage(tmp_path):
    store = TextStore(tmp_path / "text")
    feature = torch.randn(8)
    store.save("the man on the left", feature)
    store.save("café table", torch.randn(8))
    found = store.load(["the man on the left", "café table", "never stored"])
    assert set(found) == {"the man on the left", "café table"}
    assert torch.equal(found["the man on the left"], feature)

    # A file copied to another string's name is not that string's feature.
    store.path("a chair").parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(store.path("café table"), store.path("a chair"))
    path = store.path("the man on the left")
    path.write_bytes(path.read_bytes()[:-20])
    assert store.load(["a chair", "the man on the left"]) == {}


def test_writes_leave_no_temporary_files(tmp_path):
    store = VisualStore(tmp_path / "visual")
    proposals = _proposals()
    for _ in range(2):  # the second write replaces the first
        store.save("11-abc", proposals, dict(zip(("global", "local"), _features(len(proposals)), strict=True)))
    assert [path.name for path in (tmp_path / "visual").iterdir()] == ["11-abc.npz"]


def test_fingerprint_is_the_whole_content(tmp_path):
    # 40 MiB: the former head-and-tail fingerprint (16 MiB each) never read the middle.
    data = bytearray(40 << 20)
    path = tmp_path / "weights.pt"
    path.write_bytes(bytes(data))
    base = weights_identity(path)
    assert base == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    copy = tmp_path / "elsewhere" / "renamed.pt"
    copy.parent.mkdir()
    shutil.copy(path, copy)
    assert weights_identity(copy) == base  # content, not the path, identifies weights
    data[20 << 20] = 1
    path.write_bytes(bytes(data))
    assert weights_identity(path) != base


def test_keys_follow_what_decides_the_stored_values(tmp_path, tiny_vit, tiny_resnet, tiny_config_paths,
                                                    tiny_checkpoints):
    vit_identity = clip_identity(tiny_vit, str(tiny_config_paths["vit"]))
    assert vit_identity["weights"] == {"file": weights_identity(tiny_checkpoints["vit"])}
    assert vit_identity["device"] == "cpu" and vit_identity["dtype"] == "float32"
    base = FeatureCache(tmp_path, vit_identity, "vit", GlobalLocal(None, None, GlobalLocalSettings()))

    def dirs(cache: FeatureCache) -> tuple[str, str]:
        return cache.visual.directory.name, cache.text.directory.name

    # Scoring settings are applied after the cache: one cache serves them all.
    scoring = GlobalLocalSettings(alpha=0.5, beta=0.1, feature_norm="unit")
    assert dirs(FeatureCache(tmp_path, vit_identity, "vit", GlobalLocal(None, None, scoring))) == dirs(base)
    changed_values = {
        "clip_normalization": "clip",
        "antialias": True,
        "crop_fill": "mean",
        "crop_box": "tight",
        "short_side": 400,
        "masked_blocks": 2,
        "chunk_size": 4,
    }
    assert set(changed_values) == set(GlobalLocal.visual_settings)
    for name, value in changed_values.items():
        changed = GlobalLocal(None, None, GlobalLocalSettings(**{name: value}))
        other = FeatureCache(tmp_path, vit_identity, "vit", changed)
        assert other.visual.directory != base.visual.directory, name
        assert other.text.directory == base.text.directory, name  # the text tower does not see images

    resnet_identity = clip_identity(tiny_resnet, str(tiny_config_paths["resnet"]))
    resnet = FeatureCache(tmp_path, resnet_identity, "resnet", GlobalLocal(None, None, GlobalLocalSettings()))
    assert resnet.visual.directory != base.visual.directory and resnet.text.directory != base.text.directory

    # Same architecture file, other weights: another key.
    other_weights = tmp_path / "other.pt"
    state = torch.load(tiny_checkpoints["vit"], weights_only=True)
    state["logit_scale"] = state["logit_scale"] + 1
    torch.save(state, other_weights)
    tiny_vit_other = type(tiny_vit)(**{**tiny_vit.__dict__, "weights": str(other_weights)})
    assert clip_identity(tiny_vit_other, str(tiny_config_paths["vit"]))["weights"] != vit_identity["weights"]

    random_weights = type(tiny_vit)(**{**tiny_vit.__dict__, "weights": "random"})
    with pytest.raises(InputError, match="random CLIP weights cannot be cached"):
        clip_identity(random_weights, str(tiny_config_paths["vit"]))

    base.prepare()
    assert (base.visual.directory / "identity.json").is_file() and (base.text.directory / "identity.json").is_file()
    assert base.describe() == {
        "dir": str(tmp_path.resolve()),
        "visual": base.visual.directory.name,
        "text": base.text.directory.name,
        "family": "vit",
    }


def test_entry_names_follow_pixels_and_proposals():
    pixels = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    changed = pixels.copy()
    changed[5, 5, 0] ^= 1
    assert image_digest(image) == image_digest(Image.fromarray(pixels.copy()))
    assert image_digest(image) != image_digest(Image.fromarray(changed))

    proposals = _proposals()
    moved = Proposals.from_masks(proposals.masks.roll(1, dims=2), proposals.scores)
    assert proposals_digest(proposals) == proposals_digest(_proposals())
    assert proposals_digest(proposals) != proposals_digest(moved)

    digest = image_digest(image)
    name = FeatureCache.entry_name(11, digest, {"source": "freesolo", "options": {"max_proposals": 100}})
    assert name.startswith("11-")
    assert name != FeatureCache.entry_name(11, digest, {"source": "freesolo", "options": {"max_proposals": 50}})
    assert name != FeatureCache.entry_name(11, image_digest(Image.fromarray(changed)),
                                           {"source": "freesolo", "options": {"max_proposals": 100}})
