"""FreeSOLO: checkpoint layout and key map, strict loading, weights resolution, a real forward pass.

The reference checkpoint's layout (591 tensors) is re-derived here from
detectron2's naming, independently of the key map under test, and pinned
to the manifest of the released file by a hash.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import huggingface_hub  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.models.resnet import Bottleneck  # noqa: E402

from globallocal.errors import WeightsError  # noqa: E402
from globallocal.models import hub  # noqa: E402
from globallocal.proposals import freesolo_checkpoint  # noqa: E402
from globallocal.proposals.freesolo import FreeSOLOGenerator, build_freesolo  # noqa: E402
from globallocal.proposals.freesolo_checkpoint import (  # noqa: E402
    FREESOLO_FILENAME,
    FREESOLO_URL,
    checkpoint_key_map,
    load_freesolo,
    module_key_to_checkpoint_key,
    resolve_freesolo_weights,
)
from globallocal.proposals.solov2 import FreeSOLONet  # noqa: E402

# sha256 of the sorted "key shape dtype" lines of the released checkpoint's state dict.
MANIFEST_SHA256 = "4bcfb7d64ea0edb67f58264029baba53ea1df16ad83262d3b50505bbd986d0bc"
SHARED_MANIFEST = Path("/work/shared/freesolo_state_dict_manifest.json")


def detectron2_layout() -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of every tensor of FreeSOLO_R101_30k_pl.pth's state dict, in detectron2's names."""
    layout: list[tuple[str, tuple[int, ...]]] = [("_iter", (1,))]

    def conv_norm(prefix: str, out_c: int, in_c: int, k: int) -> None:
        layout.append((f"{prefix}.weight", (out_c, in_c, k, k)))
        layout.extend(
            (f"{prefix}.norm.{p}", (out_c,)) for p in ("weight", "bias", "running_mean", "running_var")
        )

    conv_norm("backbone.bottom_up.stem.conv1", 64, 3, 7)
    in_c = 64
    for stage, blocks, width in ((2, 3, 64), (3, 4, 128), (4, 23, 256), (5, 3, 512)):
        out_c = width * 4
        for b in range(blocks):
            prefix = f"backbone.bottom_up.res{stage}.{b}"
            if b == 0:
                conv_norm(f"{prefix}.shortcut", out_c, in_c, 1)
            conv_norm(f"{prefix}.conv1", width, in_c, 1)
            conv_norm(f"{prefix}.conv2", width, width, 3)
            conv_norm(f"{prefix}.conv3", out_c, width, 1)
            in_c = out_c
    for level, channels in zip((2, 3, 4, 5), (256, 512, 1024, 2048), strict=True):
        layout += [(f"backbone.fpn_lateral{level}.weight", (256, channels, 1, 1))]
        layout += [(f"backbone.fpn_lateral{level}.bias", (256,))]
        layout += [
            (f"backbone.fpn_output{level}.weight", (256, 256, 3, 3)),
            (f"backbone.fpn_output{level}.bias", (256,)),
        ]
    for tower, first_in in (("cate_tower", 256), ("kernel_tower", 258)):
        for i in range(4):
            layout.append((f"ins_head.{tower}.{3 * i}.weight", (512, first_in if i == 0 else 512, 3, 3)))
            layout += [(f"ins_head.{tower}.{3 * i + 1}.{p}", (512,)) for p in ("weight", "bias")]
    for head, out_c in (("cate_pred", 2), ("kernel_pred", 256), ("emb_pred", 128)):
        layout += [(f"ins_head.{head}.weight", (out_c, 512, 3, 3)), (f"ins_head.{head}.bias", (out_c,))]
    for level in range(4):
        for j in range(max(level, 1)):
            in_ch = (258 if level == 3 else 256) if j == 0 else 128
            layout.append((f"mask_head.convs_all_levels.{level}.conv{j}.0.weight", (128, in_ch, 3, 3)))
            layout += [
                (f"mask_head.convs_all_levels.{level}.conv{j}.1.{p}", (128,)) for p in ("weight", "bias")
            ]
    layout.append(("mask_head.conv_pred.0.weight", (256, 128, 1, 1)))
    layout += [(f"mask_head.conv_pred.1.{p}", (256,)) for p in ("weight", "bias")]
    return layout


LAYOUT = detectron2_layout()


