"""Phrase-dependent proposals: what a phrase asks a concept source, and what the source answers.

A class-agnostic source (FreeSOLO, SAM) proposes the same masks whatever the
phrase; a concept source (SAM 3 is one) is asked for the instances of a
noun phrase, so a phrase's candidates are the instances of its own noun
phrase. This module is the one home of that interface, torch-free and
knowing no source by name: the query (:class:`ConceptQuery`), the answer
(:class:`ConceptAnswer`), how a phrase becomes a query (:func:`concept_query`,
with its :func:`head_noun`), the protocol a source implements
(:class:`ConceptSource`) and how its answers are named in a cache
(:func:`concept_key`) and in outputs (:func:`step_fields`).
What the segmenter keeps per photo is :mod:`.concept_image`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ..errors import InputError

if TYPE_CHECKING:
    import spacy
    from PIL import Image

    from ..models.text import ParsedPhrase
    from .masks import Proposals

QUERY_TEXTS = ("noun-phrase", "expression")
"""What of a phrase a query sends: its target noun phrase, or its whole expression."""

STEP_FIELD = "proposal_step"
PROMPT_FIELD = "proposal_prompt"
"""The output fields naming the source's step and prompt of a phrase's candidates (JSON, records)."""
RECORD_ALIASES = {STEP_FIELD: "sam3_step", PROMPT_FIELD: "sam3_prompt"}
"""The names these fields had when SAM 3 was the only concept source: records carry them too, so that a run
resumed from before the rename, and whatever reads its records, finds one name in every record."""


@dataclass(frozen=True)
class ConceptQuery:
    """What a concept source is asked for one phrase."""

    noun_phrase: str
    """The prompt: the phrase's target noun phrase (or its expression, or a prompt a method chose)."""
    head_noun: str | None
    """The noun phrase's head noun ("man" for "tall man in red"); None when it has none or is the phrase itself."""
    exact: bool = False
    """Answer this prompt alone: its instances as the source finds them (its order, no cap, nothing dropped), no
    fallback step. An agent that chooses its prompts, and applies its own rules to the instances, asks so."""


@dataclass
class ConceptAnswer:
    """A concept source's instances for one query and which step of its search found them."""

    proposals: Proposals
    """Bool masks at the image's size, scored by the source, best first."""
    step: str
    """The source's name for the step that answered (SAM 3: noun-phrase | head-noun | below-threshold | sam2 |
    none); "none" when nothing was found."""
    prompt: str
    """The text the source was prompted with at that step ("" when no text was)."""


class ConceptSource(Protocol):
    """A phrase-dependent proposal source (SAM 3's is ``globallocal.proposals.sam3.Sam3ConceptSource``)."""

    phrase_dependent: ClassVar[bool]
    answer_steps: ClassVar[tuple[str, ...]]
    """Every ``step`` its answers can name (a cached answer naming another is damaged)."""
    settings: dict[str, Any]
    """Everything the answers depend on besides the photo and the queries (run configurations, cache keys)."""

    def set_image(self, image: Image.Image) -> None: ...

    def answer(self, queries: Sequence[ConceptQuery]) -> list[ConceptAnswer]: ...


def is_phrase_dependent(source: object) -> bool:
    """Whether a proposal source answers per noun phrase (has ``phrase_dependent`` set)."""
    return bool(getattr(source, "phrase_dependent", False))


def head_noun(text: str, nlp: spacy.Language) -> str | None:
    """The head noun of a noun phrase by spaCy's parse: the root when it is a noun, else its last noun.

    None when the phrase has no noun or is that one word already (the head noun would ask the same).
    """
    doc = nlp(text)
    nouns = [token for token in doc if token.pos_ in ("NOUN", "PROPN")]
    roots = [token for token in doc if token.head.i == token.i and token.pos_ in ("NOUN", "PROPN")]
    head = roots[-1] if roots else (nouns[-1] if nouns else None)
    if head is None or head.text == text.strip():
        return None
    return head.text


def concept_query(
    parsed: ParsedPhrase, nlp: spacy.Language, text: str = "noun-phrase", noun_phrase: str | None = None
) -> ConceptQuery:
    """The query of a phrase: its target noun phrase (``text="noun-phrase"``; ``noun_phrase`` when a method
    parses its own) or its whole expression. The head noun is the noun phrase's either way, none when spaCy
    found no noun."""
    if text not in QUERY_TEXTS:
        raise InputError(f"a concept query sends one of {', '.join(QUERY_TEXTS)}, got {text!r}")
    noun_phrase = parsed.noun_phrase if noun_phrase is None else noun_phrase
    prompt = noun_phrase if text == "noun-phrase" else parsed.expression
    return ConceptQuery(prompt, head_noun(noun_phrase, nlp) if parsed.has_noun else None)


def concept_key(source_key: Mapping[str, Any], query: ConceptQuery) -> dict[str, Any]:
    """The cache key of one query's answer: the source's key (its settings and weights) and the query."""
    fields: dict[str, Any] = {"noun_phrase": query.noun_phrase, "head_noun": query.head_noun}
    if query.exact:  # only then: the keys of entries written before the field existed stay as they were
        fields["exact"] = True
    return {**source_key, "query": fields}


def step_fields(answer: ConceptAnswer, aliases: bool = False) -> dict[str, str]:
    """The step and prompt of an answer, as outputs name them (``aliases``: with :data:`RECORD_ALIASES` too)."""
    fields = {STEP_FIELD: answer.step, PROMPT_FIELD: answer.prompt}
    return {**fields, **{RECORD_ALIASES[name]: value for name, value in fields.items()}} if aliases else fields
