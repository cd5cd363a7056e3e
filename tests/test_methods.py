"""The method registry, and what the evaluation loop does with any method's answers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from refer_fixtures import ShiftedOracleSource, StandInSegmenter, build_refer, stand_in_index
from test_evaluate import _config

from globallocal.data.refer import ReferDataset
from globallocal.errors import InputError
from globallocal.methods import SegmentResult, available_methods, build_method, get_method
from globallocal.methods.global_local.method import GlobalLocal, GlobalLocalSettings
from globallocal.runs.evaluate import REPORT_MD, run_evaluation
from globallocal.runs.metrics import MetricAccumulator


def test_the_registry_names_and_builds_methods(tiny_vit, nlp):
    assert available_methods()[0] == "global-local"
    spec = get_method("global-local")
    assert spec.default_clip_model == "ViT-B-32" and spec.default_proposals == "freesolo"
    assert spec.preset_for("refcocog") == "paper-refcocog" and spec.preset_for("phrasecut") == "paper-refcoco"
    method = build_method("global-local", tiny_vit, nlp, "paper-refcocog", beta=0.25)
    assert isinstance(method, GlobalLocal)
    assert method.settings == GlobalLocalSettings(alpha=0.85, beta=0.25)
    assert method.describe()["method"] == "global-local" and method.describe()["alpha"] == 0.85
    # The image features depend on the visual settings only: alpha and beta are not in the cache key.
    assert "alpha" not in method.visual_identity() and method.visual_identity()["method"] == "global-local"


def test_registry_errors_name_the_choices(tiny_vit, nlp):
    with pytest.raises(InputError, match="unknown method 'nope'; choose one of global-local"):
        get_method("nope")
    with pytest.raises(InputError, match="unknown preset 'papr' for method global-local; choose one of .*paper"):
        get_method("global-local").settings("papr")
    with pytest.raises(InputError, match="unknown setting.*: gamma"):
        build_method("global-local", tiny_vit, nlp, gamma=1.0)
    with pytest.raises(InputError, match="takes no options"):
        build_method("global-local", tiny_vit, nlp, options={"weights": "x.pth"})


def test_an_unknown_method_fails_before_any_model_loads(run, example):
    code, err = run("segment", example["image"], "the chair", "--method", "nope", "--masks", example["mask_dir"])
    assert code == 2 and "unknown method 'nope'" in err and "Traceback" not in err


@dataclass
class _TwoAnswers(SegmentResult):
    pure_index: int = 0

    def other_answers(self) -> dict[str, int]:
        return {"pure": self.pure_index}


class _TwoAnswerSegmenter(StandInSegmenter):
    """The stand-in's answer, and a second "pure" answer: the next proposal."""

    def predict(self, phrase: str) -> SegmentResult:
        result = super().predict(phrase)
        pure = (result.index + 1) % len(self.proposals)
        return _TwoAnswers(**vars(result), pure_index=pure)


def test_other_answers_are_recorded_and_reported(tmp_path):
    refer = build_refer(tmp_path / "dataset")
    dataset = ReferDataset(refer.data_root, "refcoco", "val", images_dir=refer.images_dir)
    source = ShiftedOracleSource(dataset, frozenset({13}))
    report = run_evaluation(_config(refer, tmp_path / "run"), _TwoAnswerSegmenter(), source, progress=False)

    # The "pure" metrics computed here from the dataset, without the loop.
    expected = MetricAccumulator()
    check = ShiftedOracleSource(dataset, frozenset({13}))
    for group in dataset.images():
        proposals = check(dataset.load_image(group.image), group.image)
        for ref in group.refs:
            gt = dataset.gt_mask(ref)
            for sentence in ref.sentences:
                if len(proposals) == 0:
                    expected.add(0, int(gt.sum()), ref_id=ref.ref_id, image_id=group.image.image_id,
                                 no_proposals=True)
                    continue
                pure = (stand_in_index(sentence.raw, len(proposals)) + 1) % len(proposals)
                pred = proposals.masks[pure].numpy()
                expected.add(int((pred & gt).sum()), int((pred | gt).sum()), ref_id=ref.ref_id,
                             image_id=group.image.image_id)
    assert report["other_answers"]["pure"] == expected.summary()
    assert report["other_answers"]["pure"] != report["metrics"]
    records = [json.loads(line) for line in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    answered = [r for r in records if "phrase" in r and not r["no_proposals"]]
    assert all(set(r["other_answers"]["pure"]) == {"index", "I", "U", "pred_area"} for r in answered)
    assert "| pure |" in (tmp_path / "run" / REPORT_MD).read_text()


class _HalfImageSegmenter:
    """A method that draws its own mask (no proposals): the left half of the image."""

    method = SimpleNamespace(uses_proposals=False)

    def __init__(self) -> None:
        self.size = None

    def set_image(self, image, proposals=None) -> None:
        assert proposals is None
        self.size = (image.height, image.width)

    def predict(self, phrase: str) -> SegmentResult:
        height, width = self.size
        mask = torch.zeros(self.size, dtype=torch.bool)
        mask[:, : width // 2] = True
        return SegmentResult(phrase, phrase, phrase, None, mask, torch.zeros(0), False, True)


def test_a_method_without_proposals_is_evaluated_on_its_own_masks(tmp_path):
    refer = build_refer(tmp_path / "dataset")
    report = run_evaluation(_config(refer, tmp_path / "run"), _HalfImageSegmenter(), None, progress=False)
    dataset = ReferDataset(refer.data_root, "refcoco", "val", images_dir=refer.images_dir)
    expected = MetricAccumulator()
    for group in dataset.images():
        for ref in group.refs:
            gt = dataset.gt_mask(ref)
            pred = np.zeros_like(gt)
            pred[:, : gt.shape[1] // 2] = True
            for _ in ref.sentences:
                expected.add(int((pred & gt).sum()), int((pred | gt).sum()), ref_id=ref.ref_id,
                             image_id=group.image.image_id)
    assert report["metrics"] == expected.summary()
    with pytest.raises(InputError, match="needs mask proposals"):
        run_evaluation(_config(refer, tmp_path / "other"), StandInSegmenter(), None, progress=False)
