"""The interest block (after RecGPT's user-interest mining): the agent states the user's interests as weighted tags,
long term and recent, in its reasoning before or between tool calls (`env.interests`).

    <interests>
    long term: drama 0.5; comedy 0.3; 1990s 0.2
    recent: thriller 0.6; action 0.4
    </interests>

A line's label says which part it fills (a label starting with "long" or "recent"/"short"); entries are separated by
";" and each is a tag with an optional weight after it ("drama 0.5", "drama: 0.5", "drama (50%)"); a tag without a
weight weighs 1. The last complete block the agent wrote counts. Parsing never raises; weights are kept as written
(negative ones as 0) and normalised by whoever scores them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from deeprec_env.protocol.text import blocks

INTERESTS_OPEN = "<interests>"
INTERESTS_CLOSE = "</interests>"
INTEREST_PARTS = ("long_term", "recent")
_ENTRY_RE = re.compile(r"^(?P<tag>.*?)[\s:=(]*(?P<weight>\d+(?:\.\d+)?|\.\d+)\s*(?P<percent>%)?\s*\)?$")
_WS_RE = re.compile(r"\s+")
_EDGE_PUNCT = " \t\"'`*_.,:;-()[]{}"

Weighted = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Interests:
    """Weighted tags per part, in the order written; tags in lower case, whitespace collapsed."""

    long_term: Weighted = ()
    recent: Weighted = ()

    def part(self, name: str) -> Weighted:
        return getattr(self, name)


def normalize_tag(text: str) -> str:
    """A tag as the reward compares it: lower case, whitespace collapsed, quotes and edge punctuation removed."""
    return _WS_RE.sub(" ", text.lower()).strip(_EDGE_PUNCT)


def parse_entry(entry: str) -> tuple[str, float] | None:
    """'drama 0.5' -> ('drama', 0.5); 'drama (50%)' -> ('drama', 0.5); 'drama' -> ('drama', 1.0); None when empty."""
    entry = entry.strip()
    match = _ENTRY_RE.match(entry)
    if match and normalize_tag(match.group("tag")):
        weight = float(match.group("weight")) / (100.0 if match.group("percent") else 1.0)
        return normalize_tag(match.group("tag")), weight
    tag = normalize_tag(entry)
    return (tag, 1.0) if tag else None


def parse_interests(text: str) -> Interests | None:
    """The last complete interest block in `text`, or None when there is none."""
    found = blocks(text, INTERESTS_OPEN, INTERESTS_CLOSE)
    if not found:
        return None
    start, end = found[-1]
    parts: dict[str, list[tuple[str, float]]] = {name: [] for name in INTEREST_PARTS}
    for line in text[start:end].splitlines():
        label, colon, rest = line.partition(":")
        label = normalize_tag(label)
        if not colon:
            continue
        name = "long_term" if label.startswith("long") else "recent" if label.startswith(("recent", "short")) else None
        if name is None:
            continue
        parts[name].extend(e for e in (parse_entry(x) for x in rest.split(";")) if e is not None)
    return Interests(tuple(parts["long_term"]), tuple(parts["recent"]))


def render_interests(long_term: Sequence[tuple[str, float]], recent: Sequence[tuple[str, float]]) -> str:
    """The block as an agent writes it (weights with two decimals)."""

    def line(entries: Sequence[tuple[str, float]]) -> str:
        return "; ".join(f"{tag} {weight:.2f}" for tag, weight in entries)

    return f"{INTERESTS_OPEN}\nlong term: {line(long_term)}\nrecent: {line(recent)}\n{INTERESTS_CLOSE}"
