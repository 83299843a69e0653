"""`RecDataset`: per-user chronological item sequences, item text cards and leave-one-out splits.

Item ids are contiguous, 1..n_items; id 0 is padding. Readers produce `RawInteractions`; `build_dataset` turns
them into a `RecDataset` (stable chronological order, k-core filtering, id remapping).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("train", "valid", "test")
PAD = 0
_YEAR_SUFFIX = re.compile(r"\s*\((\d{4})\)\s*$")


@dataclass(frozen=True)
class ItemMeta:
    """What the agent may read about an item: its title, release year and categories (genres)."""

    title: str
    year: int | None = None
    categories: tuple[str, ...] = ()


def split_title_year(title: str) -> tuple[str, int | None]:
    """'Toy Story (1995)' -> ('Toy Story', 1995); titles without a trailing year are returned as they are."""
    match = _YEAR_SUFFIX.search(title)
    if not match:
        return title.strip(), None
    return title[: match.start()].strip(), int(match.group(1))


@dataclass
class RawInteractions:
    """What a reader returns: one row per interaction, in file order, plus metadata keyed by raw item id.

    `timestamps` orders each user's interactions; ties keep file order (the sort is stable).
    """

    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    item_meta: dict[str, ItemMeta]


@dataclass
class RecDataset:
    """A processed recommendation dataset.

    `sequences[u]` holds user u's item ids oldest first. Leave-one-out: the last item is the test target, the
    second to last the validation target, everything before is training data.
    """

    name: str
    items: list[ItemMeta]  # index = item id; items[0] is the padding entry
    sequences: list[np.ndarray]
    raw_user_ids: list[str]
    raw_item_ids: list[str]  # index = item id; raw_item_ids[0] == ""
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. the synthetic users' latent preferences
    catalogue: str = "generic"  # which item-aspect lexicon describes the items (`DatasetConfig.catalogue`; not saved)
    profiles: list[str] = field(default_factory=list)  # per user id, a profile card ("" unknown; `data.profiles`)

    @property
    def n_items(self) -> int:
        return len(self.items) - 1

    @property
    def n_users(self) -> int:
        return len(self.sequences)

    @property
    def n_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def history_and_target(self, user: int, split: str, cut: int = 0) -> tuple[np.ndarray, int]:
        """The items a user saw before the split's target, and the target: test = last, valid = second to last,
        train = third to last (the newest item that neither evaluation split uses) or, with `cut` c, the training
        item c places before it (a training episode at an earlier cut point: history = everything before it)."""
        offset = {"test": 1, "valid": 2, "train": 3}.get(split)
        if offset is None:
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
        if cut and split != "train":
            raise ValueError(f"cut points are for the train split only, got cut={cut} on {split!r}")
        seq = self.sequences[user]
        offset += cut
        if cut < 0 or len(seq) < offset + 1:
            raise ValueError(f"user {user} has {len(seq)} interactions, too few for the {split!r} split at cut {cut}")
        return seq[: len(seq) - offset], int(seq[len(seq) - offset])

    def n_cuts(self, user: int, cuts: int) -> int:
        """How many of the first `cuts` train cut points the user has (each needs a target and one history item)."""
        return max(0, min(cuts, len(self.sequences[user]) - 3))

    def eval_users(self, split: str) -> np.ndarray:
        """Users that have a target (and at least one history item) for the split."""
        offset = {"test": 1, "valid": 2, "train": 3}[split]
        return np.array([u for u, s in enumerate(self.sequences) if len(s) > offset], dtype=np.int64)

    def training_sequences(self, holdout: int = 0) -> list[np.ndarray]:
        """Each user's sequence with the validation and test targets removed: the only data models train on.
        `holdout` also removes each user's last `holdout` training items (the targets of the first `holdout` train
        cut points), for a model that must not have seen them."""
        return [s[: len(s) - 2 - holdout] for s in self.sequences if len(s) > 2 + holdout]

    def item_popularity(self) -> np.ndarray:
        """Interaction counts per item id over the training sequences (index 0 = padding = 0)."""
        counts = np.zeros(self.n_items + 1, dtype=np.int64)
        for seq in self.training_sequences():
            np.add.at(counts, seq, 1)
        return counts

    def category_vocabulary(self) -> list[str]:
        """All categories, sorted, so category ids are stable."""
        return sorted({c for meta in self.items[1:] for c in meta.categories})

    def item_name(self, item: int) -> str:
        """`Title (year)`: how an answer line names the item (a title may itself contain ' | ')."""
        meta = self.items[item]
        return meta.title if meta.year is None else f"{meta.title} ({meta.year})"

    def item_card(self, item: int, max_chars: int | None = None) -> str:
        """Compact text card `Title (year) | category, category`, cut to `max_chars` on a word boundary."""
        meta = self.items[item]
        card = self.item_name(item)
        if meta.categories:
            card += " | " + ", ".join(meta.categories)
        if max_chars is not None and len(card) > max_chars:
            card = card[: max(max_chars - 1, 1)].rsplit(" ", 1)[0].rstrip(" |,") + "…"
        return card

    def stats(self) -> dict[str, float | int | str]:
        lengths = np.array([len(s) for s in self.sequences])
        return {
            "dataset": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
            "mean_seq_len": round(float(lengths.mean()), 2),
            "median_seq_len": float(np.median(lengths)),
            "density": self.n_interactions / max(self.n_users * self.n_items, 1),
        }

    # -- persistence ---------------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        lengths = np.array([len(s) for s in self.sequences], dtype=np.int64)
        flat = np.concatenate(self.sequences).astype(np.int64) if self.sequences else np.zeros(0, np.int64)
        extras = {f"extra_{key}": value for key, value in self.extras.items()}
        np.savez(directory / "sequences.npz", flat=flat, lengths=lengths, **extras)
        payload = {
            "name": self.name,
            "items": [[m.title, m.year, list(m.categories)] for m in self.items],
            "raw_item_ids": self.raw_item_ids,
            "raw_user_ids": self.raw_user_ids,
        }
        (directory / "items.json").write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> RecDataset:
        meta = json.loads((directory / "items.json").read_text(encoding="utf-8"))
        with np.load(directory / "sequences.npz") as arrays:
            flat, lengths = arrays["flat"], arrays["lengths"]
            extras = {k.removeprefix("extra_"): arrays[k] for k in arrays.files if k.startswith("extra_")}
        sequences = np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []
        items = [ItemMeta(t, y, tuple(c)) for t, y, c in meta["items"]]
        return cls(meta["name"], items, list(sequences), meta["raw_user_ids"], meta["raw_item_ids"], extras)


def k_core(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the interactions that survive iterated k-core filtering (users and items with >= k)."""
    keep = np.ones(len(users), dtype=bool)
    if k <= 1:
        return keep
    while True:
        _, u_inv, u_counts = np.unique(users[keep], return_inverse=True, return_counts=True)
        _, i_inv, i_counts = np.unique(items[keep], return_inverse=True, return_counts=True)
        ok = (u_counts[u_inv] >= k) & (i_counts[i_inv] >= k)
        if ok.all():
            return keep
        keep[np.flatnonzero(keep)[~ok]] = False