def layout_hash(entries: list[tuple[str, tuple[int, ...]]]) -> str:
    lines = sorted(f"{key} {tuple(shape)} float32" for key, shape in entries)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def shared_storage_checkpoint(layout: list[tuple[str, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    """Zero tensors of the given shapes that are views of one storage: a full layout in a few MB on disk."""
    storage = torch.zeros(max(math.prod(shape) for _, shape in layout))
    return {key: storage[: math.prod(shape)].view(shape) for key, shape in layout}


def random_checkpoint(seed: int = 0, cate_bias: float = 3.0) -> dict[str, torch.Tensor]:
    """Random weights in the reference layout: convs ~ N(0, 1/fan_in), norms near identity.

    Every tensor differs from every other, so a key map that swapped two
    same-shaped tensors would load different values. ``cate_bias`` on the
    category head makes most grid cells candidates.
    """
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in LAYOUT:
        if len(shape) == 4:
            state[key] = torch.randn(shape, generator=generator) / math.sqrt(math.prod(shape[1:]))
        elif key.endswith((".weight", ".running_var")):  # 1-D weights are those of norms
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.1
    state["ins_head.cate_pred.bias"].fill_(cate_bias)
    return state


@pytest.fixture(scope="module")
def random_checkpoint_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    state = random_checkpoint()
    path = tmp_path_factory.mktemp("freesolo") / "random_r101.pth"
    torch.save({"model": state, "__author__": "test", "iteration": 30000}, path)
    return path, state


@pytest.fixture(scope="module")
def random_model(random_checkpoint_file) -> FreeSOLONet:
    return load_freesolo(random_checkpoint_file[0])


@pytest.fixture(scope="module")
def unfolded_model(random_checkpoint_file) -> FreeSOLONet:
    return load_freesolo(random_checkpoint_file[0], fold_batchnorm=False)


def test_layout_is_the_released_checkpoints():
    assert len(LAYOUT) == 591
    assert layout_hash(LAYOUT) == MANIFEST_SHA256
    if SHARED_MANIFEST.is_file():
        manifest = json.loads(SHARED_MANIFEST.read_text())
        assert {(e["key"], tuple(e["shape"])) for e in manifest} == set(LAYOUT)


def test_key_map_covers_the_checkpoint_exactly():
    with torch.device("meta"):
        model = FreeSOLONet()
    key_map = checkpoint_key_map(model)
    expected = dict(LAYOUT)
    assert set(key_map) == set(expected) - {"_iter"}
    assert len(set(key_map.values())) == len(key_map) == len(model.state_dict())
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert all(shapes[module_key] == expected[key] for key, module_key in key_map.items())


@pytest.mark.parametrize(
    ("module_key", "checkpoint_key"),
    [
        ("backbone.body.bn1.running_var", "backbone.bottom_up.stem.conv1.norm.running_var"),
        ("backbone.body.layer3.22.conv2.weight", "backbone.bottom_up.res4.22.conv2.weight"),
        ("backbone.body.layer1.0.downsample.1.bias", "backbone.bottom_up.res2.0.shortcut.norm.bias"),
        *[(f"backbone.fpn.inner_blocks.{i}.0.bias", f"backbone.fpn_lateral{i + 2}.bias") for i in range(4)],
        *[
            (f"backbone.fpn.layer_blocks.{i}.0.weight", f"backbone.fpn_output{i + 2}.weight")
            for i in range(4)
        ],
        ("mask_head.convs_all_levels.3.conv0.0.weight", "mask_head.convs_all_levels.3.conv0.0.weight"),
    ],
)
def test_key_map_examples(module_key, checkpoint_key):
    assert module_key_to_checkpoint_key(module_key) == checkpoint_key


def test_key_map_keeps_stages_blocks_and_norms_together():
    """Same-shaped tensors (the norms of conv1 and conv2, blocks of a stage) must not trade places."""
    with torch.device("meta"):
        model = FreeSOLONet()
    to_checkpoint = {module: ckpt for ckpt, module in checkpoint_key_map(model).items()}
    pairs = [("conv1", "bn1")]
    for name, module in model.backbone.body.named_modules():
        if isinstance(module, Bottleneck):
            pairs += [(f"{name}.conv{j}", f"{name}.bn{j}") for j in (1, 2, 3)]
            if module.downsample is not None:
                pairs.append((f"{name}.downsample.0", f"{name}.downsample.1"))
            stage, block = name.removeprefix("layer").split(".")
            assert to_checkpoint[f"backbone.body.{name}.conv1.weight"].startswith(
                f"backbone.bottom_up.res{int(stage) + 1}.{block}."
            )
    assert len(pairs) == 1 + 33 * 3 + 4
    for conv, norm in pairs:
        conv_name = to_checkpoint[f"backbone.body.{conv}.weight"].removesuffix(".weight")
        for part in ("weight", "bias", "running_mean", "running_var"):
            assert to_checkpoint[f"backbone.body.{norm}.{part}"] == f"{conv_name}.norm.{part}"


def test_strict_load_of_a_detectron2_checkpoint(random_checkpoint_file, unfolded_model):
    state = random_checkpoint_file[1]
    model = unfolded_model
    loaded = model.state_dict()
    key_map = checkpoint_key_map(model)
    assert all(torch.equal(loaded[key_map[key]], state[key]) for key in state if key != "_iter")
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())


def test_bare_state_dict_loads(tmp_path):
    path = tmp_path / "bare.pth"
    torch.save(shared_storage_checkpoint(LAYOUT), path)
    model = load_freesolo(path, fold_batchnorm=False)
    assert len(model.state_dict()) == 590


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape", "dtype"])
def test_mismatched_checkpoint_is_refused_with_the_keys_named(tmp_path, change):
    layout = list(LAYOUT)
    if change == "missing":
        layout = [entry for entry in layout if entry[0] != "backbone.bottom_up.res3.1.conv2.norm.running_var"]
        named = "backbone.bottom_up.res3.1.conv2.norm.running_var"
    elif change == "unexpected":
        layout.append(("ins_head.extra_pred.weight", (3,)))
        named = "ins_head.extra_pred.weight"
    elif change == "shape":
        layout = [(k, (3, 512, 3, 3) if k == "ins_head.cate_pred.weight" else s) for k, s in layout]
        named = "ins_head.cate_pred.weight (3, 512, 3, 3)"
    else:
        named = "ins_head.cate_pred.weight int64 instead of floating"
    checkpoint = shared_storage_checkpoint(layout)
    if change == "dtype":  # an integer tensor would have been taken as it is
        checkpoint["ins_head.cate_pred.weight"] = checkpoint["ins_head.cate_pred.weight"].long()
    path = tmp_path / "bad.pth"
    torch.save({"model": checkpoint}, path)
    with pytest.raises(WeightsError) as error:
        load_freesolo(path)
    message = str(error.value)
    assert named in message and "\n" not in message
    label = {"shape": "of the wrong shape", "dtype": "of the wrong dtype"}.get(change, change)
    assert f"1 {label}" in message


def test_many_missing_keys_are_counted(tmp_path):
    path = tmp_path / "half.pth"
    torch.save({"model": shared_storage_checkpoint(LAYOUT[:300])}, path)
    with pytest.raises(WeightsError, match=r"291 missing \(.*, \.\.\. 287 more\)"):
        load_freesolo(path)


class NotATensor:
    """A pickled object that weights_only loading must refuse."""


def test_checkpoint_with_code_objects_is_refused(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"model": {"_iter": torch.zeros(1)}, "cfg": NotATensor()}, path)
    with pytest.raises(WeightsError, match=r"refusing to load .*\(test_freesolo.NotATensor\)"):
        load_freesolo(path)


def test_unreadable_checkpoint_is_refused(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="cannot read FreeSOLO weights"):
        load_freesolo(path)


def test_folding_frozen_batchnorm_keeps_the_outputs(unfolded_model):
    # Contiguous weights: at this tiny size PyTorch's non-oneDNN convolution runs, slowly on channels-last.
    model = copy.deepcopy(unfolded_model).to(memory_format=torch.contiguous_format)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.backbone.body.modules():
            if hasattr(module, "running_var"):
                for name, low, high in (("weight", 0.5, 1.5), ("bias", -1, 1), ("running_mean", -1, 1)):
                    getattr(module, name).uniform_(low, high, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
    x = torch.randn(1, 3, 64, 64, generator=generator)
    with torch.inference_mode():
        before = model.features(x)
        after = model.fold_frozen_batchnorm().features(x)
    assert not any(hasattr(m, "running_var") for m in model.backbone.body.modules())
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max()))


