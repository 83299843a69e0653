"""Dataset readers: every format parsed from small fixture files, the cached loader (ordering, k-core, ids,
cache reuse), malformed input, leave-one-out splits, and the exact statistics of the real datasets."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fakes import real_data_root
from omegaconf import OmegaConf

from deeprec_env.data.dataset import ItemMeta, RawInteractions, RecDataset, build_dataset
from deeprec_env.data.readers import READERS
from deeprec_env.data.source import DatasetConfig, DatasetError, load_dataset

SHARED_DATA = real_data_root()
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "dataset"

# u.genre order, written out independently of the reader's copy.
GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip


def flags(*names: str) -> str:
    return "|".join("1" if genre in names else "0" for genre in GENRES)


TOY_STORY_FLAGS = flags("Animation", "Children's", "Comedy")


# -- fixture files: format -> file -> (text, encoding) -------------------------------------------------------
# User 1 of the ml-100k fixture has a timestamp tie (items 2 and 4 at t=100) that must keep file order.
FIXTURES: dict[str, dict[str, tuple[str, str]]] = {
    "ml-100k": {
        "u.data": (
            "1\t1\t5\t300\n1\t2\t3\t100\n2\t1\t4\t50\n1\t3\t4\t200\n1\t4\t1\t100\n2\t3\t2\t60\n",
            "ascii",
        ),
        "u.item": (
            f"1|Toy Story (1995)|01-Jan-1995||http://x|{TOY_STORY_FLAGS}\n"
            f"2|Misérables, Les (1995)|01-Jan-1995||http://x|{flags('Drama', 'Musical')}\n"
            f"3| Rock &amp; Roll |05-Mar-1997||http://x|{flags('Action')}\n"
            f"4|unknown||||{flags('unknown')}\n",
            "latin-1",
        ),
    },
    "movielens-csv": {
        "ratings.csv": (
            "userId,movieId,rating,timestamp\n1,10,4.0,964982703\n1,30,3.5,964981247\n2,10,0.5,964982224\n"
            "2,20,5.0,964983815\n3,40,4.0,964982931\n",
            "utf-8",
        ),
        "movies.csv": (
            "movieId,title,genres\n"
            '10,"American President, The (1995)",Comedy|Drama|Romance\n'
            "20,Babylon 5,Sci-Fi\n"
            '30,"Tom &amp; Jerry: ""Quoted"" (2001)",(no genres listed)\n'
            "40,Amélie (Fabuleux destin d'Amélie Poulain) (2001),Comedy|Romance\n",
            "utf-8",
        ),
    },
    "ml-1m": {
        "ratings.dat": (
            "1::1193::5::978300760\n1::2::3::978302109\n2::1193::4::978298413\n2::3::5::978298413\n",
            "ascii",
        ),
        "movies.dat": (
            "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
            "2::Café au Lait (Métisse) (1993)::Comedy\n"
            "3::Toy Story (1995)::Animation|Children's|Comedy\n",
            "latin-1",
        ),
    },
    "amazon-lcrec": {
        "Games.inter.json": ('{"0": [0, 1, 2], "1": [2, 0], "2": [1]}', "utf-8"),
        "Games.titles.tsv": (
            "item_id\tasin\ttitle\tllmrank_item_id\ttitle_ambiguous\talt_title\n"
            "0\tB0001\tMario &amp; Sonic at the Olympic Games (2008)\t5\t0\t\n"
            "1\tB0002\t  Halo 3 &reg; Edition  \t6\t0\t\n"
            '2\tB0003\tIvan "Ironman" Stewart\'s Super Off Road\t7\t1\tOther title\n',
            "utf-8",
        ),
    },
}


def write_fixture(root: Path, fmt: str, changes: dict[str, tuple[str, str]] | None = None) -> Path:
    """Write one format's fixture files (with `changes` replacing some) into root/<fmt>/."""
    directory = root / fmt
    directory.mkdir(parents=True, exist_ok=True)
    for name, (text, encoding) in {**FIXTURES[fmt], **(changes or {})}.items():
        (directory / name).write_bytes(text.encode(encoding))
    return directory


