"""The in-process VLM backend on tiny random Qwen2.5-VL and Qwen3-VL, loaded through the real loading path.

Every generation is compared token for token with transformers' own
``model.generate`` (greedy), and label log-probabilities with full forward
passes of the whole conversation: the independent slow routes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_vlm import FAMILIES

from globallocal.errors import InputError
from globallocal.models.vlm import CachedBackend, ChatBackend, ReplyStore, build_vlm_backend
from globallocal.models.vlm.decoding import prefill
from globallocal.models.vlm.messages import message_images
from globallocal.models.vlm.transformers_backend import TransformersBackend

pytestmark = pytest.mark.usefixtures("one_thread")

SYSTEM = {"role": "system", "content": "You find the object the user refers to."}
MAX_TOKENS = 10


def photo(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def ask(image: Image.Image, text: str) -> dict:
    return {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}


PHOTO, MARKS = photo(150, 100, 0), photo(60, 90, 1)
CONVERSATIONS = [
    [SYSTEM, ask(PHOTO, "the man on the left")],
    [SYSTEM, ask(PHOTO, "the second car from the right")],
    # A second turn with a second image (the agent's marks image) after the cached prefix.
    [SYSTEM, ask(PHOTO, "the dog"), {"role": "assistant", "content": [{"type": "text", "text": "<tool>x</tool>"}]},
     {"role": "user", "content": [{"type": "text", "text": "2 masks:"}, {"type": "image", "image": MARKS}]}],
]


@pytest.fixture(scope="module")
def backends(vlm_folders) -> dict[str, TransformersBackend]:
    return {family: build_vlm_backend("transformers", model=str(folder), device="cpu")
            for family, folder in vlm_folders.items()}


def inputs_of(backend: TransformersBackend, messages: list[dict]) -> dict:
    text = backend.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return backend.processor(text=[text], images=message_images(messages) or None, return_tensors="pt")


def generate_reference(backend: TransformersBackend, messages: list[dict], max_tokens: int) -> list[int]:
    """transformers' own greedy generation, the whole conversation prefilled at once, no cache kept."""
    inputs = inputs_of(backend, messages)
    with torch.inference_mode():
        out = backend.model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_reuse_is_token_identical_to_generate(backends, family):
    backend = backends[family]
    backend.prefixes.clear()
    outputs = []
    for index, messages in enumerate(CONVERSATIONS):
        tokens, reply = backend.generate(messages, MAX_TOKENS)
        assert tokens == generate_reference(backend, messages, MAX_TOKENS), f"conversation {index}"
        prefix = backend.encode(messages).prefix_length
        assert reply.prompt_tokens == inputs_of(backend, messages)["input_ids"].shape[1]
        # The first call computes the photo's prefix; every later one reuses it.
        assert reply.prefilled_tokens == (reply.prompt_tokens if index == 0 else reply.prompt_tokens - prefix)
        assert reply.generated_tokens == len(tokens) and not reply.cached
        outputs.append(tokens)
    assert len(backend.prefixes) == 1
    assert len({tuple(tokens) for tokens in outputs}) > 1, "the replies should depend on the prompt"


@pytest.mark.parametrize("family", FAMILIES)
def test_without_prefix_cache_every_call_prefills_everything_to_the_same_bits(backends, family):
    backend = backends[family]
    plain = TransformersBackend(backend.model, backend.processor, family=family, prefix_cache_size=0)
    backend.prefixes.clear()
    # The two-image conversation first: its prefix is computed, with its first image alone, in both.
    for index, messages in enumerate([CONVERSATIONS[2], *CONVERSATIONS[:2]]):
        encoded = plain.encode(messages)
        fresh = prefill(plain.model, encoded, plain.prefixes)
        reused = prefill(backend.model, encoded, backend.prefixes)
        assert fresh.reused == 0 and reused.reused == (0 if index == 0 else encoded.prefix_length)
        assert torch.equal(fresh.logits, reused.logits)  # the same computation, only part of it remembered
        tokens, reply = plain.generate(messages, MAX_TOKENS)
        assert tokens == backend.generate(messages, MAX_TOKENS)[0]
        if index == 0:  # two images, the first one's prefix computed afresh: generate's tokens
            assert tokens == generate_reference(plain, messages, MAX_TOKENS)
        assert reply.prefilled_tokens == reply.prompt_tokens
    assert len(plain.prefixes) == 0


