"""The feature cache: entries round-trip exactly, damage reads as a miss, keys follow what decides the values."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import zipfile
from pathlib import Path

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
from globallocal.runs.cache_stores import DamagedEntry


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
    with pytest.warns(UserWarning) as warned:
        assert store.load("11-abc") is None
    (warning,) = warned
    message = str(warning.message)
    assert message.startswith(f"cache entry {path} is damaged: ") and message.endswith("; computing it again")
    assert "\n" not in message


def _saved_entry(tmp_path, **changes) -> tuple[VisualStore, Path]:
    """A stored entry of 5 proposals, its arrays then changed (a value of None removes one)."""
    store = VisualStore(tmp_path / "visual")
    proposals = _proposals()
    store.save("11-abc", proposals, dict(zip(("global", "local"), _features(len(proposals)), strict=True)),
               {"step": "noun-phrase", "prompt": "chair"})
    path = store.path("11-abc")
    data = dict(np.load(path))
    data.update(changes)
    np.savez(path, **{key: value for key, value in data.items() if value is not None})
    return store, path


SHAPES = {"global": (5, 8), "local": (5, 8)}
ENTRY_DAMAGE = {
    "an RLE that is not one": ({"rle": np.frombuffer(b"~" * 10, dtype=np.uint8), "rle_lengths": np.full(5, 2)},
                               "compressed RLE counts are malformed"),
    "RLE counts of other pixels": ({"image_size": np.array([23, 30])}, "RLE counts cover"),
    "areas not the masks'": ({"areas": np.arange(5, dtype=np.int64)}, "its areas are not those of its masks"),
    "a picture beyond the pixel limit": ({"image_size": np.array([100_000, 100_000])}, "100000x100000 is not"),
    "features of the wrong width": ({"tensor_local": np.zeros((5, 7), np.float32)}, "its local features are (5, 7)"),
    "features of the wrong rows": ({"tensor_global": np.zeros((4, 8), np.float32)}, "its global features are (4, 8)"),
    "features missing": ({"tensor_global": None}, "it has no global features"),
    "features in float64": ({"tensor_global": np.zeros((5, 8))}, "its global features are float64"),
    "information that is a list": ({"info": np.frombuffer(b'["step", "prompt"]', dtype=np.uint8)},
                                   "the top level must be an object"),
    "a NaN score": ({"scores": np.full(5, np.nan, np.float32)}, "boxes or scores are not finite"),
}


@pytest.mark.parametrize("damage", sorted(ENTRY_DAMAGE))
def test_a_damaged_entry_is_refused_by_read_and_recomputed_by_load_with_one_warning(tmp_path, damage):
    changes, part = ENTRY_DAMAGE[damage]
    store, path = _saved_entry(tmp_path, **changes)
    with pytest.raises(DamagedEntry) as refused:
        store.read("11-abc", lambda count: SHAPES)
    message = str(refused.value)
    assert message.startswith(f"cache entry {path} is damaged: ") and part in message and "\n" not in message
    with pytest.warns(UserWarning, match="; computing it again$"):
        assert store.load("11-abc", lambda count: SHAPES) is None


def test_an_entry_is_checked_against_what_its_reader_expects(tmp_path):
    store, path = _saved_entry(tmp_path)
    assert store.read("11-abc", lambda count: SHAPES, (23, 31)).info == {"step": "noun-phrase", "prompt": "chair"}
    with pytest.raises(DamagedEntry, match="its image size 23x31 is not the photo's 24x31"):
        store.read("11-abc", image_size=(24, 31))

    def known_steps(info):
        if info["step"] not in ("head-noun", "none"):
            raise ValueError(f"its step {info['step']!r} is not one of the source's")

    with pytest.raises(DamagedEntry, match="its step 'noun-phrase' is not one of the source's"):
        store.read("11-abc", check_info=known_steps)
    # A copy under another name is another's entry: a miss, not damage.
    path.rename(store.path("12-abc"))
    assert store.read("12-abc") is None


def test_an_entry_file_is_read_without_blocking_or_allocating_what_its_header_claims(tmp_path, no_hang):
    store = VisualStore(tmp_path / "visual")
    store.directory.mkdir()
    os.mkfifo(store.path("11-fifo"))
    with pytest.raises(DamagedEntry, match="11-fifo.npz is a FIFO; give a regular file"):
        store.read("11-fifo")
    with pytest.warns(UserWarning, match="is a FIFO"):
        assert store.load("11-fifo") is None
    # A 200-byte member whose header claims 3.6 TiB: refused before anything is allocated.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (1 << 20, 10 ** 6)})
    with zipfile.ZipFile(store.path("11-huge"), "w") as archive:
        archive.writestr("tensor_global.npy", b"\x93NUMPY\x01\x00" + header.getvalue()[8:])
    with pytest.raises(DamagedEntry, match=r"says \(1048576, 1000000\) float32 \(4194304000000 bytes\) but 0 bytes"):
        store.read("11-huge")


@pytest.mark.parametrize("name", ["../../x", "/etc/passwd", "a/b", ".hidden", "11-abc.npz", "", "x" * 300])
def test_an_entry_name_from_a_file_may_not_reach_outside_its_folder(tmp_path, name):
    store = VisualStore(tmp_path / "visual")
    with pytest.raises(InputError, match="is not the name of a cache entry"):
        store.read(name)


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
    with pytest.warns(UserWarning, match="the text features of 'the man on the left'.* is damaged"):
        assert store.load(["a chair", "the man on the left"]) == {}

    # Features of another width, or not finite, are damage too.
    assert set(store.read(["café table"], width=8)) == {"café table"}
    with pytest.raises(DamagedEntry, match="its array feature is float32 \\(8,\\), not float32 of shape 9"):
        store.read(["café table"], width=9)
    store.save("nan", torch.full((8,), float("nan")))
    with pytest.raises(DamagedEntry, match="numbers that are not finite"):
        store.read(["nan"])


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