def fixture_config(tmp_path: Path, fmt: str, min_core: int = 1, **changes: tuple[str, str]) -> DatasetConfig:
    """A config for the format's fixture under tmp_path (files written, checksums unchecked)."""
    write_fixture(tmp_path, fmt, changes)
    files: dict[str, str | None] = dict.fromkeys(FIXTURES[fmt], None)
    name = f"fixture-{fmt}"
    return DatasetConfig(name=name, format=fmt, dir=fmt, root=str(tmp_path), min_core=min_core, files=files)


def cache_files(artifacts: Path) -> list[Path]:
    return [p for p in artifacts.rglob("*") if p.is_file()] if artifacts.exists() else []


def raw_items(ds: RecDataset, user: int) -> list[str]:
    return [ds.raw_item_ids[i] for i in ds.sequences[user]]


# -- readers on fixture files --------------------------------------------------------------------------------
def test_readers_cover_exactly_the_documented_formats() -> None:
    assert set(READERS) == {"ml-100k", "movielens-csv", "ml-1m", "amazon-lcrec"}


def test_ml100k_reader(tmp_path: Path) -> None:
    raw = READERS["ml-100k"](write_fixture(tmp_path, "ml-100k"))
    assert raw.users.tolist() == ["1", "1", "2", "1", "1", "2"]
    assert raw.items.tolist() == ["1", "2", "1", "3", "4", "3"]
    assert raw.timestamps.tolist() == [300, 100, 50, 200, 100, 60]
    assert raw.item_meta == {
        "1": ItemMeta("Toy Story", 1995, ("Animation", "Children's", "Comedy")),
        "2": ItemMeta("Misérables, Les", 1995, ("Drama", "Musical")),  # latin-1 decoded
        "3": ItemMeta("Rock & Roll", 1997, ("Action",)),  # unescaped, stripped, year from the release date
        "4": ItemMeta("unknown", None, ()),  # the "unknown" flag is not a category
    }


def test_movielens_csv_reader(tmp_path: Path) -> None:
    raw = READERS["movielens-csv"](write_fixture(tmp_path, "movielens-csv"))
    assert raw.users.tolist() == ["1", "1", "2", "2", "3"]
    assert raw.items.tolist() == ["10", "30", "10", "20", "40"]
    assert raw.timestamps.tolist() == [964982703, 964981247, 964982224, 964983815, 964982931]
    assert raw.item_meta == {
        "10": ItemMeta("American President, The", 1995, ("Comedy", "Drama", "Romance")),  # quoted comma
        "20": ItemMeta("Babylon 5", None, ("Sci-Fi",)),
        "30": ItemMeta('Tom & Jerry: "Quoted"', 2001, ()),  # (no genres listed)
        "40": ItemMeta("Amélie (Fabuleux destin d'Amélie Poulain)", 2001, ("Comedy", "Romance")),
    }


def test_ml1m_reader(tmp_path: Path) -> None:
    raw = READERS["ml-1m"](write_fixture(tmp_path, "ml-1m"))
    assert raw.users.tolist() == ["1", "1", "2", "2"]
    assert raw.items.tolist() == ["1193", "2", "1193", "3"]
    assert raw.timestamps.tolist() == [978300760, 978302109, 978298413, 978298413]
    assert raw.item_meta == {
        "1193": ItemMeta("One Flew Over the Cuckoo's Nest", 1975, ("Drama",)),
        "2": ItemMeta("Café au Lait (Métisse)", 1993, ("Comedy",)),  # latin-1, inner parentheses kept
        "3": ItemMeta("Toy Story", 1995, ("Animation", "Children's", "Comedy")),
    }


