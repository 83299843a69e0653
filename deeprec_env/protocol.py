"""The episode text protocol: prompts, tool calls, tool results, answers, format checks and title matching.

Two codecs share one interface (`Codec`):

* `TagsCodec` ("tags") is the DeepRec paper's format for base models. The prompt ends inside `<think>`; a tool call
  is `<|begin_of_preference|> phrase; phrase <|end_of_preference|>`; the environment appends
  `<|begin_of_item_list|> ... <|end_of_item_list|>`; the episode ends with `</think>` and a
  `<recommendation_list>` block.
* `ChatCodec` ("chat") is for instruction models and TRL tool calling: the tool `retrieve(preference: str) -> str`
  is called with a Qwen2.5/TRL style `<tool_call>{"name": "retrieve", "arguments": {...}}</tool_call>` (or a
  structured `tool_calls` entry of an assistant message), and the final message holds the same
  `<recommendation_list>` block.

Everything here is a pure function of its inputs. Any string is a valid input: parsing never raises, and text
that is not a well-formed action parses to an `Action` of kind "malformed". Nothing here imports agents, rewards,
TRL or Ray.
"""

from __future__ import annotations

import html
import json
import re
import unicodedata
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from rapidfuzz import fuzz, process

if TYPE_CHECKING:
    from deeprec_env.data.dataset import ItemMeta, RecDataset

# --- tags (plain text, not added tokenizer tokens; exactly the paper's strings) -------------------------------

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
PREF_OPEN = "<|begin_of_preference|>"
PREF_CLOSE = "<|end_of_preference|>"
ITEMS_OPEN = "<|begin_of_item_list|>"
ITEMS_CLOSE = "<|end_of_item_list|>"
REC_OPEN = "<recommendation_list>"
REC_CLOSE = "</recommendation_list>"
# Chat codec (Qwen2.5 / Hermes style tool calling, as rendered by the common chat templates).
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
TOOL_RESPONSE_OPEN = "<tool_response>"
TOOL_RESPONSE_CLOSE = "</tool_response>"

ALL_TAGS = (
    THINK_OPEN, THINK_CLOSE, PREF_OPEN, PREF_CLOSE, ITEMS_OPEN, ITEMS_CLOSE, REC_OPEN, REC_CLOSE,
    TOOL_CALL_OPEN, TOOL_CALL_CLOSE, TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE,
)  # fmt: skip
# Substrings that must never appear inside an answer (the paper checks the tag cores, so "<|begin_of_item_list"
# without its closing bar still counts).
TAG_CORES = (
    "begin_of_preference", "end_of_preference", "begin_of_item_list", "end_of_item_list", "<think>", "</think>",
    "recommendation_list>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
)  # fmt: skip
# The tags prompt ends with this; the "solution" (what the agent wrote) is the text after its first occurrence.
PROMPT_END = "\nAssistant:\n" + THINK_OPEN + "\n"
# Placeholder strings of the prompts; an agent that copies one into its text fails the format check.
PLACEHOLDERS = ("[preference phrases", "[retrieved item", "[item title")
TOOL_NAME = "retrieve"
EMPTY_RESULT = "None"  # the tool result body when retrieval returns nothing (the paper writes the literal None)
MAX_PREFERENCE_CHARS = 2000  # longer preference texts are cut: the sentence encoder truncates them anyway


@dataclass(frozen=True)
class ProtocolConfig:
    """Episode limits and rendering budgets (the env config's `protocol` part)."""

    recall_k: int = 20  # items per tool call
    rec_k: int = 10  # titles in the final answer
    max_tool_calls: int = 8
    card_chars: int = 80  # per item card
    history_items: int = 20  # most recent history items shown in the prompt
    fuzzy_threshold: float = 90.0  # rapidfuzz ratio (0-100) a fuzzy title match needs
    instructions: str = "full"  # "full" (the paper's instructions) | "brief" (the task in three sentences)