def test_build_freesolo_from_an_explicit_file(random_checkpoint_file):
    generator = build_freesolo(
        random_checkpoint_file[0], device="cpu", max_proposals=7, short_side=64
    )
    assert isinstance(generator, FreeSOLOGenerator)
    assert generator.max_proposals == 7 and generator.short_side == 64
    assert generator.device == torch.device("cpu")


def test_real_network_forward_on_a_small_image(random_model):
    generator = FreeSOLOGenerator(random_model, short_side=64)
    image = Image.new("RGB", (33, 31), (120, 30, 200))
    image.paste((250, 250, 250), (5, 5, 20, 25))
    proposals = generator.generate(image)
    n = len(proposals)
    assert 1 <= n <= 100
    assert proposals.masks.shape == (n, 31, 33) and proposals.masks.dtype == torch.bool
    assert proposals.masks.flatten(1).any(dim=1).all()
    assert proposals.boxes.shape == (n, 4) and proposals.scores.shape == (n,)
    assert torch.all(proposals.scores[:-1] >= proposals.scores[1:])
    assert proposals.scores.min() >= 0.05 and proposals.scores.max() <= 1


def test_real_network_on_a_panorama(random_model):
    proposals = FreeSOLOGenerator(random_model, short_side=32).generate(
        Image.new("RGB", (2000, 100), (9, 200, 90))
    )
    assert proposals.masks.shape[1:] == (100, 2000)
    assert proposals.boxes.shape == (len(proposals), 4)