def _natural_key(raw_id: str) -> tuple[int, int | str]:
    return (0, int(raw_id)) if raw_id.isdigit() else (1, raw_id)


def build_dataset(name: str, raw: RawInteractions, min_core: int) -> RecDataset:
    """Chronological per-user sequences (stable on ties), k-core filtered, with contiguous item ids from 1."""
    users = np.asarray(raw.users).astype(str)
    items = np.asarray(raw.items).astype(str)
    keep = k_core(users, items, min_core)
    users, items, times = users[keep], items[keep], np.asarray(raw.timestamps)[keep]
    if len(users) == 0:
        raise ValueError(f"{name}: no interactions survive {min_core}-core filtering; lower dataset.min_core")

    item_ids = sorted(set(items.tolist()), key=_natural_key)
    missing = [i for i in item_ids if i not in raw.item_meta]
    if missing:
        raise ValueError(
            f"{name}: {len(missing)} items have no metadata (e.g. {missing[0]!r}); the item file is incomplete"
        )
    item_index = {raw_id: idx for idx, raw_id in enumerate(item_ids, start=1)}
    user_ids = sorted(set(users.tolist()), key=_natural_key)
    user_index = {raw_id: idx for idx, raw_id in enumerate(user_ids)}

    user_col = np.array([user_index[u] for u in users], dtype=np.int64)
    item_col = np.array([item_index[i] for i in items], dtype=np.int64)
    order = np.lexsort((np.arange(len(user_col)), times, user_col))  # user, then time, then file order
    user_col, item_col = user_col[order], item_col[order]
    bounds = np.flatnonzero(np.diff(user_col)) + 1
    sequences = np.split(item_col, bounds)

    metas = [ItemMeta("<pad>")] + [raw.item_meta[i] for i in item_ids]
    return RecDataset(name, metas, list(sequences), user_ids, [""] + item_ids)


def stack_histories(histories: Sequence[np.ndarray], max_len: int) -> np.ndarray:
    """Left-pad (with 0) or cut each history to its last `max_len` items -> int64 array (batch, max_len)."""
    out = np.zeros((len(histories), max_len), dtype=np.int64)
    for row, history in enumerate(histories):
        tail = np.asarray(history[-max_len:], dtype=np.int64)
        if len(tail):
            out[row, max_len - len(tail) :] = tail
    return out
