"""Readers for the public dataset formats: each turns a dataset folder into `RawInteractions`, and (formats with user
features, `USER_READERS`) into the users' features.

Every reader keeps interactions in file order and uses the original ids as strings. Malformed input raises
a `ValueError` with one line naming the file and the line number (`load_dataset` turns it into a
`DatasetError`).
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from deeprec_env.data.dataset import ItemMeta, RawInteractions, split_title_year

# The genre flags of u.item, in u.genre order; the first ("unknown") is not a category.
ML100K_GENRES = tuple(
    "unknown|Action|Adventure|Animation|Children's|Comedy|Crime|Documentary|Drama|Fantasy|Film-Noir|Horror|"
    "Musical|Mystery|Romance|Sci-Fi|Thriller|War|Western".split("|")
)
_SEPARATOR_NAMES = {"\t": "tab", "|": "pipe", "::": "'::'"}
_YEAR_AT_END = re.compile(r"(\d{4})\s*$")
_NO_GENRES = "(no genres listed)"

Row = tuple[int, list[str]]  # (1-based line number, fields)
Interaction = tuple[str, str, int]  # (raw user id, raw item id, timestamp)


# -- shared helpers ------------------------------------------------------------------------------------------
def _fail(path: Path, lineno: int, message: str) -> ValueError:
    return ValueError(f"{path.name} line {lineno}: {message}")


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise ValueError(f"{path.name}: file not found in {path.parent}")
    return path.read_bytes()


def _lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """(line number, text with its newline) for every line; a decoding error names the line."""
    for lineno, data in enumerate(io.BytesIO(_read_bytes(path)), start=1):
        try:
            yield lineno, data.decode(encoding)
        except UnicodeDecodeError as err:
            raise _fail(path, lineno, f"not valid {encoding} text ({err.reason})") from None


def _delimited(path: Path, sep: str, n_fields: int | None = None, encoding: str = "utf-8") -> Iterator[Row]:
    """Non-blank lines split on `sep`, each with exactly `n_fields` fields (default: as many as the first)."""
    for lineno, line in _lines(path, encoding):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.split(sep)
        n_fields = n_fields or len(fields)
        if len(fields) != n_fields:
            sep_name = _SEPARATOR_NAMES.get(sep, repr(sep))
            raise _fail(path, lineno, f"expected {n_fields} {sep_name}-separated fields, got {len(fields)}")
        yield lineno, fields


def _columns(path: Path, header: list[str], names: Iterable[str]) -> list[int]:
    """Positions of the named columns in a header row (line 1); a missing column is an error."""
    header = [name.strip() for name in header]
    missing = [name for name in names if name not in header]
    if missing:
        found = ", ".join(header) or "nothing"
        raise _fail(path, 1, f"header lacks column(s) {', '.join(missing)} (found: {found})")
    return [header.index(name) for name in names]


def _csv_with_header(path: Path, names: tuple[str, ...]) -> Iterator[Row]:
    """Rows of a CSV file with a header (quoted fields may hold commas), reduced to the named columns."""
    reader = csv.reader(line for _, line in _lines(path, "utf-8"))
    header = next(reader, [])
    positions = _columns(path, header, names)
    for fields in reader:
        if not fields:
            continue
        if len(fields) != len(header):
            message = f"expected {len(header)} comma-separated fields, got {len(fields)}"
            raise _fail(path, reader.line_num, message)
        yield reader.line_num, [fields[i] for i in positions]


def _int(path: Path, lineno: int, value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise _fail(path, lineno, f"{what} {value.strip()!r} is not an integer") from None


def _raw_id(path: Path, lineno: int, value: str, what: str) -> str:
    """An integer id as its canonical string ('007' and '7' are the same id)."""
    return str(_int(path, lineno, value, what))


def _title(raw: str) -> tuple[str, int | None]:
    """Unescaped, stripped title and the year from a trailing '(YYYY)'."""
    return split_title_year(html.unescape(raw).strip())


def _add_meta(path: Path, lineno: int, meta: dict[str, ItemMeta], item: str, entry: ItemMeta) -> None:
    if item in meta:
        raise _fail(path, lineno, f"duplicate item id {item}")
    meta[item] = entry


def _ratings(path: Path, rows: Iterable[Row]) -> list[Interaction]:
    """`user, item, rating, timestamp` rows -> interactions; every rating counts (implicit feedback)."""
    interactions = []
    for lineno, (user, item, _rating, timestamp) in rows:
        user_id = _raw_id(path, lineno, user, "user id")
        item_id = _raw_id(path, lineno, item, "item id")
        interactions.append((user_id, item_id, _int(path, lineno, timestamp, "timestamp")))
    return interactions


def _to_raw(interactions: list[Interaction], item_meta: dict[str, ItemMeta]) -> RawInteractions:
    """The step all readers share: (user, item, timestamp) tuples in file order -> `RawInteractions`."""
    users, items, times = zip(*interactions, strict=True) if interactions else ((), (), ())
    return RawInteractions(
        users=np.array(users, dtype=str),
        items=np.array(items, dtype=str),
        timestamps=np.array(times, dtype=np.int64),
        item_meta=item_meta,
    )


# -- MovieLens 100K ------------------------------------------------------------------------------------------
def _ml100k_items(path: Path) -> dict[str, ItemMeta]:
    """id|title|release date|video release date|URL|19 genre flags; a title without year takes the date's."""
    meta: dict[str, ItemMeta] = {}
    for lineno, fields in _delimited(path, "|", 5 + len(ML100K_GENRES), encoding="latin-1"):
        title, year = _title(fields[1])
        release = fields[2].strip()
        if year is None and release:
            match = _YEAR_AT_END.search(release)
            if match is None:
                raise _fail(path, lineno, f"release date {release!r} does not end in a 4-digit year")
            year = int(match.group(1))
        flags = [flag.strip() for flag in fields[5:]]
        if any(flag not in ("0", "1") for flag in flags):
            raise _fail(path, lineno, f"genre flags must be 0 or 1, got {'|'.join(flags)}")
        genres = tuple(g for g, flag in zip(ML100K_GENRES[1:], flags[1:], strict=True) if flag == "1")
        item = _raw_id(path, lineno, fields[0], "movie id")
        _add_meta(path, lineno, meta, item, ItemMeta(title, year, genres))
    return meta


