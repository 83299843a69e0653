"""A built-in synthetic dataset whose ground truth is known.

Catalogue: `n_categories` named, genre-like categories. Every item has a primary category (balanced across
categories), sometimes a second one, a readable unique title themed by its primary category and a year in
1980..2023. Within a category, item popularity follows Zipf-like weights, so popularity baselines are
meaningful.

Users: each user likes `categories_per_user` random categories with Dirichlet(`concentration`) weights (the
latent mixture; every other category gets weight 0). A sequence starts with an item from a category drawn
from the mixture; each next item stays in the previous item's primary category with probability `stickiness`,
else its category is drawn from the mixture again. Within a category items are drawn by popularity weight,
never one the user already has. (Only if all of a user's categories run out of unseen items does the user
fall back to other categories.)

Ground truth lives in `RecDataset.extras`:
  - "user_preferences": float32 (n_users, n_categories), the latent mixtures (rows sum to 1);
  - "item_category": int64 (n_items + 1,), primary category index per item id (-1 for padding id 0);
  - "item_secondary_category": int64 (n_items + 1,), secondary category index or -1 (none / padding);
  - "item_weight": float32 (n_items + 1,), the within-category popularity weight (0 for padding).
Category index c is named `synthetic_category_names(n_categories)[c]`.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate

import numpy as np

from deeprec_env.data.dataset import ItemMeta, RecDataset
from deeprec_env.data.source import SyntheticConfig

SECONDARY_PROB = 0.3  # probability that an item also carries a (different) secondary category
ZIPF_EXPONENT = 1.0  # within-category popularity: the item of rank r (from 1) weighs r ** -ZIPF_EXPONENT
YEAR_RANGE = (1980, 2023)  # inclusive

# Category name -> (first words, second words), each comma-separated; a title is "<first> <second>",
# plus a sequel numeral (II, III, ...) when that title is already taken.
_THEME_WORDS: dict[str, tuple[str, str]] = {
    "Sci-Fi": (
        "Starfall, Quantum, Nebula, Orbital, Hyperion, Ion, Void, Chrono, Stellar, Cyber, Andromeda, Photon",
        "Odyssey, Protocol, Horizon, Drift, Colony, Signal, Frontier, Paradox, Station, Vector, Eclipse, Genesis",
    ),
    "Western": (
        "Dust Creek, Tombstone, Silver Gulch, Red Mesa, Rattlesnake, Coyote, Dry River, Sundown, Deadwood, "
        "Iron Horse, Lone Pine, Mustang",
        "Showdown, Outlaws, Bounty, Trail, Ranch, Saloon, Stampede, Posse, Sheriff, Gold Rush, Reckoning, Drifter",
    ),
    "Cooking": (
        "Kitchen, Butter, Saffron, Spice, Garden, Rustic, Midnight, Harvest, Sourdough, Street, Grandma's, Smoky",
        "Secrets, Feast, Table, Pantry, Bakery, Skillet, Supper, Recipes, Grill, Brunch, Kitchen Tales, Market",
    ),
    "Racing": (
        "Turbo, Nitro, Redline, Apex, Throttle, Burnout, Overdrive, Checkered, Asphalt, Pit Lane, "
        "Slipstream, Full Speed",
        "Rivals, Circuit, Grand Prix, Rally, Drift Kings, Velocity, Lap, Fury, Run, Legends, Championship, Sprint",
    ),
    "Puzzle": (
        "Cube, Riddle, Maze, Cipher, Tangram, Labyrinth, Prism, Enigma, Jigsaw, Logic, Domino, Mosaic",
        "Quest, Box, Tiles, Garden, Master, Path, Tower, Blocks, Lab, Machine, Room, Pieces",
    ),
    "Fantasy": (
        "Dragon, Elven, Shadow, Crystal, Rune, Moonlit, Ember, Thorn, Wyvern, Mythic, Frost, Golden",
        "Kingdom, Crown, Blade, Throne, Prophecy, Realm, Sorcerer, Oath, Citadel, Legacy, Quest, Chronicles",
    ),
    "Horror": (
        "Blood, Hollow, Crimson, Grave, Whispering, Wicked, Ashen, Raven, Dread, Black Water, Silent, Pale",
        "Manor, Curse, Asylum, Night, Ritual, Haunting, Cellar, Woods, Possession, Harvest, Screams, Doll",
    ),
    "Mystery": (
        "Vanishing, Locked, Foggy, Crooked, Hidden, Twelfth, Velvet, Broken, Last, Secret, Midnight, Amber",
        "Clue, Witness, Inquiry, Alibi, Key, Letter, Case, Riddle, Suspect, Detective, Affair, Puzzle",
    ),
    "Romance": (
        "Summer, Paris, Sweet, Autumn, Starlit, Tender, Second, Lavender, Seaside, Forever, Rose, Winter",
        "Kiss, Promise, Hearts, Love Letters, Vows, Serenade, Embrace, Wedding, Crush, Dance, Sunset, Affair",
    ),
    "Comedy": (
        "Crazy, Totally, Big, Awkward, Wacky, Silly, Oops, Goofy, Super, Mega, Lucky, Dizzy",
        "Vacation, Roommates, Weekend, Family, Mixup, Road Trip, Neighbors, Reunion, Blunder, Party, Office, "
        "Babysitter",
    ),
    "War": (
        "Iron, Steel, Broken, Burning, Northern, Final, Operation, Thunder, Fallen, Frozen, Desert, Eagle",
        "Front, Siege, Battalion, Trenches, Offensive, Beachhead, Regiment, Command, Ridge, Valor, Armistice, Convoy",
    ),
    "Sports": (
        "Home Run, Slam Dunk, Underdog, Golden, Final, Victory, Rookie, Fast Break, Overtime, Kickoff, Hat "
        "Trick, Match Point",
        "Season, Champions, Glory, Comeback, Playoffs, Team, Coach, League, Dream, Game, Trophy, Spirit",
    ),
    "Documentary": (
        "Inside, Hidden, Untold, Deep, Modern, Ancient, Silent, Urban, Lost, True, Forgotten, Global",
        "Stories, Truth, Voices, Files, Frontiers, Witnesses, Economy, Machines, Archives, Empires, Lives, Revolution",
    ),
    "Musical": (
        "Broadway, Jazz, Rhythm, Melody, Harmony, Swing, Encore, Spotlight, Velvet, Neon, Tango, Starlight",
        "Nights, Revue, Serenade, Ballad, Stage, Chorus, Symphony, Cabaret, Follies, Song, Parade, Overture",
    ),
    "Animation": (
        "Bubbles, Pixel, Whisker, Sprocket, Paper, Tiny, Jelly, Rainbow, Button, Doodle, Pocket, Cotton",
        "Friends, Island, Adventures, Town, Express, Critters, Galaxy, Forest, Circus, Robots, Monsters, Bunch",
    ),
    "Thriller": (
        "Dead, Cold, Zero, Black, Double, Shattered, Blind, Fatal, Dark, Burn, Redacted, Last",
        "Hour, Target, Agent, Conspiracy, Pursuit, Exposure, Trigger, Deception, Hostage, Escape, Cover, Switch",
    ),
    "Adventure": (
        "Jungle, Treasure, Island, Hidden, Sunken, Lost, Mountain, Golden, Emerald, Wild, Pirate, Sky",
        "Expedition, Temple, Map, Voyage, Compass, Journey, Caverns, Idol, Raiders, Trek, Quest, Isle",
    ),
    "Drama": (
        "Quiet, Broken, Distant, Ordinary, Fading, Open, Empty, Paper, Long, Little, Still, Borrowed",
        "Lives, Hearts, Rooms, Seasons, Years, Promises, Shores, Windows, Roads, Letters, Waters, Days",
    ),
    "Crime": (
        "Dirty, Gangland, Bullet, Concrete, Mob, Heist, Street, Vice, Snake Eyes, Gold Tooth, Undercover, Backroom",
        "Money, Syndicate, Racket, Job, Boulevard, Underworld, Score, Family, Informant, Confession, Precinct, Cartel",
    ),
    "History": (
        "Roman, Medieval, Imperial, Viking, Victorian, Dynasty, Byzantine, Pharaoh's, Tudor, Samurai, "
        "Colonial, Bronze Age",
        "Empire, Chronicle, Conquest, Dynasty, Legacy, Rebellion, Court, Crusade, Age, Kings, Republic, Treaty",
    ),
    "Nature": (
        "Wild, Ocean, Arctic, Savanna, Rainforest, Mountain, Coral, River, Desert, Meadow, Glacier, Prairie",
        "Planet, Kingdom, Seasons, Migration, Predators, Wonders, Giants, Life, Blue, Untamed, Wilderness, Survival",
    ),
    "Travel": (
        "Backpack, Passport, Island, Slow Train, Silk Road, Coastal, Nomad, Postcard, Alpine, Canal, Tropical, Highway",
        "Diaries, Journeys, Escapes, Guide, Wanderings, Routes, Getaway, Odyssey, Notebook, Crossings, "
        "Detours, Horizons",
    ),
    "Strategy": (
        "Grand, Total, Iron, Empire, Crown, Sovereign, Supreme, Tactical, Imperial, Shadow, Civic, Frontier",
        "Command, Dominion, Conquest, Generals, Tactics, Diplomacy, Gambit, Campaign, Warlords, Realms, "
        "Colonies, Stratagem",
    ),
    "Superhero": (
        "Captain, Mighty, Ultra, Night, Thunder, Atomic, Crimson, Silver, Shadow, Titan, Quantum, Solar",
        "Guardian, Avenger, Knight, Sentinel, Force, Legion, Vanguard, Justice, Defender, Crusader, Squad, Origins",
    ),
}
_THEMES: dict[str, tuple[list[str], list[str]]] = {
    name: (first.split(", "), second.split(", ")) for name, (first, second) in _THEME_WORDS.items()
}
_CATEGORY_NAMES: tuple[str, ...] = tuple(_THEMES)


def synthetic_category_names(n: int) -> list[str]:
    """The names of the first `n` synthetic categories, in category-index order."""
    if n < 1 or n > len(_CATEGORY_NAMES):
        raise ValueError(
            f"synthetic.n_categories must be between 1 and {len(_CATEGORY_NAMES)} (the named categories "
            f"available), got {n}"
        )
    return list(_CATEGORY_NAMES[:n])


def _roman(n: int) -> str:
    values = (1000, 900, 500, 400, 100, 90, 50, 40, 10, 9, 5, 4, 1)
    symbols = "M CM D CD C XC L XL X IX V IV I".split()
    out = []
    for value, symbol in zip(values, symbols, strict=True):
        count, n = divmod(n, value)
        out.append(symbol * count)
    return "".join(out)


def _validate(cfg: SyntheticConfig) -> None:
    synthetic_category_names(cfg.n_categories)  # raises for an unsupported count
    if cfg.n_users < 1 or cfg.n_items < 1:
        raise ValueError(f"synthetic.n_users and n_items must be >= 1, got {cfg.n_users} and {cfg.n_items}")
    if not 1 <= cfg.categories_per_user <= cfg.n_categories:
        raise ValueError(
            f"synthetic.categories_per_user must be in 1..n_categories={cfg.n_categories}, "
            f"got {cfg.categories_per_user}"
        )
    if not 1 <= cfg.min_len <= cfg.max_len <= cfg.n_items:
        raise ValueError(
            f"synthetic lengths need 1 <= min_len <= max_len <= n_items, got min_len={cfg.min_len}, "
            f"max_len={cfg.max_len}, n_items={cfg.n_items}"
        )
    if not 0.0 <= cfg.stickiness <= 1.0:
        raise ValueError(f"synthetic.stickiness must be in [0, 1], got {cfg.stickiness}")
    if not cfg.concentration > 0:
        raise ValueError(f"synthetic.concentration must be > 0, got {cfg.concentration}")


class _Uniforms:
    """Buffered U[0, 1) draws from one Generator: fast scalar draws, deterministic for the seed."""

    def __init__(self, rng: np.random.Generator, chunk: int = 1 << 16) -> None:
        self._rng, self._chunk = rng, chunk
        self._buf: list[float] = []
        self._pos = 0

    def __call__(self) -> float:
        if self._pos >= len(self._buf):
            self._buf, self._pos = self._rng.random(self._chunk).tolist(), 0
        value = self._buf[self._pos]
        self._pos += 1
        return value


def _make_titles(rng: np.random.Generator, primary: np.ndarray, names: list[str]) -> list[str]:
    """One unique title per item, themed by its primary category; repeats get a sequel numeral (II, III)."""
    titles: list[str] = []
    used: set[str] = set()
    for cat in primary.tolist():
        firsts, seconds = _THEMES[names[cat]]
        base = f"{firsts[rng.integers(len(firsts))]} {seconds[rng.integers(len(seconds))]}"
        title, sequel = base, 1
        while title in used:
            sequel += 1
            title = f"{base} {_roman(sequel)}"
        used.add(title)
        titles.append(title)
    return titles


def generate_synthetic(cfg: SyntheticConfig, name: str = "synthetic") -> RecDataset:
    """Generate the synthetic catalogue and users (deterministic for `cfg.seed`); see the module docstring."""
    _validate(cfg)
    rng = np.random.default_rng(cfg.seed)
    n_items, n_cat = cfg.n_items, cfg.n_categories
    names = synthetic_category_names(n_cat)

    # -- catalogue (index = item id - 1) ---------------------------------------------------------------------
    primary = rng.permutation(np.arange(n_items) % n_cat)  # balanced round-robin, shuffled over ids
    secondary = np.full(n_items, -1, dtype=np.int64)
    if n_cat > 1:
        has_second = rng.random(n_items) < SECONDARY_PROB
        offsets = rng.integers(1, n_cat, size=n_items)  # a different category: primary + offset (mod n_cat)
        secondary[has_second] = (primary[has_second] + offsets[has_second]) % n_cat
    years = rng.integers(YEAR_RANGE[0], YEAR_RANGE[1] + 1, size=n_items)
    titles = _make_titles(rng, primary, names)

    weights = np.zeros(n_items, dtype=np.float64)
    members: list[list[int]] = []  # per category: item ids, most popular first
    cumulative: list[list[float]] = []  # per category: cumulative popularity weights in that order
    for cat in range(n_cat):
        idx = np.flatnonzero(primary == cat)
        idx = idx[rng.permutation(len(idx))]  # random popularity ranks
        w = np.arange(1, len(idx) + 1, dtype=np.float64) ** -ZIPF_EXPONENT
        weights[idx] = w
        members.append((idx + 1).tolist())
        cumulative.append(list(accumulate(w.tolist())))
    weight_of = [0.0] + weights.tolist()

    # -- users -------------------------------------------------------------------------------------------
    n_users, k = cfg.n_users, cfg.categories_per_user
    liked = np.argsort(rng.random((n_users, n_cat)), axis=1)[:, :k]  # k distinct random categories per user
    mix = rng.dirichlet(np.full(k, cfg.concentration), size=n_users)
    bad = ~np.isfinite(mix).all(axis=1) | (mix.sum(axis=1) <= 0)
    mix[bad] = 1.0 / k  # guard against degenerate draws for tiny concentrations
    mix /= mix.sum(axis=1, keepdims=True)
    preferences = np.zeros((n_users, n_cat), dtype=np.float64)
    np.put_along_axis(preferences, liked, mix, axis=1)
    lengths = rng.integers(cfg.min_len, cfg.max_len + 1, size=n_users)

    uniform = _Uniforms(rng)
    category_sizes = [len(m) for m in members]
    sticky = cfg.stickiness
    sequences: list[np.ndarray] = []
    for user in range(n_users):
        cats = liked[user].tolist()
        cat_weights = mix[user].tolist()
        seen: set[int] = set()
        left = {c: category_sizes[c] for c in cats}  # unseen items left per liked category
        extra_left = None  # unseen items per category, built only if the user's liked categories run out
        seq: list[int] = []
        current = -1
        for _ in range(int(lengths[user])):
            if current < 0 or uniform() >= sticky or left.get(current, 0) == 0:
                current = _draw_category(cats, cat_weights, left, uniform)
                if current < 0:  # all liked categories are exhausted: fall back to any with items left
                    if extra_left is None:
                        extra_left = [category_sizes[c] - sum(primary[i - 1] == c for i in seen) for c in range(n_cat)]
                    current = _draw_category(list(range(n_cat)), [1.0] * n_cat, dict(enumerate(extra_left)), uniform)
                    extra_left[current] -= 1
                else:
                    left[current] -= 1
            else:
                left[current] -= 1
                if extra_left is not None:
                    extra_left[current] -= 1
            item = _draw_item(members[current], cumulative[current], seen, weight_of, uniform)
            seen.add(item)
            seq.append(item)
        sequences.append(np.asarray(seq, dtype=np.int64))

    item_category = np.concatenate([[-1], primary]).astype(np.int64)
    items = [ItemMeta("<pad>")] + [
        ItemMeta(
            titles[i],
            int(years[i]),
            (names[primary[i]],) if secondary[i] < 0 else (names[primary[i]], names[secondary[i]]),
        )
        for i in range(n_items)
    ]
    extras = {
        "user_preferences": preferences.astype(np.float32),
        "item_category": item_category,
        "item_secondary_category": np.concatenate([[-1], secondary]).astype(np.int64),
        "item_weight": np.concatenate([[0.0], weights]).astype(np.float32),
    }
    return RecDataset(
        name=name,
        items=items,
        sequences=sequences,
        raw_user_ids=[f"u{u}" for u in range(n_users)],
        raw_item_ids=[""] + [f"i{i}" for i in range(1, n_items + 1)],
        extras=extras,
    )


def _draw_category(cats: list[int], weights: list[float], left: dict[int, int], uniform: _Uniforms) -> int:
    """A category from `cats` by weight, among those with unseen items left; -1 if none has any."""
    total = sum(w for c, w in zip(cats, weights, strict=True) if left.get(c, 0) > 0 and w > 0)
    if total <= 0:
        available = [c for c in cats if left.get(c, 0) > 0]
        if not available:
            return -1
        return available[min(int(uniform() * len(available)), len(available) - 1)]
    target = uniform() * total
    chosen = -1
    for c, w in zip(cats, weights, strict=True):
        if left.get(c, 0) > 0 and w > 0:
            chosen = c
            target -= w
            if target < 0:
                break
    return chosen


def _draw_item(
    members: list[int], cumulative: list[float], seen: set[int], weight_of: list[float], uniform: _Uniforms
) -> int:
    """An unseen item of a category by popularity weight: rejection sampling, exact fallback when crowded."""
    total = cumulative[-1]
    last = len(members) - 1
    for _ in range(16):
        item = members[min(bisect_right(cumulative, uniform() * total), last)]
        if item not in seen:
            return item
    unseen = [i for i in members if i not in seen]  # the caller guarantees at least one
    target = uniform() * sum(weight_of[i] for i in unseen)
    for item in unseen:
        target -= weight_of[item]
        if target < 0:
            return item
    return unseen[-1]
