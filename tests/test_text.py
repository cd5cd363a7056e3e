"""The target noun phrase rule and the text features."""

from __future__ import annotations

import warnings

import pytest
import torch
from spacy.lang.en import English
from spacy.tokens import Doc

from globallocal.errors import InputError
from globallocal.models.text import encode_texts, noun_phrase_of, parse_phrase, prepare_expression, tokenize

# (phrase, expected target noun phrase) for the installed en_core_web_sm 3.8 parse, worked out by the rule:
# the root's chunk; else the chunk of the root's first child; else the whole expression.
NOUN_PHRASES = [
    ("the wooden chair", "the wooden chair"),  # root 'chair' in its chunk
    ("the man on the right", "the man"),  # root 'man'; 'the right' is another chunk
    ("man in red shirt", "man"),
    ("left guy", "guy"),  # root is the verb 'left'; its first child 'guy' is a chunk
    ("the woman holding an umbrella", "the woman"),  # root 'holding'; first child 'woman'
    ("guy in the back with glasses", "guy"),
    ("second from left", "second from left"),  # no chunk at all: the whole expression
    ("red", "red"),
    ("the one on the left", "the one"),
    ("bottom right corner", "bottom right corner"),
    ("a white dog lying on the couch", "a white dog"),
    ("the tallest giraffe", "the tallest giraffe"),
    ("blue car behind the bus", "blue car"),
    ("person sitting down", "person"),  # root 'sitting'; first child 'person'
    ("far right", "far right"),
    ("zebra facing left", "zebra facing"),  # the parser reads 'facing' as a noun
    ("the big elephant next to the small one", "the big elephant"),
    ("left most banana", "most banana"),
    ("middle", "middle"),
    ("kid wearing a hat", "kid"),
    ("the pizza slice closest to you", "the pizza slice"),
    ("empty chair", "empty chair"),
    ("right side of the bed", "right side"),
    ("girl with a pink umbrella", "girl"),
    ("black and white cat", "black and white cat"),
    ("table", "table"),
    ("the man's hat", "the man 's hat"),  # re-joined tokens: "'s" is its own token
    ("two people on the left", "two people"),
    ("The Man, On the RIGHT!", "the man"),  # lower-cased first
    ("it is the man who wears a tie", "it"),  # root 'is'; first child 'it' is a chunk
    ("glass of water on the table", "glass"),
    ("partially visible man on far left", "partially visible man"),  # root 'left'; first child 'man'
]


@pytest.mark.parametrize(("phrase", "expected"), NOUN_PHRASES)
def test_target_noun_phrase_table(nlp, phrase, expected):
    assert parse_phrase(phrase, nlp).noun_phrase == expected


def test_table_is_large_enough():
    assert len(NOUN_PHRASES) >= 25


def test_expression_is_lower_cased_and_rejoined(nlp):
    assert prepare_expression("The Man's HAT, left.", nlp) == "the man 's hat , left ."
    # A doubled space becomes spaCy's ' ' token, which the reference drops.
    assert prepare_expression("red  car", nlp) == "red car"


def _doc(words, heads, deps, pos):
    """A parse written by hand on English's vocabulary (for its noun-chunk iterator), no model involved."""
    spaces = [True] * (len(words) - 1) + [False]
    return Doc(English().vocab, words=words, spaces=spaces, heads=heads, deps=deps, pos=pos)


def test_rule_on_hand_built_parses():
    # Root in a chunk.
    doc = _doc(["the", "red", "car"], [2, 2, 2], ["det", "amod", "ROOT"], ["DET", "ADJ", "NOUN"])
    assert noun_phrase_of(doc) == ("the red car", True)
    # Root is a verb; its first child heads a chunk.
    doc = _doc(["dog", "sleeping"], [1, 1], ["nsubj", "ROOT"], ["NOUN", "VERB"])
    assert noun_phrase_of(doc) == ("dog", True)
    # Root is a verb whose first child is not in a chunk: the whole expression.
    doc = _doc(["quickly", "running", "dog"], [1, 1, 1], ["advmod", "ROOT", "dobj"], ["ADV", "VERB", "NOUN"])
    assert noun_phrase_of(doc) == ("quickly running dog", True)
    # Two sentences: the last root decides.
    doc = _doc(
        ["cat", ".", "big", "dog"], [0, 0, 3, 3], ["ROOT", "punct", "amod", "ROOT"], ["NOUN", "PUNCT", "ADJ", "NOUN"]
    )
    assert noun_phrase_of(doc) == ("big dog", True)
    # Nothing nominal.
    doc = _doc(["very", "red"], [1, 1], ["advmod", "ROOT"], ["ADV", "ADJ"])
    assert noun_phrase_of(doc) == ("very red", False)


def test_has_noun(nlp):
    assert parse_phrase("the man on the right", nlp).has_noun
    assert not parse_phrase("red", nlp).has_noun


@pytest.mark.parametrize("phrase", ["", "   ", "\n\t"])
def test_empty_phrase_is_refused(nlp, phrase):
    with pytest.raises(InputError, match="phrase is empty"):
        parse_phrase(phrase, nlp)


def test_long_text_is_truncated_with_a_warning(tiny_vit):
    text = "the man " * 60
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tokens, truncated = tokenize([text, "a dog"], tiny_vit)
    assert truncated == [True, False]
    assert any("truncated" in str(w.message) for w in caught)
    assert tokens.shape == (2, 77)
    assert int(tokens[0, -1]) == 49407  # the end-of-text token survives truncation


def test_text_features_match_the_model(tiny_vit):
    tokens = tiny_vit.tokenizer(["the wooden chair"])
    with torch.inference_mode():
        expected = tiny_vit.model.encode_text(tokens)
    torch.testing.assert_close(encode_texts(["the wooden chair"], tiny_vit), expected)


def test_text_features_stop_at_the_end_token_without_changing_them(tiny_vit):
    texts = ["a dog", "the man on the right in a blue shirt", "the man " * 60]  # the last fills the context
    tokens = tiny_vit.tokenizer(texts)
    with torch.inference_mode():
        expected = tiny_vit.model.encode_text(tokens)
        short = tiny_vit.model.encode_text(tiny_vit.tokenizer(texts[:2]))
    with pytest.warns(UserWarning, match="truncated"):
        torch.testing.assert_close(encode_texts(texts, tiny_vit), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(encode_texts(texts[:2], tiny_vit), short, rtol=1e-5, atol=1e-6)


def test_spacy_install_hint_uses_spacys_downloader():
    from globallocal.models.text import load_parser

    with pytest.raises(InputError, match=r"`python -m spacy download en_core_web_xx`") as error:
        load_parser("en_core_web_xx")
    assert "pip install" not in str(error.value)
    with pytest.raises(InputError, match=r"`pip install my-parser`"):
        load_parser("my_parser")