def test_amazon_lcrec_reader(tmp_path: Path) -> None:
    raw = READERS["amazon-lcrec"](write_fixture(tmp_path, "amazon-lcrec"))
    assert raw.users.tolist() == ["0", "0", "0", "1", "1", "2"]
    assert raw.items.tolist() == ["0", "1", "2", "2", "0", "1"]
    assert raw.timestamps.tolist() == [0, 1, 2, 0, 1, 0]  # position within each user's list
    assert raw.item_meta == {
        "0": ItemMeta("Mario & Sonic at the Olympic Games (2008)"),  # no year parsed from product titles
        "1": ItemMeta("Halo 3 ® Edition"),
        "2": ItemMeta('Ivan "Ironman" Stewart\'s Super Off Road'),  # quotes are not CSV quoting
    }


@pytest.mark.parametrize("fmt", sorted(FIXTURES))
def test_reader_output_types(tmp_path: Path, fmt: str) -> None:
    raw = READERS[fmt](write_fixture(tmp_path, fmt))
    assert isinstance(raw, RawInteractions)
    assert len(raw.users) == len(raw.items) == len(raw.timestamps) > 0
    assert raw.users.dtype.kind == raw.items.dtype.kind == "U"
    assert np.issubdtype(raw.timestamps.dtype, np.integer)
    assert set(raw.items.tolist()) <= set(raw.item_meta)
    assert all(m.title == m.title.strip() and "&amp;" not in m.title for m in raw.item_meta.values())


# -- the cached loader ---------------------------------------------------------------------------------------
def test_load_orders_chronologically_with_stable_ties(tmp_path: Path) -> None:
    ds = load_dataset(fixture_config(tmp_path, "ml-100k"), artifacts=tmp_path / "artifacts")
    assert ds.raw_user_ids == ["1", "2"]
    # user 1: item 1 @300, item 2 @100, item 3 @200, item 4 @100 -> 2 and 4 tie and keep file order
    assert raw_items(ds, 0) == ["2", "4", "3", "1"]
    assert raw_items(ds, 1) == ["1", "3"]
    assert ds.items[ds.raw_item_ids.index("2")] == ItemMeta("Misérables, Les", 1995, ("Drama", "Musical"))


@pytest.mark.parametrize("fmt", sorted(FIXTURES))
def test_load_every_format_with_contiguous_ids(tmp_path: Path, fmt: str) -> None:
    raw = READERS[fmt](write_fixture(tmp_path / "plain", fmt))
    ds = load_dataset(fixture_config(tmp_path, fmt), artifacts=tmp_path / "artifacts")
    assert ds.n_interactions == len(raw.users)
    assert ds.raw_item_ids[0] == "" and sorted(ds.raw_item_ids[1:]) == sorted(set(raw.items.tolist()))
    assert sorted(ds.raw_user_ids) == sorted(set(raw.users.tolist()))
    used = np.unique(np.concatenate(ds.sequences))
    assert used.tolist() == list(range(1, ds.n_items + 1))  # contiguous from 1; 0 stays padding
    for item_id, raw_id in enumerate(ds.raw_item_ids[1:], start=1):
        assert ds.items[item_id] == raw.item_meta[raw_id]
    for user, raw_user in enumerate(ds.raw_user_ids):  # each sequence sorted by time
        rows = sorted(np.flatnonzero(raw.users == raw_user), key=lambda r: raw.timestamps[r])
        assert raw_items(ds, user) == [raw.items[r] for r in rows]


# 2-core cascade: item 30 has one user, so user 4 drops to one item and goes; user 5 has one item;
# user 7 has one item, so item 50 drops to one user and goes, taking user 6 and item 60 with it.
KCORE_PAIRS = "1:10 1:20 2:10 2:20 3:20 3:10 4:30 4:10 5:40 6:50 6:60 7:50"
KCORE_RATINGS = "userId,movieId,rating,timestamp\n" + "".join(
    f"{pair.replace(':', ',')},4.0,{t}\n" for t, pair in enumerate(KCORE_PAIRS.split())
)
KCORE_MOVIES = "movieId,title,genres\n" + "".join(f"{i},Movie {i} (2000),Drama\n" for i in range(10, 70, 10))


