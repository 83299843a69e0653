"""Preference queries built from item metadata: aspects, phrasings, determinism, the title-leak rule and the
catalogue lexicon that `dataset.catalogue` selects."""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fakes import HashEncoder, real_data_root, synthetic_config
from hypothesis import given, settings
from hypothesis import strategies as st

from deeprec_env.data.dataset import ItemMeta, RecDataset
from deeprec_env.data.source import DatasetConfig, DatasetError, SyntheticConfig, artifact_root, load_dataset
from deeprec_env.data.synthetic import generate_synthetic
from deeprec_env.trm.queries import (
    TEMPLATE_WORDS,
    Lexicon,
    catalogue_lexicon,
    catalogues,
    category_query,
    item_aspects,
    main_title,
    phrase_query,
    query_bank_texts,
    query_phrasings,
    title_keywords,
    title_leaks,
    title_words,
)

SHARED_DATA = real_data_root()
GAMES = catalogue_lexicon("games")
GAMES_TITLES = [
    "Call of Duty: Black Ops II - PlayStation 3",
    "Nintendo 3DS XL Charger",
    "Tetris",
    "Nintendo 3DS XL - Black [Old Model]",
    "Mario Kart 8 - Nintendo Switch",
    "Super Smash Bros. - Nintendo 64",
    "PDP PS3 Afterglow Wireless Controller - Blue",
    "Dark Souls III Deluxe Edition [Online Game Code]",
    "Mayflash GameCube Controller Adapter for Wii U, PC USB and Switch, 4 Port",
    "Final Fantasy XII",
    "Far Cry 3",
    "Venetica - PC",
    "Grand Theft Auto Trilogy - Xbox",
    "Turtle Beach Ear Force X12 Gaming Headset - Xbox 360",
    "Pokemon Emerald - Game Boy Advance",
    "1942",
    "Xbox 360",
    "Madden NFL 15 (Ultimate Edition) - PlayStation 4",
    "Insten Battery Charging Dock for Remote Control + 4 Rechargeable Battery Compatible with Nintendo Wii / Wii U",
    "Racing Racing Racing Racing",
    "The Sims 3: University Life [Online Game Code]",
]


def make_dataset(name: str, metas: list[ItemMeta], catalogue: str) -> RecDataset:
    n = len(metas)
    items = [ItemMeta("<pad>"), *metas]
    sequences = [np.arange(1, n + 1, dtype=np.int64)]
    ids = ["", *[f"i{i}" for i in range(1, n + 1)]]
    return RecDataset(name, items, sequences, ["u0"], ids, catalogue=catalogue)


@pytest.fixture(scope="module")
def games() -> RecDataset:
    return make_dataset("games-mini", [ItemMeta(t) for t in GAMES_TITLES], "games")


@pytest.fixture(scope="module")
def synthetic() -> RecDataset:
    return generate_synthetic(SyntheticConfig(n_users=60, n_items=150, max_len=20, seed=4))


@pytest.fixture(scope="module")
def movies() -> RecDataset:
    return make_dataset(
        "ml-mini",
        [
            ItemMeta("Toy Story", 1995, ("Animation", "Children's", "Comedy")),
            ItemMeta("Casablanca", 1942, ("Drama", "Romance", "War")),
            ItemMeta("Titanic", 1998, ("Drama", "Romance")),
            ItemMeta("Some Documentary", 2010, ("(no genres listed)",)),
            ItemMeta("unknown", None, ("unknown",)),
            ItemMeta("Blade Runner", 1982, ("Film-Noir", "Sci-Fi", "IMAX")),
        ],
        "movies",
    )


def non_title_words(dataset: RecDataset, item: int) -> set[str]:
    """Words of the aspects that do not come from the title as keywords (era, categories, platforms, ...)."""
    keywords = {w.lower() for w in title_keywords(dataset.items[item].title, catalogue_lexicon(dataset.catalogue))}
    return {w for a in item_aspects(dataset, item) if a.lower() not in keywords for w in title_words(a)}


