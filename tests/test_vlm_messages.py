"""Conversations in the OpenAI chat format: checked, recorded with image placeholders, digested by content."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from globallocal.errors import InputError
from globallocal.models.vlm.messages import check_messages, conversation_digest, message_images, transcript


def photo(seed: int, size: tuple[int, int] = (4, 3)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def conversation(image: Image.Image, text: str = "the cat") -> list[dict]:
    return [{"role": "system", "content": "Find it."},
            {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]},
            {"role": "assistant", "content": "<tool>{}</tool>"}]


def test_the_transcript_replaces_images_by_size_and_pixel_digest():
    image = photo(0)
    pixels = np.asarray(image)
    digest = hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).hexdigest()
    plain = transcript(conversation(image))
    assert plain[1]["content"][0] == {"type": "image", "image": f"<image 4x3 sha256:{digest}>"}
    assert plain[0] == {"role": "system", "content": "Find it."} and plain[2]["content"] == "<tool>{}</tool>"
    json.dumps(plain)  # plain JSON, for records
    assert message_images(conversation(image)) == [image]


def test_the_digest_depends_on_words_and_pixels_not_on_objects():
    first = conversation_digest(conversation(photo(0)))
    assert first == conversation_digest(conversation(photo(0)))
    assert first != conversation_digest(conversation(photo(1)))
    assert first != conversation_digest(conversation(photo(0), "the dog"))
    assert first != conversation_digest(conversation(photo(0, (3, 4))))


@pytest.mark.parametrize("messages", [
    [], "hello", [{"role": "tool", "content": "x"}], [{"role": "user", "content": 3}],
    [{"role": "user", "content": [{"type": "image", "image": "photo.png"}]}],
    [{"role": "user", "content": [{"type": "text"}]}],
])
def test_malformed_conversations_are_one_line_errors(messages):
    with pytest.raises(InputError) as caught:
        check_messages(messages)
    assert "\n" not in str(caught.value)
