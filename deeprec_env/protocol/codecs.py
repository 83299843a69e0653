"""The two codecs of the episode text protocol, behind one interface (`Codec`).

* `TagsCodec` ("tags") is the DeepRec paper's format for base models. The prompt ends inside `<think>`; a tool call
  is `<|begin_of_preference|> phrase; phrase <|end_of_preference|>`; the environment appends
  `<|begin_of_item_list|> ... <|end_of_item_list|>`; the episode ends with `</think>` and a `<recommendation_list>`
  block. One tool call per segment: generation stops at the first closing tag.
* `ChatCodec` ("chat") is for instruction models and TRL tool calling: the tool `retrieve(preference: str) -> str`
  is called with Qwen2.5-style `<tool_call>{"name": "retrieve", "arguments": {...}}</tool_call>` blocks, or with the
  structured `tool_calls` of an assistant message, and the final message holds the same `<recommendation_list>`
  block. Like TRL, every tool call of a message runs, and a message whose tool-call blocks are not all valid JSON
  has no tool calls at all (it is plain text).

Parsing never raises: text that is neither a tool call nor an answer parses to an `Action` of kind "malformed".
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from deeprec_env.protocol.prompts import PROFILE_LEAD, REQUEST_LEAD, PromptSettings, history_listing, instructions
from deeprec_env.protocol.tags import (
    EMPTY_RESULT,
    ITEMS_CLOSE,
    ITEMS_OPEN,
    PREF_CLOSE,
    PREF_OPEN,
    PROMPT_END,
    REC_CLOSE,
    REC_OPEN,
    THINK_CLOSE,
    THINK_OPEN,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    TOOL_RESPONSE_CLOSE,
    TOOL_RESPONSE_OPEN,
)
from deeprec_env.protocol.text import answer_lines, blocks, first_block, normalize_preference, numbered, strip_tags
from deeprec_env.protocol.tool import (
    TOOL_NAME,
    ToolRequest,
    content_text,
    loads_json,
    render_assistant_message,
    requests_of_message,
    tool_request,
)


@dataclass(frozen=True)
class Action:
    """What one agent segment asks for.

    kind: "tool_call" (`calls` to run), "answer" (the episode ends; `answer_lines` are the titles) or "malformed"
    (neither; `error` says why). text: the raw segment. end: index in `text` just past the action block (`len(text)`
    for malformed segments): text after it was written after the action and is dropped from the transcript.
    calls: the tool requests, in order (tags: exactly one). answer_lines: the non-empty lines of the recommendation
    block with "N. " / bullet prefixes removed (a line holding only "3." is kept as "", an invalid slot).
    reasoning: the text before the action block, protocol tags removed, stripped.
    """

    kind: Literal["tool_call", "answer", "malformed"]
    text: str
    calls: tuple[ToolRequest, ...] = ()
    answer_lines: tuple[str, ...] = ()
    reasoning: str = ""
    end: int = 0
    error: str = ""

    @property
    def preference(self) -> str:
        """The first call's preference ("" when there is none)."""
        return self.calls[0].preference if self.calls else ""


def _answer_action(text: str, block: tuple[int, int, int]) -> Action:
    start, content_start, end = block
    lines = answer_lines(text[content_start : end - len(REC_CLOSE)])
    return Action("answer", text, answer_lines=lines, reasoning=strip_tags(text[:start]), end=end)


def pairs_ok(tokens: Sequence[str], pairs: Mapping[str, str]) -> bool:
    """Every open tag of `pairs` is closed by its own close tag before any other tag of `pairs`; no stray closes."""
    closes = set(pairs.values())
    expected: str | None = None
    for tok in tokens:
        if expected is None:
            if tok in pairs:
                expected = pairs[tok]
            elif tok in closes:
                return False
        elif tok == expected:
            expected = None
        elif tok in pairs or tok in closes:
            return False
    return expected is None


class Codec:
    """The interface both codecs implement. `name` is the value of the env config's `protocol`."""

    name: str = ""
    stop_strings: tuple[str, ...] = ()  # generation should stop after any of these (they end an action)
    result_tags: tuple[str, str] = ("", "")  # what the format checks count as one tool result
    think_depth_at_start: int = 0  # 1 when the prompt opens <think>

    def parse(self, segment: str) -> Action:
        raise NotImplementedError

    def render_tool_call(self, preference: str) -> str:
        """The text an agent writes to call the tool."""
        raise NotImplementedError

    def render_tool_result(self, cards: Sequence[str], labels: Sequence[str] | None = None) -> str:
        """The tool result showing `cards`, each led by its list number or, given `labels`, by its label (the
        items' handles, `protocol.handles`)."""
        raise NotImplementedError

    def render_prompt(
        self, history_cards: Sequence[str], settings: PromptSettings, request: str = "", profile: str = ""
    ) -> str | list[dict[str, str]]:
        """The episode's prompt: instructions, the user's profile card and the history, then the user's request (the
        profile and the request when given)."""
        raise NotImplementedError

    def solution(self, transcript: Any) -> str:
        """The part of a transcript the agent (and the environment's tool results) wrote, as text."""
        raise NotImplementedError

    def balanced(self, tags: Sequence[str]) -> bool:
        """Whether the protocol tags of a solution (answer contents removed), in order, nest as the codec requires."""
        raise NotImplementedError

    def render_answer(self, titles: Sequence[str]) -> str:
        """The final answer block. With the tags codec the agent writes `</think>` before it."""
        return f"{REC_OPEN}\n{numbered(titles)}\n{REC_CLOSE}"


