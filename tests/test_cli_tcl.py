"""TCL through the command line: `segment --method tcl`, soft outputs, the blend, `evaluate --method tcl`.

The TCL checkpoint is written by the test with the released key names (the
manifest) at the tiny ViT's shapes; the tiny ViT stands in for ViT-B/16.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from refer_fixtures import build_refer

from globallocal.methods import get_method
from globallocal.methods.tcl import TCL_URL
from globallocal.methods.tcl import weights as tcl_weights
from globallocal.runs.evaluate import REPORT_JSON
from globallocal.segmenter import Segmenter

PHRASE = "the red cat on the left"


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(np.random.default_rng(8).integers(0, 256, (36, 52, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def tiny(tiny_config_paths, tiny_checkpoints, tcl_checkpoint) -> list:
    return ["--clip-model", tiny_config_paths["vit"], "--clip-weights", tiny_checkpoints["vit"],
            "--tcl-checkpoint", tcl_checkpoint]


@pytest.fixture
def no_tcl_weights(tmp_path, monkeypatch) -> Path:
    """No checkpoint anywhere TCL looks (an empty default folder, no env, an empty working folder), offline."""
    folder = tmp_path / "tcl_weights"
    monkeypatch.setattr(tcl_weights, "default_weights_dir", lambda: folder)
    monkeypatch.delenv(tcl_weights.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return folder


def test_segment_tcl_writes_mask_soft_mask_heatmap_and_json(cli, tmp_path, tiny, photo, tiny_config_paths,
                                                            tiny_checkpoints, tcl_checkpoint):
    out, soft, heat, report = (tmp_path / name for name in ("m.png", "s.npy", "h.png", "r.json"))
    result = cli("segment", photo, PHRASE, "--method", "tcl", *tiny, "--tcl-window", "whole", "-o", out,
                 "--soft-mask", soft, "--heatmap", heat, "--json", report)
    assert result.code == 0, result.err

    segmenter = Segmenter.from_pretrained(
        str(tiny_config_paths["vit"]), str(tiny_checkpoints["vit"]), method="tcl",
        method_options={"weights": str(tcl_checkpoint)}, window="whole",
    )
    expected = segmenter.segment(photo, [PHRASE])[0]
    saved = np.load(soft)
    assert saved.dtype == np.float32 and saved.shape == (36, 52)
    assert np.array_equal(saved, expected.soft_mask.numpy())  # full precision, the Python API's own

    mask = np.asarray(Image.open(out)) > 0
    assert mask.shape == (36, 52) and np.array_equal(mask, saved > 0.4)
    with Image.open(heat) as picture:
        picture.verify()
    with Image.open(heat) as picture:
        # The tiny photo scaled up to 320 pixels wide (as every captioned picture), the caption and legend below.
        assert picture.format == "PNG" and picture.width == 320 and picture.height > round(36 * 320 / 52)

    record = json.loads(report.read_text())
    assert record["method"] == "tcl" and record["proposals"] is None
    assert record["settings"]["window"] == "whole"
    assert record["settings"]["tcl_weights"]["file"] == str(tcl_checkpoint)
    answer = record["results"][0]
    assert answer["threshold"] == 0.4 and answer["area"] == int(mask.sum()) and answer["index"] is None


def test_the_json_settings_are_the_threshold_and_preprocessing_used(cli, tmp_path, tiny, photo):
    result = cli("segment", photo, PHRASE, "--method", "tcl", *tiny, "-o", tmp_path / "m.png", "--json", "-")
    assert result.code == 0, result.err
    record = json.loads(result.out)
    settings = record["settings"]
    # Left to their defaults: PAMR's threshold 0.4 and the slide window's eval preprocessing.
    assert settings["threshold"] == 0.4 == record["results"][0]["threshold"] and settings["preprocessing"] == "eval"
    # The 36 x 52 photo: short side to 448 (52 * 448 / 36 = 647.1), two 448-pixel windows side by side.
    assert settings["input_size"] == {"height": 448, "width": 647}
    assert settings["windows"] == 2 and settings["window_size"] == {"height": 448, "width": 448}
    assert settings["window_stride"] == 224 and settings["window"] == "slide" and settings["pamr"] is True
    result = cli("segment", photo, PHRASE, "--method", "tcl", *tiny, "--no-tcl-pamr", "--tcl-window", "demo",
                 "-o", tmp_path / "m.png", "--json", "-")
    assert result.code == 0, result.err
    settings = json.loads(result.out)["settings"]
    assert settings["threshold"] == 0.5 and settings["preprocessing"] == "demo" and settings["windows"] == 1
    assert settings["input_size"] == settings["window_size"] == {"height": 224, "width": 323}
    assert settings["window_stride"] is None


def test_tcl_weight_zero_keeps_the_answer_and_reports_tcl_scores(cli, tmp_path, tiny, example, monkeypatch):
    from globallocal.methods.tcl import blend as tcl_blend

    # The tiny ViT stands in for ViT-B/16 (named as TCL's CLIP, so that none is looked for on the hub).
    monkeypatch.setattr(tcl_blend, "tcl_clip_for", lambda inner, clip_weights=None: inner.clip)
    clip, tcl = tiny[:4], [*tiny[4:], "--tcl-clip-weights", tiny[3]]
    common = ["segment", example["image"], "the wooden chair", *clip, "--masks", example["mask_dir"]]
    plain, blended = tmp_path / "plain.json", tmp_path / "blend.json"
    done = cli(*common, "-o", tmp_path / "a.png", "--json", plain)
    assert done.code == 0, done.err
    done = cli(*common, *tcl, "--tcl-blend", "0", "--tcl-window", "demo", "-o", tmp_path / "b.png",
               "--json", blended, "--soft-mask", tmp_path / "b.npy")
    assert done.code == 0, done.err

    own, mixed = (json.loads(path.read_text())["results"][0] for path in (plain, blended))
    assert mixed["index"] == own["index"] == mixed["method_index"]
    assert mixed["method_scores"] == own["scores"] and mixed["tcl_weight"] == 0.0
    assert len(mixed["tcl_scores"]) == 3 and all(isinstance(value, float) for value in mixed["tcl_scores"])
    assert json.loads(blended.read_text())["method"] == "global-local+tcl"
    tcl_settings = json.loads(blended.read_text())["settings"]["tcl"]
    assert tcl_settings["preprocessing"] == "demo" and "threshold" not in tcl_settings  # no threshold in a blend
    assert np.load(tmp_path / "b.npy").shape == example["size"]


def test_offline_without_weights_is_one_line_within_seconds(cli, tiny, photo, no_tcl_weights):
    start = time.monotonic()
    done = cli("segment", photo, PHRASE, "--method", "tcl", *tiny[:-2], "-o", "m.png")
    assert done.code == 2 and time.monotonic() - start < 20
    # The tiny ViT stands in for ViT-B/16, which TCL's head was trained on: that is warned about, once.
    warned, message = done.err.strip().split("\n")
    assert warned.startswith("warning: TCL was trained on CLIP ViT-B-16; with --clip-model ")
    assert message.startswith("error:")
    assert "tcl.pth" in message and str(no_tcl_weights) in message and TCL_URL in message
    assert not Path("m.png").exists()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--soft-mask", "s.npy"], "--soft-mask needs TCL's soft mask, which --method global-local does not give"),
        (["--heatmap", "h.png"], "--heatmap needs TCL's soft mask"),
        (["--method", "tcl", "--soft-mask", "s.png"], "--soft-mask s.png must end in .npy"),
        (["--tcl-window", "whole"], "--tcl-window applies to --method tcl or with --tcl-blend"),
        (["--no-tcl-pamr"], "--tcl-pamr/--no-tcl-pamr applies to --method tcl"),
        (["--method", "tcl", "--tcl-blend", "0.5"], "--tcl-blend blends TCL into a proposal method"),
        (["--tcl-blend", "0.5", "--tcl-threshold", "0.3"], "--tcl-threshold cuts TCL's own answer"),
        (["--tcl-blend", "1.5"], "--tcl-blend must be in [0, 1], got 1.5"),
        (["--method", "tcl", "--tcl-window", "tiles"], "TCL window must be one of slide, whole, demo"),
        (["--method", "tcl", "--alpha", "0.9"], "--alpha does not apply to --method tcl"),
        (["--method", "tcl", "--masks", "masks"], "--masks does not apply to --method tcl: it draws its own mask"),
        (["--method", "tcl", "--proposals", "sam"], "--proposals does not apply to --method tcl"),
        (["--method", "tcl", "--max-proposals", "5"], "--max-proposals does not apply to --method tcl"),
    ],
)
def test_options_that_do_not_apply_are_refused_by_name(cli, photo, no_tcl_weights, args, named):
    done = cli("segment", photo, PHRASE, *args, "-o", "m.png")
    message = done.err.strip()
    assert done.code == 2 and message.startswith("error: ") and "\n" not in message
    assert named in message
    assert not Path("m.png").exists() and not Path("s.npy").exists()


def test_evaluate_tcl_without_proposals_records_settings_and_weights(cli, tmp_path, tiny, tcl_checkpoint,
                                                                     monkeypatch):
    refer = build_refer(tmp_path / "dataset")
    monkeypatch.chdir(tmp_path)
    done = cli("evaluate", "--dataset", "refcoco", "--split", "val", "--data-root", refer.data_root,
               "--images", refer.images_dir, "--limit", "2", "--method", "tcl", *tiny, "--tcl-window", "demo",
               "--no-tcl-pamr")
    assert done.code == 0, done.err
    # The default run folder names what tells runs apart: the method, its preset, the model, no proposals.
    out = tmp_path / "runs" / f"refcoco_val_tcl_{get_method('tcl').default_preset}_{Path(tiny[1]).stem}_none"
    settings = json.loads((out / REPORT_JSON).read_text())["config"]["settings"]
    assert settings["method"] == "tcl" and settings["proposals"] is None
    assert settings["window"] == "demo" and settings["pamr"] is False and settings["templates"] == "identity"
    assert settings["threshold"] is None and "input_size" not in settings  # as configured: a run's identity
    assert settings["tcl_weights"]["file"] == str(tcl_checkpoint)
    assert settings["tcl_weights"]["size"] == tcl_checkpoint.stat().st_size
    assert len(settings["tcl_weights"]["sha256"]) == 64

    done = cli("evaluate", "--dataset", "refcoco", "--split", "val", "--data-root", refer.data_root,
               "--images", refer.images_dir, "--method", "tcl", "--proposals", "gt", *tiny)
    assert done.code == 2 and "--proposals does not apply to --method tcl" in done.err


def test_the_old_spellings_still_work_with_a_note(cli, photo, no_tcl_weights):
    done = cli("segment", photo, PHRASE, "--method", "tcl", "--tcl-weight", "0.5", "-o", "m.png")
    warned, refused = done.err.strip().split("\n")
    assert warned == "warning: --tcl-weight is now called --tcl-blend (the old name still works)"
    assert done.code == 2 and refused.startswith("error: --tcl-blend blends TCL into a proposal method")
    done = cli("segment", photo, PHRASE, "--tcl-weights", "x.pth", "-o", "m.png")
    assert "--tcl-weights is now called --tcl-checkpoint" in done.err
    assert "error: --tcl-checkpoint applies to --method tcl or with --tcl-blend" in done.err


def _inner(name, weights, quick_gelu=True):
    clip = SimpleNamespace(name=name, weights=str(weights), uses_quick_gelu=quick_gelu, dtype=torch.float32,
                           device=torch.device("cpu"))
    return SimpleNamespace(clip=clip)


def test_tcl_runs_on_a_local_vit_b16_file_or_the_one_named(tmp_path, monkeypatch):
    from globallocal.errors import WeightsError
    from globallocal.methods.tcl import blend as tcl_blend

    local = tmp_path / "clip_vitb16.pt"
    local.write_bytes(b"weights")
    loads = []

    def offline(name, weights, **kwargs):
        loads.append((name, weights))
        if weights == "openai":
            raise WeightsError("CLIP weights ViT-B-16-quickgelu/openai (timm/vit_base_patch16_clip_224.openai) is not "
                               "available locally and could not be downloaded; run once with network access to cache "
                               "it, or download URL and pass --clip-model ViT-B-16-quickgelu --clip-weights PATH")
        return f"loaded {weights}"

    monkeypatch.setattr(tcl_blend, "load_clip", offline)
    # The method's own CLIP is OpenAI's ViT-B/16 from a file (QuickGELU name): TCL shares it, nothing loads.
    inner = _inner("ViT-B-16-quickgelu", local)
    assert tcl_blend.tcl_clip_for(inner) is inner.clip and loads == []
    # Another CLIP, offline: the message names the option that supplies TCL's, and only that one.
    with pytest.raises(WeightsError) as missing:
        tcl_blend.tcl_clip_for(_inner("ViT-B-32-quickgelu", local))
    assert "pass its file with --tcl-clip-weights PATH" in str(missing.value)
    assert "--clip-weights PATH" not in str(missing.value).replace("--tcl-clip-weights PATH", "")
    assert tcl_blend.tcl_clip_for(_inner("ViT-B-32-quickgelu", local), str(local)) == f"loaded {local}"
    assert loads[-1] == (tcl_blend.TCL_CLIP_MODEL, str(local))
