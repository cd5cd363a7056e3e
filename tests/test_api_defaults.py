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
    with pytest.warns(UserWarning, match=r"2 files that are not PNG masks were left out: mask_9\.jpg, notes\.txt"):
        assert len(load_proposals(example["mask_dir"], example["size"])) == 3
