"""SAM 3 concept proposals on a tiny random SAM 3 saved in the transformers layout (offline)."""

from __future__ import annotations

import hashlib
import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_sam3 import save_tiny_sam3

from globallocal.errors import InputError, WeightsError
from globallocal.models.clip import cpu_has_fp16_units
from globallocal.proposals import Proposals
from globallocal.proposals.concepts import ConceptQuery, concept_query, head_noun
from globallocal.proposals.sam3 import Sam3ConceptSource, parse_fallback
from globallocal.proposals.sam3_weights import load_sam3

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["tall man in red", "car", "man", "dog on the left", "dog"]


@pytest.fixture(scope="module")
def sam3_folder(tmp_path_factory):
    return save_tiny_sam3(tmp_path_factory.mktemp("sam3"))


@pytest.fixture(scope="module")
def sam3(sam3_folder):
    return load_sam3(sam3_folder)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray((np.random.RandomState(0).rand(60, 80, 3) * 255).astype("uint8"))


def source(sam3, **options) -> Sam3ConceptSource:
    return Sam3ConceptSource(sam3.model, sam3.processor, weights=sam3.identity, **options)


def best_scores(sam3, photo) -> dict[str, float]:
    """Every prompt's best instance score (threshold 0 keeps every query with a non-empty mask)."""
    every = source(sam3, threshold=0.0, fallback=())
    answers = every.generate_for(photo, PROMPTS)
    return {prompt: float(answer.proposals.scores.max()) for prompt, answer in zip(PROMPTS, answers)}


