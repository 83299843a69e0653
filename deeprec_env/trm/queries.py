"""Free-text preference queries built from an item's metadata.

Used to train the preference-aware TRM (each training target gets several phrasings), as the oracle query in
evaluation (a query built from the true target's metadata is an upper bound), and by scripted agents.

An item's *aspects* (`item_aspects`) are short descriptive phrases, in this order:

* its era: `"classic"` before 1970 or `"recent"` for the newest years of the catalogue (the newest ~10%, and
  never older than the last two years), then the decade (`"1990s"`);
* its categories (genres), lower-cased unless an acronym (`"IMAX"`); placeholder genres such as
  `"unknown"` / `"(no genres listed)"` do not count;
* for items without categories (the Amazon Games titles), aspects read off the title: up to two game genres
  from a small franchise/keyword lexicon (`"racing"`, `"shooter"`, ...), content keywords, the
  `"digital download"` modifier, the product type (`KINDS`: a head noun such as `"controller"` / `"charger"`,
  or `GAME_KIND` = `"video game"` when the title names none) and up to two platforms, normalised to canonical
  names (`PLATFORMS`, e.g. `"PS3"` -> `"PlayStation 3"`). Platform, type and game-genre detection only run for
  game catalogues (dataset name containing "game"); keyword extraction runs for every item without categories.

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

import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from deeprec_env.data.dataset import RecDataset

# -- platforms -------------------------------------------------------------------------------------------------
# (canonical name, regex); at one position the first alternative that matches wins, so specific names come first.
_PLATFORM_SPECS: tuple[tuple[str, str], ...] = (
    ("PlayStation 5", r"playstation\s*5|ps\s?5"),
    ("PlayStation 4", r"playstation\s*4|ps\s?4|playstation\s*vr|psvr|dualshock\s*4|ds4"),
    ("PlayStation 3", r"playstation\s*3|ps\s?3|playstation\s*move|dualshock\s*3|sixaxis"),
    ("PlayStation 2", r"playstation\s*2|ps\s?2"),
    ("PlayStation Vita", r"(?:playstation|ps)\s*vita|vita"),
    ("PSP", r"psp(?:\s*go)?|playstation\s*portable"),
    ("PlayStation", r"playstation|psx|ps\s?1|ps\s?one"),
    ("Xbox Series X", r"xbox\s*series(?:\s*[xs](?:\s*\|\s*s)?)?"),
    ("Xbox One", r"xbox\s*one|xb1|xbone"),
    ("Xbox 360", r"xbox\s*360|x360"),
    ("Xbox", r"xbox"),
    (
        "Nintendo Switch",
        r"nintendo\s*switch|switch\s*(?:lite|oled)|joy-?cons?|(?:(?<=for )|(?<=- )|(?<=and )|(?<=, )|(?<=/))switch"
        r"|switch(?=\s*/)",
    ),
    ("Wii U", r"wii\s*u|wiiu|wii\s*\(u\)"),
    ("Wii", r"wii"),
    ("Nintendo 3DS", r"(?:new\s+)?(?:nintendo\s*)?[23]ds(?:\s*xl|\s*ll)?"),
    ("Nintendo DS", r"nintendo\s*dsi?(?:\s*(?:xl|lite))?|ndsi?|dsi(?:\s*xl)?|ds\s*lite|ds"),
    ("GameCube", r"game\s*cube|ngc"),
    ("Nintendo 64", r"nintendo\s*64|n64"),
    ("Game Boy Advance", r"game\s*boy\s*advance(?:\s*sp)?|gba"),
    ("Game Boy Color", r"game\s*boy\s*colou?r|gbc"),
    ("Game Boy", r"game\s*boy"),
    ("Super Nintendo", r"super\s*nintendo|snes|super\s*nes|super\s*famicom"),
    ("NES", r"nes|nintendo\s*entertainment\s*system|famicom"),
    ("Sega Genesis", r"(?:sega\s*)?genesis|mega\s*drive"),
    ("Dreamcast", r"(?:sega\s*)?dreamcast"),
    ("Sega Saturn", r"(?:sega\s*)?saturn"),
    ("Game Gear", r"(?:sega\s*)?game\s*gear"),
    ("Sega Master System", r"(?:sega\s*)?master\s*system"),
    ("Mac", r"mac\s*os(?:\s*x)?|macintosh|macbook|imac|mac"),
    ("PC", r"pc(?:\s*cd-?rom|\s*dvd(?:-?rom)?)?|windows(?:\s*(?:xp|vista|\d+))?|computers?|laptops?|cd-?rom"),
    ("Linux", r"linux"),
    ("Atari", r"atari(?:\s*\d+)?"),
)
PLATFORMS: tuple[str, ...] = tuple(dict.fromkeys(name for name, _ in _PLATFORM_SPECS))

# -- product types ---------------------------------------------------------------------------------------------
# Head nouns: (singular, plural, regex). In a title the type is the LAST head noun before " for " / " with " /
# " compatible" / " - " (the head of the English noun phrase), ignoring bracketed parts.
_KIND_SPECS: tuple[tuple[str, str, str], ...] = (
    ("screen protector", "screen protectors", r"screen\s*(?:protectors?|guards?|film)|protector\s*film"),
    ("memory card", "memory cards", r"memory\s*(?:cards?|sticks?|units?)|(?:micro\s*)?sd\s*cards?|micro\s*sd"),
    ("power supply", "power supplies", r"(?:ac|power)\s*(?:adapters?|adaptors?|supply|supplies|cords?|bricks?)"),
    (
        "charger",
        "chargers",
        r"chargers?|charging\s*(?:docks?|stations?|stands?|cables?|kits?|bases?|systems?)"
        r"|charge\s*(?:stations?|kits?|docks?|bases?|systems?)|power\s*banks?",
    ),
    ("battery", "batteries", r"(?:rechargeable\s*)?batter(?:y|ies)(?:\s*packs?)?"),
    ("mouse pad", "mouse pads", r"mouse\s*(?:pads?|mats?)|mousepads?"),
    ("mouse", "mice", r"(?<!mickey )mouse|mice"),
    ("keyboard", "keyboards", r"keyboards?|keypads?"),
    ("headset", "headsets", r"headsets?|headphones?|earphones?|earbuds?|ear\s*buds?"),
    ("microphone", "microphones", r"microphones?|mics?"),
    ("steering wheel", "steering wheels", r"(?:steering|racing|speed)\s*wheels?|wheel\s*(?:attachments?|stands?)"),
    ("guitar controller", "guitar controllers", r"(?:wireless\s*)?guitar\s*controllers?|wireless\s*guitars?"),
    ("drum kit", "drum kits", r"drum\s*(?:kits?|sets?|controllers?)"),
    ("dance pad", "dance pads", r"dance\s*(?:pads?|mats?)"),
    ("light gun", "light guns", r"light\s*guns?|zapper|gun\s*(?:controllers?|attachments?)"),
    (
        "controller",
        "controllers",
        r"(?:pro\s*)?controllers?|gamepads?|game\s*pads?|joysticks?|fight\s*sticks?|arcade\s*sticks?"
        r"|remote\s*controls?|remotes?|nunchu[c]?ks?|wiimotes?|dual\s*shock|dualshock|sixaxis",
    ),
    ("grip", "grips", r"(?:thumb|analog|hand|controller)\s*grips?|grips?|thumb\s*sticks?|thumbsticks?"),
    ("adapter", "adapters", r"adapters?|adaptors?|converters?|dongles?|receivers?"),
    ("cable", "cables", r"(?:(?:hdmi|av|a/v|component|composite|usb|link|extension|vga)\s*)?(?:cables?|cords?)|hdmi"),
    ("hard drive", "hard drives", r"(?:external\s*)?hard\s*drives?|hdd|ssd|storage\s*(?:drives?|expansion)"),
    ("cooling fan", "cooling fans", r"cooling\s*(?:fans?|stands?|stations?|pads?)|(?:usb\s*)?fans?"),
    ("camera", "cameras", r"cameras?|eye\s*toy|eyetoy|kinect\s*(?:sensor|camera)|playstation\s*eye|webcams?"),
    ("speaker", "speakers", r"speakers?|sound\s*bars?|subwoofers?"),
    ("monitor", "monitors", r"monitors?"),
    ("gaming chair", "gaming chairs", r"(?:gaming\s*)?chairs?"),
    ("stylus", "styluses", r"styl(?:us|uses|i)|touch\s*pens?"),
    ("cleaning kit", "cleaning kits", r"cleaning\s*(?:kits?|cloths?)|(?:lens\s*)?cleaners?"),
    ("skin", "skins", r"skins?|decals?|stickers?|faceplates?"),
    (
        "case",
        "cases",
        r"(?<!jewel )(?<!dvd )(?<!steelbook )(?<!mystery )cases?|carry(?:ing)?\s*bags?|travel\s*(?:bags?|totes?)"
        r"|bags?|totes?|pouch(?:es)?|sleeves?|(?:protective|silicone|hard|crystal|replacement)\s*(?:shells?|covers?)|housings?",
    ),
    ("stand", "stands", r"stands?(?![\s-]*alone)|docks?|docking\s*stations?|mounts?|holders?|racks?"),
    ("strap", "straps", r"(?:wrist\s*)?straps?|lanyards?"),
    ("figure", "figures", r"figures?|figurines?|amiibo|character\s*packs?|power\s*discs?"),
    ("accessory kit", "accessory kits", r"accessor(?:y|ies)(?:\s*(?:kits?|packs?|bundles?))?|starter\s*kits?"),
    ("console", "consoles", r"consoles?|(?:gaming|game|video\s*game|handheld)\s*systems?"),
    (
        "subscription",
        "subscriptions",
        r"subscriptions?|memberships?|xbox\s*live\s*gold|playstation\s*plus|ps\s*plus|game\s*pass",
    ),
    (
        "gift card",
        "gift cards",
        r"gift\s*cards?|points?\s*cards?|(?:psn|eshop|live|network)\s*cards?|(?:microsoft|nintendo)\s*points"
        r"|(?:in-game|virtual)\s*currency|currency|shark\s*cards?|v-?bucks",
    ),
    ("strategy guide", "strategy guides", r"(?:strategy|official|game|players?)\s*guides?|guide\s*book|prima"),
    ("season pass", "season passes", r"season\s*pass(?:es)?"),
    ("expansion", "expansions", r"expansion(?:\s*packs?)?|add-?ons?|dlc|downloadable\s*content|map\s*packs?"),
    ("bundle", "bundles", r"bundles?|combo\s*packs?"),
    (
        "collection",
        "collections",
        r"collections?|trilogy|anthology|compilation|(?:\d+|two|three|four|five)\s*-?\s*in\s*-?\s*(?:1|one)",
    ),
)
GAME_KIND = "video game"  # the type of a game-catalogue item whose title names no other product type
KINDS: dict[str, str] = {singular: plural for singular, plural, _ in _KIND_SPECS} | {GAME_KIND: "video games"}
DIGITAL = "digital download"  # a modifier type: searched in the whole title, bracketed parts included
_DIGITAL_RE = re.compile(
    r"\b(?:download(?:able)?(?:\s*code)?|digital\s*(?:code|download|copy|edition)|online\s*game\s*code"
    r"|game\s*code|(?:pc|mac)\s*code|steam\s*(?:key|code)|activation\s*key)\b",
    re.IGNORECASE,
)

# -- game genres (a small franchise / keyword lexicon) ------------------------------------------------------------
_GENRE_SPECS: tuple[tuple[str, str], ...] = (
    ("football", r"madden|nfl|ncaa\s*football|nfl\s*blitz"),
    ("soccer", r"fifa|soccer|pro\s*evolution|pes\s*\d+|football\s*manager|uefa"),
    ("basketball", r"nba|basketball|ncaa\s*march"),
    ("hockey", r"nhl|hockey"),
    ("baseball", r"mlb|baseball"),
    ("golf", r"golf|pga"),
    ("tennis", r"tennis"),
    ("wrestling", r"wwe|wwf|smackdown|wrestl\w*|ufc|boxing|fight\s*night"),
    ("skateboarding", r"tony\s*hawk|skate\w*|snowboard\w*"),
    (
        "racing",
        r"racing|racers?|kart|rally|need\s*for\s*speed|forza|gran\s*turismo|nascar|motocross|f1|formula\s*(?:1|one)"
        r"|burnout|mx\s*vs|motorstorm|midnight\s*club|wipeout|ridge\s*racer|dirt",
    ),
    (
        "music and rhythm",
        r"guitar\s*hero|rock\s*band|dj\s*hero|karaoke|singstar|just\s*dance|dance\s*dance|dance\s*central|rocksmith"
        r"|band\s*hero|rhythm",
    ),
    (
        "shooter",
        r"call\s*of\s*duty|battlefield|halo|gears\s*of\s*war|counter-?strike|medal\s*of\s*honor|killzone|far\s*cry"
        r"|borderlands|doom|quake|wolfenstein|sniper|shooter|crysis|destiny|overwatch|titanfall|rainbow\s*six"
        r"|ghost\s*recon|unreal\s*tournament|bioshock|half-?life|time\s*crisis|house\s*of\s*the\s*dead|splatoon",
    ),
    (
        "role-playing",
        r"final\s*fantasy|dragon\s*quest|elder\s*scrolls|skyrim|oblivion|fallout|dragon\s*age|mass\s*effect"
        r"|kingdom\s*hearts|tales\s*of|persona|shin\s*megami|diablo|baldur'?s|neverwinter|witcher|dark\s*souls"
        r"|demon'?s\s*souls|bloodborne|pok[eé]mon|rpg|chrono|star\s*ocean|fable|xenoblade|disgaea|etrian"
        r"|warcraft|everquest|guild\s*wars|mmo\w*|dungeons?",
    ),
    (
        "strategy",
        r"civilization|total\s*war|command\s*(?:&|and)\s*conquer|starcraft|age\s*of\s*(?:empires|mythology)"
        r"|warhammer|xcom|company\s*of\s*heroes|sim\s*city|simcity|tycoon|stronghold|rts|strategy(?!\s*guide)"
        r"|tactics|fire\s*emblem|advance\s*wars|heroes\s*of\s*might|crusader\s*kings|hearts\s*of\s*iron",
    ),
    (
        "simulation",
        r"the\s*sims|sims|simulator|simulation|farming|harvest\s*moon|animal\s*crossing|roller\s*coaster"
        r"|cooking\s*mama|nintendogs|petz|zoo",
    ),
    (
        "fighting",
        r"street\s*fighter|mortal\s*kombat|tekken|soul\s*?calibur|smash\s*bros\.?|dead\s*or\s*alive"
        r"|virtua\s*fighter|king\s*of\s*fighters|marvel\s*vs\.?|blazblue|guilty\s*gear|injustice|dragon\s*ball"
        r"|naruto|fighters?|fighting",
    ),
    (
        "horror",
        r"resident\s*evil|silent\s*hill|dead\s*space|zombi\w*|horror|fatal\s*frame|outlast|alien\s*isolation"
        r"|evil\s*within|five\s*nights|left\s*4\s*dead|dead\s*rising|until\s*dawn|haunt\w*",
    ),
    (
        "platformer",
        r"super\s*mario(?!\s*party)|mario\s*bros|sonic|crash\s*bandicoot|spyro|rayman|kirby|donkey\s*kong|banjo"
        r"|ratchet|sly\s*cooper|little\s*big\s*planet|littlebigplanet|mega\s*man|megaman|yoshi'?s?|platformer"
        r"|castlevania|metroid",
    ),
    (
        "action-adventure",
        r"zelda|grand\s*theft\s*auto|gta|assassin'?s\s*creed|uncharted|tomb\s*raider|god\s*of\s*war|batman"
        r"|spider-?man|metal\s*gear|devil\s*may\s*cry|prince\s*of\s*persia|red\s*dead|saints\s*row|hitman"
        r"|splinter\s*cell|ninja\s*gaiden|lego|infamous|watch\s*dogs|just\s*cause|mafia",
    ),
    (
        "puzzle",
        r"puzzle\w*|tetris|brain\s*age|professor\s*layton|portal|bejeweled|hidden\s*objects?|picross|lumines"
        r"|mahjong\w*|sudoku|crossword|zuma|peggle|solitaire|trivia|jeopardy|wheel\s*of\s*fortune",
    ),
    (
        "adventure",
        r"adventures?|nancy\s*drew|myster(?:y|ies)|sherlock|myst|point\s*(?:and|&)\s*click|king'?s\s*quest"
        r"|monkey\s*island|telltale|walking\s*dead",
    ),
    ("flight", r"flight|ace\s*combat|air\s*combat|pilot|hawx|crimson\s*skies"),
    ("party", r"mario\s*party|party|mini-?games?|carnival"),
    ("fitness", r"wii\s*fit|fitness|exercise|workout|yoga|zumba"),
    ("family", r"disney|pixar|nickelodeon|spongebob|dora|barbie|cartoon|kids|children'?s?|skylanders|scooby"),
    ("sports", r"sports?|olympics?"),
)
GAME_GENRES: tuple[str, ...] = tuple(name for name, _ in _GENRE_SPECS)


def _alternation(patterns: Sequence[str]) -> re.Pattern[str]:
    """One regex `\\b(?:(?P<g0>p0)|(?P<g1>p1)|...)\\b`; `match.lastgroup` tells which alternative matched."""
    body = "|".join(f"(?P<g{i}>{p})" for i, p in enumerate(patterns))
    return re.compile(rf"(?<![\w'])(?:{body})(?![\w'])", re.IGNORECASE)


_PLATFORM_RE = _alternation([p for _, p in _PLATFORM_SPECS])
_KIND_RE = _alternation([p for _, _, p in _KIND_SPECS])
_GENRE_RE = _alternation([p for _, p in _GENRE_SPECS])

# -- keyword extraction ----------------------------------------------------------------------------------------
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


def _ordered_matches(pattern: re.Pattern[str], text: str, names: Sequence[str]) -> list[tuple[int, str]]:
    """(position, name) for every non-overlapping match, in text order."""
    return [(m.start(), names[int(str(m.lastgroup)[1:])]) for m in pattern.finditer(text)]


def detect_platforms(title: str, limit: int = 2) -> list[str]:
    """Canonical platform names mentioned in a title, in order of first mention, at most `limit`."""
    names = [name for name, _ in _PLATFORM_SPECS]
    found = dict.fromkeys(name for _, name in _ordered_matches(_PLATFORM_RE, title, names))
    return list(found)[:limit]


def _head_part(title: str) -> str:
    """The title's leading noun phrase: bracketed parts removed, cut at " for " / " with " / " - " / ", "."""
    stripped = _BRACKETS.sub(" ", title)
    head = _HEAD_CUT.split(stripped, maxsplit=1)[0].strip()
    return head or stripped.strip()