# --- actions ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """What one agent segment asks for.

    kind: "tool_call" (run the retriever with `preference`), "answer" (episode ends; `answer_lines` are the
    titles) or "malformed" (neither; `error` says why).
    text: the raw segment. end: index in `text` just past the closing tag of the action block (`len(text)` for
    malformed segments): text after it was written after the action and should be dropped from the transcript
    (generation normally stops there; see `Codec.stop_strings`).
    preference: normalised (`"` removed, whitespace collapsed, stripped, cut to MAX_PREFERENCE_CHARS).
    answer_lines: the non-empty lines of the recommendation block with "N. " / bullet prefixes removed (a line
    holding only "3." is kept as "", an invalid slot).
    reasoning: the text before the action block, protocol tags removed, stripped.
    """

    kind: Literal["tool_call", "answer", "malformed"]
    text: str
    preference: str = ""
    answer_lines: tuple[str, ...] = ()
    reasoning: str = ""
    end: int = 0
    error: str = ""


_TAG_RE = re.compile("|".join(re.escape(t) for t in sorted(ALL_TAGS, key=len, reverse=True)))
_WS_RE = re.compile(r"\s+")
# "3. Title", "3) Title", "- Title", "* Title"; "2001: A Space Odyssey", "12 Angry Men" and "2.0 ..." are kept.
_LINE_PREFIX_RE = re.compile(r"^\s*(?:\d{1,3}\s*[.)]\s*(?!\d)|[-*•]\s+)")


def _blocks(text: str, open_tag: str, close_tag: str) -> list[tuple[int, int]]:
    """(content start, content end) of each block from an open tag to the nearest close tag after it, left to
    right (the content may hold further open tags). Linear time: str.find, never a backtracking regex."""
    found: list[tuple[int, int]] = []
    pos = 0
    while (start := text.find(open_tag, pos)) >= 0:
        close = text.find(close_tag, start + len(open_tag))
        if close < 0:
            break
        found.append((start + len(open_tag), close))
        pos = close + len(close_tag)
    return found


def _hollow_blocks(text: str, open_tag: str, close_tag: str) -> str:
    """The text with the content of every block removed (the tags stay)."""
    parts, pos = [], 0
    for start, end in _blocks(text, open_tag, close_tag):
        parts.append(text[pos:start])
        pos = end
    return "".join(parts) + text[pos:]


def normalize_preference(text: str) -> str:
    """As the paper: `"` removed, whitespace collapsed, stripped; cut to MAX_PREFERENCE_CHARS."""
    return _WS_RE.sub(" ", text.replace('"', "")).strip()[:MAX_PREFERENCE_CHARS].strip()


def strip_line_prefix(line: str) -> str:
    """'3. Toy Story' -> 'Toy Story' (also '3) ', '- ', '* ' prefixes)."""
    return _LINE_PREFIX_RE.sub("", line, count=1).strip()


def answer_lines(block: str) -> tuple[str, ...]:
    """The lines of a recommendation block's content: empty lines dropped, numbering removed."""
    return tuple(strip_line_prefix(line) for line in block.split("\n") if line.strip())


def numbered(lines: Sequence[str]) -> str:
    """'1. a\\n2. b' (no trailing newline)."""
    return "\n".join(f"{i}. {line}" for i, line in enumerate(lines, start=1))


def _strip_tags(text: str) -> str:
    return _TAG_RE.sub(" ", text).strip()


def _first_block(text: str, open_tag: str, close_tag: str) -> tuple[int, int, int] | None:
    """(start of the LAST open tag before the first close that follows an open tag, content start, end past the
    close tag), or None. This is the paper's rule: generation stops at the first close tag, and the content is the
    text after the last open tag before it."""
    first_open = text.find(open_tag)
    if first_open < 0:
        return None
    close = text.find(close_tag, first_open + len(open_tag))
    if close < 0:
        return None
    start = text.rfind(open_tag, 0, close)
    return start, start + len(open_tag), close + len(close_tag)


def _answer_action(text: str, block: tuple[int, int, int]) -> Action:
    start, content_start, end = block
    lines = answer_lines(text[content_start : end - len(REC_CLOSE)])
    return Action("answer", text, answer_lines=lines, reasoning=_strip_tags(text[:start]), end=end)


# --- codecs -----------------------------------------------------------------------------------------------------


class Codec:
    """The interface both codecs implement. `name` is the value of the env config's `protocol`."""

    name: str = ""
    stop_strings: tuple[str, ...] = ()  # generation should stop after any of these (they end an action)
    # what `format_problems` needs to know about a codec
    result_tags: tuple[str, str] = ("", "")
    think_depth_at_start: int = 0  # 1 when the prompt opens <think>

    def parse(self, segment: str) -> Action:
        raise NotImplementedError

    def render_tool_call(self, preference: str) -> str:
        """The text an agent writes to call the tool (used by scripted agents and tests)."""
        raise NotImplementedError

    def render_tool_result(self, cards: Sequence[str]) -> str:
        raise NotImplementedError

    def render_prompt(self, history_cards: Sequence[str], config: ProtocolConfig) -> str | list[dict[str, str]]:
        raise NotImplementedError

    def solution(self, transcript: Any) -> str:
        """The part of a transcript the agent (and the environment's tool results) wrote, as text."""
        raise NotImplementedError

    def render_answer(self, titles: Sequence[str]) -> str:
        """The final answer block. With the tags codec the agent writes `</think>` before it."""
        return f"{REC_OPEN}\n{numbered(titles)}\n{REC_CLOSE}"

    def extract_answer(self, transcript: Any) -> tuple[str, ...] | None:
        """The lines of the first complete answer block of the solution, or None when there is none."""
        text = self.solution(transcript)
        block = _first_block(text, REC_OPEN, REC_CLOSE)
        return None if block is None else answer_lines(text[block[1] : block[2] - len(REC_CLOSE)])

    def extract_preferences(self, transcript: Any) -> list[str]:
        """All non-empty preferences of the solution's complete tool-call blocks, in order, normalised as `parse`
        does (the text after the last open tag before each close tag)."""
        raise NotImplementedError

    def _balanced(self, tokens: list[str]) -> bool:
        raise NotImplementedError


def _pairs_ok(tokens: list[str], pairs: Mapping[str, str]) -> bool:
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


