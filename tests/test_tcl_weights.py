"""TCL's checkpoint: finding it, the offline message, strict loading against the released layout."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from globallocal.errors import WeightsError
from globallocal.methods.tcl import TCL_URL, WEIGHTS_ENV, TCLHead, load_tcl_head, resolve_tcl_weights
from globallocal.methods.tcl import weights as tcl_weights
from globallocal.methods.tcl.weights import checkpoint_key

MANIFEST = Path(__file__).with_name("tcl_state_dict_manifest.json")
TINY = {"width": 64, "heads": 2, "embed_dim": 32}


@pytest.fixture(scope="module")
def manifest() -> list[dict]:
    return json.loads(MANIFEST.read_text())


@pytest.fixture(scope="module")
def released(manifest, tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A checkpoint laid out as the released tcl.pth, written from the manifest (random values, float16)."""
    generator = torch.Generator().manual_seed(0)
    model = {
        entry["key"]: torch.randn(entry["shape"], generator=generator).to(torch.float16) for entry in manifest
    }
    path = tmp_path_factory.mktemp("tcl") / "tcl.pth"
    torch.save({"model": model, "epoch": 7}, path)  # other top-level entries are ignored
    return path, model


def tiny_checkpoint(path: Path, edit=None) -> Path:
    state = {checkpoint_key(key): torch.randn(value.shape) for key, value in TCLHead(**TINY).state_dict().items()}
    if edit:
        edit(state)
    torch.save({"model": state}, path)
    return path


def test_head_keys_and_shapes_are_the_manifest(manifest):
    head = {checkpoint_key(key): list(value.shape) for key, value in TCLHead().state_dict().items()}
    assert head == {entry["key"]: entry["shape"] for entry in manifest}
    assert len(head) == 37 and sum(torch.Size(shape).numel() for shape in head.values()) == 28_725_510


def test_released_layout_loads_as_float32(released):
    path, model = released
    head = load_tcl_head(path)
    state = head.state_dict()
    for key, value in state.items():
        assert value.dtype == torch.float32
        assert torch.equal(value, model[checkpoint_key(key)].float()), key


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda s: s.pop("masker.sim2mask.w"), "1 missing (masker.sim2mask.w)"),
        (lambda s: s.__setitem__("masker.extra.weight", torch.zeros(3)), "1 unexpected (masker.extra.weight)"),
        (
            lambda s: s.__setitem__("masker.image_encoder.decoder.image_proj.proj", torch.zeros(32, 64)),
            "1 of the wrong shape (masker.image_encoder.decoder.image_proj.proj (32, 64) instead of (64, 32))",
        ),
        (  # an integer tensor would be cast to float silently: refused like a missing one
            lambda s: s.__setitem__("masker.sim2mask.w", s["masker.sim2mask.w"].long()),
            "1 of the wrong dtype (masker.sim2mask.w int64 instead of floating)",
        ),
    ],
    ids=["missing", "extra", "reshaped", "integer"],
)
def test_strict_loading_names_the_key(tmp_path, tiny_vit, edit, named):
    path = tiny_checkpoint(tmp_path / "bad.pth", edit)
    with pytest.raises(WeightsError) as error:
        load_tcl_head(path, tiny_vit)
    assert named in str(error.value) and "\n" not in str(error.value)
    assert TCL_URL in str(error.value)


def test_tiny_checkpoint_loads_for_a_tiny_clip(tmp_path, tiny_vit):
    head = load_tcl_head(tiny_checkpoint(tmp_path / "ok.pth"), tiny_vit)
    assert head.image_proj.proj.shape == (64, 32)


class Payload:
    """A pickled object: loading it would run code."""


def test_pickle_payload_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"masker.sim2mask.w": torch.zeros(())}, "object": Payload()}, path)
    with pytest.raises(WeightsError, match="holds code.*will not be loaded"):
        load_tcl_head(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "text.pth"
    path.write_text("hello")
    with pytest.raises(WeightsError, match="cannot read TCL weights"):
        load_tcl_head(path)


@pytest.fixture
def no_default_weights(tmp_path, monkeypatch):
    folder = tmp_path / "tcl_weights"
    monkeypatch.setattr(tcl_weights, "default_weights_dir", lambda: folder)
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    return folder


def test_offline_fails_fast_naming_file_folder_and_url(no_default_weights):
    start = time.monotonic()
    with pytest.raises(WeightsError) as error:
        resolve_tcl_weights()
    message = str(error.value)
    assert time.monotonic() - start < 5
    assert "tcl.pth" in message and str(no_default_weights) in message and TCL_URL in message
    assert "HF_HUB_OFFLINE" in message and "\n" not in message


def test_explicit_env_and_folder_are_found_in_order(no_default_weights, tmp_path, monkeypatch):
    no_default_weights.mkdir()
    (no_default_weights / "tcl.pth").write_bytes(b"x")
    assert resolve_tcl_weights() == no_default_weights / "tcl.pth"
    named = tmp_path / "mine.pth"
    named.write_bytes(b"x")
    monkeypatch.setenv(WEIGHTS_ENV, str(named))
    assert resolve_tcl_weights() == named
    with pytest.raises(WeightsError, match="TCL weights file not found"):
        resolve_tcl_weights(tmp_path / "absent.pth")


def test_working_folder_is_looked_in(no_default_weights, tmp_path):
    (tmp_path / "tcl_weights").mkdir(exist_ok=True)
    local = tmp_path / "tcl_weights" / "tcl.pth"
    local.write_bytes(b"x")
    assert resolve_tcl_weights().resolve() == local.resolve()
