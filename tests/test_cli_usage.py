"""The command line as a new user meets it: usage errors, Ctrl-C, speed of --help, phrases, devices, outputs."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from refer_fixtures import build_refer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_args(tiny_config_paths, tiny_checkpoints):
    return ["--clip-model", tiny_config_paths["vit"], "--clip-weights", tiny_checkpoints["vit"]]


def _one_error_line(code, err, pattern):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert pattern in lines[0], err


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["segment", "photo.jpg"], "Missing argument"),
        (["segment", "photo.jpg", "the man", "--alpha", "abc"], "Invalid value for '--alpha'"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["evaluate", "--split", "val"], "Missing option '--dataset'"),
        (["report", "--format", "excel", "somewhere"], "unknown --format 'excel'"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(run, args, pattern):
    _one_error_line(*run(*args), pattern)


def test_bare_command_prints_the_help_and_exits_2(cli):
    result = cli()
    assert result.code == 2 and "Traceback" not in result.err
    assert "segment" in result.out and "evaluate" in result.out and "Usage" in result.out


def test_version_and_short_help(cli):
    from globallocal import __version__

    result = cli("--version")
    assert result.code == 0 and result.out.strip() == f"globallocal {__version__}"
    result = cli("segment", "-h")
    assert result.code == 0 and "--overlay-all" in result.out


@pytest.mark.parametrize(
    ("command", "hint"),
    [("evaluate", "run the same command again to resume"), ("segment", "run the same command again")],
)
def test_ctrl_c_exits_130_with_one_line(run, monkeypatch, tmp_path, example, tiny_args, command, hint):
    from globallocal import segmenter

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(segmenter.Segmenter, "from_pretrained", interrupted)
    if command == "evaluate":
        refer = build_refer(tmp_path / "dataset")
        args = ["evaluate", "--dataset", "refcoco", "--split", "val", "--data-root", refer.data_root,
                "--images", refer.images_dir, "--proposals", "gt", "--out", tmp_path / "run", *tiny_args]
    else:
        args = ["segment", example["image"], "the chair", "--masks", example["mask_dir"], "-o", tmp_path / "m.png",
                *tiny_args]
    code, err = run(*args)
    assert code == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted: ") and hint in lines[0], err


def test_importing_the_cli_loads_no_heavy_library():
    script = (
        "import sys, time\n"
        "start = time.perf_counter()\n"
        "from globallocal import cli\n"
        "took = time.perf_counter() - start\n"
        "print([name for name in ('torch', 'open_clip', 'spacy', 'torchvision') if name in sys.modules])\n"
        "print(took)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    heavy, took = done.stdout.splitlines()
    assert heavy == "[]", done.stdout
    start = time.perf_counter()
    help_run = subprocess.run([sys.executable, "-m", "globallocal", "segment", "--help"], cwd=REPO, capture_output=True,
                              text=True)
    print(f"import cli: {float(took):.2f} s; segment --help: {time.perf_counter() - start:.2f} s (machine load "
          f"{os.getloadavg()[0]:.1f})")
    assert help_run.returncode == 0 and "--require-noun" in help_run.stdout


def test_device_defaults_to_auto_on_every_command(monkeypatch):
    import torch

    from globallocal import cli
    from globallocal.models.clip import resolve_device

    for command in cli.app.registered_commands:
        for name, parameter in __import__("inspect").signature(command.callback).parameters.items():
            if name == "device":
                assert parameter.default == "auto", command.callback.__name__
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cuda:1") == "cuda:1"


def test_a_phrase_that_is_a_file_points_to_batch(run, example, tiny_args, tmp_path):
    other = tmp_path / "b.jpg"
    other.write_bytes(example["image"].read_bytes())
    code, err = run("segment", example["image"], other, "the man", "-o", tmp_path / "m.png", *tiny_args)
    _one_error_line(code, err, f"the phrase '{other}' is a file")
    assert "globallocal batch" in err and "once per image" in err


def test_no_noun_is_answered_with_a_warning_unless_required(run, example, tiny_args, tmp_path):
    out = tmp_path / "m.png"
    args = ["segment", example["image"], "on the left", "--masks", example["mask_dir"], "-o", out, *tiny_args]
    code, err = run(*args)
    assert code == 0, err and out.is_file()
    assert "warning:" in err and "no noun found in the phrase 'on the left'" in err
    assert "the whole phrase stands in for the noun phrase" in err
    out.unlink()
    code, err = run(*args, "--require-noun")
    _one_error_line(code, err, "no noun found in the phrase 'on the left'")
    assert not out.exists()


def test_an_unquoted_phrase_is_refused_with_the_quotes_unless_split_on_purpose(run, example, tiny_args, tmp_path):
    args = ["segment", example["image"], "the", "man", "on", "--masks", example["mask_dir"],
            "-o", tmp_path / "m.png", *tiny_args]
    _one_error_line(*run(*args), "3 one-word phrases; if they are one phrase, quote it: \"the man on\"")
    assert not list(tmp_path.glob("m*.png"))
    code, err = run(*args, "--allow-split-phrases", "--require-noun")
    assert code == 2 and "quote the whole phrase" in err


def test_a_foreign_phrase_is_told_the_tools_read_english(run, example, tiny_args, tmp_path):
    code, err = run("segment", example["image"], "左边", "à côté", "--masks", example["mask_dir"],
                    "-o", tmp_path / "m.png", "--require-noun", *tiny_args)
    _one_error_line(code, err, "the noun-phrase parser and CLIP read English: describe the object in English")
    assert "quote" not in err


def test_masks_with_generator_options_are_refused(run, example, tmp_path):
    code, err = run("segment", example["image"], "the chair", "--masks", example["mask_dir"], "--proposals", "sam2",
                    "--score-threshold", "0.3", "-o", tmp_path / "m.png")
    _one_error_line(code, err, "--proposals, --score-threshold configure the proposal generator, which --masks")


def test_empty_user_masks_are_dropped_and_counted(run, example, tiny_args, tmp_path):
    Image.fromarray(np.zeros(example["size"], dtype=np.uint8)).save(example["mask_dir"] / "mask_1b.png")
    report = tmp_path / "m.json"
    code, err = run("segment", example["image"], "the chair", "--masks", example["mask_dir"], "-o",
                    tmp_path / "m.png", "--json", report, *tiny_args)
    assert code == 0, err
    assert "1 of 4 masks" in err and "empty and were dropped" in err
    data = json.loads(report.read_text())
    assert data["proposals"] == 3 and len(data["results"][0]["scores"]) == 3


def test_json_is_labelled_and_keeps_full_precision(cli, example, tiny_vit, nlp, tiny_args, tmp_path):
    from pycocotools import mask as mask_utils

    from globallocal.data.images import load_image
    from globallocal.proposals.files import load_proposals
    from globallocal.segmenter import Segmenter

    result = cli("segment", example["image"], "the wooden chair", "--masks", example["mask_dir"], "-o",
                 tmp_path / "m.png", "--json", "-", *tiny_args)
    assert result.code == 0, result.err
    data = json.loads(result.out)  # --json -: the JSON alone on the standard output
    assert data["image_size"] == {"height": example["size"][0], "width": example["size"][1]}
    assert data["proposal_source"] == f"masks:{example['mask_dir']}" and data["proposals"] == 3
    assert data["globallocal_version"] and data["box_format"].startswith("x0 y0 x1 y1 in whole pixels")
    assert {"load_models", "image_features", "answer", "write"} <= set(data["seconds"])
    (answer,) = data["results"]
    picture = load_image(example["image"])
    proposals = load_proposals(example["mask_dir"], (picture.height, picture.width))
    box = dict(zip(("x0", "y0", "x1", "y1"), proposals.boxes[answer["index"]].tolist()))
    assert answer["projection_box"] == box  # the paper's box, which the local crop follows, under its own name
    rle = {"size": answer["rle"]["size"], "counts": answer["rle"]["counts"].encode()}
    assert (mask_utils.decode(rle).astype(bool) == example["masks"][answer["index"]]).all()
    # Scores as computed, to the last bit: not rounded.
    segmenter = Segmenter(tiny_vit, nlp)
    segmenter.set_image(picture, proposals)
    assert answer["scores"] == [float(s) for s in segmenter.predict("the wooden chair").scores]


def test_written_files_are_shareable(run, example, tiny_args, tmp_path):
    previous = os.umask(0o022)
    try:
        code, err = run("segment", example["image"], "the chair", "--masks", example["mask_dir"], "-o",
                        tmp_path / "m.png", "--json", tmp_path / "m.json", *tiny_args)
    finally:
        os.umask(previous)
    assert code == 0, err
    for path in (tmp_path / "m.png", tmp_path / "m.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_pictures(run, example, tiny_args, tmp_path):
    from globallocal.outputs.drawing import PALETTE

    code, err = run("segment", example["image"], "the chair", "the table", "--masks", example["mask_dir"], "-o",
                    tmp_path / "m.png", "--overlay", tmp_path / "o.png", "--overlay-all", tmp_path / "all.png",
                    "--top-k-picture", tmp_path / "top.png", "--top-k", "2", *tiny_args)
    assert code == 0, err
    height, width = example["size"]
    for name in ("m_0.png", "m_1.png", "o_0.png", "o_1.png", "top_0.png", "top_1.png", "all.png"):
        assert (tmp_path / name).is_file(), name
    overlay = np.asarray(Image.open(tmp_path / "o_0.png"))
    assert overlay.shape[1] == width and overlay.shape[0] > height  # the caption is under the photo
    legend = np.asarray(Image.open(tmp_path / "all.png"))[height:]
    for color in PALETTE[:2]:  # a swatch of each phrase's colour in the legend
        assert (legend == np.array(color, dtype=np.uint8)).all(axis=2).any(), color
    top = np.asarray(Image.open(tmp_path / "top_0.png"))
    assert top.shape[1] == 2 * 320 + 8  # two tiles side by side


def test_pictures_of_a_tiny_photo_are_scaled_up_and_its_mask_is_not(run, tiny_args, tmp_path):
    from globallocal.outputs.drawing import PALETTE

    photo = tmp_path / "tiny.png"
    Image.new("RGB", (40, 30), (128, 128, 128)).save(photo)
    (tmp_path / "masks").mkdir()
    square = np.zeros((30, 40), dtype=np.uint8)
    square[8:22, 10:30] = 255
    Image.fromarray(square).save(tmp_path / "masks" / "000.png")
    # One mask for two phrases: both pick it.
    code, err = run("segment", photo, "the square", "the box", "--masks", tmp_path / "masks", "-o", tmp_path / "m.png",
                    "--overlay", tmp_path / "o.png", "--overlay-all", tmp_path / "all.png", *tiny_args)
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "m_0.png")), square)  # the mask at the photo's size
    overlay = np.asarray(Image.open(tmp_path / "o_0.png"))
    assert overlay.shape[1] == 320 and overlay.shape[0] > 240
    everything = np.asarray(Image.open(tmp_path / "all.png"))[:240]
    for color in PALETTE[:2]:  # each phrase's own outline
        assert (everything == np.array(color, dtype=np.uint8)).all(axis=2).any(), color


def test_proposals_folder_is_replaced_whole_or_refused(example, tmp_path):
    import torch

    from globallocal.errors import InputError
    from globallocal.proposals import Proposals
    from globallocal.proposals.files import save_proposals

    masks = torch.from_numpy(np.stack(example["masks"]))
    folder = tmp_path / "props"
    save_proposals(Proposals.from_masks(masks), folder)
    assert sorted(p.name for p in folder.iterdir()) == ["000.png", "001.png", "002.png", "proposals.json"]
    save_proposals(Proposals.from_masks(masks[:1]), folder)
    assert sorted(p.name for p in folder.iterdir()) == ["000.png", "proposals.json"]  # no stale 001, 002
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~_umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks", "props"]  # no temporary folder left
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not empty and does not hold an earlier set of proposals"):
        save_proposals(Proposals.from_masks(masks), mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_default_run_folder_names_tell_ablations_apart():
    from globallocal.cli import default_run_dir

    base = default_run_dir("refcoco", "val", "global-local", "paper-refcoco", "ViT-B-32", "freesolo")
    assert base == Path("runs/refcoco_val_global-local_paper-refcoco_ViT-B-32_freesolo")
    assert default_run_dir("refcoco", "val", "global-local", "paper-refcoco", "ViT-B-32", "freesolo", 0.9, 0.3) == \
        Path("runs/refcoco_val_global-local_paper-refcoco_ViT-B-32_freesolo_a0.9_b0.3")


def test_evaluate_resumes_with_weights_named_relatively(run, tmp_path, tiny_config_paths, tiny_checkpoints,
                                                       monkeypatch):
    refer = build_refer(tmp_path / "dataset")
    out = tmp_path / "run"
    monkeypatch.chdir(tiny_checkpoints["resnet"].parent)
    common = ["evaluate", "--dataset", "refcoco", "--split", "val", "--data-root", refer.data_root, "--images",
              refer.images_dir, "--proposals", "gt", "--out", out, "--clip-model", tiny_config_paths["resnet"],
              "--limit", "1"]
    code, err = run(*common, "--clip-weights", tiny_checkpoints["resnet"].name)
    assert code == 0, err
    code, err = run(*common[:-2], "--clip-weights", tiny_checkpoints["resnet"])
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["images_total"] == 3
