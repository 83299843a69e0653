"""Free-text preference queries built from an item's metadata.

Used to train the preference-aware TRM (each training target gets several phrasings), as the oracle query in
evaluation (a query built from the true target's metadata is an upper bound), and by scripted agents.

An item's *aspects* (`item_aspects`) are short descriptive phrases, in this order:

* its era: `"classic"` before 1970 or `"recent"` for the newest years of the catalogue (the newest ~10%, and
  never older than the last two years), then the decade (`"1990s"`);
* its categories (genres), lower-cased unless an acronym (`"IMAX"`); placeholder genres such as
  `"unknown"` / `"(no genres listed)"` do not count;
* for items without categories (the Amazon Games titles), aspects read off the title: up to two genres from
  a small franchise/keyword list (`"racing"`, `"shooter"`, ...), content keywords, the `"digital download"`
  modifier, the product type (`Lexicon.kinds`: a head noun such as `"controller"` / `"charger"`, or the
  lexicon's `default_kind`, `"video game"`, when the title names none) and up to two platforms, normalised to
  canonical names (`Lexicon.platforms`, e.g. `"PS3"` -> `"PlayStation 3"`).

Genres, types, platforms and the nouns naming the items come from the lexicon of the dataset's catalogue
(`dataset.catalogue`, set by `DatasetConfig.catalogue`; `catalogue_lexicon`): a data file in lexicons/ per
catalogue (`catalogues`). Only `games` has platforms, types and genres; `movies` and `generic` only name their
items. Keyword extraction runs for every item without categories, whatever the catalogue.

Title-leak rule: a query must not give the title away. Content keywords are single title words that are not
stopwords, numbers, model numbers (`M95`), roman numerals, platform or product-type words, or edition
boilerplate (`"edition"`, `"standard"`, `"[Old Model]"`); only the main title is mined (`main_title`: bracketed
and parenthesised parts and what follows " - " dropped). A main title of more than 3 words gives at most 3
keywords, and `query_phrasings` rejects any phrasing whose words contain the whole title, or its main part, of
more than 3 words as a contiguous word sequence (`title_leaks`). A main title of 1-3 words gives at most ONE
keyword, so the query holds the non-title aspects plus at most one title word ("Far Cry 3 - PC" -> "Far"
only). Items with no aspect at all fall back to the first title word (or to `"popular"`).
"""

from __future__ import annotations

import functools
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np
import yaml

from deeprec_env.data.dataset import RecDataset

# -- title words (every catalogue) -------------------------------------------------------------------------------
_STOPWORDS = frozenset(
    """a an the of and or for with without in on at to from by into onto over vs versus v is are be it its it's my
    your our their his her you me we us they i not no all any some this that these those as up out off
    only plus &
    de la le el du der die das von und et""".split()
)
_BOILERPLATE = frozenset(
    """edition editions standard deluxe limited collector's collectors special premium ultimate complete gold
    platinum greatest hits goty version ver import imported uk us usa eu euro european japan japanese jp english
    region free original official new old model models refurbished manufacturer renewed bulk packaging package
    oem retail discontinued exclusive amazon bonus includes included including digital download code online
    key game games gaming gamer video console system wireless wired usb pack packs set sets kit kits piece pieces
    pcs pc mac remastered remaster hd 3d ultra pro compatible replacement protector protective nintendo sony
    microsoft sega xl ll slim lite"""
    "".split()
)
_COLOURS = frozenset(
    "black white blue red green yellow pink purple orange grey gray silver gold clear transparent camo camouflage"
    " color colors colour colours matte glossy".split()
)  # dropped from accessory titles only ("Black Ops" keeps its colour)
_WEAK_WORDS = frozenset("super final grand total great big little legend legends".split())
_ROMAN = re.compile(r"^(?=[IVX])X{0,3}(?:IX|IV|V?I{0,3})$")
_TOKEN = re.compile(r"[^\W_][\w'’.&+-]*")
_BRACKETS = re.compile(r"\[[^\]]*\]|\([^)]*\)|\{[^}]*\}")
_HEAD_CUT = re.compile(r"\s+(?:for|with|w/|compatible|works\s+with|-)\s+|\s+[-–—|]\s*|,\s+", re.IGNORECASE)


