"""Format checks of a finished episode (the paper's `format` reward term reads them): names of the failed checks,
in `FORMAT_CHECKS` order; an empty list means the format is valid.

The checks read what the env parsed and executed (the answer it parsed, the tool calls it ran) and the text only
for what is about the text (tag balance, reasoning, position, roles, placeholders): an answer block the env never
parsed as one (split over two segments, cut by a limit) never passes, however well-formed the joined text looks."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from deeprec_env.protocol.codecs import Codec, get_codec
from deeprec_env.protocol.tags import PLACEHOLDERS, REC_CLOSE, REC_OPEN, TAG_CORES, THINK_CLOSE, THINK_OPEN
from deeprec_env.protocol.text import TAG_RE, blocks, hollow_blocks, strip_tags

PROBLEM_UNBALANCED = "unbalanced tags"
PROBLEM_TOOL_COUNT = "tool results do not match tool calls"
PROBLEM_NO_TOOL_CALL = "no tool call"
PROBLEM_NO_REASONING = "no reasoning after last tool result"
PROBLEM_NO_ANSWER = "no answer parsed"
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
    PROBLEM_NO_ANSWER: "the env parsed an answer: the episode ended with one segment (tags) or message (chat) holding "
    "a whole answer block",
    PROBLEM_ANSWER_COUNT: "exactly one recommendation open tag and one close tag, forming one block",
    PROBLEM_ANSWER_POSITION: "the answer comes after </think> (outside any think block) and after the last tool result",
    PROBLEM_ANSWER_LENGTH: "the parsed answer has exactly rec_k non-empty lines",
    PROBLEM_TAGS_IN_ANSWER: "no protocol tag (or tag core such as 'begin_of_item_list') inside the answer",
    PROBLEM_ROLE_TURN: "no 'Assistant:' / 'User:' / 'System:' line or <|im_start|> outside tool results",
    PROBLEM_PLACEHOLDER: "no prompt placeholder such as '[item title]' copied outside tool results",
}

_ROLE_RE = re.compile(r"^[ \t>*#_]*(?:assistant|user|system)[ \t*_]*:|<\|im_start\|>", re.IGNORECASE | re.MULTILINE)


def format_problems(
    transcript: Any, answer: Sequence[str] | None, n_tool_calls: int, rec_k: int, codec: str | Codec = "tags"
) -> list[str]:
    """Names of the failed format checks (FORMAT_CHECKS, in that order); an empty list means the format is valid.

    transcript: tags: prompt + completion, or the completion alone; chat: the completion text as
    `ChatCodec.render_messages` writes it, or the list of messages. answer: the answer lines the env parsed
    (`Episode.answer_lines`), None when it parsed no answer. n_tool_calls: tool calls the env executed.
    """
    codec = get_codec(codec)
    text = codec.solution(transcript)
    answers = blocks(text, REC_OPEN, REC_CLOSE)
    # The answer's content is checked on its own; everything else is checked on the text without it.
    skeleton = hollow_blocks(text, REC_OPEN, REC_CLOSE)
    matches = list(TAG_RE.finditer(skeleton))
    tokens = [m.group() for m in matches]
    result_open, result_close = codec.result_tags
    last_result = max((m.end() for m in matches if m.group() == result_close), default=-1)
    answer_at = skeleton.find(REC_OPEN) if answers else -1

    problems: list[str] = []
    if not codec.balanced(tokens):
        problems.append(PROBLEM_UNBALANCED)
    if tokens.count(result_open) != n_tool_calls:
        problems.append(PROBLEM_TOOL_COUNT)
    if n_tool_calls < 1:
        problems.append(PROBLEM_NO_TOOL_CALL)
    if last_result >= 0:
        # tags: the reasoning ends at </think> (or the answer); chat: think blocks are reasoning, the answer ends it
        ends = (THINK_CLOSE, REC_OPEN) if codec.think_depth_at_start else (REC_OPEN,)
        stops = [i for i in (skeleton.find(tag, last_result) for tag in ends) if i >= 0]
        between = strip_tags(skeleton[last_result : min(stops, default=len(skeleton))])
        if not any(ch.isalnum() for ch in between):
            problems.append(PROBLEM_NO_REASONING)
    if answer is None:
        problems.append(PROBLEM_NO_ANSWER)
    if not answers or text.count(REC_OPEN) != 1 or text.count(REC_CLOSE) != 1:
        problems.append(PROBLEM_ANSWER_COUNT)
    if answers:
        before = skeleton[:answer_at]
        depth = codec.think_depth_at_start + before.count(THINK_OPEN) - before.count(THINK_CLOSE)
        if depth != 0 or answer_at < last_result:
            problems.append(PROBLEM_ANSWER_POSITION)
    if answer is not None and len(answer) != rec_k:
        problems.append(PROBLEM_ANSWER_LENGTH)
    if answers and any(core in text[answers[0][0] : answers[0][1]] for core in TAG_CORES):
        problems.append(PROBLEM_TAGS_IN_ANSWER)
    outside_results = hollow_blocks(text, result_open, result_close)
    if _ROLE_RE.search(outside_results):
        problems.append(PROBLEM_ROLE_TURN)
    if any(p in outside_results for p in PLACEHOLDERS):
        problems.append(PROBLEM_PLACEHOLDER)
    return problems