class TagsCodec(Codec):
    """The paper's plain-text format (`base_prompt_rec`), for base models."""

    name = "tags"
    stop_strings = (PREF_CLOSE, REC_CLOSE)
    result_tags = (ITEMS_OPEN, ITEMS_CLOSE)
    think_depth_at_start = 1

    def parse(self, segment: str) -> Action:
        text = segment if isinstance(segment, str) else str(segment)
        call = _first_block(text, PREF_OPEN, PREF_CLOSE)
        answer = _first_block(text, REC_OPEN, REC_CLOSE)
        if answer is not None and (call is None or answer[2] < call[2]):
            return _answer_action(text, answer)
        if call is None:
            return Action("malformed", text, reasoning=_strip_tags(text), end=len(text), error="no action")
        start, content_start, end = call
        preference = normalize_preference(text[content_start : end - len(PREF_CLOSE)])
        reasoning = _strip_tags(text[:start])
        return Action("tool_call", text, preference=preference, reasoning=reasoning, end=end)

    def render_tool_call(self, preference: str) -> str:
        return f"{PREF_OPEN} {preference} {PREF_CLOSE}"

    def extract_preferences(self, transcript: Any) -> list[str]:
        text = self.solution(transcript)
        found = (text[a:b].rsplit(PREF_OPEN, 1)[-1] for a, b in _blocks(text, PREF_OPEN, PREF_CLOSE))
        return [p for p in map(normalize_preference, found) if p]

    def render_tool_result(self, cards: Sequence[str]) -> str:
        """Appended right after the agent's PREF_CLOSE, exactly as the paper's rollout does."""
        body = "".join(f"{i}. {card}\n" for i, card in enumerate(cards, start=1)) if cards else EMPTY_RESULT + "\n"
        return f"\n{ITEMS_OPEN}\n{body}{ITEMS_CLOSE}\n\n"

    def render_prompt(self, history_cards: Sequence[str], config: ProtocolConfig) -> str:
        history = _history(history_cards, config)
        return f"{_instructions('tags', config)}\n\nNow, let's begin.\nUser:\n{history}{PROMPT_END}"

    def solution(self, transcript: Any) -> str:
        """The text after the prompt's first PROMPT_END (the prompt itself contains example tags), or all of it."""
        text = transcript if isinstance(transcript, str) else str(transcript)
        cut = text.find(PROMPT_END)
        return text if cut < 0 else text[cut + len(PROMPT_END) :]

    def _balanced(self, tokens: list[str]) -> bool:
        if tokens.count(THINK_OPEN) != 0 or tokens.count(THINK_CLOSE) != 1:
            return False  # the prompt opens <think>; the agent closes it exactly once
        own = (PREF_OPEN, PREF_CLOSE, ITEMS_OPEN, ITEMS_CLOSE, REC_OPEN, REC_CLOSE)
        inner = [t for t in tokens if t in own]
        if not _pairs_ok(inner, {PREF_OPEN: PREF_CLOSE, ITEMS_OPEN: ITEMS_CLOSE, REC_OPEN: REC_CLOSE}):
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

    _BARE_JSON_RE = re.compile(r'\{\s*"name"\s*:')
    _MAX_BARE_CANDIDATES = 4

    def parse(self, segment: str) -> Action:
        text = segment if isinstance(segment, str) else str(segment)
        answer = _first_block(text, REC_OPEN, REC_CLOSE)
        call = _first_block(text, TOOL_CALL_OPEN, TOOL_CALL_CLOSE)
        payload: Any = None
        error = ""
        if call is not None:
            payload, error = _loads(text[call[1] : call[2] - len(TOOL_CALL_CLOSE)])
        elif TOOL_CALL_OPEN not in text:
            bare = self._bare_json(text)
            if bare is not None:
                payload, call = bare
        if answer is not None and (call is None or answer[2] < call[2]):
            return _answer_action(text, answer)
        if call is None:
            return Action("malformed", text, reasoning=_strip_tags(text), end=len(text), error="no action")
        start, _, end = call
        reasoning = _strip_tags(text[:start])
        preference = ""
        if not error:
            preference, error = _preference_from_call(payload)
        if error:
            return Action("malformed", text, reasoning=reasoning, end=end, error=error)
        return Action("tool_call", text, preference=preference, reasoning=reasoning, end=end)

    def _bare_json(self, text: str) -> tuple[Any, tuple[int, int, int]] | None:
        """A JSON object with "name" and "arguments" keys outside any <tool_call> tag."""
        decoder = json.JSONDecoder()
        for n, match in enumerate(self._BARE_JSON_RE.finditer(text)):
            if n >= self._MAX_BARE_CANDIDATES:
                break
            try:
                obj, end = decoder.raw_decode(text, match.start())
            except (ValueError, RecursionError):
                continue
            if isinstance(obj, dict) and "name" in obj and ("arguments" in obj or "parameters" in obj):
                return obj, (match.start(), match.start(), end)
        return None

    def parse_message(self, message: Mapping[str, Any]) -> Action:
        """Parse an assistant message dict ({"content": ..., "tool_calls": [...]}, as TRL and chat templates
        produce it): structured tool calls are rendered as <tool_call> text after the content, then parsed."""
        return self.parse(_render_assistant(message))

    def render_tool_call(self, preference: str) -> str:
        call = {"name": TOOL_NAME, "arguments": {"preference": preference}}
        return f"{TOOL_CALL_OPEN}\n{json.dumps(call, ensure_ascii=False)}\n{TOOL_CALL_CLOSE}"

    def extract_preferences(self, transcript: Any) -> list[str]:
        """Only <tool_call> blocks count here (`render_messages` writes every tool call that way)."""
        found = []
        text = self.solution(transcript)
        for start, end in _blocks(text, TOOL_CALL_OPEN, TOOL_CALL_CLOSE):
            payload, error = _loads(text[start:end].rsplit(TOOL_CALL_OPEN, 1)[-1])
            preference, error = _preference_from_call(payload) if not error else ("", error)
            if preference:
                found.append(preference)
        return found

    def render_tool_result(self, cards: Sequence[str]) -> str:
        """The tool message content: '1. card\\n2. card'."""
        return numbered(cards) if cards else EMPTY_RESULT

    def tool_message(self, cards: Sequence[str]) -> dict[str, str]:
        return {"role": "tool", "name": TOOL_NAME, "content": self.render_tool_result(cards)}

    def render_prompt(self, history_cards: Sequence[str], config: ProtocolConfig) -> list[dict[str, str]]:
        """[system (instructions and answer format), user (the history)]; pass `tools=[TOOL_SCHEMA]` to the chat
        template."""
        user = f"My interaction history, oldest first:\n{_history(history_cards, config)}\n\nWhat will I enjoy next?"
        return [{"role": "system", "content": _instructions("chat", config)}, {"role": "user", "content": user}]

    def render_messages(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """The completion part of a conversation as one text: leading system/user messages (the prompt) are
        skipped; assistant messages give their content plus <tool_call> blocks; tool messages are wrapped in
        <tool_response> tags. This is the text `format_problems` checks for the chat codec."""
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
                parts.append(_render_assistant(message))
            elif role == "tool":
                parts.append(f"{TOOL_RESPONSE_OPEN}\n{_content_text(message.get('content'))}\n{TOOL_RESPONSE_CLOSE}")
        return "\n".join(parts)

    def solution(self, transcript: Any) -> str:
        """A completion text (as `render_messages` writes it) or a list of messages."""
        if isinstance(transcript, str):
            return transcript
        if isinstance(transcript, Sequence):
            return self.render_messages(transcript)
        return str(transcript)

    def _balanced(self, tokens: list[str]) -> bool:
        pairs = {
            THINK_OPEN: THINK_CLOSE,
            TOOL_CALL_OPEN: TOOL_CALL_CLOSE,
            TOOL_RESPONSE_OPEN: TOOL_RESPONSE_CLOSE,
            REC_OPEN: REC_CLOSE,
        }
        if not _pairs_ok(tokens, pairs):
            return False
        calls = [t for t in tokens if t in (TOOL_CALL_OPEN, TOOL_CALL_CLOSE, TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE)]
        for i, tok in enumerate(calls):  # a tool response follows a tool call (or another response)
            if tok == TOOL_RESPONSE_OPEN and (i == 0 or calls[i - 1] not in (TOOL_CALL_CLOSE, TOOL_RESPONSE_CLOSE)):
                return False
        return True


def _loads(text: str) -> tuple[Any, str]:
    try:
        return json.loads(text), ""
    except (ValueError, RecursionError):
        return None, "bad JSON"


def _preference_from_call(payload: Any) -> tuple[str, str]:
    """(preference, error) from a decoded {"name": "retrieve", "arguments": {"preference": "..."}} object."""
    if not isinstance(payload, dict):
        return "", "tool call is not a JSON object"
    if payload.get("name") != TOOL_NAME:
        return "", f"unknown tool {str(payload.get('name'))[:40]!r}"
    arguments = payload.get("arguments", payload.get("parameters"))
    if isinstance(arguments, str):  # some templates serialise the arguments as a JSON string
        arguments, error = _loads(arguments)
        if error:
            return "", "bad JSON arguments"
    if not isinstance(arguments, dict):
        return "", "arguments are not an object"
    preference = arguments.get("preference")
    if not isinstance(preference, str):
        return "", "missing preference"
    preference = normalize_preference(preference)
    return preference, ""


def _content_text(content: Any) -> str:
    """A message content: a string, or a list of parts ({"type": "text", "text": ...})."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(p.get("text", "") if isinstance(p, Mapping) else str(p) for p in content)
    return str(content)


def _render_assistant(message: Mapping[str, Any]) -> str:
    parts = [_content_text(message.get("content"))] if isinstance(message, Mapping) else [str(message)]
    calls = message.get("tool_calls") if isinstance(message, Mapping) else None
    for call in calls if isinstance(calls, Sequence) and not isinstance(calls, str) else ():
        function = call.get("function", call) if isinstance(call, Mapping) else {}
        function = function if isinstance(function, Mapping) else {}
        arguments = function.get("arguments", {})
        try:
            body = json.dumps({"name": function.get("name"), "arguments": arguments}, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError):
            body = "{}"
        parts.append(f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}")
    return "\n".join(p for p in parts if p)


CODECS: dict[str, type[Codec]] = {"tags": TagsCodec, "chat": ChatCodec}


def get_codec(name: str | Codec) -> Codec:
    """'tags' | 'chat' (or a Codec, returned as is)."""
    if isinstance(name, Codec):
        return name
    if name not in CODECS:
        raise ValueError(f"unknown protocol {name!r}; set env.protocol to one of {sorted(CODECS)}")
    return CODECS[name]()


def extract_preferences(text: str, codec: str | Codec = "tags") -> list[str]:
    """All non-empty preference strings of a transcript's solution, in order (normalised as in `parse`)."""
    return get_codec(codec).extract_preferences(text)


def extract_answer(text: str, codec: str | Codec = "tags") -> tuple[str, ...] | None:
    """The answer lines of the first complete recommendation block of a transcript's solution, or None."""
    return get_codec(codec).extract_answer(text)


# --- prompts ----------------------------------------------------------------------------------------------------


def _history(history_cards: Sequence[str], config: ProtocolConfig) -> str:
    cards = list(history_cards)[-config.history_items :] if config.history_items > 0 else []
    return numbered(cards) if cards else "(no interactions yet)"


INSTRUCTIONS = ("full", "brief")


def _instructions(kind: str, config: ProtocolConfig) -> str:
    """A paraphrase of the paper's `base_prompt_rec` instructions, for either codec, or (`brief`) the task alone:
    small policies learn the protocol from demonstrations, and the full text is half of every episode's tokens."""
    k = config.rec_k
    if config.instructions == "brief":
        phrases = 'short preference phrases separated by ";"'
        if kind == "tags":
            how, close = (
                f"write {phrases} between {PREF_OPEN} and {PREF_CLOSE}",
                f"close your reasoning with {THINK_CLOSE}, then ",
            )
        else:
            how, close = f"call `{TOOL_NAME}(preference)` with {phrases}", ""
        return (
            f"Recommend {k} items the user will enjoy next. To find items, {how} (at most {config.max_tool_calls} "
            f"calls, {config.recall_k} items each). Finally {close}answer exactly {k} retrieved titles, best first, "
            f"numbered, in {REC_OPEN} {REC_CLOSE}."
        )
    if kind == "tags":
        tool = (
            "The tool input format (you write it):\n"
            f"{PREF_OPEN} [preference phrases, separated by ;] {PREF_CLOSE}\n"
            "The tool output format (the tool writes it right after your call):\n"
            f"{ITEMS_OPEN}\n1. [retrieved item]\n2. [retrieved item]\n...\n{ITEMS_CLOSE}"
        )
        call = "write the preference description between the preference tags"
        layout = (
            "Write your whole reply in this layout: reasoning, a tool call, the tool's result, an evaluation and "
            "refinement, more tool calls, then the final ranking reasoning; close the reasoning with "
            f"{THINK_CLOSE} and finish with the recommendation list."
        )
    else:
        tool = (
            f"The tool is the function `{TOOL_NAME}(preference)`: the preference is a description made of short "
            'phrases separated by ";". It returns a numbered list of items.'
        )
        call = f"call `{TOOL_NAME}` with the preference description"
        layout = "Write a short ranking reasoning, then finish your last message with the recommendation list."
    return (
        "You are a recommendation assistant. Predict which item the user will interact with next and recommend a "
        f"ranked list of {k} items.\n"
        "You cannot see the item catalogue: to find candidate items you must call an item retrieval tool. The tool "
        "takes a description of the user's preferences and returns the catalogue items "
        f"({config.recall_k} per call) that best match both the user's history and the description.\n"
        f"{tool}\n"
        'Items are written as "Title (year) | category, category" (year and categories when known).\n'
        "The user's history is a numbered list of the items the user interacted with, ordered by time, oldest "
        "first.\n\n"
        "Instructions:\n"
        "1. Reason about the history: which categories, themes, moods and periods the user likes, and how the "
        "taste changes over time.\n"
        f'2. Describe one preference as a few short phrases separated by ";" and {call}.\n'
        f"3. Call the tool several times (at most {config.max_tool_calls}) with varied preference descriptions that "
        "cover different sides of the user's taste. Quality over quantity: keep exploring with new descriptions "
        "even after you have found good items.\n"
        "4. After each call, judge the retrieved items and refine the next description.\n"
        "5. When you have gathered a diverse pool of retrieved items, rank all of them for this user.\n"
        f"6. Output exactly {k} titles, best first, one per line, copied from the tool results (title and year, "
        "without the categories):\n"
        f"{REC_OPEN}\n1. [item title]\n2. [item title]\n...\n{k}. [item title]\n{REC_CLOSE}\n\n"
        f"{layout}"
    )


def retrieve_tool_signature(preference: str) -> str:
    """Retrieve items matching a preference description.

    Args:
        preference: Short preference phrases separated by ';', e.g. "light-hearted comedy; 1990s; animation".

    Returns:
        A numbered list of matching items, one "Title (year) | categories" card per line.
    """
    # Only its signature and docstring matter: transformers' `get_json_schema` (which TRL uses for `tools=`) turns
    # them into TOOL_SCHEMA, except that the tool's name is "retrieve". Wrap the env's retrieval in a function
    # named `retrieve` with this docstring to hand it to TRL.
    raise NotImplementedError("the environment executes this tool")


TOOL_SCHEMA: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": "Retrieve items matching a preference description.",
        "parameters": {
            "type": "object",
            "properties": {
                "preference": {
                    "type": "string",
                    "description": "Short preference phrases separated by ';', e.g. \"light-hearted comedy; 1990s; "
                    'animation".',
                }
            },
            "required": ["preference"],
        },
        "return": {
            "type": "string",
            "description": 'A numbered list of matching items, one "Title (year) | categories" card per line.',
        },
    },
}