def detect_kind(title: str) -> str | None:
    """The product type (head noun, e.g. "controller") of a title, or None for a plain game."""
    names = [singular for singular, _, _ in _KIND_SPECS]
    matches = _ordered_matches(_KIND_RE, _head_part(title), names)
    return matches[-1][1] if matches else None


def is_digital(title: str) -> bool:
    """True for download / online-code products ("[Online Game Code]", "[Download]", "Digital Code")."""
    return _DIGITAL_RE.search(title) is not None


def game_genres(title: str, limit: int = 2) -> list[str]:
    """Up to `limit` game genres suggested by franchise names and keywords in the title (may be empty)."""
    names = [name for name, _ in _GENRE_SPECS]
    found = dict.fromkeys(name for _, name in _ordered_matches(_GENRE_RE, _BRACKETS.sub(" ", title), names))
    return list(found)[:limit]


def title_keywords(title: str, limit: int = 3, games: bool = True, accessory: bool = False) -> list[str]:
    """Up to `limit` content words of the title (1 when its main part has <= 3 words), in title order.

    Only the main part is mined (`main_title`: bracketed parts and everything after " - " dropped); platform and
    product-type
    mentions (for games), stopwords, tokens with digits, roman numerals and edition boilerplate are skipped, and
    colour words for accessories."""
    main = main_title(title)
    if len(title_words(main)) <= 3:
        limit = min(limit, 1)
    if games:
        main = _PLATFORM_RE.sub(" ", main)
        main = _KIND_RE.sub(" ", main)
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
    nouns: tuple[str, ...]
    games: bool
    recent_from: int | None  # items from this year on are "recent"