def test_load_applies_iterated_k_core(tmp_path: Path) -> None:
    changes = {"ratings.csv": (KCORE_RATINGS, "utf-8"), "movies.csv": (KCORE_MOVIES, "utf-8")}
    ds = load_dataset(fixture_config(tmp_path, "movielens-csv", 2, **changes), artifacts=tmp_path / "a2")
    assert ds.raw_user_ids == ["1", "2", "3"]
    assert ds.raw_item_ids == ["", "10", "20"]
    assert [s.tolist() for s in ds.sequences] == [[1, 2], [1, 2], [2, 1]]
    cfg = fixture_config(tmp_path, "movielens-csv", 1, **changes)
    everything = load_dataset(cfg, artifacts=tmp_path / "a1")
    assert (everything.n_users, everything.n_items, everything.n_interactions) == (7, 6, 12)


def test_second_load_reuses_the_cache(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = fixture_config(tmp_path, "amazon-lcrec")
    with caplog.at_level(logging.INFO):
        first = load_dataset(cfg, artifacts=tmp_path / "artifacts")
        assert "reusing cached" not in caplog.text
        caplog.clear()
        second = load_dataset(cfg, artifacts=tmp_path / "artifacts")
    assert "reusing cached" in caplog.text
    assert "reading" not in caplog.text  # the files were not parsed again
    assert first.raw_item_ids == second.raw_item_ids and first.items == second.items
    assert [s.tolist() for s in first.sequences] == [s.tolist() for s in second.sequences]


# -- malformed, missing and corrupt input --------------------------------------------------------------------
Garble = Callable[[tuple[str, str]], tuple[str, str]]  # (text, encoding) -> (text, encoding)


def sub(old: str, new: str) -> Garble:
    def garble(file: tuple[str, str]) -> tuple[str, str]:
        assert old in file[0]
        return file[0].replace(old, new, 1), file[1]

    return garble


def cut(length: int) -> Garble:
    return lambda file: (file[0][:length], file[1])


def append(text: str) -> Garble:
    return lambda file: (file[0] + text, file[1])


# (file, how it is garbled, what the error must say); the format follows from the file name
MALFORMED: list[tuple[str, Garble, str]] = [
    ("u.data", append("7\t8\n"), "u.data line 7: expected 4 tab-separated fields, got 2"),
    ("u.data", sub("\t200", "\tnoon"), "u.data line 4: timestamp 'noon' is not an integer"),
    ("u.item", cut(150), "u.item line 2: expected 24 pipe-separated fields"),
    ("u.item", sub("4|unknown", "1|unknown"), "u.item line 4: duplicate item id 1"),
    ("u.item", sub("|0|0|0|1|", "|0|0|0|x|"), "u.item line 1: genre flags must be 0 or 1"),
    ("ratings.csv", sub("\n2,10", "\nabc,10"), "ratings.csv line 4: user id 'abc' is not an integer"),
    ("ratings.csv", sub(",4.0,964982931", ""), "ratings.csv line 6: expected 4 comma-separated fields"),
    ("movies.csv", sub(",genres", ""), "movies.csv line 1: header lacks column(s) genres"),
    ("movies.csv", lambda file: (file[0], "latin-1"), "movies.csv line 5: not valid utf-8 text"),
    ("ratings.dat", sub("::5::978298413", ""), "ratings.dat line 4: expected 4 '::'-separated fields, got 2"),
    ("movies.dat", sub("2::Café", "two::Café"), "movies.dat line 2: movie id 'two' is not an integer"),
    ("Games.inter.json", cut(25), "Games.inter.json line 1: invalid JSON"),
    ("Games.inter.json", sub("[1]", '["1"]'), "Games.inter.json: user '2' must be an integer id"),
    ("Games.titles.tsv", sub("\ttitle", ""), "Games.titles.tsv line 1: header lacks column(s) title"),
    ("Games.titles.tsv", sub("\t7\t1", ""), "Games.titles.tsv line 4: expected 6 tab-separated fields"),
]
FORMAT_OF = {file: fmt for fmt, files in FIXTURES.items() for file in files}


@pytest.mark.parametrize(("file", "garble", "message"), MALFORMED, ids=[m[2] for m in MALFORMED])
def test_malformed_input_raises_and_leaves_no_cache(tmp_path: Path, file: str, garble: Garble, message: str) -> None:
    fmt = FORMAT_OF[file]
    cfg = fixture_config(tmp_path, fmt, **{file: garble(FIXTURES[fmt][file])})
    artifacts = tmp_path / "artifacts"
    with pytest.raises(DatasetError, match="malformed") as err:
        load_dataset(cfg, artifacts=artifacts)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert cache_files(artifacts) == []
    assert not [p for p in artifacts.rglob("*") if p.name == "dataset" or ".tmp" in p.name]


def test_reader_errors_are_value_errors(tmp_path: Path) -> None:
    directory = write_fixture(tmp_path, "ml-100k", {"u.data": ("1\t2\n", "ascii")})
    with pytest.raises(ValueError, match=r"^u\.data line 1: expected 4 tab-separated fields, got 2$"):
        READERS["ml-100k"](directory)


def test_missing_file_names_the_expected_files(tmp_path: Path) -> None:
    cfg = fixture_config(tmp_path, "ml-100k")
    (tmp_path / "ml-100k" / "u.item").unlink()
    with pytest.raises(DatasetError, match="missing .*u.item; expected files u.data, u.item"):
        load_dataset(cfg, artifacts=tmp_path / "artifacts")
    assert cache_files(tmp_path / "artifacts") == []


def test_missing_directory_names_the_expected_files(tmp_path: Path) -> None:
    cfg = fixture_config(tmp_path, "ml-1m")
    cfg.dir = "no-such-folder"
    with pytest.raises(DatasetError, match="not found .*put ratings.dat, movies.dat in one of them"):
        load_dataset(cfg, artifacts=tmp_path / "artifacts")
    assert cache_files(tmp_path / "artifacts") == []


def test_checksums_are_verified(tmp_path: Path) -> None:
    cfg = fixture_config(tmp_path, "ml-100k")
    cfg.files["u.data"] = "0" * 64
    with pytest.raises(DatasetError, match="u.data is corrupt"):
        load_dataset(cfg, artifacts=tmp_path / "artifacts")
    assert cache_files(tmp_path / "artifacts") == []
    cfg.files["u.data"] = hashlib.sha256((tmp_path / "ml-100k" / "u.data").read_bytes()).hexdigest()
    assert load_dataset(cfg, artifacts=tmp_path / "artifacts").n_interactions == 6


# -- leave-one-out splits ------------------------------------------------------------------------------------
def assert_leave_one_out(ds: RecDataset) -> None:
    checked = 0
    for user, seq in enumerate(ds.sequences):
        for split, offset in (("test", 1), ("valid", 2), ("train", 3)):
            if len(seq) <= offset:
                with pytest.raises(ValueError, match="too few"):
                    ds.history_and_target(user, split)
                continue
            history, target = ds.history_and_target(user, split)
            assert target == seq[-offset]
            assert history.tolist() == seq[:-offset].tolist()  # exactly the prefix before the target
            checked += 1
    assert checked > 0


def test_splits_on_a_loaded_dataset(tmp_path: Path) -> None:
    ds = load_dataset(fixture_config(tmp_path, "ml-100k"), artifacts=tmp_path / "artifacts")
    assert ds.history_and_target(0, "test")[1] == ds.raw_item_ids.index("1")
    assert ds.history_and_target(0, "valid")[1] == ds.raw_item_ids.index("3")
    assert_leave_one_out(ds)


def test_ordering_and_splits_on_random_interactions() -> None:
    rng = np.random.default_rng(0)
    n = 600
    users = rng.integers(0, 40, n).astype(str)
    items = rng.integers(0, 80, n).astype(str)
    times = rng.integers(0, 6, n)  # many ties
    meta = {str(i): ItemMeta(f"Item {i}") for i in range(80)}
    ds = build_dataset("random", RawInteractions(users, items, times, meta), min_core=1)
    for user, raw_user in enumerate(ds.raw_user_ids):
        rows = sorted(np.flatnonzero(users == raw_user), key=lambda r: times[r])  # sorted() is stable
        assert raw_items(ds, user) == [items[r] for r in rows]
    assert_leave_one_out(ds)


# -- the real datasets ---------------------------------------------------------------------------------------
def real_config(name: str) -> DatasetConfig:
    cfg = OmegaConf.to_object(
        OmegaConf.merge(OmegaConf.structured(DatasetConfig), OmegaConf.load(CONFIG_DIR / f"{name}.yaml"))
    )
    assert isinstance(cfg, DatasetConfig)
    if not (SHARED_DATA / str(cfg.dir)).is_dir():
        pytest.skip(f"real data not available at {SHARED_DATA / str(cfg.dir)}")
    cfg.root = str(SHARED_DATA)
    return cfg


@pytest.fixture(scope="module")
def real_dataset(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], RecDataset]:
    artifacts = tmp_path_factory.mktemp("artifacts")
    loaded: dict[str, RecDataset] = {}

    def load(name: str) -> RecDataset:
        cfg = real_config(name)
        if name not in loaded:
            loaded[name] = load_dataset(cfg, artifacts=artifacts)
        return loaded[name]

    return load


