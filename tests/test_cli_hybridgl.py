"""HybridGL end to end through the CLI, with random ViT-B-16 weights written here and masks given by hand."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from globallocal.data.images import load_mask
from globallocal.proposals.files import load_proposals
from globallocal.segmenter import Segmenter

PHRASES = ["the dog to the left of the cat", "the smallest dog"]
FIELDS = {"index", "score_name", "score", "scores", "clip_scores", "pure_index", "gem", "candidates", "relation",
          "noun_phrase", "other_noun_phrases", "direction", "relation_flag"}


@pytest.fixture(scope="module")
def vit_b16_weights(tmp_path_factory):
    """Random ViT-B-16 (QuickGELU) weights in open_clip's layout, stored in float16 as OpenAI's file is."""
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**open_clip.get_model_config("ViT-B-16-quickgelu"))
    path = tmp_path_factory.mktemp("weights") / "vit_b16_random.pt"
    torch.save({name: value.half() for name, value in model.state_dict().items()}, path)
    return path


@pytest.fixture
def scene(tmp_path):
    """A 48x64 photo and three masks: left blob, right blob, a thin bar."""
    generator = np.random.default_rng(1)
    photo = tmp_path / "photo.png"
    Image.fromarray(generator.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(photo)
    folder = tmp_path / "masks"
    folder.mkdir()
    for index, (rows, columns) in enumerate([(slice(8, 30), slice(2, 24)), (slice(12, 40), slice(36, 60)),
                                             (slice(42, 45), slice(5, 60))]):
        mask = np.zeros((48, 64), dtype=np.uint8)
        mask[rows, columns] = 255
        Image.fromarray(mask).save(folder / f"{index:03d}.png")
    return photo, folder


def test_segment_with_hybridgl_writes_masks_and_every_json_field(cli, tmp_path, scene, vit_b16_weights):
    photo, folder = scene
    output, report = tmp_path / "out.png", tmp_path / "out.json"
    result = cli("segment", photo, *PHRASES, "--method", "hybridgl", "--clip-model", "ViT-B-16-quickgelu",
                 "--clip-weights", vit_b16_weights, "--masks", folder, "-o", output, "--json", report)
    assert result.code == 0, result.err
    written = json.loads(report.read_text())
    assert written["method"] == "hybridgl" and written["settings"]["fusion_mode"] == "G2L"
    masks = load_proposals(folder, (48, 64)).masks
    for number, record in enumerate(written["results"]):  # outputs are numbered from 0
        assert FIELDS <= set(record)
        assert len(record["scores"]) == len(record["clip_scores"]) == len(record["gem"]) == 3
        assert len(record["candidates"]) == len(record["relation"]) == 3
        assert record["index"] in record["candidates"]
        assert record["pure_index"] == int(np.argmax(record["clip_scores"]))
        png = load_mask(tmp_path / f"out_{number}.png")
        assert np.array_equal(png, masks[record["index"]].numpy())
    first = written["results"][0]
    assert (first["noun_phrase"], first["other_noun_phrases"]) == ("the dog", ["the cat"])
    assert (first["direction"], first["relation_flag"]) == ("left", "left")
    assert written["results"][1]["relation_flag"] == "small"

    # The Python API gives the same answers and the same scores.
    segmenter = Segmenter.from_pretrained("ViT-B-16-quickgelu", str(vit_b16_weights), method="hybridgl")
    segmenter.set_image(Image.open(photo), load_proposals(folder, (48, 64)))
    for record, answer in zip(written["results"], segmenter.predict_many(PHRASES)):
        assert (answer.index, answer.pure_index, answer.candidates) == (
            record["index"], record["pure_index"], record["candidates"])
        assert answer.to_json()["scores"] == record["scores"]


def test_fusion_mode_option_reaches_the_settings_and_bad_values_are_refused(cli, tmp_path, scene):
    photo, folder = scene
    result = cli("segment", photo, "the dog", "--method", "hybridgl", "--fusion-mode", "G2X", "--masks", folder,
                 "-o", tmp_path / "x.png")
    assert result.code == 2
    assert "fusion mode must be one of G2L, L2G, G2L&L2G" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "x.png").exists()


def test_the_quickgelu_warning_is_said_once(cli, tmp_path, scene, tiny_checkpoints):
    """The command line's early check and the loader's both see a GELU name with a weights file: one warning."""
    photo, folder = scene
    result = cli("segment", photo, "the dog", "--method", "hybridgl", "--clip-model", "ViT-B-16",
                 "--clip-weights", tiny_checkpoints["vit"], "--masks", folder, "-o", tmp_path / "x.png")
    warned = [line for line in result.err.splitlines() if line.startswith("warning:")]
    assert warned == [f"warning: --clip-model ViT-B-16 builds GELU; OpenAI's CLIP weights need QuickGELU: if "
                      f"{tiny_checkpoints['vit'].name} is OpenAI's, pass --clip-model ViT-B-16-quickgelu (the scores "
                      "move without it)"], result.err