def added_words(dataset: RecDataset) -> set[str]:
    """The words a query of this dataset may add besides its aspects: templates, nouns, the default type's plural."""
    lexicon = catalogue_lexicon(dataset.catalogue)
    default = [lexicon.kinds[lexicon.default_kind]] if lexicon.default_kind else []
    return set(TEMPLATE_WORDS) | {w for noun in [*lexicon.nouns, *default] for w in title_words(noun)}


def check_no_title_leak(dataset: RecDataset, item: int, queries: list[str]) -> None:
    title = dataset.items[item].title
    words = title_words(title)
    for query in queries:
        assert isinstance(query, str) and query.strip(), (title, query)
        if len(words) > 3:
            assert title.casefold() not in query.casefold(), (title, query)
            assert not title_leaks(query, title), (title, query)
        else:  # only aspects plus at most one title word
            extra = set(title_words(query)) & set(words)
            extra -= non_title_words(dataset, item) | added_words(dataset)
            assert len(extra) <= 1, (title, query, extra)
        main = title_words(main_title(title))
        if len(main) > 3:
            joined = " ".join(title_words(query))
            assert " ".join(main) not in joined, (title, query)


# -- platforms, types, aspects -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("title", "platforms", "kind"),
    [
        ("Call of Duty: Black Ops II - PlayStation 3", ["PlayStation 3"], None),
        ("Nintendo 3DS XL Charger", ["Nintendo 3DS"], "charger"),
        ("PDP PS3 Afterglow Wireless Controller - Blue", ["PlayStation 3"], "controller"),
        ("Mx Vs ATV Untamed - Xbox 360", ["Xbox 360"], None),
        ("Xbox One Stereo Headset", ["Xbox One"], "headset"),
        ("Halo: Combat Evolved - Xbox", ["Xbox"], None),
        ("Wii U Pro Controller", ["Wii U"], "controller"),
        ("Nintendo Wii Remote Plus", ["Wii"], "controller"),
        ("Mario Kart 8 Deluxe - Nintendo Switch", ["Nintendo Switch"], None),
        ("New Super Mario Bros. - Nintendo DS", ["Nintendo DS"], None),
        ("PS Vita Memory Card 16GB", ["PlayStation Vita"], "memory card"),
        ("Jumping Flash 2 - PlayStation", ["PlayStation"], None),
        ("God of War - PS4", ["PlayStation 4"], None),
        ("Kingdom Hearts - Sony PSP", ["PSP"], None),
        ("Odama (with Microphone) - Gamecube", ["GameCube"], None),
        ("Super Smash Bros. - Nintendo 64", ["Nintendo 64"], None),
        ("Pokemon Emerald - Game Boy Advance", ["Game Boy Advance"], None),
        ("Venetica - PC", ["PC"], None),
        ("Shadowbane - PC/Mac", ["PC", "Mac"], None),
        ("Tomee AV Cable for GameCube/ N64/ SNES", ["GameCube", "Nintendo 64"], "cable"),
        ("Mayflash GameCube Controller Adapter for Wii U, PC USB and Switch", ["GameCube", "Wii U"], "adapter"),
        ("Insten Battery Charging Dock for Remote Control", [], "charger"),
        ("Tetris", [], None),
        ("Ben 10 Alien Force - Nintendo Wii (Jewel case)", ["Wii"], None),
        ("Mystery Case Files: Huntsville", [], None),
    ],
)
def test_platform_and_type_detection(title: str, platforms: list[str], kind: str | None) -> None:
    assert GAMES.detect_platforms(title) == platforms
    assert GAMES.detect_kind(title) == kind
    assert set(GAMES.detect_platforms(title)) <= set(GAMES.platforms)