# --- format checks ----------------------------------------------------------------------------------------------

PROBLEM_UNBALANCED = "unbalanced tags"
PROBLEM_TOOL_COUNT = "tool results do not match tool calls"
PROBLEM_NO_TOOL_CALL = "no tool call"
PROBLEM_NO_REASONING = "no reasoning after last tool result"
PROBLEM_ANSWER_COUNT = "not exactly one answer block"
PROBLEM_ANSWER_POSITION = "answer not after reasoning"
PROBLEM_ANSWER_LENGTH = "wrong number of answer lines"
PROBLEM_TAGS_IN_ANSWER = "tags inside answer"
PROBLEM_ROLE_TURN = "role turn hallucinated"
PROBLEM_PLACEHOLDER = "placeholder copied"

FORMAT_CHECKS: dict[str, str] = {
    PROBLEM_UNBALANCED: "every tag is closed before the next opens (no nesting, no strays); tags: </think> exactly "
    "once and no <think>, every tool call directly followed by its item list; chat: <think> pairs balanced, every "
    "tool response after a tool call",
    PROBLEM_TOOL_COUNT: "the number of tool-result blocks equals the env's count of executed tool calls",
    PROBLEM_NO_TOOL_CALL: "at least one tool call was executed",
    PROBLEM_NO_REASONING: "some reasoning (a letter or digit) between the last tool result and </think> (tags) or "
    "the answer (chat)",
    PROBLEM_ANSWER_COUNT: "exactly one recommendation open tag and one close tag, forming one block",
    PROBLEM_ANSWER_POSITION: "the answer comes after </think> (outside any think block) and after the last tool result",
    PROBLEM_ANSWER_LENGTH: "the answer has exactly rec_k non-empty lines",
    PROBLEM_TAGS_IN_ANSWER: "no protocol tag (or tag core such as 'begin_of_item_list') inside the answer",
    PROBLEM_ROLE_TURN: "no 'Assistant:' / 'User:' / 'System:' line or <|im_start|> outside tool results",
    PROBLEM_PLACEHOLDER: "no prompt placeholder such as '[item title]' copied outside tool results",
}

