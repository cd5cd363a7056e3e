"""``--method vlm``: a vision-language model picks the referred object among candidate masks (SPEC-vlm).

The presets' logic lives in this folder (:mod:`.agent`, :mod:`.grounding`,
:mod:`.marks`, driven by :mod:`.steps`); the model behind one chat interface
in :mod:`globallocal.models.vlm`. This module makes them a method:

- ``sam3-agent``: the method prompts the phrase-dependent source itself
  (:meth:`VlmMethod.prompts_source`): every ``segment_phrase`` of the agent is
  an exact query of the photo's :class:`~globallocal.proposals.concept_image.ConceptImage`,
  so SAM 3's vision pass is paid once per photo, and a prompt asked before (by
  another query, or another phrase) is answered from memory;
- ``box`` and ``marks``: one call per phrase over the phrase's candidates (any
  source's), the phrases of a photo sent together; ``marks`` can shortlist by
  another method's score (``shortlist``: a CLIP selector narrowing, the VLM
  deciding).

An answer is a SET of candidates: its mask is their union, an empty set an
empty mask ("no target", a valid answer). ``index`` is the candidate when the
set has exactly one; ``scores`` say which candidates the VLM chose (1) or not
(0): that choice, and nothing else, decides the answer. What each preset read
on the way (the VLM's box and its IoU, the label log-probabilities) is under
``vlm``, with the outcome, the cost and the transcript.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ...errors import InputError
from ...models.text import ParsedPhrase
from ...models.vlm.backend import ChatBackend
from ...models.vlm.factory import build_vlm_backend
from ...proposals import Proposals
from ...proposals.concepts import ConceptAnswer, ConceptQuery
from .. import build_method, get_method
from ..base import ImageFeatures, Method, SegmentResult, TextEncoder
from .agent import run_agent
from .answer import VlmAnswer
from .grounding import run_box
from .marks import run_marks
from .prompts import Prompts, builtin_prompts, load_prompts
from .settings import VlmSettings

AGENT_STEP = "agent"
"""The step a ``sam3-agent`` answer's candidates are recorded under: the agent's own prompts found them."""


@dataclass
class VlmResult(SegmentResult):
    """The VLM's answer to one phrase: a set of candidates, its outcome, its cost and its transcript."""

    vlm: VlmAnswer = field(kw_only=True)

    ranking_label = "VLM choice"

    @property
    def chosen(self) -> tuple[int, ...]:
        """The candidates of the answer set (indices into :meth:`among`), possibly none."""
        return self.vlm.chosen

    def failure(self) -> str | None:
        if self.vlm.reason != "transport":
            return None
        return self.vlm.details.get("error") or "the VLM endpoint did not answer"

    def answer_fields(self) -> dict[str, Any]:
        """The outcome (and its reason), the set, what it cost and what the preset read (``vlm``), and the
        transcript, JSON-ready; ``outcome`` is what a report counts."""
        answer = self.vlm
        return {"outcome": answer.outcome, "outcome_reason": answer.reason, "answer_set": list(self.chosen),
                "vlm": {**answer.usage.to_json(), **answer.details}, "transcript": answer.transcript}


