"""FreeSOLO (and SAM) as the proposal source of the commands, with checkpoints written by the tests."""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pytest
import torch
from PIL import Image
from test_freesolo import random_checkpoint

from globallocal.proposals import freesolo_checkpoint as checkpoint_module
from globallocal.proposals.files import INDEX_FILE


@pytest.fixture(scope="module")
def freesolo_checkpoint(tmp_path_factory):
    """A random checkpoint in the released file's layout, category bias high enough to yield masks."""
    path = tmp_path_factory.mktemp("freesolo_cli") / "random.pth"
    torch.save({"model": random_checkpoint(seed=1, cate_bias=4.0)}, path)
    return path


@pytest.fixture
def small_photo(tmp_path, copy_example):
    """The example photo at 160x120, to keep the ResNet-101 forward short."""
    path = tmp_path / "small.jpg"
    Image.open(copy_example("img_80472.jpg")).resize((160, 120)).save(path)
    return path


def test_segment_uses_freesolo_by_default_and_a_proposals_folder_round_trips(
    run, small_photo, freesolo_checkpoint, tiny_config_paths, tiny_checkpoints, tmp_path
):
    out, report = tmp_path / "man.png", tmp_path / "man.json"
    source = ["--freesolo-weights", freesolo_checkpoint, "--max-proposals", "5", "--score-threshold", "0.2"]
    code, err = run("segment", small_photo, "the man on the right", "-o", out, "--json", report, *source,
                    "--clip-model", tiny_config_paths["vit"], "--clip-weights", tiny_checkpoints["vit"])
    assert code == 0, err
    data = json.loads(report.read_text())
    assert 1 <= data["proposals"] <= 5
    assert np.asarray(Image.open(out)).shape == (120, 160)

    folder = tmp_path / "props"
    code, err = run("proposals", small_photo, "-o", folder, *source)
    assert code == 0, err
    index = json.loads((folder / INDEX_FILE).read_text())
    # No terminal here: the step that takes the time is a line, as segment's, evaluate's and batch's are.
    count = len(index["proposals"])
    assert err.splitlines() == ["proposals: freesolo proposals...",
                                f"{count} proposal{'s' if count != 1 else ''} written to {folder}"]
    assert index["image_size"] == {"height": 120, "width": 160} and 1 <= len(index["proposals"]) <= 5
    scores = [entry["score"] for entry in index["proposals"]]
    assert scores == sorted(scores, reverse=True)
    # proposals.json says what made its masks, from which photo, as segment's JSON (and evaluate) record it.
    assert index["image"] == str(small_photo)
    described, segmented = index["configuration"], data["configuration"]
    checkpoint = freesolo_checkpoint.read_bytes()
    assert described["weights"] == {"freesolo": {"size": len(checkpoint),
                                                 "sha256": hashlib.sha256(checkpoint).hexdigest()}}
    assert described["weights"]["freesolo"] == segmented["weights"]["freesolo"]
    settings = described["settings"]
    assert settings == {key: segmented["settings"][key] for key in ("proposals", "freesolo", "device", "precision")}
    assert settings["proposals"] == "freesolo" and settings["device"] == "cpu" and settings["precision"] == "fp32"
    assert settings["freesolo"]["max_proposals"] == 5 and settings["freesolo"]["score_threshold"] == 0.2

    code, err = run("segment", small_photo, "the man", "--masks", folder, "-o", tmp_path / "m.png",
                    "--json", tmp_path / "m.json", "--clip-model", tiny_config_paths["resnet"],
                    "--clip-weights", tiny_checkpoints["resnet"])
    assert code == 0, err
    assert err.splitlines()[0] == f"segment: scoring {count} proposal{'s' if count != 1 else ''}..."
    result = json.loads((tmp_path / "m.json").read_text())["results"][0]
    chosen = index["proposals"][result["index"]]["mask"]
    assert result["file"] == chosen  # numbered in the index's order, named as it names them
    assert result["box"] == index["proposals"][result["index"]]["box"]
    assert (np.asarray(Image.open(tmp_path / "m.png")) == np.asarray(Image.open(folder / chosen))).all()


def test_missing_freesolo_weights_offline(run, small_photo, tiny_config_paths, tiny_checkpoints, tmp_path,
                                          monkeypatch):
    monkeypatch.setattr(checkpoint_module, "default_weights_dirs", lambda: [tmp_path / "freesolo_weights"])
    monkeypatch.delenv("GLOBALLOCAL_FREESOLO_WEIGHTS", raising=False)
    start = time.monotonic()
    code, err = run("segment", small_photo, "the man", "-o", tmp_path / "m.png",
                    "--clip-model", tiny_config_paths["vit"], "--clip-weights", tiny_checkpoints["vit"])
    assert time.monotonic() - start < 20
    assert code == 2 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert "FreeSOLO_R101_30k_pl.pth" in line and checkpoint_module.FREESOLO_URL in line
    assert "--freesolo-weights" in line
    assert not (tmp_path / "m.png").exists()


def test_sam_options_do_not_apply_to_freesolo(run, small_photo, tmp_path):
    code, err = run("proposals", small_photo, "-o", tmp_path / "p", "--points-per-side", "8")
    assert code == 2 and err.startswith("error: ") and "not FreeSOLO" in err


def test_unknown_proposal_source(run, small_photo, tmp_path):
    code, err = run("proposals", small_photo, "-o", tmp_path / "p", "--proposals", "sam4")
    assert code == 2 and "unknown proposal source 'sam4'" in err


def test_precision_runs_freesolo_in_it_too(run, small_photo, freesolo_checkpoint, tiny_config_paths, tiny_checkpoints,
                                           tmp_path, monkeypatch):
    from globallocal.proposals.freesolo import FreeSOLOGenerator

    dtypes = []
    generate = FreeSOLOGenerator.generate_from_tensor

    def at_the_photos_size(self, tensor, image_size):
        dtypes.append(self.dtype)
        # 64 rows, not 800: bf16 products on a CPU without bf16 units are slow (60 s here at 800).
        smaller = torch.nn.functional.interpolate(tensor[None], size=(64, 96), mode="bilinear")[0]
        return generate(self, smaller, image_size)

    monkeypatch.setattr(FreeSOLOGenerator, "generate_from_tensor", at_the_photos_size)
    code, err = run("segment", small_photo, "the man on the right", "-o", tmp_path / "m.png", "--precision", "bf16",
                    "--freesolo-weights", freesolo_checkpoint, "--clip-model", tiny_config_paths["vit"],
                    "--clip-weights", tiny_checkpoints["vit"])
    assert code == 0, err
    assert dtypes == [torch.bfloat16]
    assert np.asarray(Image.open(tmp_path / "m.png")).shape == (120, 160)
