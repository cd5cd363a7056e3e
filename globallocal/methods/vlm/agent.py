"""SAM 3 Agent's loop (SPEC-vlm, ``sam3-agent``): the VLM calls tools until it selects masks or reports none.

Follows the authors' ``agent_core.py`` rule by rule (the spec's steps):

1. The history starts as ``[system prompt, user: [raw image, initial query text]]``.
2. Each reply is cut after its first ``</tool>`` and its tool call read (:mod:`.toolcalls`).
3. Until a ``segment_phrase`` has run SAM 3, only ``segment_phrase`` and ``report_no_mask`` are allowed.
4. ``segment_phrase``: a prompt used before is refused, listing the used ones; otherwise SAM 3's instances
   become the candidates (:mod:`.candidates`), shown as one image of numbered marks (or a text for none).
5. ``examine_each_mask``: each candidate is checked in a conversation of its own; the accepted ones remain.
6. ``select_masks_and_return`` answers with the chosen candidates; 7. ``report_no_mask`` with none.
8. Any other tool is an error. 9. Between turns the history is cut and pruned (:mod:`.history`).
10. The query ends as ``vlm_error`` when its turns exceed ``max_generations``.

Where the authors raise, the query's outcome is ``vlm_error`` with the reason and an empty answer; with
``format_retries`` (the ``sam3-agent-retry`` preset) the model is first reminded of the format and asked again,
the malformed turn and the reminder kept out of the history.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any

import torch
from PIL import Image

from ...models.vlm.messages import message_images
from ...proposals import Proposals
from .answer import Transcript, Usage, VlmAnswer, empty_candidates, record_reply
from .candidates import agent_candidates
from .chat import (
    ChatBackend,
    ChatReply,
    Conversation,
    Message,
    assistant,
    image_part,
    is_transport_error,
    system,
    text_part,
    user,
)
from .history import cut_assistant_texts, prune, tried_list
from .prompts import Prompts, builtin_prompts
from .render import candidate_image, color_of, marks_image, zoom_image
from .settings import VlmSettings
from .steps import ChatRequest, Steps, run_steps
from .toolcalls import AgentError, chosen_numbers, cut_after_tool, only_parameter, parse_tool_call, parse_verdict

__all__ = ["MAX_IMAGES", "TOOLS", "AgentQuery", "SegmentPhrase", "agent_steps", "run_agent"]

SegmentPhrase = Callable[[str], Proposals]
"""SAM 3's instances for a bare prompt on the photo, at the agent's threshold, with no fallback."""
TOOLS = ("segment_phrase", "examine_each_mask", "select_masks_and_return", "report_no_mask")
FIRST_TOOLS = ("segment_phrase", "report_no_mask")
MAX_IMAGES = 2


class AgentQuery:
    """One query's loop: its history, candidates, used prompts, counters, cost and transcript."""

    def __init__(self, photo: Image.Image, query: str, segment_phrase: SegmentPhrase, settings: VlmSettings,
                 prompts: Prompts) -> None:
        self.photo = photo
        self.query = query
        self.segment_phrase = segment_phrase
        self.settings = settings
        self.prompts = prompts
        self.usage = Usage()
        self.transcript = Transcript()
        self.transcript.name_image(photo, "photo")
        for name in ("system_prompt", "system_prompt_iterative_checking"):
            self.transcript.name_prompt(prompts.text(name), name)
        self.messages: list[Message] = [system(prompts.text("system_prompt")), self._first_turn([])]
        self.candidates: Proposals | None = None
        """None until a segment_phrase has run SAM 3; then the candidates numbered 1..N."""
        self.used: list[str] = []
        self.latest = ""
        self.generations = 0
        """The authors' counter: turns that did not end the query (a retry counts as one)."""
        self.turns = 0
        self.retries = 0

    # ---- messages

    def _first_turn(self, tried: Sequence[str]) -> Message:
        text = self.prompts.fill("initial_query", query=self.query)
        if tried:
            text += " " + self.prompts.fill("tried_prompts_note", tried=tried_list(tried))
        return user(image_part(self.photo), text_part(text))

    def _marks(self) -> Image.Image:
        count = len(self.candidates)
        return self.transcript.name_image(marks_image(self.photo, self.candidates.masks), f"marks 1-{count}")

    def _check_conversation(self, index: int) -> Conversation:
        mask, name = self.candidates.masks[index], f"candidate {index + 1}"
        alone = self.transcript.name_image(candidate_image(self.photo, mask, color_of(index)), name)
        zoomed = self.transcript.name_image(zoom_image(self.photo, mask, color_of(index)), f"{name} zoomed")
        text = self.prompts.text
        return [
            system(text("system_prompt_iterative_checking")),
            user(text_part(text("check_raw_image")), image_part(self.photo),
                 text_part(self.prompts.fill("check_query", query=self.query)),
                 text_part(text("check_candidate")), image_part(alone),
                 text_part(text("check_zoom")), image_part(zoomed)),
        ]

    # ---- the backend

    def _record(self, conversation: str, messages: Conversation, reply: ChatReply, **fields: Any) -> str:
        return record_reply(self.usage, self.transcript, conversation, messages, reply, **fields)

    def _ask(self, messages: Conversation) -> Generator[list[ChatRequest], list[ChatReply], str]:
        (reply,) = yield [ChatRequest(list(messages))]
        self.turns += 1
        return self._record("agent", messages, reply, turn=self.turns)

    def _check(self, conversations: dict[int, Conversation]) -> Generator[list[ChatRequest], list[ChatReply],
                                                                          dict[int, str]]:
        replies = yield [ChatRequest(list(messages)) for messages in conversations.values()]
        return {index: self._record("check", messages, reply, candidate=index + 1)
                for (index, messages), reply in zip(conversations.items(), replies)}

    # ---- the loop

    def steps(self) -> Steps:
        """The loop as a generator of requests (:mod:`.steps`); returns the answer."""
        try:
            return (yield from self._loop())
        except AgentError as error:
            return self._answer("vlm_error", error.reason)
        except Exception as error:
            if is_transport_error(error):
                return self._answer("vlm_error", "transport")
            raise

    def _loop(self) -> Steps:
        reply = yield from self._ask(self.messages)
        while True:
            text = cut_after_tool(reply)
            try:
                action = self._read(text)
            except AgentError as error:
                if self.retries >= self.settings.format_retries:
                    raise
                self.retries += 1
                self._count_generation()
                reminder = user(text_part(self.prompts.fill("format_reminder", problem=str(error))))
                reply = yield from self._ask([*self.messages, assistant(text + "\n\n"), reminder])
                continue
            answer = yield from self._act(*action, text)
            if answer is not None:
                return answer
            cut_assistant_texts(self.messages)
            self.messages = prune(self.messages, self.used, self.latest, self._first_turn)
            if len(message_images(self.messages)) > MAX_IMAGES:
                raise RuntimeError(f"the agent's history holds {len(message_images(self.messages))} images")
            self._count_generation()
            reply = yield from self._ask(self.messages)

    def _count_generation(self) -> None:
        self.generations += 1
        if self.generations > self.settings.max_generations:
            raise AgentError("too_many_generations", f"more than {self.settings.max_generations} turns")

    def _read(self, text: str) -> tuple[str, Any]:
        """The tool and its argument, every check done before the history changes (so a retry can follow)."""
        call = parse_tool_call(text)
        name = call.name
        if self.candidates is None and name not in FIRST_TOOLS:
            raise AgentError("tool_not_allowed", f"the first tool must be segment_phrase or report_no_mask, "
                                                 f"not {name!r}")
        if name == "segment_phrase":
            prompt = only_parameter(call, "text_prompt")
            if not isinstance(prompt, str):
                raise AgentError("bad_parameters", "text_prompt must be a string")
            return name, prompt
        if name == "examine_each_mask":
            last = self.messages[-1].get("content")
            shown = isinstance(last, list) and len(last) > 1 and last[1].get("type") == "image"
            if self.latest == "" or not shown:
                raise AgentError("tool_not_allowed", "examine_each_mask needs the masks of segment_phrase on show")
            return name, None
        if name == "select_masks_and_return":
            return name, chosen_numbers(only_parameter(call, "final_answer_masks"), len(self.candidates))
        if name == "report_no_mask":
            return name, None
        raise AgentError("unknown_tool", f"unknown tool {name!r}; the tools are {', '.join(TOOLS)}")

    def _act(self, name: str, argument: Any, text: str) -> Generator[list[ChatRequest], list[ChatReply],
                                                                     VlmAnswer | None]:
        if name == "segment_phrase":
            self._segment(argument, text)
        elif name == "examine_each_mask":
            yield from self._examine(text)
        else:
            self.messages.append(assistant(text))
            if name == "select_masks_and_return":
                return self._answer("select", None, [number - 1 for number in argument])
            return self._answer("no_mask", None)
        return None

    def _segment(self, prompt: str, text: str) -> None:
        self.messages.append(assistant(text))
        fill = self.prompts.fill
        if prompt in self.used:
            self.messages.append(user(text_part(fill("duplicate_prompt", prompt=prompt, used=tried_list(self.used)))))
            return
        self.used.append(prompt)
        self.latest = prompt
        s = self.settings
        self.candidates = agent_candidates(self.segment_phrase(prompt), s.overlap_threshold, s.short_rle_chars)
        count = len(self.candidates)
        if count == 0:
            self.messages.append(user(text_part(fill("no_masks", prompt=prompt, query=self.query))))
        else:
            self.messages.append(user(text_part(fill("masks_rendered", count=count, query=self.query)),
                                      image_part(self._marks())))

    def _examine(self, text: str) -> Generator[list[ChatRequest], list[ChatReply], None]:
        self.messages[-1] = user(text_part(self.prompts.text("examine_placeholder")))
        conversations = {index: self._check_conversation(index) for index in range(len(self.candidates))}
        replies = yield from self._check(conversations)
        verdicts: dict[int, bool] = {}
        retries = dict.fromkeys(conversations, 0)
        while replies:
            again = {}
            for index, reply in replies.items():  # in candidate order: the first bad verdict is the one reported
                try:
                    verdicts[index] = parse_verdict(reply)
                except AgentError:
                    if retries[index] >= self.settings.format_retries:
                        raise
                    retries[index] += 1
                    again[index] = conversations[index] = [
                        *conversations[index], assistant(reply),
                        user(text_part(self.prompts.text("verdict_reminder"))),
                    ]
            replies = (yield from self._check(again)) if again else {}
        kept = [index for index in sorted(verdicts) if verdicts[index]]
        self.candidates = self.candidates.select(torch.tensor(kept, dtype=torch.long))
        self.messages.append(assistant(text))
        if kept:
            body = self.prompts.fill("examined_some", count=len(kept), query=self.query)
            self.messages.append(user(text_part(body), image_part(self._marks())))
        else:
            self.messages.append(user(text_part(self.prompts.fill("examined_none", query=self.query))))

    def _answer(self, outcome: str, reason: str | None, chosen: Sequence[int] = ()) -> VlmAnswer:
        candidates = self.candidates if self.candidates is not None else empty_candidates(self.photo)
        details = {"sam3_prompts": list(self.used), "sam3_prompt": self.latest if self.used else None,
                   "agent_turns": self.turns}
        return VlmAnswer.of(candidates, chosen, outcome, reason, usage=self.usage,
                            transcript=self.transcript.to_json(), details=details)


def agent_steps(photo: Image.Image, query: str, segment_phrase: SegmentPhrase, settings: VlmSettings,
                prompts: Prompts) -> Steps:
    """One query's loop as a generator of requests (drive it with :func:`~.steps.run_steps`)."""
    return AgentQuery(photo, query, segment_phrase, settings, prompts).steps()


def run_agent(backend: ChatBackend, photo: Image.Image, queries: Sequence[str], segment_phrase: SegmentPhrase,
              settings: VlmSettings, prompts: Prompts | None = None) -> list[VlmAnswer]:
    """Every query's loop on one photo, their requests sent together each round; one answer per query."""
    prompts = prompts or builtin_prompts("agent")
    generators = [agent_steps(photo, query, segment_phrase, settings, prompts) for query in queries]
    return run_steps(generators, backend, settings.max_tokens)
