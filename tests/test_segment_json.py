"""`segment --json` and its summary: integer boxes, proposal files, the expression CLIP read (issue 18)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image
from refer_fixtures import build_refer

from globallocal.data.phrases import shown
from globallocal.outputs.answers import JSON_FORMAT
from globallocal.proposals import projection_boxes
from globallocal.proposals.boxes_json import pixel_box_json


@pytest.fixture
def tiny_args(tiny_config_paths, tiny_checkpoints):
    return ["--clip-model", tiny_config_paths["vit"], "--clip-weights", tiny_checkpoints["vit"]]


def _save(mask: np.ndarray, path) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def test_a_box_is_the_masks_tight_box_in_whole_pixels_with_exclusive_ends():
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:8] = True  # rows 2..4, columns 3..7
    mask[3, 5] = False  # a hole does not change the box
    assert pixel_box_json(mask) == {"x0": 3, "y0": 2, "x1": 8, "y1": 5}
    assert pixel_box_json(torch.from_numpy(mask)) == {"x0": 3, "y0": 2, "x1": 8, "y1": 5}
    assert pixel_box_json(np.zeros((4, 4), dtype=bool)) is None
    assert all(type(value) is int for value in pixel_box_json(mask).values())


def test_masks_folder_numbers_proposals_by_file_and_says_which(cli, example, tiny_args, tmp_path):
    height, width = example["size"]
    folder = tmp_path / "mine"
    folder.mkdir()
    b = np.zeros((height, width), dtype=bool)
    b[2:5, 3:8] = True
    b[2:5, 20:22] = True  # two separate blocks: the projection box differs from the tight box
    a = np.zeros((height, width), dtype=bool)
    a[10:30, 40:90] = True
    _save(b, folder / "b.png")  # written first: the order of the folder's names decides, not the writing
    _save(np.zeros((height, width), dtype=bool), folder / "c_empty.png")
    _save(a, folder / "a.png")
    result = cli("segment", example["image"], "the small box", "--masks", folder, "-o", tmp_path / "m.png",
                 "--json", "-", *tiny_args)
    assert result.code == 0, result.err
    assert "empty and were dropped (c_empty.png)" in result.err
    data = json.loads(result.out)
    assert data["format"] == JSON_FORMAT == 4 and data["proposals"] == 2
    assert data["box_format"] == "x0 y0 x1 y1 in whole pixels: the mask's tight box, x1 and y1 exclusive"
    projection = projection_boxes(torch.from_numpy(np.stack([a, b])))
    assert data["proposal_list"] == [
        {"index": 0, "box": {"x0": 40, "y0": 10, "x1": 90, "y1": 30}, "area": 1000, "file": "a.png",
         "projection_box": dict(zip(("x0", "y0", "x1", "y1"), projection[0].tolist()))},
        {"index": 1, "box": {"x0": 3, "y0": 2, "x1": 22, "y1": 5}, "area": 21, "file": "b.png",
         "projection_box": dict(zip(("x0", "y0", "x1", "y1"), projection[1].tolist()))},
    ]
    (answer,) = data["results"]
    chosen = data["proposal_list"][answer["index"]]
    assert answer["file"] == chosen["file"] and answer["box"] == chosen["box"]
    assert answer["projection_box"] == chosen["projection_box"]
    assert f"proposal {answer['index']} ({chosen['file']}), score " in result.err


def test_tight_crops_report_no_projection_box(cli, example, tiny_args, tmp_path):
    result = cli("segment", example["image"], "the chair", "--masks", example["mask_dir"], "--preset",
                 "no-quirks", "-o", tmp_path / "m.png", "--json", "-", *tiny_args)
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert [entry["file"] for entry in data["proposal_list"]] == ["mask_0.png", "mask_1.png", "mask_2.png"]
    assert all("projection_box" not in entry for entry in data["proposal_list"])
    assert "projection_box" not in data["results"][0]


def test_expression_is_what_clip_read_and_the_summary_shortens_the_phrase(cli, example, tiny_args, tmp_path):
    words = ("the red chair near the big table " * 15).split()[:100]
    phrase = " ".join(words)
    result = cli("segment", example["image"], phrase, "--masks", example["mask_dir"], "-o", tmp_path / "m.png",
                 "--json", "-", *tiny_args)
    assert result.code == 0, result.err
    (answer,) = json.loads(result.out)["results"]
    assert answer["phrase"] == phrase and answer["truncated"] is True
    # CLIP's 77 tokens less the start and end tokens, one BPE token per word here.
    assert answer["expression"] == " ".join(words[:75])
    summary = [line for line in result.err.splitlines() if ": proposal " in line]
    assert len(summary) == 1 and summary[0].startswith(shown(phrase)) and phrase not in result.err


# -- which score chose the answer (issue 27) ----------------------------------------------------------------------

TWO_PHRASES = ["the dog on the left", "the small red car"]


def _method_args(method, request, tmp_path, monkeypatch) -> list:
    """Each method (and a blend) on the 48 x 64 random photo, with tiny random models; three hand-made masks."""
    config, checkpoint = request.getfixturevalue("tiny_config_paths"), request.getfixturevalue("tiny_checkpoints")
    if method == "sam3":
        return ["--method", "sam3", "--sam3-weights", request.getfixturevalue("sam3_folder"), "--sam3-threshold", 0.1]
    folder = tmp_path / "masks"
    folder.mkdir()
    for number, (rows, columns) in enumerate([(slice(8, 30), slice(2, 24)), (slice(12, 40), slice(36, 60)),
                                              (slice(42, 45), slice(5, 60))]):
        mask = np.zeros((48, 64), dtype=bool)
        mask[rows, columns] = True
        _save(mask, folder / f"{number:03d}.png")
    tcl = ["--tcl-checkpoint", request.getfixturevalue("tcl_checkpoint"), "--tcl-window", "demo"]
    vit = ["--clip-model", config["vit"], "--clip-weights", checkpoint["vit"]]
    if method == "hybridgl":
        return ["--method", "hybridgl", "--clip-model", config["vit12"], "--clip-weights", checkpoint["vit12"],
                "--masks", folder]
    if method == "tcl":
        return ["--method", "tcl", *vit, *tcl]
    if method == "global-local+tcl":
        from globallocal.methods.tcl import blend as tcl_blend

        # The tiny ViT stands in for ViT-B/16 (named as TCL's CLIP, so that none is looked for on the hub).
        monkeypatch.setattr(tcl_blend, "tcl_clip_for", lambda inner, clip_weights=None: inner.clip)
        return [*vit, "--masks", folder, *tcl, "--tcl-blend", 0.5, "--tcl-clip-weights", checkpoint["vit"]]
    return [*vit, "--masks", folder]


@pytest.mark.parametrize("method", ["global-local", "hybridgl", "global-local+tcl", "tcl", "sam3"])
def test_score_and_scores_are_what_chose_the_answer_and_the_summary_prints_that_score(
    method, cli, photo_file, request, tmp_path, monkeypatch
):
    args = _method_args(method, request, tmp_path, monkeypatch)
    result = cli("segment", photo_file, *TWO_PHRASES, *args, "-o", tmp_path / "out.png", "--json", "-")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["method"] == method
    label = {"hybridgl": "final score", "global-local+tcl": "blended score"}.get(method, "score")
    for number, answer in enumerate(data["results"]):
        (summary,) = [line for line in result.err.splitlines() if line.endswith(f"out_{number}.png")]
        if answer["index"] is None:  # TCL draws its own mask: no proposal, no score
            assert method == "tcl" and answer["score"] is None and answer["scores"] == []
            assert f": {answer['area']} pixels," in summary
            continue
        scored = {i: value for i, value in enumerate(answer["scores"]) if value is not None}
        assert answer["index"] == max(scored, key=scored.get)
        assert answer["score"] == answer["scores"][answer["index"]]
        file = f" ({answer['file']})" if "file" in answer else ""
        assert f"proposal {answer['index']}{file}, {label} {answer['score']:.4f}," in summary
    assert {answer["score_name"] for answer in data["results"]} == {label}
    if method == "hybridgl":  # CLIP's scores chose the candidates: under their own name, of every proposal
        assert all(len(answer["clip_scores"]) == 3 and None not in answer["clip_scores"] for answer in data["results"])


# -- a call described as evaluate describes a run (issue 27) --------------------------------------------------------


def test_the_json_records_the_call_as_evaluate_records_a_run(cli, example, tiny_args, tiny_checkpoints, tmp_path,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    refer = build_refer(tmp_path / "dataset")
    options = [*tiny_args, "--preset", "no-quirks", "--alpha", "0.7", "--precision", "bf16", "--device", "cpu"]
    done = cli("evaluate", "--dataset", "refcoco", "--split", "val", "--data-root", refer.data_root, "--images",
               refer.images_dir, "--limit", "1", "--proposals", "gt", "--out", tmp_path / "run", *options)
    assert done.code == 0, done.err
    run = json.loads((tmp_path / "run" / "config.json").read_text())
    done = cli("segment", example["image"], "the chair", "--masks", example["mask_dir"], "-o", tmp_path / "m.png",
               "--json", "-", *options)
    assert done.code == 0, done.err
    described = json.loads(done.out)["configuration"]
    assert set(described) == {"settings", "weights"}
    # The same settings and weights but for where the proposals came from (the run's were the ground truth).
    assert described["settings"]["proposals"] == f"masks:{example['mask_dir']}" and run["settings"]["proposals"] == "gt"
    assert {**described["settings"], "proposals": "gt"} == run["settings"]
    assert described["weights"] == run["weights"]
    settings = described["settings"]
    assert (settings["preset"], settings["alpha"], settings["precision"], settings["device"]) == (
        "no-quirks", 0.7, "bf16", "cpu")
    assert settings["method"] == "global-local" and settings["parser"].startswith("en_core_web")
    weights = tiny_checkpoints["vit"].read_bytes()  # the weights by content, wherever they lie
    assert described["weights"] == {"clip": {"size": len(weights), "sha256": hashlib.sha256(weights).hexdigest()}}


def test_the_json_names_the_default_preset(cli, example, tiny_args, tmp_path):
    done = cli("segment", example["image"], "the chair", "--masks", example["mask_dir"], "-o", tmp_path / "m.png",
               "--json", "-", *tiny_args)
    assert done.code == 0, done.err
    from globallocal.methods import get_method

    assert json.loads(done.out)["configuration"]["settings"]["preset"] == get_method("global-local").default_preset


def test_a_turned_photo_is_read_as_shown_and_the_json_says_so(cli, tiny_args, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 8  # shown a quarter turn anticlockwise: 24 wide, 32 high
    Image.fromarray(np.full((24, 32, 3), 120, dtype=np.uint8)).save(tmp_path / "turned.jpg", exif=exif)
    (tmp_path / "masks").mkdir()
    shown_mask = np.zeros((32, 24), dtype=bool)
    shown_mask[:16] = True
    _save(shown_mask, tmp_path / "masks" / "top.png")
    result = cli("segment", tmp_path / "turned.jpg", "the top", "--masks", tmp_path / "masks",
                 "-o", tmp_path / "m.png", "--json", "-", *tiny_args)
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["image_size"] == {"height": 32, "width": 24}
    assert data["photo"] == {"exif_orientation": 8, "frames": 1}
