"""Shared fixtures: tiny random CLIP models, the parser, the example photos.

HF_HUB_OFFLINE is set before anything imports huggingface_hub, so no test
waits on the network; tests that need real weights skip when they are absent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
# Hashes of weights files are remembered in a throw-away folder, not the user's ~/.cache.
os.environ["GLOBALLOCAL_CACHE_DIR"] = tempfile.mkdtemp(prefix="globallocal-test-cache-")

import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from tiny_models import TINY_CONFIGS  # noqa: E402

from globallocal.models.clip import ClipBundle, load_clip  # noqa: E402
from globallocal.models.text import load_parser  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module of tiny tensors: threads only add contention on a shared machine
    (20x slower under load). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_hang():
    """Fail (instead of hanging the suite) when a read blocks, e.g. on a FIFO."""

    def expired(*_):
        raise AssertionError("the read blocked")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(5)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="session")
def tiny_config_paths(tmp_path_factory) -> dict[str, Path]:
    """open_clip model-config JSON files of two tiny architectures."""
    folder = tmp_path_factory.mktemp("clip_configs")
    paths = {}
    for family, config in TINY_CONFIGS.items():
        paths[family] = folder / f"tiny-{family}.json"
        paths[family].write_text(json.dumps(config))
    return paths


@pytest.fixture(scope="session")
def tiny_checkpoints(tiny_config_paths) -> dict[str, Path]:
    """A random open_clip checkpoint file per tiny architecture (seeded)."""
    paths = {}
    for family, config_path in tiny_config_paths.items():
        torch.manual_seed(0)
        paths[family] = config_path.with_suffix(".pt")
        torch.save(open_clip.model.CLIP(**TINY_CONFIGS[family]).state_dict(), paths[family])  # open_clip's layout
    return paths


@pytest.fixture(scope="session", params=["vit", "resnet"])
def tiny_clip(request, tiny_config_paths, tiny_checkpoints) -> ClipBundle:
    return load_clip(str(tiny_config_paths[request.param]), str(tiny_checkpoints[request.param]))


@pytest.fixture(scope="session")
def tiny_vit(tiny_config_paths, tiny_checkpoints) -> ClipBundle:
    return load_clip(str(tiny_config_paths["vit"]), str(tiny_checkpoints["vit"]))


@pytest.fixture(scope="session")
def tiny_vit12(tiny_config_paths, tiny_checkpoints) -> ClipBundle:
    """A 12-block tiny ViT: HybridGL's masking block 9 and GEM's depth 7 apply as in ViT-B-16."""
    return load_clip(str(tiny_config_paths["vit12"]), str(tiny_checkpoints["vit12"]))


@pytest.fixture(scope="session")
def tiny_resnet(tiny_config_paths, tiny_checkpoints) -> ClipBundle:
    return load_clip(str(tiny_config_paths["resnet"]), str(tiny_checkpoints["resnet"]))


@pytest.fixture(scope="session")
def nlp():
    return load_parser()


@pytest.fixture
def example(tmp_path) -> dict:
    """Example photo 44266 ('the wooden chair') with its ground-truth mask and two more masks."""
    image = EXAMPLES / "img_44266.jpg"
    gt = np.asarray(Image.open(EXAMPLES / "mask_44266.png")) > 0
    height, width = gt.shape
    box = np.zeros_like(gt)
    box[: height // 2, : width // 2] = True
    masks = np.stack([gt, box, ~gt])
    folder = tmp_path / "masks"
    folder.mkdir()
    for i, mask in enumerate(masks):
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"mask_{i}.png")
    return {"image": image, "masks": masks, "mask_dir": folder, "size": (height, width)}


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run the `globallocal` command in-process: cli(*args) -> CliResult(code, out, err)."""
    from globallocal import cli as cli_module

    def invoke(*args) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["globallocal", *map(str, args)])
        monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main() replaces it
        capsys.readouterr()
        try:
            cli_module.main()
            code = 0
        except SystemExit as done:
            code = done.code or 0
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke


@pytest.fixture
def run(cli):
    """(exit code, stderr) of a command."""

    def invoke(*args) -> tuple[int, str]:
        result = cli(*args)
        return result.code, result.err

    return invoke


@pytest.fixture
def copy_example(tmp_path):
    def copy(name: str) -> Path:
        return Path(shutil.copy(EXAMPLES / name, tmp_path / name))

    return copy


@pytest.fixture(scope="session")
def tcl_checkpoint(tiny_vit, tmp_path_factory) -> Path:
    """Random TCL head weights under the released names (every key of the manifest, none more), at the tiny ViT's
    shapes (it stands in for ViT-B/16)."""
    from globallocal.methods.tcl import TCLHead
    from globallocal.methods.tcl.weights import checkpoint_key

    generator = torch.Generator().manual_seed(5)
    head = TCLHead(**TCLHead.dims_for(tiny_vit)).state_dict()
    state = {checkpoint_key(k): 0.05 * torch.randn(v.shape, generator=generator) for k, v in head.items()}
    manifest = json.loads((REPO / "tests" / "tcl_state_dict_manifest.json").read_text())
    assert set(state) == {entry["key"] for entry in manifest}
    path = tmp_path_factory.mktemp("tcl") / "tcl.pth"
    torch.save({"model": state}, path)
    return path


@pytest.fixture(scope="session")
def sam3_folder(tmp_path_factory) -> Path:
    """A tiny random SAM 3 saved in the transformers layout (tests/tiny_sam3.py), for --sam3-weights."""
    from tiny_sam3 import save_tiny_sam3  # transformers loads only for the tests that use it

    return save_tiny_sam3(tmp_path_factory.mktemp("sam3"))


@pytest.fixture(scope="session")
def vlm_folders(tmp_path_factory) -> dict[str, Path]:
    """Tiny random Qwen2.5-VL and Qwen3-VL saved in the transformers layout (tests/tiny_vlm.py), by family."""
    from tiny_vlm import FAMILIES, save_tiny_vlm  # transformers loads only for the tests that use it

    return {family: save_tiny_vlm(tmp_path_factory.mktemp(family), family) for family in FAMILIES}


@pytest.fixture(scope="session")
def photo_file(tmp_path_factory) -> Path:
    """A 64 x 48 PNG of random pixels (seeded)."""
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
    return path