_CONTEXTS: dict[int, tuple[weakref.ref, _Context]] = {}


def dataset_nouns(name: str) -> tuple[str, ...]:
    """What the catalogue's items are called: ("movies", "films"), ("games",) or ("titles", "items")."""
    low = name.lower()
    if "game" in low:
        return ("games",)
    if low.startswith("ml") or "movie" in low or "lens" in low or "film" in low:
        return ("movies", "films")
    return ("titles", "items")


def _context(dataset: RecDataset) -> _Context:
    key = id(dataset)
    entry = _CONTEXTS.get(key)
    if entry is not None and entry[0]() is dataset:
        return entry[1]
    years = np.array([m.year for m in dataset.items[1:] if m.year is not None], dtype=np.int64)
    recent_from = None
    if len(years) and years.max() - years.min() >= 5:
        recent_from = int(max(years.max() - 1, np.quantile(years, 0.9)))
    nouns = dataset_nouns(dataset.name)
    ctx = _Context(nouns=nouns, games=nouns == ("games",), recent_from=recent_from)
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
    """Descriptive phrases for an item (era, categories, or title-derived game aspects); never empty for ids >= 1.

    See the module docstring for the order and the title-leak rule."""
    if not 1 <= item <= dataset.n_items:
        raise ValueError(f"item id must be in 1..{dataset.n_items}, got {item}")
    ctx = _context(dataset)
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
        if ctx.games:
            genres = game_genres(title)
            aspects.extend(g for g in genres if g not in taken)
            taken.update(genres)
        kind = detect_kind(title) if ctx.games else None
        keywords = title_keywords(title, games=ctx.games, accessory=kind is not None)
        aspects.extend(w for w in keywords if w.lower() not in taken)
        if ctx.games:
            if is_digital(title):
                aspects.append(DIGITAL)
            aspects.append(kind or GAME_KIND)
            aspects.extend(detect_platforms(title))
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
    "enjoying lately on for or games video movies films titles items".split()
)  # the words templates and nouns add to a query


