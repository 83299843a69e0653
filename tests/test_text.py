"""The sentence-encoder wrapper and the cached item-text embeddings (real bundled all-MiniLM-L6-v2, on CPU)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fakes import synthetic_config

from deeprec_env.data.source import SyntheticConfig, artifact_root, load_dataset
from deeprec_env.text import EncoderConfig, TextEncoder, item_text_embeddings


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(EncoderConfig())


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_encode_returns_normalised_float32_rows(encoder: TextEncoder) -> None:
    texts = ["a gritty crime drama", "cozy farming simulation game", "PlayStation 3 controller"]
    vectors = encoder.encode(texts)
    assert vectors.shape == (3, encoder.dim) and vectors.dtype == np.float32
    assert encoder.dim == 384
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, encoder.dim)


def test_empty_text_is_the_zero_vector_and_never_reaches_the_model(
    encoder: TextEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[list[str]] = []
    original = encoder._model.encode
    monkeypatch.setattr(encoder._model, "encode", lambda texts, **kw: sent.append(list(texts)) or original(texts, **kw))
    vectors = encoder.encode(["", "   ", "horror movies", "\n"])
    assert not vectors[[0, 1, 3]].any()
    assert np.isclose(np.linalg.norm(vectors[2]), 1.0, atol=1e-5)
    assert all(text.strip() for batch in sent for text in batch)
    sent.clear()
    assert not encoder.encode(["", " "]).any() and sent == []


def test_dedupe_within_a_call_and_lru_across_calls(encoder: TextEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    encoder.clear_cache()
    sent: list[str] = []
    original = encoder._model.encode

    def counting(texts: list[str], **kwargs: object) -> np.ndarray:
        sent.extend(texts)
        return original(texts, **kwargs)

    monkeypatch.setattr(encoder._model, "encode", counting)
    first = encoder.encode(["racing games", "racing games", " racing games ", "puzzle games"])
    assert sorted(sent) == ["puzzle games", "racing games"]  # each distinct text once
    np.testing.assert_array_equal(first[0], first[1])
    np.testing.assert_array_equal(first[0], first[2])
    sent.clear()
    again = encoder.encode(["puzzle games", "racing games", "shooter games"])
    assert sent == ["shooter games"]  # the other two come from the LRU cache
    np.testing.assert_allclose(again[0], first[3], atol=1e-6)
    sent.clear()
    encoder.encode(["puzzle games"], use_cache=False)
    assert sent == ["puzzle games"]

    # the LRU keeps at most cache_size entries and evicts the least recently used
    old_size = encoder.cache_size
    monkeypatch.setattr(encoder, "cache_size", 2)
    encoder.clear_cache()
    encoder.encode(["a1 text", "b2 text"])
    encoder.encode(["a1 text"])  # a1 is now the most recent
    encoder.encode(["c3 text"])  # evicts b2
    sent.clear()
    encoder.encode(["a1 text", "b2 text", "c3 text"])
    assert sent == ["b2 text"]
    assert len(encoder._cache) <= 2 and old_size == 50_000
    encoder.clear_cache()


def test_a_cached_vector_does_not_depend_on_the_texts_it_came_with(encoder: TextEncoder) -> None:
    """A padded batch rounds differently: with the cache each new text is encoded on its own, so a query's vector
    (and the retrieval and rewards that read it) is the same whatever it was batched with."""
    texts = ["x", "jazz", "a long preference about dark 1990s science fiction thrillers with space battles and aliens"]
    encoder.clear_cache()
    together = encoder.encode(texts)
    encoder.clear_cache()
    alone = np.concatenate([encoder.encode([text]) for text in texts])
    encoder.clear_cache()
    np.testing.assert_array_equal(together, alone)


def test_semantic_sanity(encoder: TextEncoder) -> None:
    query, close, far = encoder.encode(
        ["science fiction space movie", "sci-fi film about spaceships", "romantic comedy about a wedding"]
    )
    assert _cos(query, close) > _cos(query, far) + 0.1


def test_bad_path_gives_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"set text\.path=DIR"):
        TextEncoder(EncoderConfig(path=str(tmp_path / "no-such-model")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"not a sentence-transformers model.*set text\.path=DIR"):
        TextEncoder(EncoderConfig(path=str(empty)))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"could not load a sentence encoder.*set text\.path=DIR") as info:
        TextEncoder(EncoderConfig(path=str(broken)))
    assert "\n" not in str(info.value)


def test_name_is_stable_and_depends_on_truncation(encoder: TextEncoder) -> None:
    assert encoder.name.startswith("model-") and encoder.name == TextEncoder(EncoderConfig()).name
    assert TextEncoder(EncoderConfig(max_seq_length=32)).name != encoder.name


def test_item_text_embeddings_cached_and_rebuilt_when_corrupt(
    encoder: TextEncoder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = synthetic_config(n_users=50, n_items=60)
    dataset = load_dataset(cfg, tmp_path)
    root = artifact_root(tmp_path, cfg)
    caplog.set_level(logging.INFO, logger="deeprec_env")

    vectors = item_text_embeddings(dataset, encoder, root)
    assert vectors.shape == (dataset.n_items + 1, encoder.dim) and vectors.dtype == np.float32
    assert not vectors[0].any()
    np.testing.assert_allclose(np.linalg.norm(vectors[1:], axis=1), 1.0, atol=1e-5)
    direct = encoder.encode([dataset.item_card(i) for i in range(1, dataset.n_items + 1)], use_cache=False)
    np.testing.assert_allclose(vectors[1:], direct, atol=1e-5)
    path = root / f"item-text-{encoder.name}" / "embeddings.npy"
    assert path.is_file()

    caplog.clear()
    again = item_text_embeddings(dataset, encoder, root)
    assert "reusing cached" in caplog.text
    np.testing.assert_array_equal(again, vectors)

    raw = bytearray(path.read_bytes())
    raw[-64:] = b"\x00" * 64  # corrupt the last rows in place
    path.write_bytes(bytes(raw))
    caplog.clear()
    rebuilt = item_text_embeddings(dataset, encoder, root)
    assert "incomplete or corrupt" in caplog.text
    np.testing.assert_allclose(rebuilt, vectors, atol=1e-6)

    # an entry built from other item cards (another catalogue in the same cache root) is detected and rebuilt
    other = load_dataset(replace(cfg, synthetic=SyntheticConfig(n_users=50, n_items=60, seed=9)), tmp_path)
    caplog.clear()
    changed = item_text_embeddings(other, encoder, root)
    assert "built from different item cards" in caplog.text
    assert changed.shape == vectors.shape and not np.allclose(changed, vectors)
