"""--method sam3: SAM 3's own top instance or the union of its instances, on a tiny random SAM 3."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_sam3 import save_tiny_sam3

from globallocal import Segmenter
from globallocal.errors import InputError
from globallocal.methods import build_method, get_method
from globallocal.methods.sam3.method import sam3_results
from globallocal.models.text import parse_phrase
from globallocal.proposals import Proposals
from globallocal.proposals.concepts import ConceptAnswer

pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def sam3_folder(tmp_path_factory):
    return save_tiny_sam3(tmp_path_factory.mktemp("sam3"))


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray((np.random.RandomState(1).rand(50, 70, 3) * 255).astype("uint8"))


def segmenter(nlp, folder, preset: str | None = None, clip=None, **overrides) -> Segmenter:
    """A segmenter of --method sam3 (CLIP scores nothing: None, unless the segmenter itself needs one)."""
    method = build_method("sam3", clip, nlp, preset, options={"weights": str(folder)}, **overrides)
    return Segmenter(clip, nlp, method=method)


def transformers_instances(method, photo, prompt: str, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM 3's instances for ``prompt`` by transformers' own calls: bool masks and scores, as it returns them."""
    source = method.source
    inputs = source.processor(images=photo, text=prompt, return_tensors="pt")
    with torch.inference_mode():
        outputs = source.model(**inputs)
    [kept] = source.processor.post_process_instance_segmentation(
        outputs, threshold=threshold, target_sizes=[(photo.height, photo.width)])
    return kept["masks"].bool(), kept["scores"]


@pytest.mark.parametrize("phrase", ["the big dog on the left", "a red car"])
def test_top_is_sam3s_own_best_instance(nlp, sam3_folder, photo, phrase):
    seg = segmenter(nlp, sam3_folder, threshold=0.1)
    seg.set_image(photo)
    result = seg.predict(phrase)
    masks, scores = transformers_instances(seg.method, photo, seg.parse(phrase).noun_phrase, 0.1)
    best = int(scores.argmax())
    assert result.concept.step == "noun-phrase" and result.concept.prompt == seg.parse(phrase).noun_phrase
    assert result.index == 0
    assert torch.equal(result.mask, masks[best])
    assert result.score == pytest.approx(float(scores[best]), abs=1e-6)
    assert result.to_json()["proposal_step"] == "noun-phrase"
    assert result.candidate_fields(aliases=True)["sam3_step"] == "noun-phrase"  # records keep the older name too
    assert "sam3_step" not in result.to_json()


def test_union_is_the_or_of_the_kept_instances(nlp, sam3_folder, photo):
    seg = segmenter(nlp, sam3_folder, "sam3-union", threshold=0.12)
    seg.set_image(photo)
    result = seg.predict("a red car")
    masks, scores = transformers_instances(seg.method, photo, "a red car", 0.12)
    assert 1 < len(scores) < 8  # the threshold keeps some instances, not all
    assert result.index is None and result.score is None
    assert torch.equal(result.mask, masks.any(dim=0))
    assert sorted(result.scores.tolist()) == pytest.approx(sorted(scores.tolist()), abs=1e-6)


def test_the_expression_prompt_is_cut_to_sam3s_tokens(nlp, sam3_folder, photo):
    seg = segmenter(nlp, sam3_folder, "sam3-expression", threshold=0.0)
    seg.set_image(photo)
    long = "the dog that is sitting " + "very " * 20 + "far on the left"
    with pytest.warns(UserWarning, match="SAM 3's 32 tokens"):
        result = seg.predict(long)
    assert result.truncated and result.concept.prompt == seg.parse(long).expression
    assert not seg.predict("a red car").truncated


def test_results_are_a_function_of_sam3s_answers(nlp):
    parsed = [parse_phrase(text, nlp) for text in ("the red car", "a dog", "the cat")]
    masks = torch.zeros((2, 4, 5), dtype=torch.bool)
    masks[0, :2] = True
    masks[1, :, :1] = True
    found = Proposals.from_masks(masks, torch.tensor([0.9, 0.6]))
    none = Proposals.from_masks(torch.zeros((0, 4, 5), dtype=torch.bool))
    answers = [ConceptAnswer(found, "noun-phrase", "the red car"), ConceptAnswer(found, "head-noun", "dog"),
               ConceptAnswer(none, "none", "")]
    top = sam3_results(parsed, answers, "top", [False] * 3)
    union = sam3_results(parsed, answers, "union", [False] * 3)
    assert torch.equal(top[0].mask, masks[0]) and top[0].score == pytest.approx(0.9)
    assert torch.equal(union[1].mask, masks[0] | masks[1]) and union[1].concept.step == "head-noun"
    for empty in (top[2], union[2]):
        assert empty.index is None and empty.mask.shape == (4, 5) and not empty.mask.any()
        assert empty.to_json()["proposal_step"] == "none"