def _clean_token(token: str) -> str:
    return token.strip(".'’-&+")


def title_words(title: str) -> list[str]:
    """The title's words, lower-cased (the unit of the title-leak rule): "Demon's", "F-Zero" and "R.U.S.E." are
    one word each, as in keyword extraction."""
    return [word.lower() for word in map(_clean_token, _TOKEN.findall(title)) if word]


def main_title(title: str) -> str:
    """The title without bracketed parts and without what follows " - " (usually the platform or a colour)."""
    main = re.split(r"\s+[-–—|]\s+", _BRACKETS.sub(" ", title), maxsplit=1)[0].strip()
    return main or title.strip()


def title_leaks(query: str, title: str) -> bool:
    """True when the query gives the title away: the whole title, or its main part (`main_title`), of more than
    3 words appears in the query as a run of words (case-insensitive; "collection" also inside "collections").

    Shorter titles are guarded by construction (at most one title keyword), see the module docstring."""
    joined = " " + " ".join(title_words(query)) + " "
    for candidate in {title, main_title(title)}:
        words = title_words(candidate)
        if len(words) > 3 and f" {' '.join(words)}" in joined:
            return True
    return len(title_words(title)) > 3 and title.strip().casefold() in query.casefold()


def _head_part(title: str) -> str:
    """The title's leading noun phrase: bracketed parts removed, cut at " for " / " with " / " - " / ", "."""
    stripped = _BRACKETS.sub(" ", title)
    head = _HEAD_CUT.split(stripped, maxsplit=1)[0].strip()
    return head or stripped.strip()


# -- catalogue lexicons ------------------------------------------------------------------------------------------
_LEXICON_DIR = resources.files(__package__) / "lexicons"
_LEXICON_KEYS = frozenset({"nouns", "platforms", "kinds", "default_kind", "digital", "genres"})


def _alternation(patterns: Sequence[str]) -> re.Pattern[str] | None:
    """One regex `(?:(?P<g0>p0)|(?P<g1>p1)|...)` matched as whole words; `match.lastgroup` tells which
    alternative matched. None for no patterns (an empty alternation would match everywhere)."""
    if not patterns:
        return None
    body = "|".join(f"(?P<g{i}>{p})" for i, p in enumerate(patterns))
    return re.compile(rf"(?<![\w'])(?:{body})(?![\w'])", re.IGNORECASE)


def _ordered_matches(pattern: re.Pattern[str] | None, text: str, names: Sequence[str]) -> list[tuple[int, str]]:
    """(position, name) for every non-overlapping match, in text order."""
    if pattern is None:
        return []
    return [(m.start(), names[int(str(m.lastgroup)[1:])]) for m in pattern.finditer(text)]


