"""The synthetic dataset: determinism, shapes, unique titles, sequences following the latent ground truth."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from deeprec_env.data.dataset import PAD, RecDataset
from deeprec_env.data.source import DatasetConfig, SyntheticConfig, load_dataset
from deeprec_env.data.synthetic import generate_synthetic, synthetic_category_names

# Long sequences, so per-user statistics are meaningful.
LONG = SyntheticConfig(n_users=600, n_items=600, n_categories=8, min_len=40, max_len=60, seed=3)


@pytest.fixture(scope="module")
def default() -> RecDataset:
    return generate_synthetic(SyntheticConfig())


@pytest.fixture(scope="module")
def long() -> RecDataset:
    return generate_synthetic(LONG)


def _same_category_rate(ds: RecDataset) -> tuple[float, float]:
    """Observed share of consecutive same-primary-category pairs, and its expectation from the latent mixtures
    (stickiness + (1 - stickiness) * sum_c w_c^2 per transition, ignoring the rare exhausted categories)."""
    cat = ds.extras["item_category"]
    prefs = ds.extras["user_preferences"].astype(np.float64)
    same = total = 0
    expected = 0.0
    for user, seq in enumerate(ds.sequences):
        c = cat[seq]
        same += int((c[1:] == c[:-1]).sum())
        total += len(c) - 1
        expected += (len(c) - 1) * float((prefs[user] ** 2).sum())
    return same / total, expected / total


def test_deterministic_for_a_seed():
    cfg = SyntheticConfig(n_users=80, n_items=120, seed=11)
    a, b = generate_synthetic(cfg), generate_synthetic(cfg)
    assert len(a.sequences) == len(b.sequences)
    assert all(np.array_equal(x, y) for x, y in zip(a.sequences, b.sequences, strict=True))
    assert a.items == b.items
    assert a.extras.keys() == b.extras.keys()
    assert all(np.array_equal(a.extras[k], b.extras[k]) for k in a.extras)

    c = generate_synthetic(replace(cfg, seed=12))
    assert [m.title for m in c.items] != [m.title for m in a.items]
    assert any(len(x) != len(y) or not np.array_equal(x, y) for x, y in zip(a.sequences, c.sequences, strict=True))
    assert not np.array_equal(a.extras["user_preferences"], c.extras["user_preferences"])


def test_shapes_ids_and_lengths(default: RecDataset):
    cfg = SyntheticConfig()
    assert default.n_users == cfg.n_users and default.n_items == cfg.n_items
    assert len(default.items) == cfg.n_items + 1 and default.items[0].title == "<pad>"
    assert default.raw_user_ids == [f"u{u}" for u in range(cfg.n_users)]
    assert default.raw_item_ids == [""] + [f"i{i}" for i in range(1, cfg.n_items + 1)]
    for seq in default.sequences:
        assert seq.dtype == np.int64
        assert cfg.min_len <= len(seq) <= cfg.max_len
        assert seq.min() >= 1 and seq.max() <= cfg.n_items and PAD not in seq
        assert len(np.unique(seq)) == len(seq), "a user saw the same item twice"
    lengths = np.array([len(s) for s in default.sequences])
    assert lengths.min() < lengths.max()  # lengths actually vary


def test_extras_ground_truth(default: RecDataset):
    cfg = SyntheticConfig()
    prefs = default.extras["user_preferences"]
    assert prefs.dtype == np.float32 and prefs.shape == (cfg.n_users, cfg.n_categories)
    assert np.all(prefs >= 0)
    np.testing.assert_allclose(prefs.sum(axis=1), 1.0, atol=1e-5)
    assert np.all((prefs > 0).sum(axis=1) <= cfg.categories_per_user)

    item_cat = default.extras["item_category"]
    assert item_cat.dtype == np.int64 and item_cat.shape == (cfg.n_items + 1,)
    assert item_cat[0] == -1 and item_cat[1:].min() >= 0 and item_cat[1:].max() < cfg.n_categories
    counts = np.bincount(item_cat[1:], minlength=cfg.n_categories)
    assert counts.max() - counts.min() <= 1  # balanced primary categories

    names = synthetic_category_names(cfg.n_categories)
    assert len(names) == len(set(names)) == cfg.n_categories
    for item in range(1, default.n_items + 1):
        meta = default.items[item]
        assert meta.categories[0] == names[item_cat[item]]
        assert len(meta.categories) in (1, 2) and len(set(meta.categories)) == len(meta.categories)
        assert meta.year is not None and 1980 <= meta.year <= 2023
        assert not meta.title.rstrip().endswith(")")  # no "(year)" inside the title
    assert any(len(m.categories) == 2 for m in default.items[1:])  # some items have a secondary category


def test_titles_unique_and_readable():
    # 3000 items over 4 categories of 144 word pairs each: title collisions are certain.
    ds = generate_synthetic(SyntheticConfig(n_users=5, n_items=3000, n_categories=4, seed=1))
    titles = [m.title for m in ds.items[1:]]
    assert len(set(titles)) == len(titles)
    assert all(t and t[0].isupper() and t == t.strip() for t in titles)
    assert any(t.endswith(" II") for t in titles)  # collisions were resolved with sequel numerals


def test_category_names():
    assert synthetic_category_names(3) == synthetic_category_names(24)[:3]
    assert len(synthetic_category_names(24)) == 24
    with pytest.raises(ValueError, match="n_categories"):
        synthetic_category_names(25)
    with pytest.raises(ValueError, match="n_categories"):
        generate_synthetic(SyntheticConfig(n_categories=100))


def test_invalid_configs_raise():
    with pytest.raises(ValueError):
        generate_synthetic(SyntheticConfig(categories_per_user=9, n_categories=8))
    with pytest.raises(ValueError):
        generate_synthetic(SyntheticConfig(min_len=10, max_len=5))
    with pytest.raises(ValueError):
        generate_synthetic(SyntheticConfig(n_items=20, max_len=30))
    with pytest.raises(ValueError):
        generate_synthetic(SyntheticConfig(stickiness=1.5))


def test_items_come_from_the_latent_mixture(long: RecDataset):
    cat = long.extras["item_category"]
    prefs = long.extras["user_preferences"]
    in_mixture = total = agree = 0
    for user, seq in enumerate(long.sequences):
        c = cat[seq]
        in_mixture += int((prefs[user, c] > 0).sum())
        total += len(c)
        counts = np.bincount(c, minlength=prefs.shape[1])
        agree += int(counts.argmax() == prefs[user].argmax())
    assert in_mixture == total  # every item lies in one of the user's chosen categories
    assert agree / long.n_users >= 0.85, agree / long.n_users

    # Across users, the empirical category shares track the latent weights closely.
    empirical = np.stack([np.bincount(cat[s], minlength=prefs.shape[1]) / len(s) for s in long.sequences])
    assert np.corrcoef(empirical.ravel(), prefs.ravel())[0, 1] > 0.9


def test_stickiness_matches_theory():
    base = replace(LONG, n_users=400, categories_per_user=3, concentration=5.0)
    rates = {}
    for stickiness in (0.0, 0.5, 0.9):
        ds = generate_synthetic(replace(base, stickiness=stickiness))
        observed, mixture_repeat = _same_category_rate(ds)
        expected = stickiness + (1 - stickiness) * mixture_repeat
        assert abs(observed - expected) < 0.03, (stickiness, observed, expected)
        rates[stickiness] = observed
    assert rates[0.0] + 0.15 < rates[0.5] < rates[0.9] - 0.1


def test_popularity_is_skewed(long: RecDataset):
    counts = np.bincount(np.concatenate(long.sequences), minlength=long.n_items + 1)[1:]
    top = np.sort(counts)[::-1]
    tenth = len(top) // 10
    assert top[:tenth].sum() > 2.5 * top[-tenth:].sum()  # top decile far more popular than the bottom one
    weights = long.extras["item_weight"][1:]
    assert np.corrcoef(weights, counts)[0, 1] > 0.3


def test_exhausted_categories_still_no_repeats():
    # 40 items over 8 categories (5 each) but 20-30 items per user: liked categories run out.
    cfg = SyntheticConfig(n_users=50, n_items=40, categories_per_user=1, min_len=20, max_len=30)
    ds = generate_synthetic(cfg)
    for seq in ds.sequences:
        assert 20 <= len(seq) <= 30 and len(np.unique(seq)) == len(seq)


def test_save_load_round_trip(default: RecDataset, tmp_path):
    default.save(tmp_path / "ds")
    loaded = RecDataset.load(tmp_path / "ds")
    assert loaded.name == default.name and loaded.items == default.items
    assert loaded.raw_user_ids == default.raw_user_ids and loaded.raw_item_ids == default.raw_item_ids
    assert all(np.array_equal(x, y) for x, y in zip(loaded.sequences, default.sequences, strict=True))
    assert loaded.extras.keys() == default.extras.keys()
    for key, value in default.extras.items():
        assert loaded.extras[key].dtype == value.dtype
        np.testing.assert_array_equal(loaded.extras[key], value)


def test_load_dataset_synthetic(tmp_path):
    synth = SyntheticConfig(n_users=120, n_items=90, n_categories=5, min_len=5, max_len=12, seed=4)
    cfg = DatasetConfig(name="synthetic", format="synthetic", dir=None, min_core=1, files={}, synthetic=synth)
    ds = load_dataset(cfg, artifacts=tmp_path)
    stats = ds.stats()
    assert stats["users"] == 120 and stats["items"] == 90 and stats["dataset"] == "synthetic"
    assert 5 <= stats["mean_seq_len"] <= 12
    assert ds.extras["user_preferences"].shape == (120, 5)
    direct = generate_synthetic(synth)
    assert all(np.array_equal(x, y) for x, y in zip(ds.sequences, direct.sequences, strict=True))
    again = load_dataset(cfg, artifacts=tmp_path)  # from the cache
    np.testing.assert_array_equal(again.extras["item_category"], direct.extras["item_category"])
