"""The Python API's defaults agree with the command line's: device auto, the paper alias, sizes from proposals.json."""

from __future__ import annotations

import inspect

import pytest

from globallocal.errors import InputError
from globallocal.methods import get_method
from globallocal.proposals.files import load_proposals, save_proposals
from globallocal.segmenter import Segmenter


def test_from_pretrained_picks_the_device_like_the_command_line():
    assert inspect.signature(Segmenter.from_pretrained).parameters["device"].default == "auto"


@pytest.mark.parametrize(("method", "target"), [("global-local", "paper-refcoco"), ("hybridgl", "hybridgl-paper")])
def test_the_paper_alias_is_listed_among_the_presets(method, target):
    spec = get_method(method)
    assert "paper" in spec.presets and spec.presets["paper"] == spec.presets[target]
    assert spec.settings("paper") == spec.settings(target)
    assert spec.preset_names().count("paper") == 1


def test_a_proposals_folder_knows_its_photo_size(tmp_path, example):
    folder = tmp_path / "proposals"
    save_proposals(load_proposals(example["mask_dir"], example["size"]), folder)
    assert load_proposals(folder).masks.shape == (3, *example["size"])
    with pytest.raises(InputError, match=r"no proposals\.json in .* records the photo's size; give image_size"):
        load_proposals(example["mask_dir"])


def test_files_in_a_masks_folder_that_are_not_masks_are_named(tmp_path, example):
    (example["mask_dir"] / "notes.txt").write_text("not a mask")
    (example["mask_dir"] / "mask_9.jpg").write_bytes(b"jpeg")
    with pytest.warns(UserWarning, match=r"2 files left out, not PNG masks: mask_9\.jpg, notes\.txt"):
        assert len(load_proposals(example["mask_dir"], example["size"])) == 3


def test_settings_are_frozen_and_a_changed_copy_is_assigned(tiny_vit, nlp, example):
    import dataclasses

    import torch

    from globallocal.proposals import Proposals

    segmenter = Segmenter(tiny_vit, nlp)
    segmenter.set_image(example["image"], Proposals.from_masks(torch.from_numpy(example["masks"])))
    with pytest.raises(dataclasses.FrozenInstanceError):  # checked when made, so never changed in place
        segmenter.settings.alpha = 0.5
    segmenter.settings = dataclasses.replace(segmenter.settings, alpha=0.5)  # as docs/api.md says
    assert segmenter.settings.alpha == 0.5 and segmenter.predict("the wooden chair").index is not None
    with pytest.raises(InputError, match=r"alpha must be in \[0, 1\], got 2"):
        dataclasses.replace(segmenter.settings, alpha=2)


def test_a_failed_set_image_keeps_the_previous_image(tiny_vit, nlp, example, tmp_path):
    import torch

    from globallocal.errors import ImageError
    from globallocal.proposals import Proposals

    segmenter = Segmenter(tiny_vit, nlp)
    segmenter.set_image(example["image"], Proposals.from_masks(torch.from_numpy(example["masks"])))
    before = segmenter.predict("the wooden chair")
    (tmp_path / "broken.jpg").write_bytes(b"not a photo")
    with pytest.raises(ImageError):
        segmenter.set_image(tmp_path / "broken.jpg")
    with pytest.raises(InputError, match="masks are 2x2"):
        segmenter.set_image(example["image"], Proposals.from_masks(torch.ones((1, 2, 2), dtype=torch.bool)))
    with pytest.raises(InputError, match="masks are 2x2"):
        segmenter.set_features(example["image"], Proposals.from_masks(torch.ones((1, 2, 2), dtype=torch.bool)), {})
    after = segmenter.predict("the wooden chair")
    assert after.index == before.index and torch.equal(after.scores, before.scores)


def test_python_api_errors_name_keywords_and_the_command_line_names_its_flags(tiny_config_paths, tiny_checkpoints):
    from globallocal.cli import command_line_wording

    with pytest.raises(InputError) as resnet:
        Segmenter.from_pretrained(str(tiny_config_paths["resnet"]), str(tiny_checkpoints["resnet"]),
                                  method="hybridgl")
    assert str(resnet.value).startswith("method=hybridgl needs a ViT CLIP") and "clip_model=" in str(resnet.value)
    with pytest.raises(InputError) as device:
        Segmenter.from_pretrained(str(tiny_config_paths["vit"]), str(tiny_checkpoints["vit"]), device="gpu")
    assert str(device.value).startswith("unknown device='gpu'")
    for error in (resnet.value, device.value):
        assert "--" not in str(error)
    # The command line words the same errors with its own flags.
    assert command_line_wording(str(device.value)).startswith("unknown --device 'gpu'; use auto")
    assert command_line_wording("pass clip_model=ViT-B-16-quickgelu clip_weights=PATH, or spacy_model=") == \
        "pass --clip-model ViT-B-16-quickgelu --clip-weights PATH, or --spacy-model"
    for untouched in ("RAY_ADDRESS=garbage", "scoring.alpha=0.5", "runs/out=1/report.json", "no_such_option=1"):
        assert command_line_wording(untouched) == untouched


def test_messages_the_python_api_can_raise_name_no_command_line_flag():
    """Strings in the modules a Python-API call runs through (docstrings and comments apart) name no `--flag`:
    they name the keyword (``clip_model=``), which the command line turns into its flag."""
    import ast
    import re
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "globallocal"
    places = ["models", "segmenter.py", "methods/__init__.py", "methods/base.py", "methods/settings.py",
              "methods/global_local", "methods/hybridgl", "proposals/files.py", "proposals/masks.py", "data/images.py"]
    files = [path for place in places for path in
             (sorted((package / place).rglob("*.py")) if (package / place).is_dir() else [package / place])]
    flag = re.compile(r"(?<![\w-])--[a-z]")
    found = []
    for path in files:
        tree = ast.parse(path.read_text())
        prose = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
        found += [f"{path.relative_to(package)}:{node.lineno}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose
                  and flag.search(node.value)]
    assert len(files) > 20 and not found, found