def opening(*images: Image.Image, text: str) -> list[dict]:
    """A conversation opened by images directly one after the other, then a question (the marks preset's)."""
    return [{"role": "user", "content": [*({"type": "image", "image": image} for image in images),
                                         {"type": "text", "text": text}]}]


@pytest.mark.parametrize("family", FAMILIES)
def test_images_opening_a_conversation_are_kept_each(backends, family):
    """The prefix up to each opening image is kept: a second question on the same two pictures prefills only
    itself, one on another second picture reuses the photo alone; a picture after a text opens nothing. Every
    reply is generate's, token for token."""
    backend = backends[family]
    backend.prefixes.clear()
    other = photo(90, 60, 2)
    asked = [opening(PHOTO, MARKS, text="Which number is the dog?"), opening(PHOTO, MARKS, text="The cat?"),
             opening(PHOTO, other, text="The cat?")]
    assert len(backend.encode(CONVERSATIONS[2]).prefixes) == 1  # the marks image comes after a text
    for index, messages in enumerate(asked):
        encoded = backend.encode(messages)
        first, second = (length for length, _ in encoded.prefixes)
        tokens, reply = backend.generate(messages, MAX_TOKENS)
        assert tokens == generate_reference(backend, messages, MAX_TOKENS), f"conversation {index}"
        assert reply.prefilled_tokens == reply.prompt_tokens - (0, second, first)[index]
    assert len(backend.prefixes) == 3  # the photo, the photo with MARKS, the photo with the other picture


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_many_equals_chat_one_by_one(backends, family):
    backend = backends[family]
    replies = backend.chat_many(CONVERSATIONS[1:3], MAX_TOKENS)
    assert [reply.text for reply in replies] == [backend.chat(c, MAX_TOKENS).text for c in CONVERSATIONS[1:3]]


@pytest.mark.parametrize("family", FAMILIES)
def test_scripted_reply_is_decoded_step_by_step_on_the_model(backends, family):
    backend = backends[family]
    script = '<tool>{"final_answer_masks": [12]}</tool>'
    calls = []
    hook = backend.model.register_forward_hook(lambda module, args, kwargs, output: calls.append(
        kwargs["input_ids"].shape[1]), with_kwargs=True)
    backend.reply_script = lambda messages: script
    try:
        backend.prefixes.clear()
        tokens, reply = backend.generate(CONVERSATIONS[1], 100)
        assert reply.text == script and reply.finish_reason == "stop"
        # Every byte is a token, then the end of the turn; each token but the last was fed back to the model.
        assert reply.generated_tokens == len(script.encode()) + 1 == len(tokens)
        assert calls == [backend.encode(CONVERSATIONS[1]).prefix_length,
                         reply.prompt_tokens - backend.encode(CONVERSATIONS[1]).prefix_length] + [1] * (len(tokens) - 1)
        short = backend.chat(CONVERSATIONS[1], 5)
        assert short.text == script[:5] and short.finish_reason == "length"
        assert backend.identity["scripted"] is True
    finally:
        hook.remove()
        backend.reply_script = None
    assert "scripted" not in backend.identity


def label_logprob_slow(backend: TransformersBackend, messages: list[dict], label: str) -> float:
    """log P(label, then the end of the turn) by one forward pass over the whole conversation and the label."""
    inputs = inputs_of(backend, messages)
    tokens = backend.processor.tokenizer.encode(label, add_special_tokens=False) + backend.stop_ids[:1]
    prompt = inputs["input_ids"].shape[1]
    inputs["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([tokens])], dim=1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"],
                                             torch.zeros(1, len(tokens), dtype=torch.long)], dim=1)
    backend.model.model.rope_deltas = None  # the model's own positions, computed afresh
    with torch.inference_mode():
        logits = backend.model(**inputs).logits[0].double()
    scores = torch.log_softmax(logits, dim=-1)
    return float(sum(scores[prompt - 1 + i, token] for i, token in enumerate(tokens)))


