"""Item handles: short names (`#1`, `#2`, ...) that tool results give items, so that an answer can name an item
exactly without retyping its title (after URM's compact item representations).

With `env.item_refs: handles` every item a tool call returns is shown with its handle in place of its list number.
Handles number the episode's retrieved items in first-retrieval order: an item keeps the handle it got the first
time it was returned, so a handle is unique within the episode and a pure function of the tool calls so far. An
answer line that starts with a handle of the episode names that item; any other line is matched as a title, as with
`item_refs: titles` (the paper's protocol), so both kinds of line can be mixed in one answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from deeprec_env.protocol.text import strip_line_prefix

ITEM_REFS = ("titles", "handles")
HANDLE_MARK = "#"
_HANDLE_RE = re.compile(r"^#(\d{1,6})(?![\w])")


def handle(number: int) -> str:
    """The handle of the episode's `number`-th retrieved item (1-based)."""
    return f"{HANDLE_MARK}{number}"


def item_handles(retrieved: Iterable[int]) -> dict[int, str]:
    """item id -> handle, for the items of `retrieved` (every id the tool returned, in order, repeats allowed)."""
    handles: dict[int, str] = {}
    for item in retrieved:
        if item not in handles:
            handles[int(item)] = handle(len(handles) + 1)
    return handles


def split_handle(line: str) -> tuple[str | None, str]:
    """(the handle the line starts with after any "N. " numbering, or None; the rest of the line, stripped of
    separators)."""
    text = strip_line_prefix(line)
    found = _HANDLE_RE.match(text)
    if found is None:
        return None, line
    return found.group(0), text[found.end() :].strip(" .:-|\t")


def resolve(line: str, by_handle: Mapping[str, int]) -> tuple[int | None, str]:
    """(the item a line names by a handle of the episode, or None; the text left to match as a title: the whole
    line when it names no known handle, the rest after an unknown handle, "" after a known one)."""
    name, rest = split_handle(line)
    if name is None:
        return None, line
    if name in by_handle:
        return by_handle[name], ""
    return None, rest