def test_presets_and_settings():
    spec = get_method("sam3")
    assert spec.settings().answer == "top" and spec.settings().prompt == "noun-phrase"
    assert spec.settings("sam3-union").answer == "union"
    assert spec.preset_for("phrasecut") == "sam3-union" and spec.preset_for("refcoco") == "sam3"
    assert not spec.uses_proposals and not spec.method_class.uses_proposals
    with pytest.raises(InputError, match="SAM 3 answer must be one of top, union"):
        spec.settings(answer="all")
    with pytest.raises(InputError, match="unknown SAM 3 fallback step 'sam4'"):
        spec.settings(fallback="head-noun,sam4")


def test_changed_settings_apply_without_encoding_the_image_again(nlp, sam3_folder, photo, monkeypatch, tiny_vit):
    seg = segmenter(nlp, sam3_folder, clip=tiny_vit, threshold=0.0)
    calls = []
    vision = seg.method.source.model.get_vision_features
    monkeypatch.setattr(seg.method.source.model, "get_vision_features",
                        lambda *a, **k: calls.append(1) or vision(*a, **k))
    seg.set_image(photo)
    every = seg.predict("a red car")
    seg.settings = seg.settings.with_overrides(threshold=0.99, fallback="none")
    nothing = seg.predict("a red car")
    assert len(every.scores) > 0 and nothing.concept.step == "none" and not nothing.mask.any()
    assert calls == [1]
    seg.set_features(photo, None, {})  # as from the feature cache: SAM 3's features are not in it
    seg.predict("a dog")
    seg.predict("a cat")
    assert calls == [1, 1]


def test_an_evaluation_of_sam3_resumes_to_identical_records(nlp, sam3_folder, tmp_path, tiny_vit):
    from refer_fixtures import build_refer

    from globallocal.runs.evaluate import EvaluationConfig, EvaluationStopped, read_records, run_evaluation

    refer = build_refer(tmp_path / "dataset")

    def evaluate(out_name: str, stop: int | None = None) -> dict:
        config = EvaluationConfig(dataset="refcoco", split="val", data_root=refer.data_root,
                                  images_dir=refer.images_dir, out_dir=tmp_path / out_name,
                                  settings={"method": "sam3"})
        seg = segmenter(nlp, sam3_folder, clip=tiny_vit, threshold=0.15)
        return run_evaluation(config, seg, None, progress=False, stop_after_images=stop)

    def records(out_name: str) -> list[tuple]:
        return [(r["sent_id"], r["I"], r["U"], r["proposal_step"]) for image in read_records(tmp_path / out_name)
                for r in image.records]

    full = evaluate("full")
    with pytest.raises(EvaluationStopped):
        evaluate("resumed", stop=1)
    resumed = evaluate("resumed")
    assert resumed["metrics"] == full["metrics"]
    assert records("resumed") == records("full")
    assert {step for *_, step in records("full")} <= {"noun-phrase", "head-noun", "below-threshold"}
    assert full["metrics"]["sentences"] == len(records("full")) > 0


def test_the_device_and_precision_reach_a_method_without_clip(sam3_folder, monkeypatch):
    """No CLIP carries them: from_pretrained hands them to SAM 3's builder (before, SAM 3 always ran on the CPU)."""
    import globallocal.methods.sam3.method as sam3_method

    seen = {}
    real = sam3_method.load_sam3

    def spy(weights, device, precision):
        seen.update(device=device, precision=precision)
        return real(weights, "cpu", "fp32")

    monkeypatch.setattr(sam3_method, "load_sam3", spy)
    Segmenter.from_pretrained(method="sam3", device="cpu", precision="bf16",
                              method_options={"weights": str(sam3_folder)})
    assert seen == {"device": "cpu", "precision": "bf16"}