_ROLE_RE = re.compile(r"^[ \t>*#_]*(?:assistant|user|system)[ \t*_]*:|<\|im_start\|>", re.IGNORECASE | re.MULTILINE)


def format_problems(transcript: Any, n_tool_calls: int, rec_k: int, codec: str | Codec = "tags") -> list[str]:
    """Names of the failed format checks (FORMAT_CHECKS, in that order); an empty list means the format is valid.

    transcript: tags: prompt + completion, or the completion alone; chat: the completion text as
    `ChatCodec.render_messages` writes it, or the list of messages. n_tool_calls: tool calls the env executed.
    """
    codec = get_codec(codec)
    text = codec.solution(transcript)
    blocks = _blocks(text, REC_OPEN, REC_CLOSE)
    # The answer's content is checked on its own; everything else is checked on the text without it.
    skeleton = _hollow_blocks(text, REC_OPEN, REC_CLOSE)
    matches = list(_TAG_RE.finditer(skeleton))
    tokens = [m.group() for m in matches]
    result_open, result_close = codec.result_tags
    last_result = max((m.end() for m in matches if m.group() == result_close), default=-1)
    answer_at = skeleton.find(REC_OPEN) if blocks else -1

    problems: list[str] = []
    if not codec._balanced(tokens):
        problems.append(PROBLEM_UNBALANCED)
    if tokens.count(result_open) != n_tool_calls:
        problems.append(PROBLEM_TOOL_COUNT)
    if n_tool_calls < 1:
        problems.append(PROBLEM_NO_TOOL_CALL)
    if last_result >= 0:
        # tags: the reasoning ends at </think> (or the answer); chat: think blocks are reasoning, the answer ends it
        ends = (THINK_CLOSE, REC_OPEN) if codec.think_depth_at_start else (REC_OPEN,)
        stops = [i for i in (skeleton.find(tag, last_result) for tag in ends) if i >= 0]
        between = _strip_tags(skeleton[last_result : min(stops, default=len(skeleton))])
        if not any(ch.isalnum() for ch in between):
            problems.append(PROBLEM_NO_REASONING)
    if not blocks or text.count(REC_OPEN) != 1 or text.count(REC_CLOSE) != 1:
        problems.append(PROBLEM_ANSWER_COUNT)
    if blocks:
        before = skeleton[:answer_at]
        depth = codec.think_depth_at_start + before.count(THINK_OPEN) - before.count(THINK_CLOSE)
        if depth != 0 or answer_at < last_result:
            problems.append(PROBLEM_ANSWER_POSITION)
        content = text[blocks[0][0] : blocks[0][1]]
        if len(answer_lines(content)) != rec_k:
            problems.append(PROBLEM_ANSWER_LENGTH)
        if any(core in content for core in TAG_CORES):
            problems.append(PROBLEM_TAGS_IN_ANSWER)
    outside_results = _hollow_blocks(text, result_open, result_close)
    if _ROLE_RE.search(outside_results):
        problems.append(PROBLEM_ROLE_TURN)
    if any(p in outside_results for p in PLACEHOLDERS):
        problems.append(PROBLEM_PLACEHOLDER)
    return problems