class VlmMethod(Method):
    """A VLM choosing among candidates: SAM 3 Agent's loop, one grounding call, or numbered marks."""

    name = "vlm"
    settings: VlmSettings

    def __init__(self, clip, nlp, settings: VlmSettings, backend: ChatBackend, prompts: Prompts | None = None,
                 shortlister: Method | None = None) -> None:
        super().__init__(clip, nlp, settings)
        self.backend = backend
        self.custom_prompts = prompts
        """The prompt files given (``--vlm-prompts``), or None: this project's own texts."""
        self.shortlister = shortlister
        """With ``shortlist`` other than the source: the method whose scores pick the marks' shortlist."""
        self.per_proposal = shortlister.per_proposal if shortlister is not None else ()

    @property
    def device(self) -> torch.device:
        if self.shortlister is not None:
            return self.shortlister.device
        model = getattr(self.backend, "model", None)
        return model.device if model is not None else torch.device("cpu")

    def prompts(self) -> Prompts:
        """The texts the preset sends: the files given, else this project's."""
        return self.custom_prompts or builtin_prompts(self.settings.mode)

    def prompts_source(self) -> bool:
        return self.settings.mode == "agent"

    # -- what the shortlisting method needs of the image (nothing without one) ----------

    def image_context(self, image: Image.Image) -> Any:
        return None if self.shortlister is None else self.shortlister.image_context(image)

    def shared_features(self, image: Image.Image, context: Any) -> dict[str, torch.Tensor]:
        return {} if self.shortlister is None else self.shortlister.shared_features(image, context)

    def proposal_features(self, image: Image.Image, proposals: Proposals | None,
                          context: Any) -> dict[str, torch.Tensor]:
        return {} if self.shortlister is None else self.shortlister.proposal_features(image, proposals, context)

    def image_features(self, image: Image.Image, proposals: Proposals | None) -> dict[str, torch.Tensor]:
        return {} if self.shortlister is None else self.shortlister.image_features(image, proposals)

    def text_strings(self, parsed: ParsedPhrase) -> list[str]:
        return [] if self.shortlister is None else self.shortlister.text_strings(parsed)

    def truncated(self, texts: Sequence[str]) -> bool:
        return False  # the VLM reads the whole phrase

    def read_text(self, text: str) -> str:
        return text

    # -- identity ------------------------------------------------------------------------

    def visual_identity(self) -> dict[str, Any]:
        shortlist = {} if self.shortlister is None else {"shortlist": self.shortlister.visual_identity()}
        return {**super().visual_identity(), **shortlist}

    def describe(self) -> dict[str, Any]:
        """The settings, the model's identity (no secret: an endpoint by URL and model name) and the prompts'
        digest; what the replies depend on, so a run and the reply cache are keyed by it."""
        shortlist = {} if self.shortlister is None else {"shortlist_method": self.shortlister.describe()}
        return {**super().describe(), "model": dict(self.backend.identity), **self.prompts().describe(),
                **shortlist}

    # -- answers -------------------------------------------------------------------------

    def answer(self, image: ImageFeatures, parsed: Sequence[ParsedPhrase], encode: TextEncoder) -> list[SegmentResult]:
        queries = [item.phrase for item in parsed]  # the VLM reads the phrase as the user wrote it
        mode, settings, prompts = self.settings.mode, self.settings, self.prompts()
        if mode == "agent":
            concepts = image.concepts
            if concepts is None:
                raise InputError("the sam3-agent preset prompts SAM 3 itself: it needs phrase-dependent proposals "
                                 "(--proposals sam3, its default), not proposals of the image")

            def segment_phrase(prompt: str) -> Proposals:
                return concepts.answer([ConceptQuery(prompt, None, exact=True)])[0].proposals

            answers = run_agent(self.backend, image.image, queries, segment_phrase, settings, prompts)
        else:
            candidates = image.proposals
            if candidates is None:
                raise InputError(f"the {mode} preset chooses among proposals; none were given")
            if mode == "box":
                answers = run_box(self.backend, image.image, queries, [candidates] * len(queries), settings,
                                  prompts, segment_box=image.box_prompt)
            else:
                scores = None
                if self.shortlister is not None:
                    scores = [result.scores for result in self.shortlister.answer(image, parsed, encode)]
                answers = run_marks(self.backend, image.image, queries, [candidates] * len(queries), settings,
                                    prompts, scores)
        return [self._result(item, answer, mode == "agent") for item, answer in zip(parsed, answers, strict=True)]

    def _result(self, item: ParsedPhrase, answer: VlmAnswer, own_candidates: bool) -> VlmResult:
        chosen = torch.zeros(len(answer.candidates), dtype=torch.float32)
        chosen[list(answer.chosen)] = 1.0
        result = VlmResult(
            phrase=item.phrase, expression=item.expression, noun_phrase=item.noun_phrase,
            index=answer.chosen[0] if len(answer.chosen) == 1 else None, mask=answer.mask, scores=chosen,
            truncated=False, has_noun=item.has_noun, vlm=answer,
        )
        if own_candidates:  # the agent's last SAM 3 prompt found them (none when it never prompted)
            prompt = answer.details.get("sam3_prompt") or ""
            step = AGENT_STEP if len(answer.candidates) else "none"
            result.concept = ConceptAnswer(answer.candidates, step, prompt)
        return result


def build_vlm(
    clip,
    nlp,
    settings: VlmSettings,
    backend: ChatBackend | None = None,
    kind: str = "transformers",
    prompts: str | Path | None = None,
    **backend_options: Any,
) -> VlmMethod:
    """The VLM method: ``backend`` when given, else one built by :func:`~globallocal.models.vlm.build_vlm_backend`
    (``kind`` and ``backend_options``: model, url, api_key_env, device, precision, max_pixels, timeout,
    retries, family, cache_dir); ``prompts`` a folder of prompt files (``--vlm-prompts``). A ``shortlist`` by
    another method scores with ``clip``, or, when none is given, with that method's default CLIP (OpenAI's
    weights, loaded here)."""
    texts = load_prompts(prompts, settings.mode) if prompts is not None else None
    shortlister = None
    if settings.shortlist != "source":
        if clip is None:
            from ...models.clip import load_clip

            # A deferred VLM is a Ray driver's: its device is the actors', maybe a GPU this machine lacks.
            here = "cpu" if backend_options.get("deferred") else backend_options.get("device", "cpu")
            clip = load_clip(get_method(settings.shortlist).default_clip_model, "openai", device=here,
                             precision=backend_options.get("precision") or "fp32")
        shortlister = build_method(settings.shortlist, clip, nlp)
    if backend is None:
        backend = build_vlm_backend(kind, **backend_options)
    return VlmMethod(clip, nlp, settings, backend, texts, shortlister)
