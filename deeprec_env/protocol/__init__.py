"""The episode text protocol: tags, codecs, prompts, the tool, format checks, item cards, item handles, title
matching, and the RecGPT blocks (interests, answer-line reasons).

Every module here is a pure function of its inputs and never imports agents, rewards, TRL or Ray. Any string is a
valid input: parsing never raises. `clean_text` makes any string safe for every reader (the env cleans each action).
"""

from deeprec_env.protocol.cards import item_cards
from deeprec_env.protocol.checks import (
    FORMAT_CHECKS,
    PROBLEM_ANSWER_COUNT,
    PROBLEM_ANSWER_LENGTH,
    PROBLEM_ANSWER_POSITION,
    PROBLEM_NO_ANSWER,
    PROBLEM_NO_REASONING,
    PROBLEM_NO_TOOL_CALL,
    PROBLEM_PLACEHOLDER,
    PROBLEM_ROLE_TURN,
    PROBLEM_TAGS_IN_ANSWER,
    PROBLEM_TOOL_COUNT,
    PROBLEM_UNBALANCED,
    format_problems,
)
from deeprec_env.protocol.codecs import CODECS, Action, ChatCodec, Codec, TagsCodec, get_codec
from deeprec_env.protocol.handles import ITEM_REFS, item_handles
from deeprec_env.protocol.interests import INTERESTS_CLOSE, INTERESTS_OPEN, Interests, parse_interests, render_interests
from deeprec_env.protocol.matching import MAX_LINE_CHARS, AnswerMatch, TitleMatcher, normalize_title, title_variants
from deeprec_env.protocol.prompts import (
    INSTRUCTIONS,
    PROFILE_LEAD,
    REQUEST_LEAD,
    REQUEST_NOTE,
    PromptSettings,
    instructions,
)
from deeprec_env.protocol.reasons import REASON_SEPARATOR, split_reason, with_reason
from deeprec_env.protocol.tags import (
    ALL_TAGS,
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
from deeprec_env.protocol.text import clean_text, clean_value, normalize_preference, numbered
from deeprec_env.protocol.tool import (
    TOOL_NAME,
    TOOL_SCHEMA,
    ToolRequest,
    render_assistant_message,
    structured_call,
    tool_docstring,
)

__all__ = [
    "ALL_TAGS",
    "CODECS",
    "FORMAT_CHECKS",
    "INSTRUCTIONS",
    "INTERESTS_CLOSE",
    "INTERESTS_OPEN",
    "ITEM_REFS",
    "ITEMS_CLOSE",
    "ITEMS_OPEN",
    "MAX_LINE_CHARS",
    "PREF_CLOSE",
    "PREF_OPEN",
    "PROBLEM_ANSWER_COUNT",
    "PROBLEM_ANSWER_LENGTH",
    "PROBLEM_ANSWER_POSITION",
    "PROBLEM_NO_ANSWER",
    "PROBLEM_NO_REASONING",
    "PROBLEM_NO_TOOL_CALL",
    "PROBLEM_PLACEHOLDER",
    "PROBLEM_ROLE_TURN",
    "PROBLEM_TAGS_IN_ANSWER",
    "PROBLEM_TOOL_COUNT",
    "PROBLEM_UNBALANCED",
    "PROFILE_LEAD",
    "PROMPT_END",
    "REASON_SEPARATOR",
    "REC_CLOSE",
    "REQUEST_LEAD",
    "REQUEST_NOTE",
    "REC_OPEN",
    "THINK_CLOSE",
    "THINK_OPEN",
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "TOOL_NAME",
    "TOOL_RESPONSE_CLOSE",
    "TOOL_RESPONSE_OPEN",
    "TOOL_SCHEMA",
    "Action",
    "AnswerMatch",
    "ChatCodec",
    "Codec",
    "Interests",
    "PromptSettings",
    "TagsCodec",
    "TitleMatcher",
    "ToolRequest",
    "clean_text",
    "clean_value",
    "format_problems",
    "get_codec",
    "instructions",
    "item_cards",
    "item_handles",
    "normalize_preference",
    "normalize_title",
    "title_variants",
    "numbered",
    "parse_interests",
    "render_interests",
    "render_assistant_message",
    "split_reason",
    "structured_call",
    "tool_docstring",
    "with_reason",
]