class TagsCodec(Codec):
    """The paper's plain-text format (`base_prompt_rec`), for base models."""

    name = "tags"
    stop_strings = (PREF_CLOSE, REC_CLOSE)
    result_tags = (ITEMS_OPEN, ITEMS_CLOSE)
    think_depth_at_start = 1

    def parse(self, segment: str) -> Action:
        text = segment if isinstance(segment, str) else str(segment)
        call = first_block(text, PREF_OPEN, PREF_CLOSE)
        answer = first_block(text, REC_OPEN, REC_CLOSE)
        if answer is not None and (call is None or answer[2] < call[2]):
            return _answer_action(text, answer)
        if call is None:
            return Action("malformed", text, reasoning=strip_tags(text), end=len(text), error="no action")
        start, content_start, end = call
        preference = normalize_preference(text[content_start : end - len(PREF_CLOSE)])
        reasoning = strip_tags(text[:start])
        return Action("tool_call", text, calls=(ToolRequest(preference),), reasoning=reasoning, end=end)

    def render_tool_call(self, preference: str) -> str:
        return f"{PREF_OPEN} {preference} {PREF_CLOSE}"

    def render_tool_result(self, cards: Sequence[str], labels: Sequence[str] | None = None) -> str:
        """Appended right after the agent's PREF_CLOSE, exactly as the paper's rollout does."""
        body = numbered(cards, labels) + "\n" if cards else EMPTY_RESULT + "\n"
        return f"\n{ITEMS_OPEN}\n{body}{ITEMS_CLOSE}\n\n"

    def render_prompt(
        self, history_cards: Sequence[str], settings: PromptSettings, request: str = "", profile: str = ""
    ) -> str:
        history = history_listing(history_cards) + (f"\n{REQUEST_LEAD}{request}" if request else "")
        history = f"{PROFILE_LEAD}{profile}\n{history}" if profile else history
        return f"{instructions('tags', settings)}\n\nNow, let's begin.\nUser:\n{history}{PROMPT_END}"

    def solution(self, transcript: Any) -> str:
        """The text after the prompt's first PROMPT_END (the prompt itself contains example tags), or all of it."""
        text = transcript if isinstance(transcript, str) else str(transcript)
        cut = text.find(PROMPT_END)
        return text if cut < 0 else text[cut + len(PROMPT_END) :]

    def balanced(self, tags: Sequence[str]) -> bool:
        tags = list(tags)
        if tags.count(THINK_OPEN) != 0 or tags.count(THINK_CLOSE) != 1:
            return False  # the prompt opens <think>; the agent closes it exactly once
        own = (PREF_OPEN, PREF_CLOSE, ITEMS_OPEN, ITEMS_CLOSE, REC_OPEN, REC_CLOSE)
        inner = [t for t in tags if t in own]
        if not pairs_ok(inner, {PREF_OPEN: PREF_CLOSE, ITEMS_OPEN: ITEMS_CLOSE, REC_OPEN: REC_CLOSE}):
            return False
        for i, tok in enumerate(inner):  # each tool call is followed by its result, and results follow calls
            if tok == PREF_CLOSE and (i + 1 == len(inner) or inner[i + 1] != ITEMS_OPEN):
                return False
            if tok == ITEMS_OPEN and (i == 0 or inner[i - 1] != PREF_CLOSE):
                return False
        return True


