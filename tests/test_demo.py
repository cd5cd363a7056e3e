"""`make demo` offline: every missing model file named at once, and the files passed through make variables."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from globallocal.errors import InputError, WeightsError
from globallocal.methods.tcl import weights as tcl_weights
from globallocal.proposals import freesolo_checkpoint, sam_weights

REPO = Path(__file__).resolve().parents[1]
DEMO = ["segment", REPO / "examples" / "img_80472.jpg", "the man on the right"]


@pytest.fixture
def nothing_here(monkeypatch, tmp_path):
    """Offline (conftest), an empty hub cache, no FreeSOLO folder; loading the models is an error of its own."""
    from huggingface_hub import constants

    from globallocal import segmenter

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(freesolo_checkpoint, "default_weights_dirs", lambda: [tmp_path / "freesolo_weights"])
    monkeypatch.delenv("GLOBALLOCAL_FREESOLO_WEIGHTS", raising=False)
    monkeypatch.setattr(sam_weights, "default_sam_weights_dirs", lambda: [tmp_path / "sam_weights"])
    monkeypatch.setattr(tcl_weights, "default_weights_dir", lambda: tmp_path / "tcl_weights")
    monkeypatch.delenv(tcl_weights.WEIGHTS_ENV, raising=False)

    def loaded(*args, **kwargs):
        raise InputError("the models would load now")

    monkeypatch.setattr(segmenter.Segmenter, "from_pretrained", loaded)
    return tmp_path


def test_offline_every_missing_file_is_named_at_once_with_how_to_get_it(run, nothing_here):
    start = time.monotonic()
    code, err = run(*DEMO, "-o", nothing_here / "m.png", "--spacy-model", "en_core_web_xx")
    assert time.monotonic() - start < 15
    assert code == 2 and "Traceback" not in err
    folder = nothing_here / "freesolo_weights"
    assert err.strip().splitlines() == [
        "error: 3 files the models need are not on this machine, and none can be downloaded now (HF_HUB_OFFLINE "
        "is set); provide each, then run again:",
        "  CLIP weights ViT-B-32/openai (timm/vit_base_patch32_clip_224.openai): run once with network access to "
        "cache it, or download https://huggingface.co/timm/vit_base_patch32_clip_224.openai/resolve/main/"
        "open_clip_model.safetensors and pass --clip-model ViT-B-32-quickgelu --clip-weights PATH",
        f"  FreeSOLO weights FreeSOLO_R101_30k_pl.pth (not in {folder} nor the Hugging Face cache): run `hf download "
        f"xinlongwang/FreeSOLO FreeSOLO_R101_30k_pl.pth` on a connected machine (the Hugging Face cache is "
        f"searched), or download {freesolo_checkpoint.FREESOLO_URL} into {folder}/, or pass --freesolo-weights PATH",
        "  spaCy model 'en_core_web_xx' (not installed): install it with `python -m spacy download en_core_web_xx`, "
        "or pick another with --spacy-model",
    ]
    assert not (nothing_here / "m.png").exists()


def test_one_missing_file_is_one_line_and_given_files_are_not_missing(run, nothing_here, tiny_config_paths,
                                                                        tiny_checkpoints):
    tiny = ["--clip-model", tiny_config_paths["vit"], "--clip-weights", tiny_checkpoints["vit"]]
    code, err = run(*DEMO, "-o", nothing_here / "m.png", *tiny)
    (line,) = err.strip().splitlines()
    assert code == 2 and line.startswith("error: FreeSOLO weights FreeSOLO_R101_30k_pl.pth (not in ")
    assert "is not available locally and could not be downloaded (HF_HUB_OFFLINE is set)" in line
    checkpoint = nothing_here / "FreeSOLO_R101_30k_pl.pth"
    checkpoint.write_bytes(b"")
    code, err = run(*DEMO, "-o", nothing_here / "m.png", *tiny, "--freesolo-weights", checkpoint)
    assert code == 2 and err.strip() == "error: the models would load now"  # past the check


CLIP_B32 = "CLIP weights ViT-B-32/openai (timm/vit_base_patch32_clip_224.openai)"
CLIP_B16 = "CLIP weights ViT-B-16-quickgelu/openai (timm/vit_base_patch16_clip_224.openai)"


@pytest.mark.parametrize(("extra", "named"), [
    (["--proposals", "sam3"], [CLIP_B32, "SAM 3's weights (facebook/sam3)"]),
    (["--method", "tcl"], [CLIP_B16, "TCL weights tcl.pth (not in {tmp}/tcl_weights)"]),
    (["--method", "hybridgl"], ["CLIP weights ViT-B-16/openai",
                                "SAM vit_h weights sam_vit_h_4b8939.pth (not in {tmp}/sam_weights)"]),
    (["--method", "sam3", "--sam3-prompt", "expression"], ["SAM 3's weights (facebook/sam3)"]),
    (["--proposals", "sam3", "--sam3-fallback", "sam2"],
     [CLIP_B32, "SAM 3's weights (facebook/sam3)", "SAM 2 large checkpoint sam2.1_hiera_large.pt"]),
    (["--tcl-blend", "0.5"], [CLIP_B32, "TCL weights tcl.pth (not in {tmp}/tcl_weights)",
                              f"{CLIP_B16}, which TCL runs on", "FreeSOLO weights FreeSOLO_R101_30k_pl.pth"]),
    (["--method", "vlm"], ["the VLM Qwen/Qwen3-VL-8B-Instruct", "SAM 3's weights (facebook/sam3)"]),
], ids=["sam3-proposals", "tcl", "hybridgl", "sam3-method", "sam3-sam2-fallback", "tcl-blend", "vlm"])
def test_every_method_and_source_names_all_its_missing_files_at_once(run, nothing_here, extra, named):
    code, err = run(*DEMO, "-o", nothing_here / "m.png", *extra)
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err, err
    if len(named) == 1:
        assert lines == [f"error: {named[0]} is not available locally and could not be downloaded (HF_HUB_OFFLINE "
                         "is set); " + lines[0].split("(HF_HUB_OFFLINE is set); ")[1]]
        return
    assert lines[0].startswith(f"error: {len(named)} files the models need are not on this machine, and none can "
                               "be downloaded now (HF_HUB_OFFLINE is set)"), err
    for line, what in zip(lines[1:], named, strict=True):
        assert line.startswith(f"  {what.format(tmp=nothing_here)}"), (line, what)


def test_a_file_that_is_never_downloaded_is_named_online_too(monkeypatch, tmp_path):
    from globallocal.models import hub

    monkeypatch.setattr(sam_weights, "default_sam_weights_dirs", lambda: [tmp_path])
    monkeypatch.setattr(hub, "hub_unreachable_reason", lambda: None)
    clip = hub.MissingFile("CLIP weights ViT-B-16/openai", "download it")
    sam = sam_weights.missing_sam_weights("vit_b", None)
    with pytest.raises(WeightsError) as caught:  # CLIP would download, then SAM fail: SAM is named first
        hub.require_files([clip, sam])
    assert str(caught.value) == (f"SAM vit_b weights sam_vit_b_01ec64.pth (not in {tmp_path}) is not on this "
                                 f"machine; download {sam_weights.SAM_WEIGHTS_URL}sam_vit_b_01ec64.pth into "
                                 f"{tmp_path}/ or pass --sam-weights PATH")


def test_nothing_is_refused_that_a_download_or_its_own_loader_handles(monkeypatch):
    from globallocal.models import hub

    parser = hub.MissingFile("spaCy model 'x' (not installed)", "install it", downloadable=False,
                             reported_by_loader=True)
    clip = hub.MissingFile("CLIP weights ViT-B-32/openai", "download it")
    monkeypatch.setattr(hub, "hub_unreachable_reason", lambda: None)
    hub.require_files([clip, parser])  # online: CLIP is downloaded, and spaCy's loader names the parser
    monkeypatch.setattr(hub, "hub_unreachable_reason", lambda: "cannot resolve huggingface.co: no answer")
    hub.require_files([parser])
    with pytest.raises(WeightsError) as caught:
        hub.require_files([clip, parser])
    assert str(caught.value).splitlines()[1:] == [
        "  CLIP weights ViT-B-32/openai: download it", "  spaCy model 'x' (not installed): install it",
    ]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_demo_passes_the_weights_files_as_options():
    def demo_command(*variables: str) -> list[str]:
        dry = subprocess.run(["make", "-n", "-s", "demo", *variables], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout
        line = next(line for line in dry.replace("\\\n", " ").splitlines() if "globallocal segment" in line)
        return shlex.split(line.split("||")[0])

    given = demo_command("CLIP_WEIGHTS=/w/open clip.safetensors", "FREESOLO_WEIGHTS=/w/FreeSOLO.pth")
    assert given[-6:] == ["--clip-model", "ViT-B-32-quickgelu", "--clip-weights", "/w/open clip.safetensors",
                          "--freesolo-weights", "/w/FreeSOLO.pth"]
    assert given[-7] == "demo_out/man_on_the_right.json"
    assert demo_command()[-1] == "demo_out/man_on_the_right.json"