@pytest.mark.integration
@pytest.mark.parametrize(
    ("name", "users", "items", "interactions"),
    [
        ("ml-100k", 943, 1_349, 99_287),
        ("games", 50_546, 16_859, 452_989),
        ("ml-latest-small", 610, 3_650, 90_274),
    ],
)
def test_real_dataset_statistics(
    real_dataset: Callable[[str], RecDataset], name: str, users: int, items: int, interactions: int
) -> None:
    ds = real_dataset(name)
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (users, items, interactions)
    assert min(len(s) for s in ds.sequences) >= 5
    assert np.unique(np.concatenate(ds.sequences)).tolist() == list(range(1, items + 1))


@pytest.mark.integration
def test_real_games_titles_are_unescaped(real_dataset: Callable[[str], RecDataset]) -> None:
    ds = real_dataset("games")
    titles = [m.title for m in ds.items[1:]]
    assert not [t for t in titles if "&amp;" in t or "&reg;" in t or "&quot;" in t]
    assert any("&" in t for t in titles)  # the unescaped ampersands are still there
    assert all(m.year is None and m.categories == () for m in ds.items[1:])
    assert all(t and t == t.strip() for t in titles)


@pytest.mark.integration
def test_real_ml100k_metadata(real_dataset: Callable[[str], RecDataset]) -> None:
    ds = real_dataset("ml-100k")
    toy_story = [m for m in ds.items if m.title == "Toy Story"]
    assert len(toy_story) == 1
    assert toy_story[0].year == 1995 and "Animation" in toy_story[0].categories
    assert any("é" in m.title for m in ds.items)  # latin-1 titles decoded
    assert [m.title for m in ds.items[1:] if m.year is None] == ["unknown"]  # item 267 has no date


@pytest.mark.integration
def test_real_ml_latest_small_raw_counts() -> None:
    cfg = real_config("ml-latest-small")
    raw = READERS[cfg.format](SHARED_DATA / str(cfg.dir))
    assert len(raw.users) == 100_836 and len(set(raw.users.tolist())) == 610
    assert len(raw.item_meta) == 9_742
    genres = ("Adventure", "Animation", "Children", "Comedy", "Fantasy")
    assert raw.item_meta["1"] == ItemMeta("Toy Story", 1995, genres)
