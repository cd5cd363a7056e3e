"""The VLM reply cache: hits without asking, damaged entries asked again, faults never stored."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from chat_server import ChatServer
from PIL import Image

from globallocal.errors import VlmEndpointError
from globallocal.models.vlm import CachedBackend, ReplyStore, build_vlm_backend
from globallocal.models.vlm.openai_backend import OpenAIBackend
from globallocal.models.vlm.reply_cache import request_digest


def conversation(text: str, seed: int = 0) -> list[dict]:
    image = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]


def entry_files(root) -> list:
    return sorted(path for path in root.rglob("*.json") if path.name != "identity.json")


def test_a_stored_reply_is_answered_without_asking(tmp_path):
    with ChatServer(lambda body: "box of " + body["messages"][0]["content"][1]["text"]) as server:
        backend = build_vlm_backend("openai", url=server.url, model="m", cache_dir=tmp_path)
        first = backend.chat(conversation("the cat"), 32)
        again = backend.chat(conversation("the cat"), 32)  # other objects, the same words and pixels
        assert len(server.requests) == 1
        assert again.text == first.text == "box of the cat" and again.cached and not first.cached
        assert again.prefilled_tokens == again.generated_tokens == 0 and again.prompt_tokens == first.prompt_tokens
        # Other pixels, other words or another max_tokens are other requests.
        backend.chat(conversation("the cat", seed=1), 32)
        backend.chat(conversation("the dog"), 32)
        backend.chat(conversation("the cat"), 33)
        assert len(server.requests) == 4
        # chat_many asks only what is not stored, and shares entries with chat.
        replies = backend.chat_many([conversation("the dog"), conversation("a bird"), conversation("the cat")], 32)
        assert [reply.cached for reply in replies] == [True, False, True] and len(server.requests) == 5
        assert replies[1].text == "box of a bird"
    (identity_file,) = tmp_path.glob("vlm-*/identity.json")
    assert json.loads(identity_file.read_text())["url"] == server.url
    assert len(entry_files(tmp_path)) == 5


def test_a_damaged_entry_is_asked_again_with_a_warning(tmp_path):
    with ChatServer(["first", "second"]) as server:
        backend = CachedBackend(OpenAIBackend(server.url, "m"), ReplyStore(tmp_path))
        backend.chat(conversation("the cat"), 8)
        (entry,) = entry_files(tmp_path)
        for damage in (b'{"format": 1, "request": "', b"\x00" * 10, json.dumps({"format": 1, "request": "other",
                                                                             "reply": {"text": "forged",
                                                                                       "prompt_tokens": 1,
                                                                                       "finish_reason": "stop"}
                                                                             }).encode()):
            entry.write_bytes(damage)
            with pytest.warns(UserWarning, match=r"VLM reply cache entry .*; asking the VLM again"):
                reply = backend.chat(conversation("the cat"), 8)
            assert not reply.cached and reply.text == "second"
        assert backend.chat(conversation("the cat"), 8).cached  # rewritten whole
        assert len(server.requests) == 4


def test_a_transport_failure_is_never_stored(tmp_path):
    with ChatServer(["fine"], faults=[503, 503]) as server:
        backend = CachedBackend(OpenAIBackend(server.url, "m", retries=1), ReplyStore(tmp_path))
        with pytest.raises(VlmEndpointError):
            backend.chat(conversation("the cat"), 8)
        assert entry_files(tmp_path) == []
        assert backend.chat(conversation("the cat"), 8).text == "fine"  # the next run asks again
        assert len(server.requests) == 3 and len(entry_files(tmp_path)) == 1


def test_label_logprobs_are_stored_infinities_included(tmp_path):
    steps = [["2", -0.5, {"2": -0.5, "1": -1.2}]]
    with ChatServer([{"text": "2", "logprobs": steps}, {"text": "2"}]) as server:
        backend = CachedBackend(OpenAIBackend(server.url, "m"), ReplyStore(tmp_path))
        labels = ["1", "2", "3"]
        asked = backend.label_logprobs(conversation("which?"), labels)
        stored = backend.label_logprobs(conversation("which?"), labels)
        assert dict(asked) == dict(stored) == {"1": -1.2, "2": -0.5, "3": -math.inf}
        assert stored.cached and not asked.cached and stored.prefilled_tokens == 0
        assert backend.label_logprobs(conversation("which?"), ["1", "2"]) is None  # other labels: asked
        assert backend.label_logprobs(conversation("which?"), ["1", "2"]) is None  # None stored too
        assert len(server.requests) == 2


def test_the_kind_of_call_is_part_of_the_key():
    messages = conversation("the cat")
    assert request_digest("chat", messages, max_tokens=8) != request_digest("labels", messages, max_tokens=8)
    assert request_digest("chat", messages, max_tokens=8) == request_digest("chat", conversation("the cat"),
                                                                            max_tokens=8)
