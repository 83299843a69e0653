"""Answer lines to item ids: normalised exact title match, then fuzzy match, preferring items retrieved in the
episode (see `TitleMatcher`)."""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rapidfuzz import fuzz, process

from deeprec_env.protocol.handles import resolve
from deeprec_env.protocol.text import strip_line_prefix

if TYPE_CHECKING:
    from deeprec_env.data.dataset import ItemMeta, RecDataset

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


def title_variants(title: str) -> set[str]:
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
            keys = title_variants(base) or {normalize_title(meta.title)}
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

    def names_item(self, text: str) -> bool:
        """Whether the text names a catalogue item (exactly or fuzzily, as an answer line would)."""
        return self.match(text) is not None

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

    def match_answer(
        self, lines: Sequence[str], preferred: Collection[int] = (), handles: Mapping[str, int] | None = None
    ) -> AnswerMatch:
        """Match every line; repeats of an already matched item count as duplicates and leave their slot None.
        handles: the episode's item handles (handle -> item id, `protocol.handles`); a line starting with one
        names that item exactly, a line starting with an unknown handle is matched by the title after it."""
        preferred = {i: r for r, i in enumerate(dict.fromkeys(preferred))}
        ids: list[int | None] = []
        seen: set[int] = set()
        n_invalid = n_duplicate = 0
        for line in lines:
            item, rest = resolve(line, handles) if handles else (None, line)
            if item is None and rest:
                item = self.match(rest, preferred, seen)
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