def phrase_query(aspects: Sequence[str], rng: np.random.Generator, noun: str | Sequence[str] = "titles") -> str:
    """One natural query from a random subset (1..3, kept in the given order) of the aspects.

    Platform names (`PLATFORMS`) become "on X" / "for X"; a product type (`KINDS`) replaces the noun ("chargers
    for Nintendo 3DS"); `noun` (or a random one of several) names the items otherwise. One of ~12 templates,
    including the tag style "a; b". Empty aspects give a noun-only request."""
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
    platforms = [a for a in chosen if a in PLATFORMS]
    heads = [a for a in chosen if a in KINDS]
    descs = [a for a in chosen if a not in PLATFORMS and a not in KINDS]
    if heads:
        noun_word = KINDS[heads[-1]]
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
    heads = [a for a in aspects if a in KINDS and a != GAME_KIND]
    nouns = noun if noun is not None else (KINDS[heads[-1]],) if heads else _context(dataset).nouns
    title = dataset.items[item].title
    rng = _rng(seed, item)
    found: list[str] = []
    drawn: list[str] = []
    for _ in range(max(6 * n, 8) if n else 0):
        query = phrase_query(aspects, rng, nouns)
        if title_leaks(query, title):
            continue
        drawn.append(query)
        if query not in found:
            found.append(query)
            if len(found) == n:
                return found
    if not drawn:  # every draw leaked (practically impossible): drop the keywords
        safe = [a for a in aspects if a.lower() not in {w.lower() for w in title_keywords(title)}]
        drawn = [phrase_query(safe, rng, nouns) for _ in range(n)]
        drawn = [q for q in drawn if not title_leaks(q, title)] or [phrase_query([], rng, nouns)]
    while len(found) < n:
        found.append(drawn[len(found) % len(drawn)])
    return found


def query_bank_texts(dataset: RecDataset, n_variants: int, seed: int = 0) -> list[list[str]]:
    """`n_variants` phrasings for every item id 0..n_items; row 0 (padding) is `[""] * n_variants`."""
    return [[""] * n_variants] + [
        query_phrasings(dataset, item, n_variants, seed) for item in range(1, dataset.n_items + 1)
    ]
