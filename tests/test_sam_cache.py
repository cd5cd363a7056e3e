"""SAM 2 proposals in an evaluation with a feature cache: SAM runs once per image, whatever reruns follow."""

from __future__ import annotations

import pytest
import torch
from refer_fixtures import build_refer
from test_sam import HAS_SAM2, KEEP_ALL, make_generator, small_sam2  # noqa: F401 (small_sam2 is a fixture)

from globallocal.methods import get_method
from globallocal.proposals.sources import proposal_cache_key
from globallocal.runs.cache import FeatureCache
from globallocal.runs.evaluate import EvaluationConfig, read_records, run_evaluation
from globallocal.segmenter import Segmenter


@pytest.mark.skipif(not HAS_SAM2, reason="sam2 is not installed (optional [sam] extra; make install)")
def test_sam2_proposals_come_from_the_cache_on_reruns(request, tmp_path, tiny_vit, tiny_config_paths, nlp,
                                                       small_sam2):  # noqa: F811
    refer = build_refer(tmp_path / "dataset")
    generator = make_generator("sam2", request, **KEEP_ALL)
    weights = tmp_path / "sam2.pt"
    torch.save({"model": small_sam2.state_dict()}, weights)
    key = proposal_cache_key("sam2", generator, weights, "cpu")
    asked: list[int] = []

    def source(image, record):
        asked.append(record.image_id)
        return generator.generate(image)

    def evaluate(out_name: str, alpha: float) -> dict:
        segmenter = Segmenter(tiny_vit, nlp, get_method("global-local").settings("paper").with_overrides(alpha=alpha))
        cache = FeatureCache.for_segmenter(tmp_path / "cache", segmenter, str(tiny_config_paths["vit"]))
        config = EvaluationConfig(
            dataset="refcoco", split="val", data_root=refer.data_root, images_dir=refer.images_dir,
            out_dir=tmp_path / out_name, limit=2, settings={"proposals": "sam2", "alpha": alpha},
        )
        return run_evaluation(config, segmenter, source, progress=False, cache=cache, proposal_key=key)

    first = evaluate("run", 0.95)
    assert len(asked) == 2  # one SAM pass per image
    again = evaluate("rerun", 0.95)
    other_alpha = evaluate("alpha", 0.5)
    assert len(asked) == 2  # reruns, even with another alpha, take the masks from the cache
    assert again["metrics"] == first["metrics"]
    assert _picks(tmp_path / "rerun") == _picks(tmp_path / "run")
    assert other_alpha["metrics"]["sentences"] == first["metrics"]["sentences"]


def _picks(run_dir) -> list[tuple[int, int]]:
    return [(record["sent_id"], record["index"]) for image in read_records(run_dir) for record in image.records]
