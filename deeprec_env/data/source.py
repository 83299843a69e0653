"""Dataset configuration, data-root resolution, checksum checks and the cached `load_dataset` entry point."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deeprec_env.cache import cached, config_hash, sha256_file
from deeprec_env.data.dataset import RecDataset, build_dataset

log = logging.getLogger(__name__)
PROCESSING_VERSION = 1  # bump when a reader, the filtering or the synthetic generator changes its output


class DatasetError(RuntimeError):
    """A dataset is missing, corrupt or misconfigured; the message names the fix."""


@dataclass
class SyntheticConfig:
    """Size and dynamics of the built-in synthetic dataset (see `deeprec_env.data.synthetic`)."""

    n_users: int = 500
    n_items: int = 400
    n_categories: int = 8
    categories_per_user: int = 2
    min_len: int = 8
    max_len: int = 30
    stickiness: float = 0.7  # probability the next item stays in the previous item's category
    concentration: float = 0.3  # Dirichlet concentration of the users' category mixtures
    seed: int = 0


@dataclass
class DatasetConfig:
    """One dataset: which reader parses it, where its files live, and how it is filtered."""

    name: str = "ml-100k"
    format: str = "ml-100k"  # ml-100k | movielens-csv | ml-1m | amazon-lcrec | synthetic
    dir: str | None = "movielens-100k"  # folder under the data root
    root: str | None = None  # data root; else $DEEPREC_DATA, else ./data, else ../shared/data
    min_core: int = 5
    files: dict[str, str | None] = field(default_factory=dict)  # required file -> sha256 (None: unchecked)
    user_files: dict[str, str | None] = field(default_factory=dict)  # user-feature files (data.profiles) -> sha256
    homepage: str = ""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    # the item-aspect lexicon of preference queries (deeprec_env/trm/lexicons): movies | games | generic
    catalogue: str = "generic"

    def __post_init__(self) -> None:
        """Reject an unknown catalogue when the config is built, not when queries are first phrased."""
        from deeprec_env.trm.queries import catalogues

        if self.catalogue not in catalogues():
            raise DatasetError(
                f"dataset {self.name!r}: unknown dataset.catalogue {self.catalogue!r}; use one of {list(catalogues())}"
            )

    def cache_key(self) -> dict:
        """What determines the processed dataset (the data root does not: checksums pin the files; nor does the
        catalogue, which only selects how queries describe the items)."""
        key = {
            "name": self.name,
            "format": self.format,
            "min_core": self.min_core,
            "files": self.files,
            "version": PROCESSING_VERSION,
        }
        if self.format == "synthetic":
            key["synthetic"] = asdict(self.synthetic)
        return key


def data_roots(configured: str | None) -> list[Path]:
    """Candidate data roots in priority order."""
    if configured:
        return [Path(configured).expanduser()]
    roots = [Path(os.environ["DEEPREC_DATA"]).expanduser()] if os.environ.get("DEEPREC_DATA") else []
    return roots + [
        Path("data"),
        Path(__file__).resolve().parents[2].parent / "shared" / "data",
        Path("../shared/data"),
    ]


def find_dataset_dir(cfg: DatasetConfig) -> Path:
    """The first data root holding the dataset's folder, or a one-line error naming the files and their source."""
    if not cfg.dir:
        raise DatasetError(f"dataset {cfg.name!r} has no dataset.dir; set it to the folder under the data root")
    for root in data_roots(cfg.root):
        candidate = root / cfg.dir
        if candidate.is_dir():
            return candidate
    tried = ", ".join(str(r / cfg.dir) for r in data_roots(cfg.root))
    raise DatasetError(
        f"dataset {cfg.name!r} not found (looked in {tried}): put {', '.join(cfg.files)} in one of them "
        f"(download from {cfg.homepage}) or set dataset.root=DIR / $DEEPREC_DATA"
    )


def verify_files(cfg: DatasetConfig, directory: Path, files: dict[str, str | None] | None = None) -> None:
    """Every required file (`files`, default `cfg.files`) exists and matches its configured sha256."""
    files = cfg.files if files is None else files
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            raise DatasetError(
                f"dataset {cfg.name!r}: missing {path}; expected files {', '.join(files)} from {cfg.homepage}"
            )
        if expected and sha256_file(path) != expected:
            raise DatasetError(
                f"dataset {cfg.name!r}: {path} is corrupt (sha256 mismatch); download it again from {cfg.homepage}"
            )


def artifact_root(artifacts: str | os.PathLike, cfg: DatasetConfig) -> Path:
    """`artifacts/<dataset>/<config-hash>/`: everything derived from this dataset config lives below it."""
    return Path(artifacts) / cfg.name / config_hash(cfg.cache_key())


def load_dataset(cfg: DatasetConfig, artifacts: str | os.PathLike = "artifacts") -> RecDataset:
    """Read, filter and cache a dataset; later calls with the same config reuse the cache (and log so)."""
    from deeprec_env.data.readers import READERS
    from deeprec_env.data.synthetic import generate_synthetic

    if cfg.format != "synthetic" and cfg.format not in READERS:
        raise DatasetError(f"unknown dataset.format {cfg.format!r}; use one of {sorted(READERS) + ['synthetic']}")

    def build(tmp: Path) -> None:
        if cfg.format == "synthetic":
            dataset = generate_synthetic(cfg.synthetic, name=cfg.name)
        else:
            directory = find_dataset_dir(cfg)
            verify_files(cfg, directory)
            log.info("reading %s from %s", cfg.name, directory)
            try:
                dataset = build_dataset(cfg.name, READERS[cfg.format](directory), cfg.min_core)
            except (ValueError, KeyError, IndexError, UnicodeDecodeError) as err:
                raise DatasetError(f"dataset {cfg.name!r} in {directory} is malformed: {err}") from err
        dataset.save(tmp)

    from deeprec_env.data.profiles import load_profiles

    directory = cached(artifact_root(artifacts, cfg) / "dataset", build, f"dataset {cfg.name}")
    dataset = RecDataset.load(directory)
    dataset.catalogue = cfg.catalogue
    dataset.profiles = load_profiles(cfg, dataset, artifacts)
    return dataset