def test_game_aspects(games: RecDataset) -> None:
    aspects = {meta.title: item_aspects(games, i) for i, meta in enumerate(games.items) if i}
    cod = aspects["Call of Duty: Black Ops II - PlayStation 3"]
    assert "PlayStation 3" in cod and "video game" in cod and "shooter" in cod
    assert {"Call", "Duty"} <= set(cod) and "II" not in cod
    charger = aspects["Nintendo 3DS XL Charger"]
    assert charger == ["charger", "Nintendo 3DS"]  # "XL" is model boilerplate, the title has no other content
    assert aspects["Tetris"] == ["puzzle", "Tetris", "video game"]
    old_model = aspects["Nintendo 3DS XL - Black [Old Model]"]
    assert not {"Old", "Model", "Black"} & set(old_model)
    dark = aspects["Dark Souls III Deluxe Edition [Online Game Code]"]
    assert "digital download" in dark and "role-playing" in dark and not {"Deluxe", "Edition", "III"} & set(dark)
    assert aspects["1942"] == ["video game"]
    assert aspects["Xbox 360"] == ["video game", "Xbox 360"]
    assert aspects["Madden NFL 15 (Ultimate Edition) - PlayStation 4"][0] == "football"
    assert "Blue" not in aspects["PDP PS3 Afterglow Wireless Controller - Blue"]
    # titles whose main part has <= 3 words give at most one keyword
    for title in ("Far Cry 3", "Final Fantasy XII", "Super Smash Bros. - Nintendo 64", "Venetica - PC"):
        assert len(title_keywords(title, GAMES)) == 1, title


def test_movie_aspects_carry_genres_and_era(movies: RecDataset) -> None:
    toy, casablanca, titanic, no_genre, unknown, blade = (item_aspects(movies, i) for i in range(1, 7))
    assert toy == ["1990s", "animation", "children's", "comedy"]
    assert casablanca == ["classic", "1940s", "drama", "romance", "war"]
    assert titanic == ["1990s", "drama", "romance"]
    assert no_genre == ["recent", "2010s", "Documentary"]  # 2010 is the newest year; no genre: a title keyword
    assert unknown == ["unknown"]  # placeholder genre dropped, no year: the one title word is all there is
    assert "IMAX" in blade and "sci-fi" in blade and "film-noir" in blade
    assert all(a for a in toy + casablanca + titanic + no_genre + unknown + blade)


def test_synthetic_aspects_contain_the_categories(synthetic: RecDataset) -> None:
    for item in range(1, synthetic.n_items + 1):
        meta = synthetic.items[item]
        aspects = item_aspects(synthetic, item)
        assert {c.lower() for c in meta.categories} <= set(aspects)
        assert f"{meta.year // 10 * 10}s" in aspects
        assert not set(title_words(meta.title)) & {w for a in aspects for w in title_words(a)} - {
            w for c in meta.categories for w in title_words(c)
        }


def test_item_aspects_rejects_padding(games: RecDataset) -> None:
    with pytest.raises(ValueError, match="item id"):
        item_aspects(games, 0)


# -- phrasing ----------------------------------------------------------------------------------------------------
aspect_text = st.from_regex(r"[a-z]{3,10}", fullmatch=True).map(lambda w: f"zq{w}")  # no template/type words


@given(
    aspects=st.lists(aspect_text, min_size=0, max_size=6, unique=True),
    seed=st.integers(0, 2**32),
    noun=st.sampled_from(["movies", "games", "titles"]),
)
@settings(max_examples=200, deadline=None)
def test_phrase_query_uses_one_to_three_aspects(aspects: list[str], seed: int, noun: str) -> None:
    query = phrase_query(aspects, np.random.default_rng(seed), noun)
    assert isinstance(query, str) and query.strip()
    again = phrase_query(aspects, np.random.default_rng(seed), noun)
    assert query == again
    if aspects:
        used = [a for a in aspects if re.search(rf"(?<![a-z]){re.escape(a)}(?![a-z])", query)]
        assert 1 <= len(used) <= 3
    else:
        assert noun in query


def test_phrase_query_platform_and_type_phrasing() -> None:
    rng = np.random.default_rng(0)
    queries = {phrase_query(["charger", "Nintendo 3DS"], rng, "games", GAMES) for _ in range(200)}
    assert any("chargers for Nintendo 3DS" in q for q in queries)
    assert all("games" not in q for q in queries if "charger" in q)  # the product type replaces the noun
    assert any(";" in q for q in queries)  # the tag style appears
    plain = {phrase_query(["charger", "Nintendo 3DS"], rng, "games") for _ in range(200)}
    assert not any("chargers" in q for q in plain)  # without the lexicon they are mere descriptors of the noun
    assert any("charger" in q and "games" in q for q in plain)
    queries = {phrase_query(["1990s", "comedy", "romance"], rng, ["movies", "films"]) for _ in range(300)}
    assert len(queries) > 25
    assert any("movies" in q for q in queries) and any("films" in q for q in queries)
    assert GAMES.kinds[str(GAMES.default_kind)] == "video games"