def by_hand(sam3, photo, prompts: list[str], threshold: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """transformers' own call sequence (one image per prompt, no cached vision features): per prompt the
    non-empty bool masks and their scores, best first."""
    inputs = sam3.processor(images=[photo] * len(prompts), text=prompts, return_tensors="pt")
    with torch.inference_mode():
        outputs = sam3.model(**inputs)
    expected = sam3.processor.post_process_instance_segmentation(
        outputs, threshold=threshold, mask_threshold=0.5, target_sizes=[(photo.height, photo.width)] * len(prompts))
    instances = []
    for want in expected:
        masks = want["masks"].bool()
        keep = masks.flatten(1).any(dim=1)
        order = torch.argsort(want["scores"][keep], descending=True, stable=True)
        instances.append((masks[keep][order], want["scores"][keep][order]))
    return instances


def test_the_source_equals_transformers_own_call_sequence(sam3, photo):
    prompts = ["tall man in red", "car"]
    threshold = 0.12  # some, not all, of each prompt's instances score above it
    answers = source(sam3, threshold=threshold, fallback=()).generate_for(photo, prompts)
    for (masks, scores), got, prompt in zip(by_hand(sam3, photo, prompts, threshold), answers, prompts):
        assert 0 < len(scores) < 8  # of the tiny model's 8 queries
        assert got.step == "noun-phrase" and got.prompt == prompt
        assert torch.equal(got.proposals.masks, masks)
        torch.testing.assert_close(got.proposals.scores, scores, rtol=0, atol=1e-6)
        assert got.proposals.masks.shape[1:] == (60, 80)


def test_batched_queries_give_the_instances_of_one_at_a_time(sam3, photo):
    options = {"threshold": 0.23, "fallback": ("head-noun", "below-threshold"), "below_threshold_k": 2}
    queries = [ConceptQuery("tall man in red", "man"), ConceptQuery("car", None), ConceptQuery("dog on the left", None),
               ConceptQuery("dog", None)]
    together = source(sam3, **options)
    together.set_image(photo)
    batched = together.answer(queries)
    assert {answer.step for answer in batched} == {"noun-phrase", "head-noun", "below-threshold"}
    for query, answer in zip(queries, batched):
        alone = source(sam3, **options)
        alone.set_image(photo)
        [single] = alone.answer([query])
        assert (single.step, single.prompt) == (answer.step, answer.prompt)
        assert torch.equal(single.proposals.masks, answer.proposals.masks)
        torch.testing.assert_close(single.proposals.scores, answer.proposals.scores, rtol=0, atol=1e-6)


def test_max_proposals_keeps_the_best(sam3, photo):
    every, = source(sam3, threshold=0.0, fallback=()).generate_for(photo, ["car"])
    best, = source(sam3, threshold=0.0, fallback=(), max_proposals=2).generate_for(photo, ["car"])
    assert len(best.proposals) == 2
    assert torch.equal(best.proposals.masks, every.proposals.masks[:2])


def test_the_fallback_chain_runs_in_order(sam3, photo):
    scores = best_scores(sam3, photo)
    # A phrase whose head noun scores higher than the phrase, so a threshold between them reaches the head noun.
    phrase, head = next((p, h) for p, h in [("tall man in red", "man"), ("dog on the left", "dog")]
                        if scores[h] > scores[p])
    query = ConceptQuery(phrase, head)
    top = max(scores.values())

    def answer(threshold: float, fallback=("head-noun", "below-threshold"), **options):
        chain = source(sam3, threshold=threshold, fallback=fallback, below_threshold_k=2, **options)
        chain.set_image(photo)
        return chain.answer([query])[0]

    first = answer(scores[phrase] - 1e-4)
    assert (first.step, first.prompt) == ("noun-phrase", phrase)
    second = answer((scores[phrase] + scores[head]) / 2)
    assert (second.step, second.prompt) == ("head-noun", head)
    assert bool((second.proposals.scores > (scores[phrase] + scores[head]) / 2).all())
    third = answer(min(top + 1e-3, 1.0))
    assert (third.step, third.prompt) == ("below-threshold", phrase)
    [(masks, every)] = by_hand(sam3, photo, [phrase], -1.0)
    assert torch.equal(third.proposals.masks, masks[:2])  # the phrase's two best, whatever their score
    torch.testing.assert_close(third.proposals.scores, every[:2], rtol=0, atol=1e-6)
    fourth = answer(min(top + 1e-3, 1.0), fallback=("head-noun",))
    assert (fourth.step, fourth.prompt, len(fourth.proposals)) == ("none", "", 0)
    assert fourth.proposals.masks.shape == (0, 60, 80)

    class FixedSam2:
        settings = {"model": "fixed"}

        def generate(self, image) -> Proposals:
            return Proposals.from_masks(torch.ones((1, image.height, image.width), dtype=torch.bool))

    fifth = answer(min(top + 1e-3, 1.0), fallback=("head-noun", "sam2"), sam2=FixedSam2())
    assert (fifth.step, fifth.prompt, len(fifth.proposals)) == ("sam2", "", 1)


def test_an_exact_query_gets_its_prompts_instances_and_no_fallback(sam3, photo):
    """The agent's prompts: the instances above the threshold, or none, whatever the fallback chain says."""
    scores = best_scores(sam3, photo)

    class FixedSam2:
        settings = {"model": "fixed"}

        def generate(self, image) -> Proposals:
            return Proposals.from_masks(torch.ones((1, image.height, image.width), dtype=torch.bool))

    chain = source(sam3, threshold=min(max(scores.values()) + 1e-3, 1.0), sam2=FixedSam2(),
                   fallback=("head-noun", "below-threshold", "sam2"))
    chain.set_image(photo)
    exact, chained = chain.answer([ConceptQuery("dog on the left", "dog", exact=True),
                                   ConceptQuery("dog on the left", "dog")])
    assert (exact.step, exact.prompt, len(exact.proposals)) == ("none", "", 0)
    assert chained.step == "below-threshold" and len(chained.proposals) > 0
    low = source(sam3, threshold=scores["car"] - 1e-4, fallback=("head-noun", "below-threshold"))
    low.set_image(photo)
    [found] = low.answer([ConceptQuery("car", None, exact=True)])
    inputs = sam3.processor(images=[photo], text=["car"], return_tensors="pt")
    with torch.inference_mode():
        [raw] = sam3.processor.post_process_instance_segmentation(
            sam3.model(**inputs), threshold=scores["car"] - 1e-4, mask_threshold=0.5,
            target_sizes=[(photo.height, photo.width)])
    assert found.step == "noun-phrase" and torch.equal(found.proposals.masks, raw["masks"].bool())  # SAM 3's order
    torch.testing.assert_close(found.proposals.scores, raw["scores"], rtol=0, atol=1e-6)


def test_the_vision_tower_runs_once_and_shared_prompts_decode_once(sam3, photo, monkeypatch):
    chain = source(sam3, threshold=0.15)
    calls = {"vision": 0, "decoder": []}
    vision, forward = chain.model.get_vision_features, chain.model.forward

    def counted_vision(*args, **kwargs):
        calls["vision"] += 1
        return vision(*args, **kwargs)

    def counted_forward(*args, **kwargs):
        calls["decoder"].append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    monkeypatch.setattr(chain.model, "get_vision_features", counted_vision)
    monkeypatch.setattr(chain.model, "forward", counted_forward)
    chain.set_image(photo)
    first = chain.answer([ConceptQuery("car", None), ConceptQuery("car", None), ConceptQuery("dog", None)])
    chain.answer([ConceptQuery("dog", None)])
    chain.answer([ConceptQuery("red car", None)])
    assert calls["vision"] == 1
    assert calls["decoder"] == [2, 1]  # car and dog in one batch; dog again is not decoded; red car alone
    assert first[0] is first[1] or torch.equal(first[0].proposals.masks, first[1].proposals.masks)


def test_a_long_prompt_is_cut_to_32_tokens_with_a_warning(sam3, photo):
    chain = source(sam3, threshold=0.0, fallback=())
    long = "the " + "very " * 20 + "tall man"
    assert chain.truncated(long) and not chain.truncated("car")
    with pytest.warns(UserWarning, match="32 tokens"):
        [answer] = chain.generate_for(photo, [long])
    assert answer.step == "noun-phrase"


def test_head_nouns_and_queries(nlp):
    assert head_noun("tall man in red", nlp) == "man"
    assert head_noun("man", nlp) is None
    from globallocal.models.text import parse_phrase

    parsed = parse_phrase("The tall man in red on the left", nlp)
    query = concept_query(parsed, nlp)
    assert query == ConceptQuery(parsed.noun_phrase, "man")
    assert concept_query(parsed, nlp, "expression").noun_phrase == parsed.expression


def test_fallback_names():
    assert parse_fallback("below-threshold,head-noun") == ("head-noun", "below-threshold")
    assert parse_fallback("none") == parse_fallback("") == ()
    with pytest.raises(InputError, match="unknown SAM 3 fallback step 'sam4'"):
        parse_fallback("sam4")


def test_bad_settings_are_refused(sam3):
    with pytest.raises(InputError, match="threshold must be in"):
        source(sam3, threshold=1.5)
    with pytest.raises(InputError, match="needs a SAM 2 generator"):
        source(sam3, fallback="sam2")


def test_the_weights_are_identified_by_the_safetensors_content(sam3, sam3_folder):
    data = (sam3_folder / "model.safetensors").read_bytes()
    assert sam3.identity == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert source(sam3).settings["weights"] == sam3.identity


def test_offline_without_a_copy_says_how_to_get_the_gated_weights(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsError) as caught:
        load_sam3(None)
    message = str(caught.value)
    assert "\n" not in message
    for part in ("facebook/sam3", "licence", "hf auth login", "--sam3-weights DIR", "HF_HUB_OFFLINE"):
        assert part in message


def test_a_folder_of_another_model_is_refused(tmp_path, sam3_folder):
    from transformers import CLIPTextConfig, CLIPTextModel

    other = tmp_path / "clip"
    CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(other)
    with pytest.raises(WeightsError, match="holds a clip_text_model model, not SAM 3"):
        load_sam3(other)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((sam3_folder / "config.json").read_text())
    with pytest.raises(WeightsError) as caught:
        load_sam3(bare)
    assert "missing model.safetensors, processor_config.json" in str(caught.value)
    assert "tokenizer.json" in str(caught.value)
    with pytest.raises(WeightsError, match="does not exist"):
        load_sam3(tmp_path / "nowhere")
    if not cpu_has_fp16_units():  # the one precision rule of CLIP and SAM 3 (models.clip.precision_dtype)
        with pytest.raises(InputError, match="precision fp16 has no fast kernels on this CPU .*use bf16 or fp32"):
            load_sam3(sam3_folder, precision="fp16")
    assert json.loads((sam3_folder / "config.json").read_text())["model_type"] == "sam3"


def test_the_proposal_registry_builds_sam3_and_keys_its_settings(sam3_folder):
    from globallocal.proposals.sources import PROPOSAL_KINDS, build_proposal_generator, proposal_cache_key

    assert "sam3" in PROPOSAL_KINDS
    built = build_proposal_generator("sam3", weights=sam3_folder, max_proposals=4, sam3_threshold=0.3,
                                     sam3_fallback="below-threshold", sam3_below_k=2)
    assert isinstance(built, Sam3ConceptSource) and built.phrase_dependent
    assert (built.threshold, built.fallback, built.below_threshold_k, built.max_proposals) == (
        0.3, ("below-threshold",), 2, 4)
    key = proposal_cache_key("sam3", built, sam3_folder, "cpu")
    data = (sam3_folder / "model.safetensors").read_bytes()
    assert key["weights"] == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert key["options"]["threshold"] == 0.3 and key["options"]["fallback"] == ["below-threshold"]
    assert key["options"]["transformers"] == "5.23.0"
    other = build_proposal_generator("sam3", weights=sam3_folder, max_proposals=4, sam3_threshold=0.4,
                                     sam3_fallback="below-threshold", sam3_below_k=2)
    assert proposal_cache_key("sam3", other, sam3_folder, "cpu") != key


def test_the_registry_refuses_options_of_other_sources(sam3_folder):
    from globallocal.proposals.sources import build_proposal_generator

    with pytest.raises(InputError, match="points_per_side applies to SAM 2, which SAM 3 uses only with"):
        build_proposal_generator("sam3", weights=sam3_folder, points_per_side=8)
    with pytest.raises(InputError, match="sam3_threshold applies to SAM 3 proposals, not freesolo"):
        build_proposal_generator("freesolo", sam3_threshold=0.3)
    with pytest.raises(InputError, match="threshold must be in"):  # refused before SAM 3 loads
        build_proposal_generator("sam3", weights="/nowhere", sam3_threshold=2.0)


@pytest.mark.skipif(importlib.util.find_spec("sam2") is None, reason="sam2 is not installed (optional [sam] extra)")
def test_the_sam2_fallback_step_gets_its_own_generator(sam3_folder):
    from globallocal.proposals.sam import SAM2Generator
    from globallocal.proposals.sources import build_proposal_generator, proposal_cache_key

    built = build_proposal_generator("sam3", weights=sam3_folder, model="tiny", sam2_weights="random",
                                     sam3_fallback="head-noun,sam2", points_per_side=4)
    assert isinstance(built.sam2, SAM2Generator) and built.fallback == ("head-noun", "sam2")
    key = proposal_cache_key("sam3", built, sam3_folder, "cpu")
    assert key["options"]["sam2"]["model"] == "tiny" and key["options"]["sam2"]["points_per_side"] == 4


def test_loading_draws_no_progress_bar(sam3_folder, capfd):
    load_sam3(sam3_folder)
    assert "Loading weights" not in capfd.readouterr().err
