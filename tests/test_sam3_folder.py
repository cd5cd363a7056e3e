"""A SAM 3 folder is checked before anything is built from it: its tensors one to one, its sizes bounded.

Damaged copies of a tiny random SAM 3 (tests/tiny_sam3.py): a tensor
missing, of an integer dtype or extra is refused, naming it (transformers
would initialise a missing one at random and cast an integer one); sizes in
config.json and the processor's configuration that would allocate tens of GB,
a string where a number belongs, and a huge tokenizer file are refused by the
torch-free folder check. A video snapshot (facebook/sam3's layout) loads.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_sam3 import save_tiny_sam3

from globallocal.errors import WeightsError
from globallocal.proposals.sam3_weights import check_sam3_folder, load_sam3

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_sam3(tmp_path_factory.mktemp("sam3") / "tiny")


@pytest.fixture
def copy(tiny, tmp_path):
    """A copy of the tiny snapshot to damage (the weights file linked, not copied, until it is rewritten)."""
    folder = tmp_path / "copy"
    shutil.copytree(tiny, folder, copy_function=shutil.copy)
    return folder


def _rewrite_tensors(folder, edit) -> None:
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def _edit_json(path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


NAME = "detr_decoder.box_head.layer3.weight"


@pytest.mark.parametrize(("edit", "named"), [
    (lambda tensors: tensors.pop(NAME), f"1 missing ({NAME})"),
    (lambda tensors: tensors.__setitem__(NAME, tensors[NAME].to(torch.int64)), f"1 of the wrong dtype ({NAME} I64 "
                                                                                "instead of floating)"),
    (lambda tensors: tensors.__setitem__(NAME, tensors[NAME][:1]), f"1 of the wrong shape ({NAME} (1, "),
    (lambda tensors: tensors.__setitem__("extra.weight", torch.zeros(2)), "1 unexpected (extra.weight)"),
], ids=["missing", "integer", "shape", "extra"])
def test_a_damaged_snapshot_is_refused_naming_the_tensor(copy, edit, named):
    _rewrite_tensors(copy, edit)
    with pytest.raises(WeightsError) as caught:
        load_sam3(copy)
    message = str(caught.value)
    assert message.startswith(f"{copy / 'model.safetensors'} does not hold SAM 3's tensors: {named}")
    assert "\n" not in message and "--sam3-weights DIR" in message


def test_a_video_snapshot_loads_its_detector(tiny, copy):
    """facebook/sam3's layout: config.json of a sam3_video model holding the image model's as detector_config,
    the detector's tensors under detector_model., the tracker's beside them (unused here)."""
    config = json.loads((tiny / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({"model_type": "sam3_video", "detector_config": config}))
    _rewrite_tensors(copy, lambda tensors: tensors.update(
        {f"detector_model.{name}": tensors.pop(name) for name in list(tensors)}
        | {"tracker_model.memory.weight": torch.zeros(3), "tracker_neck.conv.bias": torch.zeros(2)}))
    video, image = load_sam3(copy).model.state_dict(), load_sam3(tiny).model.state_dict()
    assert video.keys() == image.keys() and all(torch.equal(video[name], image[name]) for name in image)


@pytest.mark.parametrize(("file", "edit", "message"), [
    ("config.json", lambda c: c["vision_config"]["backbone_config"].__setitem__("image_size", 1_000_000),
     "vision_config.backbone_config.image_size must be a whole number from 1 to 4096, got 1000000"),
    ("config.json", lambda c: c["detr_decoder_config"].__setitem__("num_queries", 1e5),
     "detr_decoder_config.num_queries must be a whole number from 1 to 4096, got 100000.0"),
    ("config.json", lambda c: c["vision_config"].__setitem__("scale_factors", [1e6, 1.0]),
     "vision_config.scale_factors must be a number from 0.015625 to 64, got [1000000.0, 1.0]"),
    ("processor_config.json", lambda c: c["image_processor"]["size"].__setitem__("height", -5),
     "image_processor.size.height must be a whole number from 1 to 4096, got -5"),
    ("processor_config.json", lambda c: c["image_processor"]["size"].__setitem__("width", 100000),
     "image_processor.size.width must be a whole number from 1 to 4096, got 100000"),
    ("processor_config.json", lambda c: c["image_processor"].__setitem__("image_mean", "0.5"),
     "image_processor.image_mean must be a number or a list of 3 numbers from -10 to 10, got \"0.5\""),
    ("processor_config.json", lambda c: c["image_processor"].__setitem__("image_std", [0.5, 0.0, 0.5]),
     "image_processor.image_std must be a number or a list of 3 numbers from 0.001 to 10, got [0.5, 0.0, 0.5]"),
], ids=["image-size", "queries-float", "scale", "negative-size", "huge-size", "string-mean", "zero-std"])
def test_sizes_that_would_allocate_tens_of_gb_are_refused(copy, file, edit, message):
    _edit_json(copy / file, edit)
    with pytest.raises(WeightsError) as caught:
        check_sam3_folder(copy)
    assert str(caught.value).startswith(f"{copy / file}: {message}; pass --sam3-weights DIR"), caught.value


def test_a_huge_tokenizer_file_is_refused_before_it_is_read(copy):
    with open(copy / "tokenizer.json", "r+b") as handle:
        handle.truncate(1 << 30)  # sparse: 1 GB that takes no disk
    with pytest.raises(WeightsError, match=r"tokenizer file .*tokenizer\.json is 1024 MiB, more than the 64 MiB"):
        check_sam3_folder(copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(WeightsError, match=r"missing tokenizer\.json"):
        check_sam3_folder(copy)