@pytest.mark.parametrize("family", FAMILIES)
def test_label_logprobs_equal_full_forward_passes(backends, family):
    backend = backends[family]
    labels = ["1", "2", "12", "10"]  # Qwen's tokenizer writes numbers digit by digit
    for messages in (CONVERSATIONS[0], CONVERSATIONS[2]):
        values = backend.label_logprobs(messages, labels)
        assert list(values) == labels
        for label in labels:
            assert values[label] == pytest.approx(label_logprob_slow(backend, messages, label), abs=1e-4)
        assert values.prompt_tokens == backend.encode(messages).length
        assert values.generated_tokens == sum(len(label) for label in labels)  # each label's tokens but its end
    # The cache was cut back after each label: generation afterwards is unchanged.
    assert backend.generate(CONVERSATIONS[0], MAX_TOKENS)[0] == generate_reference(backend, CONVERSATIONS[0],
                                                                                     MAX_TOKENS)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("size", [(150, 100), (61, 97), (700, 500), (20, 20)])
def test_seen_size_is_the_processor_grid(backends, family, size):
    backend = backends[family]
    image = photo(*size, seed=2)
    grid = backend.processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[image],
                             return_tensors="pt")["image_grid_thw"][0]
    patch = backend.processor.image_processor.patch_size
    width, height = backend.seen_size(image)
    assert (width, height) == (int(grid[2]) * patch, int(grid[1]) * patch)
    assert width % (patch * 2) == 0 and height % (patch * 2) == 0  # 28 for Qwen2.5-VL, 32 for Qwen3-VL
    assert patch == {"qwen2.5-vl": 14, "qwen3-vl": 16}[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_max_pixels_caps_the_photo(backends, family):
    backend = backends[family]
    capped = TransformersBackend(backend.model, backend.processor, family=family, max_pixels=48 * 48)
    width, height = capped.seen_size(photo(700, 500, 3))
    assert width * height <= 48 * 48
    assert backend.seen_size(photo(700, 500, 3)) != (width, height)  # the caller's processor is not changed
    with pytest.raises(InputError, match="more elongated"):
        capped.seen_size(photo(2000, 4, 3))


def test_identity_names_contents_not_paths(backends, vlm_folders, tmp_path):
    identity = backends["qwen3-vl"].identity
    assert identity["weights"]["model.safetensors"]["size"] > 0
    assert identity["dtype"] == "float32" and identity["device"] == "cpu" and identity["family"] == "qwen3-vl"
    assert str(vlm_folders["qwen3-vl"]) not in repr(identity)
    assert identity != backends["qwen2.5-vl"].identity
    assert isinstance(backends["qwen3-vl"], ChatBackend)
    built = TransformersBackend(backends["qwen3-vl"].model, backends["qwen3-vl"].processor, family="qwen3-vl")
    assert built.identity["weights"] == "in memory"
    with pytest.raises(InputError, match="cannot be cached: nothing identifies its weights"):
        CachedBackend(built, ReplyStore(tmp_path))


def test_a_deferred_backend_is_described_as_the_loaded_one_and_loads_at_its_first_call(backends, vlm_folders):
    deferred = build_vlm_backend("transformers", model=str(vlm_folders["qwen3-vl"]), device="cpu", deferred=True)
    assert not deferred.loaded and deferred.identity == backends["qwen3-vl"].identity
    assert deferred.seen_size(PHOTO) == backends["qwen3-vl"].seen_size(PHOTO) and deferred.loaded
    assert deferred.chat(CONVERSATIONS[0], MAX_TOKENS).text == backends["qwen3-vl"].chat(CONVERSATIONS[0],
                                                                                           MAX_TOKENS).text


def test_a_deferred_backend_describes_a_device_this_machine_lacks_without_loading(vlm_folders):
    """A Ray driver on a CPU describes its actors' VLM on their GPUs: bf16 by default there, never loaded."""
    deferred = build_vlm_backend("transformers", model=str(vlm_folders["qwen2.5-vl"]), device="cuda",
                                 deferred=True)
    assert (deferred.identity["device"], deferred.identity["dtype"]) == ("cuda", "bfloat16")
    assert not deferred.loaded
    fp32 = build_vlm_backend("transformers", model=str(vlm_folders["qwen2.5-vl"]), device="cuda",
                             precision="fp32", deferred=True)
    assert fp32.identity["dtype"] == "float32" and fp32.identity["weights"] == deferred.identity["weights"]