def test_category_query() -> None:
    assert category_query("Comedy", "movies") == "comedy movies"
    assert category_query("IMAX", "films") == "IMAX films"
    assert category_query("Sci-Fi", "movies") == "sci-fi movies"


@given(item=st.integers(1, len(GAMES_TITLES)), seed=st.integers(0, 2**40), n=st.integers(1, 6))
@settings(max_examples=150, deadline=None)
def test_query_phrasings_deterministic_and_non_empty(games: RecDataset, item: int, seed: int, n: int) -> None:
    queries = query_phrasings(games, item, n, seed)
    assert len(queries) == n and all(isinstance(q, str) and q.strip() for q in queries)
    assert queries == query_phrasings(games, item, n, seed)
    check_no_title_leak(games, item, queries)


def test_query_phrasings_vary_with_seed_and_are_distinct(synthetic: RecDataset) -> None:
    runs = [query_phrasings(synthetic, 7, 4, seed) for seed in range(5)]
    assert len({tuple(r) for r in runs}) > 1
    assert all(len(set(r)) == 4 for r in runs)  # enough aspects for four different phrasings
    assert query_phrasings(synthetic, 7, 0, 1) == []


@pytest.mark.parametrize("which", ["synthetic", "games", "movies"])
def test_no_title_leak_for_any_item(which: str, request: pytest.FixtureRequest) -> None:
    dataset: RecDataset = request.getfixturevalue(which)
    for seed in (0, 1, 2):
        for item in range(1, dataset.n_items + 1):
            check_no_title_leak(dataset, item, query_phrasings(dataset, item, 6, seed))


def test_title_leaks() -> None:
    title = "Call of Duty: Black Ops II - PlayStation 3"
    assert title_leaks(f"more {title} please", title)
    assert title_leaks("call of duty black ops ii games", title)  # the main title, 6 words
    assert not title_leaks("Call Duty shooter games on PlayStation 3", title)
    assert not title_leaks("tetris", "Tetris")  # short titles: guarded by construction instead


def test_query_bank_texts(synthetic: RecDataset) -> None:
    started = time.perf_counter()
    bank = query_bank_texts(synthetic, 4, seed=3)
    assert time.perf_counter() - started < 5
    assert len(bank) == synthetic.n_items + 1 and bank[0] == [""] * 4
    assert all(len(row) == 4 and all(q.strip() for q in row) for row in bank[1:])
    assert bank == query_bank_texts(synthetic, 4, seed=3)
    assert bank != query_bank_texts(synthetic, 4, seed=4)
    assert bank[5] == query_phrasings(synthetic, 5, 4, 3)
    nouns = {w for row in bank[1:] for q in row for w in ("titles", "items") if w in q}
    assert nouns == {"titles", "items"}


# -- catalogue selection -----------------------------------------------------------------------------------------
def games_only_aspects(dataset: RecDataset) -> set[str]:
    """The item aspects that only the games lexicon produces (platforms, types, genres, digital), not counting
    title keywords ("Xbox" in "Xbox 360" is one under any catalogue)."""
    only_games = {*GAMES.platforms, *GAMES.kinds, *GAMES.genres, GAMES.digital}
    return {
        aspect
        for item in range(1, dataset.n_items + 1)
        for aspect in item_aspects(dataset, item)
        if aspect in only_games and aspect.lower() not in title_words(dataset.items[item].title)
    }


def bank_words(dataset: RecDataset) -> set[str]:
    return {w for row in query_bank_texts(dataset, 4)[1:] for q in row for w in title_words(q)}