# --- title matching ---------------------------------------------------------------------------------------------

_YEAR_RE = re.compile(r"\s*\(\s*(\d{4})\s*\)\s*$")
_TRAILING_PAREN_RE = re.compile(r"\s*\([^()]*\)\s*$")
_ARTICLE_RE = re.compile(
    r"^(.+?),\s*(the|a|an|les|la|le|l'|il|der|die|das|el|los|las|den|det|de|het|une|un)$", re.IGNORECASE
)
_APOSTROPHES_RE = re.compile(r"['’`´]")
_NON_WORD_RE = re.compile(r"[\W_]+")
_ROMAN_RE = re.compile(r"^(?:x{1,3}(?:ix|iv|v?i{0,3})|ix|iv|v?i{1,3}|v)$")
_CUT_SEPARATORS = (" | ", " - ", " — ", " – ", " (")
MAX_LINE_CHARS = 500  # answer lines are cut to this before matching
MIN_FUZZY_CHARS = 6  # shorter normalised lines only match exactly ("alice" is 91 % "malice", "drive" "driven")
_MAX_CUTS = 8


def normalize_title(text: str) -> str:
    """casefold, HTML entities, NFKC, '&' -> 'and', apostrophes dropped, other punctuation -> space, collapsed."""
    text = unicodedata.normalize("NFKC", html.unescape(text)).casefold().replace("&", " and ")
    text = _APOSTROPHES_RE.sub("", text)
    return " ".join(_NON_WORD_RE.sub(" ", text).split())


