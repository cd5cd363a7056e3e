"""The README's Python snippets run as written (tiny models stand in for the downloaded ones); its links resolve."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

import globallocal
from globallocal.proposals import sources
from globallocal.proposals.files import load_proposals
from globallocal.segmenter import Segmenter

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def test_python_snippets_run(example, tiny_vit, nlp, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    shutil.copy(example["image"], tmp_path / "photo.jpg")
    (tmp_path / "photo_masks").mkdir()
    for i, mask in enumerate(example["masks"]):
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "photo_masks" / f"{i:03d}.png")

    def tiny_segmenter(*args, proposal_source=None, **kwargs):
        return Segmenter(tiny_vit, nlp, proposal_source=proposal_source)

    class MaskFolder:
        def generate(self, image):
            return load_proposals(tmp_path / "photo_masks", example["size"])

    monkeypatch.setattr(Segmenter, "from_pretrained", staticmethod(tiny_segmenter))
    monkeypatch.setattr(sources, "build_proposal_generator", lambda *args, **kwargs: MaskFolder())
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    assert namespace["result"].mask.shape == example["size"]
    assert [r.phrase for r in namespace["results"]] == ["the dog", "the red car"]
    assert globallocal.Segmenter is Segmenter


def test_links_stay_inside_the_repository():
    assert "../shared" not in README
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if not target.startswith("http"):
            assert (REPO / target).exists(), target