def test_the_catalogue_not_the_name_selects_the_lexicon() -> None:
    dataset = make_dataset("ml-games", [ItemMeta(t) for t in GAMES_TITLES], "games")  # the name says nothing
    assert {"PlayStation 3", "charger", "shooter", "digital download", "video game"} <= games_only_aspects(dataset)
    assert "games" in bank_words(dataset)
    dataset.catalogue = "generic"  # the same dataset object: its cached lexicon follows the catalogue
    assert games_only_aspects(dataset) == set()
    assert item_aspects(dataset, GAMES_TITLES.index("Tetris") + 1) == ["Tetris"]
    words = bank_words(dataset)
    assert {"titles", "items"} <= words and not {"games", "video"} & words
    dataset.catalogue = "movies"
    assert games_only_aspects(dataset) == set() and {"movies", "films"} <= bank_words(dataset)


def test_an_unknown_catalogue_is_one_clear_error() -> None:
    lexicon_files = Path(__file__).resolve().parents[1] / "deeprec_env" / "trm" / "lexicons"
    assert catalogues() == tuple(sorted(f.stem for f in lexicon_files.glob("*.yaml"))) == ("games", "generic", "movies")
    known = re.escape("use one of ['games', 'generic', 'movies']")
    with pytest.raises(DatasetError, match=rf"^dataset 'books': unknown dataset.catalogue 'books'; {known}$"):
        DatasetConfig(name="books", catalogue="books")
    with pytest.raises(ValueError, match=rf"^unknown catalogue 'books'; {known} \(or add lexicons/books.yaml\)$"):
        item_aspects(make_dataset("books", [ItemMeta("Dune")], "books"), 1)
    with pytest.raises(ValueError, match="it needs 'nouns' and may only have"):
        Lexicon("books", {"nouns": ["books"], "authors": {"Herbert": ["herbert"]}})


def test_the_catalogue_comes_from_the_config_not_the_cache(tmp_path: Path) -> None:
    generic = synthetic_config(n_users=30, n_items=60, max_len=12)
    movies = replace(generic, catalogue="movies")
    assert generic.catalogue == "generic" and generic.cache_key() == movies.cache_key()
    assert load_dataset(generic, tmp_path).catalogue == "generic"
    assert load_dataset(movies, tmp_path).catalogue == "movies"  # the same cached files, another lexicon
    saved = json.loads((artifact_root(tmp_path, movies) / "dataset" / "items.json").read_text(encoding="utf-8"))
    assert "catalogue" not in saved


def test_query_bank_and_preference_models_are_cached_per_catalogue(tmp_path: Path) -> None:
    from deeprec_env.trm.model import ModelConfig
    from deeprec_env.trm.train import TRMConfig, checkpoint_dir, query_bank_embeddings

    class NamedEncoder(HashEncoder):
        name = "hash"

    encoder = NamedEncoder()
    dataset = make_dataset("mini", [ItemMeta(t) for t in GAMES_TITLES[:4]], "games")
    games_bank = query_bank_embeddings(dataset, encoder, 2, 0, tmp_path)
    dataset.catalogue = "generic"
    generic_bank = query_bank_embeddings(dataset, encoder, 2, 0, tmp_path)
    assert games_bank.shape == generic_bank.shape == (5, 2, encoder.dim)
    assert not np.array_equal(games_bank, generic_bank)
    assert {d.name for d in tmp_path.glob("query-bank-*")} == {
        "query-bank-hash-games-2v-seed0",
        "query-bank-hash-generic-2v-seed0",
    }

    trm = TRMConfig(name="trm", model=ModelConfig(fuse_item_text=True, fuse_query=True))
    assert checkpoint_dir(trm, tmp_path, encoder, "games") != checkpoint_dir(trm, tmp_path, encoder, "movies")
    with pytest.raises(ValueError, match="^trm 'trm' fuses queries: pass catalogue=dataset.catalogue$"):
        checkpoint_dir(trm, tmp_path, encoder)
    sasrec = TRMConfig(name="sasrec")  # no query fusion: the catalogue does not matter
    assert checkpoint_dir(sasrec, tmp_path) == checkpoint_dir(sasrec, tmp_path, catalogue="games")