class Lexicon:
    """A catalogue's item-aspect lexicon, read from `lexicons/<catalogue>.yaml`: what its items are called
    (`nouns`) and, where its titles name them (games), the platforms, product types (`kinds`, singular -> plural,
    `default_kind` included), the digital-download modifier and the genres. Each is a list of regex alternatives
    in the file; an absent section detects nothing."""

    def __init__(self, catalogue: str, spec: dict):
        if "nouns" not in spec or set(spec) - _LEXICON_KEYS:
            raise ValueError(
                f"lexicons/{catalogue}.yaml has sections {sorted(spec)}; it needs 'nouns' and may only have "
                f"{sorted(_LEXICON_KEYS)}"
            )
        platforms: dict[str, list[str]] = spec.get("platforms", {})
        kinds: dict[str, dict] = spec.get("kinds", {})
        default = spec.get("default_kind")
        digital = spec.get("digital")
        genres: dict[str, list[str]] = spec.get("genres", {})
        self.catalogue = catalogue
        self.nouns: tuple[str, ...] = tuple(spec["nouns"])
        self.platforms: tuple[str, ...] = tuple(platforms)  # canonical names; at one position the first wins
        self.default_kind: str | None = default["singular"] if default else None  # when the title names no kind
        self.kinds: dict[str, str] = {singular: kind["plural"] for singular, kind in kinds.items()}
        if default:
            self.kinds[default["singular"]] = default["plural"]
        self.digital: str | None = digital["name"] if digital else None
        self.genres: tuple[str, ...] = tuple(genres)
        self._platform_re = _alternation(["|".join(p) for p in platforms.values()])
        self._kind_names = list(kinds)
        self._kind_re = _alternation(["|".join(kind["match"]) for kind in kinds.values()])
        self._genre_re = _alternation(["|".join(p) for p in genres.values()])
        self._digital_re = re.compile(rf"\b(?:{'|'.join(digital['match'])})\b", re.IGNORECASE) if digital else None

    def detect_platforms(self, title: str, limit: int = 2) -> list[str]:
        """Canonical platform names mentioned in a title, in order of first mention, at most `limit`."""
        found = dict.fromkeys(name for _, name in _ordered_matches(self._platform_re, title, self.platforms))
        return list(found)[:limit]

    def detect_kind(self, title: str) -> str | None:
        """The product type (head noun, e.g. "controller") of a title: the LAST one in its leading noun phrase
        (`_head_part`); None when it names none (a plain game)."""
        matches = _ordered_matches(self._kind_re, _head_part(title), self._kind_names)
        return matches[-1][1] if matches else None

    def is_digital(self, title: str) -> bool:
        """True for download / online-code products ("[Online Game Code]", "[Download]", "Digital Code"),
        searched in the whole title, bracketed parts included."""
        return self._digital_re is not None and self._digital_re.search(title) is not None

    def detect_genres(self, title: str, limit: int = 2) -> list[str]:
        """Up to `limit` genres suggested by franchise names and keywords in the title (may be empty)."""
        matches = _ordered_matches(self._genre_re, _BRACKETS.sub(" ", title), self.genres)
        return list(dict.fromkeys(name for _, name in matches))[:limit]

    def strip_names(self, text: str) -> str:
        """The text with its platform and product-type mentions blanked out (they are no content keywords)."""
        for pattern in (self._platform_re, self._kind_re):
            if pattern is not None:
                text = pattern.sub(" ", text)
        return text


@functools.cache
def catalogues() -> tuple[str, ...]:
    """The catalogues a dataset may name (`DatasetConfig.catalogue`): one per lexicon file shipped in
    deeprec_env/trm/lexicons/."""
    return tuple(sorted(f.name.removesuffix(".yaml") for f in _LEXICON_DIR.iterdir() if f.name.endswith(".yaml")))


@functools.cache
def catalogue_lexicon(catalogue: str) -> Lexicon:
    """The lexicon of one catalogue, read once per process."""
    if catalogue not in catalogues():
        raise ValueError(
            f"unknown catalogue {catalogue!r}; use one of {list(catalogues())} (or add lexicons/{catalogue}.yaml)"
        )
    spec = yaml.safe_load((_LEXICON_DIR / f"{catalogue}.yaml").read_text(encoding="utf-8")) or {}
    return Lexicon(catalogue, spec)


# -- keyword extraction ----------------------------------------------------------------------------------------
def title_keywords(title: str, lexicon: Lexicon, limit: int = 3, accessory: bool = False) -> list[str]:
    """Up to `limit` content words of the title (1 when its main part has <= 3 words), in title order.

    Only the main part is mined (`main_title`: bracketed parts and everything after " - " dropped); the lexicon's
    platform and product-type mentions, stopwords, tokens with digits, roman numerals and edition boilerplate are
    skipped, and colour words for accessories."""
    main = main_title(title)
    if len(title_words(main)) <= 3:
        limit = min(limit, 1)
    main = lexicon.strip_names(main)
    words: list[str] = []
    seen: set[str] = set()
    for raw in _TOKEN.findall(main):
        token = _clean_token(raw)
        low = token.lower()
        if (
            len(token) < 2
            or any(ch.isdigit() for ch in token)
            or low in _STOPWORDS
            or low in _BOILERPLATE
            or (accessory and low in _COLOURS)
            or low in seen
            or _ROMAN.match(token)
        ):
            continue
        seen.add(low)
        words.append(token)
    if limit == 1 and len(words) > 1:
        strong = [w for w in words if w.lower() not in _WEAK_WORDS]
        words = strong or words
    return words[:limit]


# -- per-dataset context -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Context:
    lexicon: Lexicon
    recent_from: int | None  # items from this year on are "recent"


_CONTEXTS: dict[int, tuple[weakref.ref, _Context]] = {}


