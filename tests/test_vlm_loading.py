"""Where the in-process VLM comes from: hub ids offline, folders that are not VLMs, bounded configs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from globallocal.errors import WeightsError
from globallocal.models.vlm.loading import check_vlm_folder, check_vlm_model, is_hub_id, missing_vlm_model

REPO = Path(__file__).resolve().parents[1]


def copy_folder(source: Path, target: Path, *, without: tuple[str, ...] = ()) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*without))
    return target


def test_offline_a_missing_hub_model_fails_at_once_before_torch(tmp_path):
    """In a fresh process: the one-line message, and torch never imported by the check."""
    code = (
        "import sys\n"
        "from globallocal.errors import WeightsError\n"
        "from globallocal.models.vlm.loading import check_vlm_model\n"
        "try:\n"
        "    check_vlm_model('nobody-here/Qwen3-VL-0B-Missing')\n"
        "except WeightsError as error:\n"
        "    print(error)\n"
        "print('torch' in sys.modules)\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    message, torch_imported = out.stdout.strip().splitlines()
    assert message == (
        "the VLM nobody-here/Qwen3-VL-0B-Missing is not available locally and could not be downloaded "
        "(HF_HUB_OFFLINE is set); download nobody-here/Qwen3-VL-0B-Missing where the hub is reachable "
        "(`hf download nobody-here/Qwen3-VL-0B-Missing`), or pass vlm_model=DIR (a local copy in the "
        "transformers layout)")
    assert torch_imported == "False"


def test_hub_ids_and_folders_are_told_apart(vlm_folders):
    assert is_hub_id("Qwen/Qwen3-VL-8B-Instruct") and not is_hub_id(str(vlm_folders["qwen3-vl"]))
    assert not is_hub_id("./models/qwen") and not is_hub_id("/abs/path")
    assert missing_vlm_model(str(vlm_folders["qwen3-vl"])) is None
    assert check_vlm_model(str(vlm_folders["qwen3-vl"])) == vlm_folders["qwen3-vl"]


def test_a_folder_that_is_not_a_vlm_is_refused_naming_what_is_missing(tmp_path, vlm_folders):
    with pytest.raises(WeightsError) as caught:
        check_vlm_folder(tmp_path)
    assert str(caught.value).startswith(
        f"{tmp_path} is not a VLM folder in the transformers layout: missing config.json, processor_config.json "
        "or preprocessor_config.json, tokenizer.json (or vocab.json and merges.txt), a chat template "
        "(chat_template.jinja or chat_template.json), model.safetensors (or model.safetensors.index.json and its "
        "shards); pass vlm_model=DIR")
    with pytest.raises(WeightsError, match="does not exist or is not a folder"):
        check_vlm_folder(tmp_path / "nowhere")
    partial = copy_folder(vlm_folders["qwen2.5-vl"], tmp_path / "partial", without=("model.safetensors",
                                                                                   "chat_template.jinja"))
    with pytest.raises(WeightsError, match=r"missing a chat template .*, model\.safetensors \(or"):
        check_vlm_folder(partial)


def test_a_model_the_backend_does_not_run_is_named(tmp_path, vlm_folders):
    folder = copy_folder(vlm_folders["qwen3-vl"], tmp_path / "llama")
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(WeightsError) as caught:
        check_vlm_folder(folder)
    assert "holds a llama model (config.json), not a VLM the transformers backend runs (qwen2_5_vl, qwen3_vl)" \
        in str(caught.value) and "vlm_backend=openai" in str(caught.value)


@pytest.mark.parametrize(("key", "value"), [("hidden_size", 10**9), ("num_hidden_layers", 0), ("vocab_size", "big"),
                                            ("depth", 10**6)])
def test_config_sizes_are_bounded_before_anything_is_built(tmp_path, vlm_folders, key, value):
    folder = copy_folder(vlm_folders["qwen3-vl"], tmp_path / "huge")
    config = json.loads((folder / "config.json").read_text())
    section = config["vision_config"] if key == "depth" else config["text_config"]
    section[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    pattern = rf"config\.json: (text|vision)_config\.{key} must be a whole number from 1 "
    with pytest.raises(WeightsError, match=pattern):
        check_vlm_folder(folder)


def test_processor_pixels_and_files_are_bounded(tmp_path, vlm_folders):
    folder = copy_folder(vlm_folders["qwen3-vl"], tmp_path / "pixels")
    settings = json.loads((folder / "processor_config.json").read_text())
    settings["image_processor"]["size"]["longest_edge"] = 10**12
    (folder / "processor_config.json").write_text(json.dumps(settings))
    with pytest.raises(WeightsError, match=r"image_processor\.size\.longest_edge must be a whole number from 1 to"):
        check_vlm_folder(folder)
    (folder / "processor_config.json").write_bytes(b" " * (2 << 20))
    with pytest.raises(WeightsError, match=r"cannot read .*processor_config\.json \(.*more than the 1 MiB allowed"):
        check_vlm_folder(folder)
    shutil.copy(vlm_folders["qwen3-vl"] / "processor_config.json", folder)
    with open(folder / "tokenizer.json", "ab") as handle:
        handle.truncate(65 << 20)  # sparse: nothing is written, nor read by the check
    with pytest.raises(WeightsError, match=r"tokenizer\.json is 65 MiB, more than the 64 MiB"):
        check_vlm_folder(folder)


def test_every_shard_of_an_index_must_be_there(tmp_path, vlm_folders):
    folder = copy_folder(vlm_folders["qwen3-vl"], tmp_path / "sharded", without=("model.safetensors",))
    shards = {"a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": shards}))
    shutil.copy(vlm_folders["qwen3-vl"] / "model.safetensors", folder / shards["a.weight"])
    with pytest.raises(WeightsError, match=r"lacks 1 of the 2 weights shards its index names "
                                           r"\(model-00002-of-00002\.safetensors\)"):
        check_vlm_folder(folder)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../outside.safetensors"}}))
    with pytest.raises(WeightsError, match="names ../outside.safetensors, not a safetensors file of the folder"):
        check_vlm_folder(folder)


def test_weights_that_do_not_load_are_one_line(tmp_path, vlm_folders):
    from globallocal.models.vlm import build_vlm_backend

    folder = copy_folder(vlm_folders["qwen2.5-vl"], tmp_path / "broken")
    (folder / "model.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(WeightsError) as caught:
        build_vlm_backend("transformers", model=str(folder), device="cpu")
    assert str(caught.value).startswith(f"the VLM in {folder} does not load (") and "\n" not in str(caught.value)