# -- the real Games catalogue -------------------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared data folder {SHARED_DATA} is absent")
def test_real_games_queries(tmp_path_factory: pytest.TempPathFactory) -> None:
    from omegaconf import OmegaConf

    config_file = Path(__file__).resolve().parents[1] / "configs" / "dataset" / "games.yaml"
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DatasetConfig), OmegaConf.load(config_file)))
    dataset = load_dataset(cfg, tmp_path_factory.mktemp("artifacts"))
    assert dataset.catalogue == "games"
    started = time.perf_counter()
    bank = query_bank_texts(dataset, 4, seed=0)
    elapsed = time.perf_counter() - started
    assert len(bank) == dataset.n_items + 1 == 16_860
    for item in range(1, dataset.n_items + 1):
        check_no_title_leak(dataset, item, bank[item])

    platform = detected_type = typed = genre = 0
    for item in range(1, dataset.n_items + 1):
        aspects = set(item_aspects(dataset, item))
        has_platform = bool(aspects & set(GAMES.platforms))
        has_type = bool(aspects & (set(GAMES.kinds) - {GAMES.default_kind} | {GAMES.digital}))
        platform += has_platform
        detected_type += has_platform or has_type
        typed += has_platform or bool(aspects & set(GAMES.kinds))
        genre += has_platform or has_type or bool(aspects & set(GAMES.genres))
    n = dataset.n_items
    shares = (platform / n, detected_type / n, genre / n, typed / n)
    print(
        f"games: {elapsed:.1f} s for 4 phrasings x {n} items; platform {shares[0]:.1%}, platform or detected "
        f"product type {shares[1]:.1%}, or game genre {shares[2]:.1%}, with the default '{GAMES.default_kind}' type "
        f"{shares[3]:.1%}"
    )
    assert shares[0] > 0.6
    assert shares[1] > 0.75  # titles like "Far Cry 3" name neither a platform nor a product type
    assert shares[2] > 0.85
    assert shares[3] == 1.0  # every item gets a type aspect (the default kind when the title names none)


@pytest.mark.parametrize("which", ["movies", "games", "synthetic"])
def test_user_requests_state_aspects_of_the_target_or_of_an_unrelated_item(which, request):
    dataset: RecDataset = request.getfixturevalue(which)
    for user in range(120):
        check_request(dataset, user, user % 5)


def check_request(dataset: RecDataset, user: int, cut: int) -> None:
    from deeprec_env.requests import UNINFORMATIVE_REQUESTS, user_request

    target = 1 + user % dataset.n_items
    made = user_request(dataset, "train", user, cut, target, 0.25, 0.25)
    assert made == user_request(dataset, "train", user, cut, target, 0.25, 0.25)  # a function of the episode
    if made.kind == "uninformative":
        assert made.text in UNINFORMATIVE_REQUESTS and made.about == 0
        return
    assert (made.about == target) == (made.kind == "informative")
    about = dataset.items[made.about]
    assert not title_leaks(made.text, about.title)
    aspects = [a.casefold() for a in item_aspects(dataset, made.about)]
    assert any(a in made.text.casefold() for a in aspects) or made.text.startswith("recommend me some")
    if made.kind == "misleading":
        own = {a.casefold() for a in item_aspects(dataset, target)}
        shared = own & set(aspects)
        assert not shared or dataset.n_items < 50, shared


def test_request_kinds_follow_their_shares(synthetic: RecDataset) -> None:
    from deeprec_env.requests import user_request

    kinds = [user_request(synthetic, "valid", u, 0, 1 + u % synthetic.n_items, 0.3, 0.2).kind for u in range(2000)]
    shares = {k: kinds.count(k) / len(kinds) for k in ("uninformative", "misleading", "informative")}
    assert shares["uninformative"] == pytest.approx(0.3, abs=0.04) and shares["misleading"] == pytest.approx(
        0.2, abs=0.04
    )
    assert {user_request(synthetic, "valid", u, 0, 1, 0.0, 0.0).kind for u in range(50)} == {"informative"}
