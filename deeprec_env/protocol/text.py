"""Text primitives every codec and check shares: cleaning text, finding tag blocks in linear time, normalising
preferences and answer lines. Pure functions; any string is a valid input."""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from deeprec_env.protocol.tags import ALL_TAGS

MAX_PREFERENCE_CHARS = 2000  # longer preference texts are cut: the sentence encoder truncates them anyway
MAX_CLEAN_DEPTH = 32  # `clean_value` drops containers nested deeper than this (no tool call is nearly that deep)

TAG_RE = re.compile("|".join(re.escape(t) for t in sorted(ALL_TAGS, key=len, reverse=True)))
_WS_RE = re.compile(r"\s+")
# "3. Title", "3) Title", "- Title", "* Title"; "2001: A Space Odyssey", "12 Angry Men" and "2.0 ..." are kept.
_LINE_PREFIX_RE = re.compile(r"^\s*(?:\d{1,3}\s*[.)]\s*(?!\d)|[-*•]\s+)")
_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")


@functools.cache
def _invisible_re() -> re.Pattern[str]:
    """One character class of every format (Cf) and control (Cc) character but newline, tab and carriage return,
    from this Python's Unicode tables (built on first use)."""
    ranges: list[list[int]] = []
    for code in range(sys.maxunicode + 1):
        if unicodedata.category(chr(code)) in ("Cf", "Cc") and chr(code) not in "\n\t\r":
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])
    return re.compile("[" + "".join(f"\\U{first:08x}-\\U{last:08x}" for first, last in ranges) + "]")


def clean_text(text: str) -> str:
    """The text every reader can take (tokenizers, JSON, UTF-8 files) and that shows what it holds: unpaired UTF-16
    surrogates (category Cs) become U+FFFD, carriage returns newlines, and invisible format characters (Cf: zero-width
    space, word joiner, BOM, soft hyphen, bidi marks) and control characters (Cc) other than newline and tab are
    removed. The env cleans every action once, so an empty preference is one that shows nothing."""
    text = _SURROGATE_RE.sub("\ufffd", text.replace("\r\n", "\n").replace("\r", "\n"))
    return _invisible_re().sub("", text)


def clean_value(value: Any, depth: int = 0) -> Any:
    """`value` with `clean_text` applied to every string inside it, mapping keys included (a chat message and its
    tool calls): mappings become dicts, lists and tuples lists, containers nested deeper than MAX_CLEAN_DEPTH None;
    other values are kept."""
    if isinstance(value, str):
        return clean_text(value)
    if not isinstance(value, (Mapping, list, tuple)):
        return value
    if depth >= MAX_CLEAN_DEPTH:
        return None
    if isinstance(value, Mapping):
        return {clean_text(k) if isinstance(k, str) else k: clean_value(v, depth + 1) for k, v in value.items()}
    return [clean_value(v, depth + 1) for v in value]


def blocks(text: str, open_tag: str, close_tag: str) -> list[tuple[int, int]]:
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


def hollow_blocks(text: str, open_tag: str, close_tag: str) -> str:
    """The text with the content of every block removed (the tags stay)."""
    parts, pos = [], 0
    for start, end in blocks(text, open_tag, close_tag):
        parts.append(text[pos:start])
        pos = end
    return "".join(parts) + text[pos:]


def first_block(text: str, open_tag: str, close_tag: str) -> tuple[int, int, int] | None:
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


def strip_tags(text: str) -> str:
    """The text with every protocol tag replaced by a space, stripped."""
    return TAG_RE.sub(" ", text).strip()


def normalize_preference(text: str) -> str:
    """As the paper: `"` removed, whitespace collapsed, stripped; cut to MAX_PREFERENCE_CHARS. Cleaned first
    (`clean_text`): a JSON tool call's escapes can decode to a surrogate in text that was clean."""
    return _WS_RE.sub(" ", clean_text(text).replace('"', "")).strip()[:MAX_PREFERENCE_CHARS].strip()


def strip_line_prefix(line: str) -> str:
    """'3. Toy Story' -> 'Toy Story' (also '3) ', '- ', '* ' prefixes)."""
    return _LINE_PREFIX_RE.sub("", line, count=1).strip()


def answer_lines(block: str) -> tuple[str, ...]:
    """The lines of a recommendation block's content: empty lines dropped, numbering removed."""
    return tuple(strip_line_prefix(line) for line in block.split("\n") if line.strip())


def numbered(lines: Sequence[str], labels: Sequence[str] | None = None) -> str:
    """'1. a\\n2. b' (no trailing newline); with `labels` each line is led by its label instead ('#4 a\\n#9 b')."""
    labels = labels if labels is not None else [f"{i}." for i in range(1, len(lines) + 1)]
    return "\n".join(f"{label} {line}" for label, line in zip(labels, lines, strict=True))
