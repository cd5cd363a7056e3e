"""The endpoint backend through the real openai client, against tests/chat_server.py on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import math
import socket

import numpy as np
import pytest
from chat_server import ChatServer
from PIL import Image

from globallocal.errors import GlobalLocalError, InputError, VlmEndpointError
from globallocal.models.vlm import ChatBackend, build_vlm_backend
from globallocal.models.vlm.openai_backend import OpenAIBackend, label_scores

KEY = "sk-test-secret-0123456789"


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def conversation(text: str = "the man on the left", image: Image.Image | None = None) -> list[dict]:
    return [{"role": "system", "content": "Find the object."},
            {"role": "user", "content": [{"type": "image", "image": image or photo(300, 200)},
                                         {"type": "text", "text": text}]}]


def sent_image(request: dict) -> Image.Image:
    url = request["body"]["messages"][1]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def test_a_chat_goes_through_the_client_as_the_authors_send_it(monkeypatch):
    monkeypatch.setenv("VLM_KEY", KEY)
    with ChatServer(["<tool>{}</tool>"], cached_tokens=30) as server:
        backend = build_vlm_backend("openai", url=server.url, model="Qwen/Qwen3-VL-8B-Instruct",
                                    api_key_env="VLM_KEY")
        reply = backend.chat(conversation(), 64)
        (request,) = server.requests
    body = request["body"]
    assert body["model"] == "Qwen/Qwen3-VL-8B-Instruct" and body["max_tokens"] == 64
    assert body["n"] == 1 and body["temperature"] == 0
    assert body["messages"][0] == {"role": "system", "content": "Find the object."}
    assert body["messages"][1]["content"][1] == {"type": "text", "text": "the man on the left"}
    assert request["headers"]["authorization"] == f"Bearer {KEY}"
    image = sent_image(request)
    assert image.format == "PNG" and image.size == backend.seen_size(photo(300, 200)) == (320, 224)
    assert reply.text == "<tool>{}</tool>" and reply.finish_reason == "stop" and not reply.cached
    assert reply.prefilled_tokens == reply.prompt_tokens - 30 and reply.generated_tokens == len(reply.text)
    assert KEY not in repr(backend.identity) and backend.identity["url"] == server.url
    assert backend.family == "qwen3-vl"


@pytest.mark.parametrize(("model", "family", "grid"), [("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2.5-vl", 28),
                                                       ("Qwen/Qwen3-VL-8B-Thinking", "qwen3-vl", 32),
                                                       ("gemini-2.5-pro", "other", None)])
def test_the_photo_is_sent_at_the_size_the_model_sees(model, family, grid):
    limit = 300 * 300
    backend = OpenAIBackend("http://127.0.0.1:9/v1", model, max_pixels=limit)
    assert backend.family == family
    for size in [(1000, 700), (90, 61), (640, 480)]:
        width, height = backend.seen_size(photo(*size))
        if size[0] * size[1] > limit:
            assert width * height <= limit
        if grid:  # the family's patch grid: the server's processor keeps this size as it is
            assert width % grid == 0 and height % grid == 0
        else:  # only capped
            aspect_kept = abs(width / height - size[0] / size[1]) < 0.01
            assert (width, height) == size if size[0] * size[1] <= limit else aspect_kept


def test_429_and_5xx_are_retried_a_bounded_number_of_times():
    with ChatServer(["fine"], faults=[503, 429]) as server:
        backend = OpenAIBackend(server.url, "m", retries=2)
        assert backend.chat(conversation(), 8).text == "fine"
        assert len(server.requests) == 3
    with ChatServer(["fine"], faults=[503, 502, 500, 503]) as server:
        backend = OpenAIBackend(server.url, "m", retries=2)
        with pytest.raises(VlmEndpointError) as caught:
            backend.chat(conversation(), 8)
        assert len(server.requests) == 3  # the first try and two retries
    message = str(caught.value)
    assert "\n" not in message and server.url in message and "HTTP 500" in message
    assert caught.value.transport is True and isinstance(caught.value, GlobalLocalError)


def test_a_refused_request_names_url_and_status_and_never_the_key(monkeypatch):
    monkeypatch.setenv("VLM_KEY", KEY)
    with ChatServer(["fine"], faults=[401]) as server:  # its error body echoes the Authorization header
        backend = OpenAIBackend(server.url, "m", api_key_env="VLM_KEY")
        with pytest.raises(VlmEndpointError) as caught:
            backend.chat(conversation(), 8)
        assert len(server.requests) == 1  # a 4xx other than 408/409/429 is not retried
    message = str(caught.value)
    assert server.url in message and "HTTP 401" in message and "$VLM_KEY" in message and "\n" not in message
    assert KEY not in message and caught.value.transport is False


@pytest.mark.parametrize(("fault", "words"), [("not-json", "a body that is not JSON"), ("no-choices", "no choices")])
def test_a_body_that_is_not_a_completion_is_a_transport_fault(fault, words):
    with ChatServer(["fine"], faults=[fault]) as server:
        with pytest.raises(VlmEndpointError) as caught:
            OpenAIBackend(server.url, "m").chat(conversation(), 8)
    assert str(caught.value) == f"the VLM endpoint {server.url} answered HTTP 200 with {words}"
    assert caught.value.transport is True


def test_a_timeout_and_an_unreachable_endpoint_are_one_line_each():
    with ChatServer(["late"], faults=["hang"], hang_s=0.5) as server:
        with pytest.raises(VlmEndpointError) as caught:
            OpenAIBackend(server.url, "m", timeout=0.1, retries=0).chat(conversation(), 8)
    assert server.url in str(caught.value) and "timed out" in str(caught.value) and caught.value.transport
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    with pytest.raises(VlmEndpointError) as caught:
        OpenAIBackend(url, "m", retries=0).chat(conversation(), 8)
    assert str(caught.value).startswith(f"cannot reach the VLM endpoint {url} (no answer: ")
    assert "\n" not in str(caught.value) and caught.value.transport is True


def test_options_are_checked():
    with pytest.raises(InputError, match="not an http"):
        OpenAIBackend("127.0.0.1:8000", "m")
    with pytest.raises(InputError, match="needs the endpoint's URL"):
        build_vlm_backend("openai")
    with pytest.raises(InputError, match="unknown VLM backend"):
        build_vlm_backend("ollama")
    with pytest.raises(InputError, match="retries"):
        OpenAIBackend("http://127.0.0.1:9/v1", "m", retries=100)
    with pytest.raises(InputError, match=r"holds credentials; give the key in \$VLM_KEY instead") as caught:
        OpenAIBackend(f"http://user:{KEY}@127.0.0.1:9/v1", "m", api_key_env="VLM_KEY")
    assert KEY not in str(caught.value)
    assert isinstance(OpenAIBackend("http://127.0.0.1:9/v1", "m"), ChatBackend)


def test_chat_many_keeps_the_order_of_the_conversations():
    def echo(body: dict) -> str:
        return "reply to " + body["messages"][1]["content"][1]["text"]

    phrases = [f"phrase {i}" for i in range(6)]
    image = photo(64, 48)
    with ChatServer(echo) as server:
        replies = OpenAIBackend(server.url, "m").chat_many([conversation(p, image) for p in phrases], 16)
        assert len(server.requests) == 6
    assert [reply.text for reply in replies] == [f"reply to {p}" for p in phrases]


def test_label_scores_follow_the_reply_and_its_alternatives():
    steps = [("1", -0.2, {"1": -0.2, "2": -1.9, "3": -3.0}), ("4", -0.1, {"4": -0.1, "5": -2.5})]
    scores = label_scores(steps, ["14", "15", "2", "7", "16"])
    assert scores["14"] == pytest.approx(-0.3) and scores["15"] == pytest.approx(-2.7)
    assert scores["2"] == -1.9 and scores["7"] == -math.inf and scores["16"] == -math.inf


def test_label_logprobs_from_the_endpoint():
    steps = [["2", -0.5, {"2": -0.5, "1": -1.2, "3": -2.0}]]
    with ChatServer([{"text": "2", "logprobs": steps}, {"text": "2"}]) as server:
        backend = OpenAIBackend(server.url, "m")
        values = backend.label_logprobs(conversation(), ["1", "2", "3", "4"])
        assert dict(values) == {"1": -1.2, "2": -0.5, "3": -2.0, "4": -math.inf}
        body = server.requests[0]["body"]
        assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["max_tokens"] == 1
        assert backend.label_logprobs(conversation(), ["1", "2"]) is None  # the endpoint gave none
        assert backend.label_logprobs(conversation(), ["1", "12"]) is None  # "1" needs the end-of-turn odds
        assert len(server.requests) == 2
