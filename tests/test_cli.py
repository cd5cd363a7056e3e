"""`globallocal segment` end to end, and every bad input it must refuse cleanly."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def tiny_args(tiny_config_paths, tiny_checkpoints):
    return ["--clip-model", tiny_config_paths["vit"], "--clip-weights", tiny_checkpoints["vit"]]


def _assert_clean_error(code, err, pattern):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert pattern in lines[0], err


def test_segment_end_to_end(run, example, tiny_args, tmp_path):
    out = tmp_path / "out" / "chair.png"
    overlay = tmp_path / "out" / "chair_overlay.png"
    report = tmp_path / "out" / "chair.json"
    code, err = run(
        "segment", example["image"], "the wooden chair", "--masks", example["mask_dir"], "-o", out,
        "--overlay", overlay, "--json", report, *tiny_args,
    )
    assert code == 0, err
    mask = np.asarray(Image.open(out))
    assert mask.shape == example["size"] and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}
    data = json.loads(report.read_text())
    (result,) = data["results"]
    assert result["phrase"] == "the wooden chair" and result["noun_phrase"] == "the wooden chair"
    assert len(result["scores"]) == 3 and result["index"] == int(np.argmax(result["scores"]))
    assert (mask > 0).tolist() == example["masks"][result["index"]].tolist()
    picture = Image.open(overlay)
    assert picture.mode == "RGB" and picture.width == example["size"][1] and picture.height > example["size"][0]
    assert "the wooden chair" in err and "proposal" in err
    # No terminal here: the step that takes the time is a line, not a spinner that a log never shows.
    assert err.splitlines()[0] == "segment: scoring 3 proposals..."


def test_several_phrases_write_numbered_files(run, example, tiny_args, tmp_path):
    out = tmp_path / "m.png"
    code, err = run("segment", example["image"], "the chair", "the table", "--masks", example["mask_dir"],
                    "-o", out, "--json", tmp_path / "s.json", *tiny_args)
    assert code == 0, err
    assert (tmp_path / "m_0.png").is_file() and (tmp_path / "m_1.png").is_file() and not out.exists()
    phrases = [r["phrase"] for r in json.loads((tmp_path / "s.json").read_text())["results"]]
    assert phrases == ["the chair", "the table"]


def test_rle_json_masks(run, example, tiny_args, tmp_path):
    from pycocotools import mask as mask_utils

    rles = []
    for mask in example["masks"]:
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        rles.append({"segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}, "score": 0.5})
    source = tmp_path / "masks.json"
    source.write_text(json.dumps(rles))
    out = tmp_path / "m.png"
    code, err = run("segment", example["image"], "the chair", "--masks", source, "-o", out,
                    "--json", tmp_path / "s.json", *tiny_args)
    assert code == 0, err
    index = json.loads((tmp_path / "s.json").read_text())["results"][0]["index"]
    assert ((np.asarray(Image.open(out)) > 0) == example["masks"][index]).all()


def test_a_single_png_mask(run, example, tiny_args, tmp_path):
    out = tmp_path / "m.png"
    code, err = run("segment", example["image"], "the chair", "--masks", example["mask_dir"] / "mask_0.png",
                    "-o", out, *tiny_args)
    assert code == 0, err
    assert ((np.asarray(Image.open(out)) > 0) == example["masks"][0]).all()


def test_long_phrase_truncates_and_warns(run, example, tiny_args, tmp_path):
    code, err = run("segment", example["image"], "the chair " * 50, "--masks", example["mask_dir"],
                    "-o", tmp_path / "m.png", *tiny_args)
    assert code == 0, err
    assert "warning:" in err and "truncated" in err
    assert (tmp_path / "m.png").is_file()


def _bad_images(tmp_path, example):
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(example["image"].read_bytes()[:4000])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "text.png"
    text.write_text("not a picture")
    return {"truncated": truncated, "empty": empty, "text": text, "missing": tmp_path / "missing.jpg"}


@pytest.mark.parametrize(
    ("which", "pattern"),
    [("truncated", "cannot decode image"), ("empty", "0 bytes"), ("text", "cannot decode image"),
     ("missing", "image not found")],
)
def test_bad_images(run, example, tiny_args, tmp_path, which, pattern):
    image = _bad_images(tmp_path, example)[which]
    out = tmp_path / "m.png"
    code, err = run("segment", image, "the chair", "--masks", example["mask_dir"], "-o", out, *tiny_args)
    _assert_clean_error(code, err, pattern)
    assert not out.exists()


def test_mask_of_the_wrong_size(run, example, tiny_args, tmp_path):
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(example["mask_dir"] / "mask_9.png")
    code, err = run("segment", example["image"], "the chair", "--masks", example["mask_dir"],
                    "-o", tmp_path / "m.png", *tiny_args)
    _assert_clean_error(code, err, "mask mask_9.png is 10x10 but the image is 640x480")


def test_empty_mask_folder(run, example, tiny_args, tmp_path):
    folder = tmp_path / "none"
    folder.mkdir()
    code, err = run("segment", example["image"], "the chair", "--masks", folder, "-o", tmp_path / "m.png",
                    *tiny_args)
    _assert_clean_error(code, err, "no mask PNGs found")


def test_all_masks_empty(run, example, tiny_args, tmp_path):
    folder = tmp_path / "blank"
    folder.mkdir()
    Image.fromarray(np.zeros(example["size"], dtype=np.uint8)).save(folder / "0.png")
    code, err = run("segment", example["image"], "the chair", "--masks", folder, "-o", tmp_path / "m.png",
                    *tiny_args)
    _assert_clean_error(code, err, f"every mask is empty (1 mask in {folder}), so there is nothing to choose from")
    assert not (tmp_path / "m.png").exists()


@pytest.mark.parametrize("phrase", ["", "   "])
def test_empty_phrase(run, example, tiny_args, tmp_path, phrase):
    code, err = run("segment", example["image"], phrase, "--masks", example["mask_dir"], "-o",
                    tmp_path / "m.png", *tiny_args)
    _assert_clean_error(code, err, "phrase is empty")


def test_phrase_without_noun(run, example, tiny_args, tmp_path):
    out = tmp_path / "m.png"
    args = ["segment", example["image"], "red", "--masks", example["mask_dir"], "-o", out, *tiny_args]
    code, err = run(*args, "--require-noun")
    _assert_clean_error(code, err, "no noun found in the phrase 'red'")
    assert not out.exists()
    code, err = run(*args)
    assert code == 0, err and out.exists()


def test_one_bad_phrase_writes_nothing(run, example, tiny_args, tmp_path):
    code, err = run("segment", example["image"], "the chair", "", "--masks", example["mask_dir"], "-o",
                    tmp_path / "m.png", *tiny_args)
    _assert_clean_error(code, err, "phrase is empty")
    assert list(tmp_path.glob("m*.png")) == []


def test_openai_weights_offline_fail_fast(run, example, tmp_path):
    start = time.monotonic()
    code, err = run("segment", example["image"], "the chair", "--masks", example["mask_dir"], "-o",
                    tmp_path / "m.png", "--clip-model", "ViT-B-32")
    assert time.monotonic() - start < 15
    _assert_clean_error(code, err, "CLIP weights ViT-B-32/openai")
    assert "HF_HUB_OFFLINE" in err and "--clip-weights PATH" in err and "ViT-B-32-quickgelu" in err
    assert "https://huggingface.co/timm/vit_base_patch32_clip_224.openai/resolve/main/" in err


def test_missing_weights_file(run, example, tmp_path):
    code, err = run("segment", example["image"], "the chair", "--masks", example["mask_dir"], "-o",
                    tmp_path / "m.png", "--clip-model", "RN50", "--clip-weights", tmp_path / "nope.pt")
    _assert_clean_error(code, err, "CLIP weights file not found")


def test_weights_that_do_not_fit(run, example, tiny_config_paths, tiny_checkpoints, tmp_path):
    code, err = run("segment", example["image"], "the chair", "--masks", example["mask_dir"], "-o",
                    tmp_path / "m.png", "--clip-model", tiny_config_paths["resnet"], "--clip-weights",
                    tiny_checkpoints["vit"])
    _assert_clean_error(code, err, "cannot load CLIP weights")


def test_bad_option_values(run, example, tiny_args, tmp_path):
    base = ["segment", example["image"], "the chair", "--masks", example["mask_dir"], "-o", tmp_path / "m.png"]
    _assert_clean_error(*run(*base, *tiny_args, "--alpha", "2"), "alpha must be in [0, 1]")
    _assert_clean_error(*run(*base, *tiny_args, "--preset", "nope"), "unknown preset 'nope'")
    _assert_clean_error(*run(*base, "--clip-model", "ViT-Q-99"), "unknown CLIP model 'ViT-Q-99'")
    _assert_clean_error(*run(*base, *tiny_args, "--device", "cuda:0"), "no CUDA GPU")


def test_help_explains(run):
    code, _ = run("segment", "--help")
    assert code == 0