class ChatCodec(Codec):
    """JSON tool calls for instruction models and TRL tool calling; the answer is the same block."""

    name = "chat"
    stop_strings = (TOOL_CALL_CLOSE, REC_CLOSE)
    result_tags = (TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE)
    think_depth_at_start = 0

    def parse(self, segment: str | Mapping[str, Any]) -> Action:
        """A segment of text, or an assistant message (`{"content": ..., "tool_calls": [...]}`, as TRL and chat
        templates write it), whose structured calls are read directly."""
        if isinstance(segment, Mapping):
            return self._parse_message(segment)
        text = segment if isinstance(segment, str) else str(segment)
        spans = blocks(text, TOOL_CALL_OPEN, TOOL_CALL_CLOSE)
        payloads = [loads_json(text[start:end]) for start, end in spans]
        if spans and all(not error for _, error in payloads):
            calls = tuple(_request_of_payload(payload) for payload, _ in payloads)
            reasoning = strip_tags(text[: spans[0][0] - len(TOOL_CALL_OPEN)])
            return Action("tool_call", text, calls=calls, reasoning=reasoning, end=spans[-1][1] + len(TOOL_CALL_CLOSE))
        answer = first_block(text, REC_OPEN, REC_CLOSE)
        if answer is not None:
            return _answer_action(text, answer)
        error = "bad JSON in a tool call" if spans else "no action"
        return Action("malformed", text, reasoning=strip_tags(text), end=len(text), error=error)

    def _parse_message(self, message: Mapping[str, Any]) -> Action:
        content = content_text(message.get("content"))
        calls = requests_of_message(message)
        if calls:
            return Action("tool_call", content, calls=calls, reasoning=strip_tags(content), end=len(content))
        return self.parse(content)

    def render_tool_call(self, preference: str) -> str:
        call = {"name": TOOL_NAME, "arguments": {"preference": preference}}
        return f"{TOOL_CALL_OPEN}\n{json.dumps(call, ensure_ascii=False)}\n{TOOL_CALL_CLOSE}"

    def render_tool_result(self, cards: Sequence[str], labels: Sequence[str] | None = None) -> str:
        """The tool message content: '1. card\\n2. card' (or '#4 card\\n#9 card' with labels)."""
        return numbered(cards, labels) if cards else EMPTY_RESULT

    def tool_message(self, content: str) -> dict[str, str]:
        return {"role": "tool", "name": TOOL_NAME, "content": content}

    def render_prompt(
        self, history_cards: Sequence[str], settings: PromptSettings, request: str = "", profile: str = ""
    ) -> list[dict[str, str]]:
        """[system (instructions and answer format), user (the profile if any, the history, then the request if
        any)]; pass `tools=[TOOL_SCHEMA]` to the chat template."""
        user = f"{PROFILE_LEAD}{profile}\n\n" if profile else ""
        user += f"My interaction history, oldest first:\n{history_listing(history_cards)}\n\nWhat will I enjoy next?"
        user += f"\n{REQUEST_LEAD}{request}" if request else ""
        return [{"role": "system", "content": instructions("chat", settings)}, {"role": "user", "content": user}]

    def render_messages(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """The completion part of a conversation as one text: leading system/user messages (the prompt) are
        skipped; assistant messages give their content plus <tool_call> blocks; tool messages are wrapped in
        <tool_response> tags. This is the text the format checks read for the chat codec."""
        parts: list[str] = []
        started = False
        for message in messages:
            if not isinstance(message, Mapping):
                continue
            role = message.get("role")
            if not started and role in ("system", "user"):
                continue
            started = True
            if role == "assistant":
                parts.append(render_assistant_message(message))
            elif role == "tool":
                parts.append(f"{TOOL_RESPONSE_OPEN}\n{content_text(message.get('content'))}\n{TOOL_RESPONSE_CLOSE}")
        return "\n".join(parts)

    def solution(self, transcript: Any) -> str:
        """A completion text (as `render_messages` writes it) or a list of messages."""
        if isinstance(transcript, str):
            return transcript
        if isinstance(transcript, Sequence):
            return self.render_messages(transcript)
        return str(transcript)

    def balanced(self, tags: Sequence[str]) -> bool:
        pairs = {
            THINK_OPEN: THINK_CLOSE,
            TOOL_CALL_OPEN: TOOL_CALL_CLOSE,
            TOOL_RESPONSE_OPEN: TOOL_RESPONSE_CLOSE,
            REC_OPEN: REC_CLOSE,
        }
        if not pairs_ok(tags, pairs):
            return False
        calls = [t for t in tags if t in (TOOL_CALL_OPEN, TOOL_CALL_CLOSE, TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE)]
        for i, tok in enumerate(calls):  # a tool response follows a tool call (or another response)
            if tok == TOOL_RESPONSE_OPEN and (i == 0 or calls[i - 1] not in (TOOL_CALL_CLOSE, TOOL_RESPONSE_CLOSE)):
                return False
        return True


def _request_of_payload(payload: Any) -> ToolRequest:
    """The request of one decoded `<tool_call>` body ({"name": ..., "arguments": {...}})."""
    if not isinstance(payload, dict):
        return ToolRequest(error="tool call is not a JSON object")
    return tool_request(payload.get("name"), payload.get("arguments", {}))


CODECS: dict[str, type[Codec]] = {"tags": TagsCodec, "chat": ChatCodec}


def get_codec(name: str | Codec) -> Codec:
    """'tags' | 'chat' (or a Codec, returned as is)."""
    if isinstance(name, Codec):
        return name
    if name not in CODECS:
        raise ValueError(f"unknown protocol {name!r}; set env.protocol to one of {sorted(CODECS)}")
    return CODECS[name]()