def _context(dataset: RecDataset) -> _Context:
    """The dataset's lexicon and "recent" threshold, computed once per dataset object (and catalogue)."""
    key = id(dataset)
    entry = _CONTEXTS.get(key)
    if entry is not None and entry[0]() is dataset and entry[1].lexicon.catalogue == dataset.catalogue:
        return entry[1]
    years = np.array([m.year for m in dataset.items[1:] if m.year is not None], dtype=np.int64)
    recent_from = None
    if len(years) and years.max() - years.min() >= 5:
        recent_from = int(max(years.max() - 1, np.quantile(years, 0.9)))
    ctx = _Context(lexicon=catalogue_lexicon(dataset.catalogue), recent_from=recent_from)
    for stale in [k for k, (ref, _) in _CONTEXTS.items() if ref() is None]:
        del _CONTEXTS[stale]
    _CONTEXTS[key] = (weakref.ref(dataset), ctx)
    return ctx


def _real_categories(categories: Sequence[str]) -> list[str]:
    out = []
    for cat in categories:
        cat = cat.strip()
        if not cat or cat.lower() in {"unknown", "other", "none", "n/a"} or (cat.startswith("(") and cat.endswith(")")):
            continue
        out.append(cat if cat.isupper() else cat.lower())
    return out


def item_aspects(dataset: RecDataset, item: int) -> list[str]:
    """Descriptive phrases for an item (era, categories, or title-derived aspects); never empty for ids >= 1.

    See the module docstring for the order and the title-leak rule."""
    if not 1 <= item <= dataset.n_items:
        raise ValueError(f"item id must be in 1..{dataset.n_items}, got {item}")
    ctx = _context(dataset)
    lex = ctx.lexicon
    meta = dataset.items[item]
    aspects: list[str] = []
    if meta.year is not None:
        if meta.year < 1970:
            aspects.append("classic")
        if ctx.recent_from is not None and meta.year >= ctx.recent_from:
            aspects.append("recent")
        aspects.append(f"{meta.year // 10 * 10}s")
    categories = _real_categories(meta.categories)
    aspects.extend(categories)
    if not categories:
        title = meta.title
        taken = {a.lower() for a in aspects}
        genres = lex.detect_genres(title)
        aspects.extend(g for g in genres if g not in taken)
        taken.update(genres)
        kind = lex.detect_kind(title)
        keywords = title_keywords(title, lex, accessory=kind is not None)
        aspects.extend(w for w in keywords if w.lower() not in taken)
        if lex.is_digital(title):
            aspects.append(str(lex.digital))
        if kind or lex.default_kind:
            aspects.append(kind or str(lex.default_kind))
        aspects.extend(lex.detect_platforms(title))
    if not aspects:
        words = [_clean_token(t) for t in _TOKEN.findall(meta.title)]
        words = [w for w in words if w]
        aspects.append(words[0] if words else "popular")
    return list(dict.fromkeys(aspects))


# -- phrasing ----------------------------------------------------------------------------------------------------
_NP_TEMPLATES = (
    "{np}",
    "I'm in the mood for {np}",
    "looking for {np}",
    "recommend me some {np}",
    "any good {np}?",
    "show me {np}",
    "{np}, please",
)
TEMPLATE_WORDS = frozenset(
    "i'm in the mood for looking recommend me some any good show please something and more ideally i've been "
    "enjoying lately on for or".split()
)  # the words templates add to a query (besides the nouns)


def aspect_table(dataset: RecDataset) -> list[tuple[str, ...]]:
    """Every item's aspects in lower case, indexed by item id (row 0, the padding id, is empty): what the reward
    reads to tell whether a query states an aspect of a user's history."""
    return [()] + [tuple(a.casefold() for a in item_aspects(dataset, i)) for i in range(1, dataset.n_items + 1)]