def _split_year(text: str) -> tuple[str, int | None]:
    match = _YEAR_RE.search(text)
    return (text[: match.start()].strip(), int(match.group(1))) if match else (text.strip(), None)


def _numerals(key: str) -> frozenset[str]:
    """Sequel markers of a normalised title: digit tokens and roman numerals ('toy story 2', 'rocky iii')."""
    return frozenset(tok for tok in key.split() if tok.isdigit() or _ROMAN_RE.match(tok))


def _title_variants(title: str) -> set[str]:
    """Normalised keys an item answers to: the title, without trailing parentheticals (alternative titles), and
    with a trailing article moved to the front or dropped ('American President, The' -> 'the american president',
    'american president')."""
    forms = {title}
    stripped = title
    while _TRAILING_PAREN_RE.search(stripped):
        stripped = _TRAILING_PAREN_RE.sub("", stripped)
        if stripped:
            forms.add(stripped)
    for form in list(forms):
        match = _ARTICLE_RE.match(form.strip())
        if match:
            forms.update((f"{match.group(2)} {match.group(1)}", match.group(1)))
    return {key for key in (normalize_title(f) for f in forms) if key}


@dataclass(frozen=True)
class AnswerMatch:
    """Answer lines matched to item ids.

    item_ids: one entry per line; None for an unmatched line or a repeat of an item matched earlier.
    n_invalid: unmatched lines. n_duplicate: lines that matched an item already listed. ranked_ids: the valid,
    de-duplicated ids in answer order.
    """

    item_ids: tuple[int | None, ...]
    n_invalid: int
    n_duplicate: int
    ranked_ids: tuple[int, ...]


