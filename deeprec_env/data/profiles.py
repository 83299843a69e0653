"""User profile cards (after RecGPT's user profiles as text): a compact line of the user's features shown in the
prompt with `env.profile`, e.g. `age 24, male, technician`.

Where they come from: MovieLens-100K `u.user` and MovieLens-1M `users.dat` (`readers.USER_READERS`, chosen by
`dataset.format`, their checksums pinned by `dataset.user_files`), and the synthetic users, whose features are drawn
to correlate with their latent category preferences (so a policy can learn something from a profile there): the
occupation follows the user's top latent category and the age band its second, each with probability
SYNTHETIC_FEATURE_SIGNAL, else drawn at random. Cards are cached beside the dataset (`artifacts/<dataset>/<hash>/
profiles-<hash>/`); other datasets, and a MovieLens folder without its user file, have none (an empty list: the env
refuses `env.profile` for them).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from deeprec_env.cache import cached, config_hash, is_complete
from deeprec_env.data.dataset import RecDataset
from deeprec_env.data.source import DatasetConfig, DatasetError, artifact_root, find_dataset_dir, verify_files

log = logging.getLogger(__name__)
PROFILES_VERSION = 1  # bump when a card's wording or the synthetic features change
SYNTHETIC_FEATURE_SIGNAL = 0.8
SYNTHETIC_OCCUPATIONS = (
    "engineer", "chef", "teacher", "mechanic", "writer", "artist", "nurse", "farmer", "student", "lawyer",
    "programmer", "retired",
)  # fmt: skip
SYNTHETIC_AGES = ("under 18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")


def profile_card(age: str, gender: str, occupation: str) -> str:
    """`age 24, male, technician` (fields that are empty are left out)."""
    return ", ".join(part for part in (f"age {age}" if age else "", gender, occupation) if part)


def synthetic_features(preferences: np.ndarray, seed: int) -> list[tuple[str, str, str]]:
    """(age band, gender, occupation) per synthetic user, correlated with the latent preferences (module docstring)."""
    rng = np.random.default_rng(seed)
    features = []
    for weights in preferences:
        order = np.argsort(-weights, kind="stable")
        signal = rng.random(2) < SYNTHETIC_FEATURE_SIGNAL
        occupation = int(order[0]) if signal[0] else int(rng.integers(len(SYNTHETIC_OCCUPATIONS)))
        age = int(order[1]) if signal[1] else int(rng.integers(len(SYNTHETIC_AGES)))
        gender = ("female", "male")[int(rng.integers(2))]
        features.append(
            (
                SYNTHETIC_AGES[age % len(SYNTHETIC_AGES)],
                gender,
                SYNTHETIC_OCCUPATIONS[occupation % len(SYNTHETIC_OCCUPATIONS)],
            )
        )
    return features


def _cards(cfg: DatasetConfig, dataset: RecDataset) -> list[str]:
    """One card per user id; "" for a user the feature file does not list."""
    from deeprec_env.data.readers import USER_READERS

    if cfg.format == "synthetic":
        return [profile_card(*f) for f in synthetic_features(dataset.extras["user_preferences"], cfg.synthetic.seed)]
    directory = find_dataset_dir(cfg)
    verify_files(cfg, directory, cfg.user_files)
    try:
        features = USER_READERS[cfg.format](directory)
    except ValueError as err:
        raise DatasetError(f"dataset {cfg.name!r}: user features in {directory} are malformed: {err}") from err
    return [profile_card(*features[raw]) if raw in features else "" for raw in dataset.raw_user_ids]


def has_profiles(cfg: DatasetConfig) -> bool:
    """Whether the dataset has user features: synthetic users, or a MovieLens folder holding its user file."""
    from deeprec_env.data.readers import USER_FILES

    if cfg.format == "synthetic":
        return True
    if cfg.format not in USER_FILES:
        return False
    try:
        found = (find_dataset_dir(cfg) / USER_FILES[cfg.format]).is_file()
    except DatasetError:  # the raw folder is gone (a cache-only copy): nothing to read
        found = False
    if not found:
        log.info("dataset %s has no %s: no user profiles", cfg.name, USER_FILES[cfg.format])
    return found


def load_profiles(cfg: DatasetConfig, dataset: RecDataset, artifacts: str | os.PathLike) -> list[str]:
    """The users' profile cards (index = user id), cached; [] for a dataset without user features."""
    key = config_hash({"files": cfg.user_files, "version": PROFILES_VERSION})
    directory = artifact_root(artifacts, cfg) / f"profiles-{key}"
    if not is_complete(directory) and not has_profiles(cfg):
        return []

    def build(tmp: Path) -> None:
        (tmp / "profiles.json").write_text(json.dumps(_cards(cfg, dataset), ensure_ascii=False), encoding="utf-8")

    directory = cached(directory, build, f"user profiles of {cfg.name}")
    cards = json.loads((directory / "profiles.json").read_text(encoding="utf-8"))
    if len(cards) != dataset.n_users:
        raise DatasetError(f"cached profiles at {directory} do not match dataset {cfg.name!r}; delete that folder")
    return cards