def phrase_query(
    aspects: Sequence[str],
    rng: np.random.Generator,
    noun: str | Sequence[str] = "titles",
    lexicon: Lexicon | None = None,
) -> str:
    """One natural query from a random subset (1..3, kept in the given order) of the aspects.

    The lexicon's platform names (`Lexicon.platforms`) become "on X" / "for X"; a product type (`Lexicon.kinds`)
    replaces the noun ("chargers for Nintendo 3DS"); `noun` (or a random one of several) names the items
    otherwise. Without a lexicon every aspect is a descriptor. One of ~12 templates, including the tag style
    "a; b". Empty aspects give a noun-only request."""
    nouns = [noun] if isinstance(noun, str) else list(noun) or ["titles"]
    aspects = [a.strip() for a in aspects if a and a.strip()]
    u = rng.random(4 + len(aspects)).tolist()  # one draw per call: numpy's per-call overhead dominates here

    def pick(options: Sequence[str], r: float) -> str:
        return options[min(int(r * len(options)), len(options) - 1)]

    noun_word = pick(nouns, u[0])
    if not aspects:
        return f"recommend me some {noun_word}"
    k = 1 + min(int(u[1] * min(3, len(aspects))), min(3, len(aspects)) - 1)
    keep = sorted(sorted(range(len(aspects)), key=lambda i: u[4 + i])[:k])
    chosen = [aspects[i] for i in keep]
    known_platforms = lexicon.platforms if lexicon is not None else ()
    kinds = lexicon.kinds if lexicon is not None else {}
    platforms = [a for a in chosen if a in known_platforms]
    heads = [a for a in chosen if a in kinds]
    descs = [a for a in chosen if a not in known_platforms and a not in kinds]
    if heads:
        noun_word = kinds[heads[-1]]
        descs.extend(heads[:-1])
    prep = "for" if heads or u[2] < 0.5 else "on"
    on = f" {prep} {' or '.join(platforms)}" if platforms else ""
    np_ = " ".join([*descs, noun_word]) + on

    options: list[str] = [t.format(np=np_) for t in _NP_TEMPLATES]
    options.append("; ".join(chosen))
    if descs and not heads:
        options.append(f"something {' and '.join(descs)}{on}")
        options.append(f"I've been enjoying {' '.join(descs)} {noun_word}{on} lately")
    if descs and (len(descs) >= 2 or on):
        rest = " and ".join(descs[1:] + ([on.strip()] if on else []))
        options.append(f"more {descs[0]} {noun_word}, ideally {rest}")
    return pick(options, u[3])


def category_query(category: str, noun: str) -> str:
    """The query for "give me items of this category", e.g. "comedy movies"."""
    cats = _real_categories([category]) or [category.strip()]
    return f"{cats[0]} {noun}".strip()


def _rng(seed: int, item: int) -> np.random.Generator:
    return np.random.default_rng([seed % (1 << 63), item])


def query_phrasings(
    dataset: RecDataset, item: int, n: int, seed: int = 0, noun: str | Sequence[str] | None = None
) -> list[str]:
    """`n` varied phrasings for one item (distinct where the aspects allow), deterministic for (item, seed).

    No phrasing leaks a title of more than 3 words (`title_leaks`); the nouns default to the dataset's."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    aspects = item_aspects(dataset, item)
    lex = _context(dataset).lexicon
    heads = [a for a in aspects if a in lex.kinds and a != lex.default_kind]
    nouns = noun if noun is not None else (lex.kinds[heads[-1]],) if heads else lex.nouns
    title = dataset.items[item].title
    rng = _rng(seed, item)
    found: list[str] = []
    drawn: list[str] = []
    for _ in range(max(6 * n, 8) if n else 0):
        query = phrase_query(aspects, rng, nouns, lex)
        if title_leaks(query, title):
            continue
        drawn.append(query)
        if query not in found:
            found.append(query)
            if len(found) == n:
                return found
    if not drawn:  # every draw leaked (practically impossible): drop the keywords
        safe = [a for a in aspects if a.lower() not in {w.lower() for w in title_keywords(title, lex)}]
        drawn = [phrase_query(safe, rng, nouns, lex) for _ in range(n)]
        drawn = [q for q in drawn if not title_leaks(q, title)] or [phrase_query([], rng, nouns, lex)]
    while len(found) < n:
        found.append(drawn[len(found) % len(drawn)])
    return found


def query_bank_texts(dataset: RecDataset, n_variants: int, seed: int = 0) -> list[list[str]]:
    """`n_variants` phrasings for every item id 0..n_items; row 0 (padding) is `[""] * n_variants`."""
    return [[""] * n_variants] + [
        query_phrasings(dataset, item, n_variants, seed) for item in range(1, dataset.n_items + 1)
    ]
