"""The CLIP factory: QuickGELU for OpenAI weights, supported towers, clear weight errors."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from tiny_models import TINY_CONFIGS

from globallocal.errors import InputError, WeightsError
from globallocal.models.clip import cpu_has_fp16_units, image_tower_family, load_clip


@pytest.fixture
def plain_tiny_with_openai_tag(tmp_path, monkeypatch):
    """A registered tiny architecture without QuickGELU (like open_clip's plain 'ViT-B-32') whose
    'openai' pretrained tag points at a local file, so the tag path runs without a download."""
    config = dict(TINY_CONFIGS["vit"], quick_gelu=False)
    config_path = tmp_path / "tiny-plain-vit.json"
    config_path.write_text(json.dumps(config))
    open_clip.add_model_config(config_path)
    checkpoint = tmp_path / "tiny-openai.pt"
    torch.save(open_clip.model.CLIP(**config).state_dict(), checkpoint)
    # Shaped like open_clip's real OpenAI entries, which mark the tag as trained with QuickGELU.
    tag = {"openai": {"file": str(checkpoint), "quick_gelu": True}}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "tiny-plain-vit", tag)
    return "tiny-plain-vit", checkpoint


def _activation_at_one(clip) -> float:
    return float(clip.model.visual.transformer.resblocks[0].mlp.gelu(torch.tensor(1.0)))


def test_openai_weights_get_quick_gelu(plain_tiny_with_openai_tag):
    name, checkpoint = plain_tiny_with_openai_tag
    clip = load_clip(name, "openai")
    assert clip.uses_quick_gelu
    assert all(not isinstance(m, torch.nn.GELU) for m in clip.model.modules())
    assert _activation_at_one(clip) == pytest.approx(torch.sigmoid(torch.tensor(1.702)).item())  # 0.8458
    # A local file: the architecture name decides, and this one is the plain GELU config.
    plain = load_clip(name, str(checkpoint))
    assert not plain.uses_quick_gelu
    assert _activation_at_one(plain) == pytest.approx(0.8413, abs=1e-4)  # exact GELU(1)


def test_quickgelu_architecture_names():
    assert load_clip("RN50-quickgelu", "random").uses_quick_gelu is True


def test_families():
    assert image_tower_family(open_clip.get_model_config("RN50")) == "resnet"
    assert image_tower_family(open_clip.get_model_config("ViT-B-16")) == "vit"
    with pytest.raises(InputError, match="not supported"):
        image_tower_family(open_clip.get_model_config("coca_ViT-B-32"))


def test_unknown_tag_and_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="no pretrained weights 'nonsense' for RN50"):
        load_clip("RN50", "nonsense")
    with pytest.raises(WeightsError, match="CLIP weights file not found"):
        load_clip("RN50", str(tmp_path / "w.pt"))


@pytest.mark.skipif(cpu_has_fp16_units(), reason="this CPU has float16 matrix units")
def test_fp16_on_a_cpu_without_float16_units_is_refused():
    with pytest.raises(InputError, match="precision fp16 has no fast kernels on this CPU .* use bf16 or fp32"):
        load_clip("RN50", "random", precision="fp16")
    with pytest.raises(InputError, match="unknown precision 'fp8'; use one of fp32, fp16, bf16"):
        load_clip("RN50", "random", precision="fp8")


def test_resnet_batchnorm_is_folded_without_changing_features(tmp_path):
    config = TINY_CONFIGS["resnet"]
    torch.manual_seed(3)
    plain = open_clip.model.CLIP(**config).eval()
    for module in plain.visual.modules():  # non-trivial statistics, or folding would be an identity
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
    config_path, checkpoint = tmp_path / "rn.json", tmp_path / "rn.pt"
    config_path.write_text(json.dumps(config))
    torch.save(plain.state_dict(), checkpoint)
    folded = load_clip(str(config_path), str(checkpoint))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.visual.modules())
    image = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(folded.model.encode_image(image), plain.encode_image(image), rtol=1e-4, atol=1e-5)


@pytest.fixture
def tiny_in_hub_cache(tmp_path, monkeypatch):
    """A registered tiny architecture whose 'openai' tag lives on the hub, with the file already in the cache."""
    import huggingface_hub

    config = dict(TINY_CONFIGS["vit"], quick_gelu=False)
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "tiny-hub-vit", config)
    tag = {"openai": {"hf_hub": "someone/tiny-hub-vit/", "quick_gelu": True}}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "tiny-hub-vit", tag)
    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    repo = cache / "models--someone--tiny-hub-vit"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    path = repo / "snapshots" / ("0" * 40) / "open_clip_pytorch_model.bin"
    path.parent.mkdir(parents=True)
    torch.manual_seed(3)
    state = open_clip.model.CLIP(**config).state_dict()
    torch.save(state, path)
    return state


def test_a_cached_hub_file_is_loaded_by_path_without_the_hub(tiny_in_hub_cache, monkeypatch):
    def no_hub(*args, **kwargs):
        raise AssertionError("open_clip was asked to fetch a cached file")

    monkeypatch.setattr(open_clip, "create_model", no_hub)
    bundle = load_clip("tiny-hub-vit", "openai")
    assert bundle.uses_quick_gelu
    loaded = bundle.model.state_dict()
    assert torch.equal(loaded["text_projection"], tiny_in_hub_cache["text_projection"])
    assert torch.equal(loaded["visual.conv1.weight"], tiny_in_hub_cache["visual.conv1.weight"])


def test_weights_of_another_architecture_are_named(tiny_checkpoints, tiny_config_paths, monkeypatch):
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "tiny-named-vit", dict(TINY_CONFIGS["vit"]))
    with pytest.raises(WeightsError) as error:
        load_clip(str(tiny_config_paths["resnet"]), str(tiny_checkpoints["vit"]))
    message = str(error.value)
    assert "\n" not in message
    assert " missing (visual." in message and " unexpected (visual." in message
    assert "visual.conv1.weight (64, 3, 16, 16) instead of (4, 3, 3, 3)" in message
    assert "the file looks like " in message and "tiny-named-vit" in message


def test_a_tensor_of_an_integer_dtype_is_refused(tiny_checkpoints, tiny_config_paths, tmp_path):
    state = torch.load(tiny_checkpoints["vit"], weights_only=True)
    state["text_projection"] = state["text_projection"].to(torch.int32)  # load_state_dict would cast it silently
    torch.save(state, tmp_path / "int.pt")
    with pytest.raises(WeightsError) as error:
        load_clip(str(tiny_config_paths["vit"]), str(tmp_path / "int.pt"))
    assert str(error.value) == (f"cannot load CLIP weights {tmp_path / 'int.pt'} into {tiny_config_paths['vit']}: "
                                "1 of the wrong dtype (text_projection int32 instead of floating)")