def read_ml100k(directory: Path) -> RawInteractions:
    """`u.data` (user, item, rating, timestamp; tab-separated) and `u.item` (pipe-separated, latin-1)."""
    ratings = directory / "u.data"
    return _to_raw(_ratings(ratings, _delimited(ratings, "\t", 4)), _ml100k_items(directory / "u.item"))


# -- MovieLens 1M and the CSV releases (ml-latest-small, ml-25m, ...) ----------------------------------------
def _genres(field: str) -> tuple[str, ...]:
    """Pipe-separated genres; '(no genres listed)' or an empty field means none."""
    field = field.strip()
    if not field or field == _NO_GENRES:
        return ()
    return tuple(g.strip() for g in field.split("|") if g.strip())


def _movies(path: Path, rows: Iterable[Row]) -> dict[str, ItemMeta]:
    """`movie id, title (year), genres` rows -> metadata."""
    meta: dict[str, ItemMeta] = {}
    for lineno, (movie, raw_title, genres) in rows:
        title, year = _title(raw_title)
        item = _raw_id(path, lineno, movie, "movie id")
        _add_meta(path, lineno, meta, item, ItemMeta(title, year, _genres(genres)))
    return meta


def read_ml1m(directory: Path) -> RawInteractions:
    """`ratings.dat` (UserID::MovieID::Rating::Timestamp), `movies.dat` (MovieID::Title::Genres, latin-1)."""
    ratings, movies = directory / "ratings.dat", directory / "movies.dat"
    return _to_raw(
        _ratings(ratings, _delimited(ratings, "::", 4, encoding="latin-1")),
        _movies(movies, _delimited(movies, "::", 3, encoding="latin-1")),
    )


def read_movielens_csv(directory: Path) -> RawInteractions:
    """`ratings.csv` (userId,movieId,rating,timestamp) and `movies.csv` (movieId,title,genres), headed."""
    ratings, movies = directory / "ratings.csv", directory / "movies.csv"
    return _to_raw(
        _ratings(ratings, _csv_with_header(ratings, ("userId", "movieId", "rating", "timestamp"))),
        _movies(movies, _csv_with_header(movies, ("movieId", "title", "genres"))),
    )


# -- Amazon reviews, LC-Rec processing -----------------------------------------------------------------------
def _lcrec_prefix(directory: Path) -> str:
    """'Games' for a folder holding `Games.inter.json`; exactly one `*.inter.json` must be present."""
    found = sorted(p.name.removesuffix(".inter.json") for p in directory.glob("*.inter.json"))
    if len(found) != 1:
        raise ValueError(f"{directory}: expected one <name>.inter.json file, found {len(found)}")
    return found[0]