class TitleMatcher:
    """Maps answer lines to item ids: normalised exact match, then a fuzzy match (rapidfuzz ratio).

    Order for one line: strip "N. "; a line ending in '…' or '...' (a copied cut card) or longer than
    MAX_LINE_CHARS (cut to it) first matches the titles it is a prefix of; then the line and shorter cuts of it
    (at ' | ' card suffixes, ' - ', ' (') for a normalised exact match, the trailing '(year)' removed; then fuzzy
    against the titles of `preferred` items (retrieved in this episode), then against the catalogue. Ties between
    items with the same title prefer `preferred` items, then the item whose year equals the line's year, then the
    lowest id. A fuzzy match must keep the sequel numbers ('toy story 2' never fuzzily becomes 'toy story 3') and
    needs at least MIN_FUZZY_CHARS characters.
    """

    def __init__(self, source: RecDataset | Sequence[ItemMeta], fuzzy_threshold: float = 90.0) -> None:
        items = source.items if hasattr(source, "items") and not isinstance(source, Sequence) else source
        self.fuzzy_threshold = float(fuzzy_threshold)
        self._years: list[int | None] = [None] * len(items)
        self._index: dict[str, list[int]] = {}
        self._item_keys: list[tuple[str, ...]] = [()] * len(items)
        for item in range(1, len(items)):
            meta = items[item]
            base, title_year = _split_year(meta.title)
            self._years[item] = meta.year if meta.year is not None else title_year
            keys = _title_variants(base) or {normalize_title(meta.title)}
            self._item_keys[item] = tuple(sorted(keys))
            for key in keys:
                self._index.setdefault(key, []).append(item)
        self._keys = list(self._index)
        self._key_ids = [self._index[k] for k in self._keys]

    @property
    def n_items(self) -> int:
        return len(self._years) - 1

    def _choose(self, ids: Sequence[int], preferred: Mapping[int, int], year: int | None, used: Collection[int]) -> int:
        """Among items with the same title: items not yet used in this answer, then retrieved items in retrieval
        order, then the line's year, then the lowest id."""
        return min(
            ids,
            key=lambda i: (
                i in used,
                i not in preferred,
                preferred.get(i, 0),
                year is not None and self._years[i] != year,
                i,
            ),
        )

    def match(self, line: str, preferred: Collection[int] = (), used: Collection[int] = ()) -> int | None:
        """The item id a line names, or None. `preferred`: items retrieved in the episode, best first (ties between
        equal titles go to the earliest retrieved); `used`: items already in the answer (a second line with the same
        title then names the next such item rather than a duplicate)."""
        line = str(line)
        cut = len(line) > MAX_LINE_CHARS
        line = strip_line_prefix(line[:MAX_LINE_CHARS])
        preferred = (
            preferred if isinstance(preferred, Mapping) else {i: r for r, i in enumerate(dict.fromkeys(preferred))}
        )
        candidates = _cuts(line)
        found = None
        if cut or line.endswith(("…", "...")):  # a cut title names the titles it begins, not a shorter cut of it
            prefix = normalize_title(line.rstrip(".…").rstrip())
            found = self._prefix(prefix, preferred, _split_year(candidates[0])[1], used)
        if found is None:  # exact, longest candidate first
            found = next((f for c in candidates if (f := self._exact(c, preferred, used)) is not None), None)
        if found is not None:
            return found
        base, year = _split_year(candidates[-1] if " | " in line else candidates[0])
        query = normalize_title(base)
        if len(query) < MIN_FUZZY_CHARS:
            return None
        if preferred:
            keys = sorted({k for i in preferred if 0 < i < len(self._item_keys) for k in self._item_keys[i]})
            found = self._fuzzy(query, keys, [self._index[k] for k in keys], preferred, year, used)
            if found is not None:
                return found
        return self._fuzzy(query, self._keys, self._key_ids, preferred, year, used)

    def _exact(self, candidate: str, preferred: Mapping[int, int], used: Collection[int]) -> int | None:
        """The item whose normalised title is the candidate's, with or without its trailing '(year)'."""
        base, year = _split_year(candidate)
        for key in (normalize_title(base), normalize_title(candidate)):
            ids = self._index.get(key)
            if ids:
                return self._choose(ids, preferred, year, used)
        return None

    def _prefix(self, prefix: str, preferred: Mapping[int, int], year: int | None, used: Collection[int]) -> int | None:
        if len(prefix) < MIN_FUZZY_CHARS:
            return None
        for pool in (sorted(preferred), range(1, len(self._item_keys))):
            ids = [i for i in pool if 0 < i < len(self._item_keys) and _has_prefix(self._item_keys[i], prefix)]
            if ids:
                return self._choose(ids, preferred, year, used)
        return None

    def _fuzzy(
        self,
        query: str,
        keys: Sequence[str],
        key_ids: Sequence[list[int]],
        preferred: Mapping[int, int],
        year: int | None,
        used: Collection[int],
    ) -> int | None:
        if not keys:
            return None
        numerals = _numerals(query)
        hits = process.extract(
            query, keys, scorer=fuzz.ratio, processor=None, score_cutoff=self.fuzzy_threshold, limit=5
        )
        for key, _score, index in hits:
            if _numerals(key) == numerals:
                return self._choose(key_ids[index], preferred, year, used)
        return None

    def match_answer(self, lines: Sequence[str], preferred: Collection[int] = ()) -> AnswerMatch:
        """Match every line; repeats of an already matched item count as duplicates and leave their slot None."""
        preferred = {i: r for r, i in enumerate(dict.fromkeys(preferred))}
        ids: list[int | None] = []
        seen: set[int] = set()
        n_invalid = n_duplicate = 0
        for line in lines:
            item = self.match(line, preferred, seen)
            if item is None:
                n_invalid += 1
            elif item in seen:
                n_duplicate += 1
                item = None
            else:
                seen.add(item)
            ids.append(item)
        return AnswerMatch(tuple(ids), n_invalid, n_duplicate, tuple(i for i in ids if i is not None))


def _has_prefix(keys: Sequence[str], prefix: str) -> bool:
    return any(key.startswith(prefix) for key in keys)


def _cuts(line: str) -> list[str]:
    """The line, then shorter versions cut at separators (' | ' card suffixes, ' - ' remarks, ' (' notes),
    longest first; never empty."""
    line = line.strip()
    positions = sorted({m.start() for sep in _CUT_SEPARATORS for m in re.finditer(re.escape(sep), line)}, reverse=True)
    cuts = [line] + [line[:p].strip() for p in positions[:_MAX_CUTS] if line[:p].strip()]
    if " | " in line:  # the card form "Title (year) | cat, cat": fuzzy matching uses the part before the first bar
        cuts.append(line[: line.find(" | ")].strip() or line)
    return cuts


# --- item cards -------------------------------------------------------------------------------------------------


def item_cards(dataset: RecDataset, item_ids: Sequence[int], card_chars: int | None) -> list[str]:
    """`Title (year) | cat, cat` cards (cut to card_chars) for prompts and tool results; padding ids are skipped."""
    return [dataset.item_card(int(i), card_chars) for i in item_ids if 0 < int(i) <= dataset.n_items]