@pytest.fixture
def no_default_weights(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "freesolo_weights"
    folder.mkdir()
    monkeypatch.setattr(freesolo_checkpoint, "default_weights_dirs", lambda: [folder])
    monkeypatch.delenv("GLOBALLOCAL_FREESOLO_WEIGHTS", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))
    return folder


def test_offline_resolution_fails_fast_with_directions(no_default_weights, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WeightsError) as error:
        resolve_freesolo_weights(None)
    assert time.monotonic() - start < 10
    message = str(error.value)
    assert "\n" not in message
    for part in (FREESOLO_FILENAME, str(no_default_weights), FREESOLO_URL, "--freesolo-weights"):
        assert part in message


def test_failed_download_is_a_weights_error(no_default_weights, monkeypatch):
    import huggingface_hub

    def refuse(**_: object) -> str:
        raise OSError("connection reset\nwith details on a second line")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "is_offline_mode", lambda: False)
    monkeypatch.setattr(hub, "hub_unreachable_reason", lambda: None)
    monkeypatch.setattr(hub, "hf_hub_download", refuse)
    with pytest.raises(WeightsError, match=r"could not be downloaded \(connection reset\)") as error:
        resolve_freesolo_weights(None)
    assert FREESOLO_URL in str(error.value) and "\n" not in str(error.value)


def test_resolution_order(no_default_weights, tmp_path, monkeypatch):
    explicit, from_env = tmp_path / "a.pth", tmp_path / "b.pth"
    explicit.write_bytes(b"x")
    from_env.write_bytes(b"x")
    monkeypatch.setenv("GLOBALLOCAL_FREESOLO_WEIGHTS", str(from_env))
    assert resolve_freesolo_weights(explicit) == explicit
    assert resolve_freesolo_weights(None) == from_env
    monkeypatch.delenv("GLOBALLOCAL_FREESOLO_WEIGHTS")
    (no_default_weights / FREESOLO_FILENAME).write_bytes(b"x")
    assert resolve_freesolo_weights(None) == no_default_weights / FREESOLO_FILENAME


def test_missing_explicit_weights_are_named(tmp_path, monkeypatch):
    with pytest.raises(WeightsError, match="not found: .*nowhere.pth"):
        resolve_freesolo_weights(tmp_path / "nowhere.pth")
    monkeypatch.setenv("GLOBALLOCAL_FREESOLO_WEIGHTS", str(tmp_path / "gone.pth"))
    with pytest.raises(WeightsError, match="GLOBALLOCAL_FREESOLO_WEIGHTS file not found: .*gone.pth"):
        resolve_freesolo_weights(None)


def test_default_weights_dirs_are_the_working_folder_then_the_clone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clone = Path(__file__).resolve().parents[1] / "freesolo_weights"
    assert freesolo_checkpoint.default_weights_dirs() == [tmp_path / "freesolo_weights", clone]
    monkeypatch.chdir(clone.parent)
    assert freesolo_checkpoint.default_weights_dirs() == [clone]


def test_truncated_checkpoint_is_refused(random_checkpoint_file, tmp_path):
    path = tmp_path / "truncated.pth"
    path.write_bytes(random_checkpoint_file[0].read_bytes()[:100_000])
    with pytest.raises(WeightsError, match="cannot read FreeSOLO weights .*truncated.pth"):
        load_freesolo(path)