def _lcrec_sequences(path: Path) -> list[Interaction]:
    """`{"user": [item, ...]}`, each list oldest first; an item's position in its list is its timestamp."""
    data = _read_bytes(path)
    try:
        sequences = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        lineno = data[: err.start].count(b"\n") + 1
        raise _fail(path, lineno, f"not valid utf-8 text ({err.reason})") from None
    except json.JSONDecodeError as err:
        raise _fail(path, err.lineno, f"invalid JSON at column {err.colno}: {err.msg}") from None
    if not isinstance(sequences, dict):
        raise ValueError(f"{path.name}: expected a JSON object mapping user ids to item lists")
    interactions = []
    for user, items in sequences.items():
        valid_items = isinstance(items, list) and all(type(item) is int for item in items)
        if not (user.strip().isdigit() and valid_items):
            raise ValueError(f"{path.name}: user {user!r} must be an integer id mapping to integer item ids")
        user_id = str(int(user))
        interactions.extend((user_id, str(item), position) for position, item in enumerate(items))
    return interactions


def _lcrec_titles(path: Path) -> dict[str, ItemMeta]:
    """Tab-separated with a header naming at least `item_id` and `title`; titles are HTML-unescaped."""
    rows = _delimited(path, "\t")
    _, header = next(rows, (1, []))
    id_col, title_col = _columns(path, header, ("item_id", "title"))
    meta: dict[str, ItemMeta] = {}
    for lineno, fields in rows:
        item = _raw_id(path, lineno, fields[id_col], "item_id")
        # Products have no genre here, and a '(2004)' in a product title is not a release year: keep it.
        _add_meta(path, lineno, meta, item, ItemMeta(html.unescape(fields[title_col]).strip()))
    return meta


def read_amazon_lcrec(directory: Path) -> RawInteractions:
    """`<name>.inter.json` (chronological item lists per user) and `<name>.titles.tsv` (item_id -> title)."""
    prefix = _lcrec_prefix(directory)
    interactions = _lcrec_sequences(directory / f"{prefix}.inter.json")
    return _to_raw(interactions, _lcrec_titles(directory / f"{prefix}.titles.tsv"))


# -- user features (MovieLens-100K u.user, MovieLens-1M users.dat) ---------------------------------------------
UserFeatures = dict[str, tuple[str, str, str]]  # raw user id -> (age, gender, occupation), as a profile card shows them
_GENDERS = {"M": "male", "F": "female"}
ML1M_AGES = {"1": "under 18", "18": "18-24", "25": "25-34", "35": "35-44", "45": "45-49", "50": "50-55", "56": "56+"}
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer", "programmer",
    "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer", "tradesman/craftsman",
    "unemployed", "writer",
)  # fmt: skip


def _user_row(path: Path, lineno: int, user: str, age: str, gender: str, occupation: str) -> tuple[str, tuple]:
    if gender.strip() not in _GENDERS:
        raise _fail(path, lineno, f"gender must be M or F, got {gender!r}")
    return _raw_id(path, lineno, user, "user id"), (age.strip(), _GENDERS[gender.strip()], occupation.strip())


def read_ml100k_users(directory: Path) -> UserFeatures:
    """`u.user`: user id|age|gender|occupation|zip code (pipe-separated)."""
    path = directory / USER_FILES["ml-100k"]
    features = {}
    for lineno, (user, age, gender, occupation, _) in _delimited(path, "|", 5, encoding="latin-1"):
        _int(path, lineno, age, "age")
        raw, row = _user_row(path, lineno, user, age, gender, occupation)
        features[raw] = row
    return features


def read_ml1m_users(directory: Path) -> UserFeatures:
    """`users.dat`: UserID::Gender::Age::Occupation::Zip-code, age and occupation as the release's codes."""
    path = directory / USER_FILES["ml-1m"]
    features = {}
    for lineno, (user, gender, age, occupation, _) in _delimited(path, "::", 5, encoding="latin-1"):
        if age.strip() not in ML1M_AGES:
            raise _fail(path, lineno, f"age code must be one of {', '.join(ML1M_AGES)}, got {age!r}")
        code = _int(path, lineno, occupation, "occupation code")
        if not 0 <= code < len(ML1M_OCCUPATIONS):
            raise _fail(path, lineno, f"occupation code must be 0..{len(ML1M_OCCUPATIONS) - 1}, got {code}")
        raw, row = _user_row(path, lineno, user, ML1M_AGES[age.strip()], gender, ML1M_OCCUPATIONS[code])
        features[raw] = row
    return features


USER_READERS: dict[str, Callable[[Path], UserFeatures]] = {"ml-100k": read_ml100k_users, "ml-1m": read_ml1m_users}
USER_FILES = {"ml-100k": "u.user", "ml-1m": "users.dat"}  # the file each user reader reads

READERS: dict[str, Callable[[Path], RawInteractions]] = {
    "ml-100k": read_ml100k,
    "movielens-csv": read_movielens_csv,
    "ml-1m": read_ml1m,
    "amazon-lcrec": read_amazon_lcrec,
}