def test_unreachable_hub_fails_fast_without_the_offline_flag(no_default_weights, monkeypatch):
    import socket

    import huggingface_hub

    def no_dns(*_: object, **__: object) -> None:
        raise OSError("Name or service not known")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "is_offline_mode", lambda: False)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    start = time.monotonic()
    with pytest.raises(WeightsError, match="could not be downloaded .cannot resolve"):
        resolve_freesolo_weights(None)
    assert time.monotonic() - start < 2


def test_hanging_name_lookup_is_abandoned(monkeypatch):
    import socket

    # A resolver that answers nothing for 30 s (then an empty list: the abandoned thread ends quietly).
    monkeypatch.setattr(socket, "getaddrinfo", lambda *_, **__: time.sleep(30) or [])
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    start = time.monotonic()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hub.hf_constants, "is_offline_mode", lambda: False)
    assert "no answer" in hub.hub_unreachable_reason(timeout=0.2)
    assert time.monotonic() - start < 2


def _fake_hub_cache(root: Path, repo_id: str, filename: str, data: bytes) -> Path:
    """A Hugging Face cache holding one file, laid out as huggingface_hub writes it."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    path = repo / "snapshots" / revision / filename
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return path


def test_a_checkpoint_in_the_hugging_face_cache_is_used_offline(no_default_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cached = _fake_hub_cache(Path(huggingface_hub.constants.HF_HUB_CACHE), freesolo_checkpoint.FREESOLO_REPO_ID,
                             FREESOLO_FILENAME, b"weights")
    assert resolve_freesolo_weights(None) == cached
    # A copy in the weights folder still comes first.
    (no_default_weights / FREESOLO_FILENAME).write_bytes(b"x")
    assert resolve_freesolo_weights(None) == no_default_weights / FREESOLO_FILENAME


def test_the_working_folder_is_searched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GLOBALLOCAL_FREESOLO_WEIGHTS", raising=False)
    (tmp_path / "freesolo_weights").mkdir()
    (tmp_path / "freesolo_weights" / FREESOLO_FILENAME).write_bytes(b"x")
    assert resolve_freesolo_weights(None) == tmp_path / "freesolo_weights" / FREESOLO_FILENAME


def test_the_pinned_hash_is_the_released_files():
    assert freesolo_checkpoint.FREESOLO_SHA256 == "434184b432dc8faaedd552b2f456ad7b4e0e154b65d4d0e92e5bc7c24112d348"
    assert freesolo_checkpoint.FREESOLO_SIZE == 526_827_156


def _pin(monkeypatch, path: Path) -> None:
    """Make ``path`` the 'released' file, as far as the hash check is concerned."""
    monkeypatch.setattr(freesolo_checkpoint, "FREESOLO_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    monkeypatch.setattr(freesolo_checkpoint, "FREESOLO_SIZE", path.stat().st_size)


def test_a_download_that_is_not_the_released_file_is_deleted(no_default_weights, tmp_path, monkeypatch):
    download = tmp_path / "downloaded.pth"

    def fake_download(**_: object) -> str:
        download.write_bytes(b"a corrupted download")
        return str(download)

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "is_offline_mode", lambda: False)
    monkeypatch.setattr(hub, "hub_unreachable_reason", lambda: None)
    monkeypatch.setattr(hub, "hf_hub_download", fake_download)
    with pytest.raises(WeightsError, match="not the released file .*SHA-256"):
        resolve_freesolo_weights(None)
    assert not download.exists()
    reference = tmp_path / "reference.pth"
    reference.write_bytes(b"a corrupted download")
    _pin(monkeypatch, reference)
    assert resolve_freesolo_weights(None) == download


def test_the_released_file_is_loaded_even_with_python_objects(random_checkpoint_file, tmp_path, monkeypatch):
    path = tmp_path / "released.pth"
    state = random_checkpoint_file[1]
    torch.save({"model": state, "scheduler": NotATensor()}, path)
    with pytest.raises(WeightsError, match="refusing to load"):
        load_freesolo(path, fold_batchnorm=False)
    _pin(monkeypatch, path)
    model = load_freesolo(path, fold_batchnorm=False)
    loaded = model.state_dict()
    for checkpoint_key, model_key in freesolo_checkpoint.checkpoint_key_map(model).items():
        assert torch.equal(loaded[model_key], state[checkpoint_key].float()), checkpoint_key
