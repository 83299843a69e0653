import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deeprec_env.metrics import (
    NOT_FOUND,
    bootstrap_interval,
    coverage,
    exposure_shares,
    group_popularity_ranges,
    group_summaries,
    head_items,
    hit_category_diversity,
    intra_list_diversity,
    list_ranks,
    long_tail_share,
    paired_difference,
    popularity_groups,
    ranking_metrics,
    summarize,
    target_ranks,
    top_k,
)

# One user, items 1..5; the padding column holds the highest score and must be ignored.
SCORES = np.array([[99.0, 0.5, 0.9, 0.1, 0.7, 0.3]])


# --- target_ranks -------------------------------------------------------------------------------------------


def test_hand_computed_rank_and_metrics():
    # Target 3 (score 0.1) is beaten by items 1, 2, 4, 5; excluding history {1, 2} leaves 4 and 5 above it.
    ranks = target_ranks(SCORES, np.array([3]), exclude=[np.array([1, 2])])
    assert ranks.tolist() == [2]
    m = ranking_metrics(ranks)
    assert set(m) == {f"recall@{k}" for k in (1, 5, 10, 20)} | {f"ndcg@{k}" for k in (5, 10, 20)} | {"mrr@10"}
    assert m["recall@1"].tolist() == [0.0]
    assert m["recall@5"].tolist() == [1.0]
    assert m["ndcg@5"][0] == pytest.approx(0.5)  # 1 / log2(2 + 2)
    assert m["mrr@10"][0] == pytest.approx(1 / 3)


def test_rank_one_gives_exact_ndcg():
    ranks = target_ranks(SCORES, np.array([4]))  # only item 2 (0.9) beats 0.7
    assert ranks.tolist() == [1]
    m = ranking_metrics(ranks)
    assert m["ndcg@10"][0] == pytest.approx(1 / math.log2(3))
    assert m["mrr@10"][0] == pytest.approx(0.5)
    assert m["recall@1"][0] == 0.0 and m["recall@5"][0] == 1.0


def test_excluding_higher_items_improves_rank_by_their_count():
    base = target_ranks(SCORES, np.array([3]))[0]
    assert base == 4
    # Items 2 and 4 score above the target; item 0 (padding) is ignored, item 3 is the target itself.
    excluded = target_ranks(SCORES, np.array([3]), exclude=[np.array([0, 2, 4, 4, 3])])[0]
    assert excluded == base - 2


def test_excluding_lower_items_changes_nothing_and_target_is_never_excluded():
    target = np.array([4])
    base = target_ranks(SCORES, target)
    assert target_ranks(SCORES, target, exclude=[np.array([3, 5])]).tolist() == base.tolist()
    assert target_ranks(SCORES, target, exclude=[np.array([4])]).tolist() == base.tolist()
    assert target_ranks(SCORES, target, exclude=[np.array([2, 4])]).tolist() == [0]


def test_padding_column_is_never_counted():
    scores = SCORES.copy()
    for pad in (-np.inf, 0.3, np.inf):
        scores[0, 0] = pad
        assert target_ranks(scores, np.array([2])).tolist() == [0]


def test_ties_are_broken_by_item_id():
    scores = np.array([[0.0, 1.0, 2.0, 2.0, 2.0, 0.0]])
    assert target_ranks(np.repeat(scores, 3, axis=0), np.array([2, 3, 4])).tolist() == [0, 1, 2]
    assert top_k(scores, 3).tolist() == [[2, 3, 4]]
    assert top_k(scores, 4, exclude=[np.array([3])]).tolist() == [[2, 4, 1, 5]]


def test_invalid_inputs_raise():
    with pytest.raises(ValueError):
        target_ranks(SCORES, np.array([0]))
    with pytest.raises(ValueError):
        target_ranks(SCORES, np.array([6]))
    with pytest.raises(ValueError):
        target_ranks(SCORES, np.array([1]), exclude=[np.array([7])])
    with pytest.raises(ValueError):
        top_k(SCORES, 4, exclude=[np.array([1, 2])])
    with pytest.raises(ValueError):
        target_ranks(np.array([[0.0, np.nan, 1.0]]), np.array([2]))


# --- top_k vs target_ranks (property test) -------------------------------------------------------------


@st.composite
def ranking_problems(draw):
    batch = draw(st.integers(1, 4))
    n_items = draw(st.integers(1, 12))
    values = st.sampled_from([-np.inf, 0.0, 1.0, 2.0, 3.0, np.inf])  # few values: many ties
    scores = np.array(draw(st.lists(values, min_size=batch * (n_items + 1), max_size=batch * (n_items + 1))))
    scores = scores.reshape(batch, n_items + 1)
    targets = np.array([draw(st.integers(1, n_items)) for _ in range(batch)])
    history = st.lists(st.integers(0, n_items), max_size=n_items)
    exclude = [np.array(draw(history), dtype=np.int64) for _ in range(batch)]
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return scores.astype(dtype), targets, exclude


def _brute_order(row, excluded):
    """Eligible item ids sorted by (-score, id)."""
    eligible = [i for i in range(1, len(row)) if i not in excluded]
    return sorted(eligible, key=lambda i: (-row[i], i))


@settings(max_examples=300, deadline=None)
@given(problem=ranking_problems(), data=st.data())
def test_top_k_and_target_ranks_agree_with_brute_force(problem, data):
    scores, targets, exclude = problem
    # The target is never excluded by target_ranks; top_k does not know it, so it gets the history without it.
    history = [e[e != t] for e, t in zip(exclude, targets, strict=True)]
    ranks = target_ranks(scores, targets, exclude=exclude)
    orders = [_brute_order(row, set(h.tolist())) for row, h in zip(scores, history, strict=True)]
    assert ranks.tolist() == [order.index(t) for order, t in zip(orders, targets, strict=True)]

    k = data.draw(st.integers(1, min(len(order) for order in orders)))
    best = top_k(scores, k, exclude=history)
    assert best.shape == (len(scores), k)
    assert best.tolist() == [order[:k] for order in orders]
    for row, h, t, rank in zip(best, history, targets, ranks, strict=True):
        assert 0 not in row and not set(row.tolist()) & set(h.tolist())
        assert (t in row) == (rank < k)


def test_top_k_on_large_random_matrix_matches_full_sort():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 50, size=(64, 501)).astype(np.float32)
    exclude = [rng.choice(np.arange(1, 501), size=20, replace=False) for _ in range(64)]
    best = top_k(scores, 20, exclude=exclude)
    for row, ex, got in zip(scores, exclude, best, strict=True):
        assert got.tolist() == _brute_order(row, set(ex.tolist()))[:20]


# --- list_ranks and ranking_metrics -------------------------------------------------------------------------


def test_list_ranks():
    lists = [[5, 3, 7], [1, 2], [], [4, 4, 9, 4]]
    ranks = list_ranks(lists, [7, 9, 1, 4])
    assert ranks.tolist() == [2, NOT_FOUND, NOT_FOUND, 0]
    m = ranking_metrics(ranks)
    assert m["recall@5"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert m["ndcg@20"][1] == 0.0 and m["mrr@10"][2] == 0.0
    assert m["mrr@10"][0] == pytest.approx(1 / 3)


def test_ranking_metric_cutoffs():
    m = ranking_metrics(np.array([0, 9, 10, 19, 20]), ks_recall=(10,), ks_ndcg=(10,), mrr_k=10)
    assert m["recall@10"].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert m["ndcg@10"].tolist() == pytest.approx([1.0, 1 / math.log2(11), 0.0, 0.0, 0.0])
    assert m["mrr@10"].tolist() == pytest.approx([1.0, 0.1, 0.0, 0.0, 0.0])


# --- beyond-accuracy ----------------------------------------------------------------------------------------


def test_coverage():
    assert coverage([[1, 2], [2, 3]], n_items=10) == pytest.approx(0.3)
    assert coverage([[0, -1, 4], [4]], n_items=4) == pytest.approx(0.25)  # padding / placeholders ignored
    with pytest.raises(ValueError):
        coverage([[11]], n_items=10)


def test_intra_list_diversity():
    categories = [(), ("a",), ("a", "b"), ("b",), ()]
    div = intra_list_diversity([[1, 2], [1, 3], [1, 2, 3], [1, 4], [1, 1], [2, 0, 3, 4]], categories)
    assert div[:3].tolist() == pytest.approx([0.5, 1.0, 2 / 3])
    assert np.isnan(div[3])  # item 4 has no categories: no valid pair
    assert div[4] == 0.0
    assert div[5] == pytest.approx(0.5)  # only the pair (2, 3) counts
    assert np.nanmean(div) == pytest.approx((0.5 + 1.0 + 2 / 3 + 0.0 + 0.5) / 5)


def test_long_tail_share():
    popularity = np.array([0, 10, 50, 5, 5, 1, 0, 2, 3, 8, 4])  # head (top 20% of 10 items) = {2, 1}
    assert np.flatnonzero(head_items(popularity)).tolist() == [1, 2]
    share = long_tail_share([[1, 2, 3, 4], [5, 6], [2], []], popularity)
    assert share[:3].tolist() == [0.5, 1.0, 0.0]
    assert np.isnan(share[3])
    # Ties at the cut-off go to the lower id.
    assert np.flatnonzero(head_items(np.array([0, 5, 5, 5, 5, 5]), 0.4)).tolist() == [1, 2]


# --- popularity groups and hit diversity --------------------------------------------------------------------


def test_popularity_groups_by_hand():
    # Items from least to most popular: 5 (0 interactions), 6 (1), 4 and 3 (2, tied: the higher id counts as less
    # popular), 1 (5), 7 (8), 2 (9); 7 items in 3 groups of 3, 2 and 2 items, so the tied items are split.
    popularity = np.array([0, 5, 9, 2, 2, 0, 1, 8])
    groups = popularity_groups(popularity, 3)
    assert groups.tolist() == [-1, 1, 2, 1, 0, 0, 0, 2]
    assert group_popularity_ranges(popularity, groups) == [(0, 2), (2, 5), (8, 9)]
    assert popularity_groups(popularity, 1).tolist() == [-1] + [0] * 7
    assert popularity_groups(popularity, 7)[1:].tolist() == [4, 6, 3, 2, 0, 1, 5]  # one item each, by popularity
    for n_groups in (0, 8):
        with pytest.raises(ValueError, match="popularity groups must lie in 1..7"):
            popularity_groups(popularity, n_groups)


@settings(max_examples=200, deadline=None)
@given(counts=st.lists(st.integers(0, 6), min_size=1, max_size=40), data=st.data())  # few values: many ties
def test_popularity_groups_are_equal_sized_monotone_bins(counts, data):
    popularity = np.array([0, *counts])
    n_items = len(counts)
    n_groups = data.draw(st.integers(1, n_items))
    groups = popularity_groups(popularity, n_groups)
    assert groups[0] == -1 and set(groups[1:].tolist()) == set(range(n_groups))  # each item in exactly one group
    sizes = np.bincount(groups[1:], minlength=n_groups)
    assert sizes.sum() == n_items and sizes.max() - sizes.min() <= 1
    fewer = popularity[1:, None] < popularity[None, 1:]  # (a, b): item a has fewer interactions than item b
    assert not (fewer & (groups[1:, None] > groups[None, 1:])).any()  # fewer interactions, never a higher group
    ranges = group_popularity_ranges(popularity, groups)
    assert all(low <= high for low, high in ranges)
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    top = n_groups - 1  # the top group is the head when their sizes agree, ties included
    assert np.array_equal(groups == top, head_items(popularity, sizes[top] / n_items))


@settings(max_examples=100, deadline=None)
@given(lists=st.lists(st.lists(st.integers(-1, 9), max_size=6), max_size=6), n_groups=st.integers(1, 9))
def test_exposure_shares_sum_to_one(lists, n_groups):
    groups = popularity_groups(np.array([0, 4, 4, 1, 0, 7, 2, 2, 9, 3]), n_groups)
    shares = exposure_shares(lists, groups)
    assert shares.shape == (n_groups,)
    if any(item > 0 for items in lists for item in items):
        assert shares.sum() == pytest.approx(1.0) and shares.min() >= 0
    else:
        assert np.isnan(shares).all()


def test_exposure_shares_by_hand():
    groups = np.array([-1, 0, 0, 1, 1])  # items 1, 2 in group 0; 3, 4 in group 1
    assert exposure_shares([[1, 3, 4], [2, 0, -1, 3]], groups).tolist() == pytest.approx([0.4, 0.6])
    with pytest.raises(ValueError, match="item id 5 has no popularity group"):
        exposure_shares([[5]], groups)


def test_group_summaries_by_hand():
    user_groups = np.array([0, 1, 1, 0, 1])
    per_user = ranking_metrics(np.array([0, 3, 20, 1, 0]))  # hits at @10 for users 0, 1, 3, 4
    summaries = group_summaries(per_user, user_groups, 3, n_resamples=100)
    assert summaries[0]["recall@10"]["mean"] == pytest.approx(1.0)
    assert summaries[0]["ndcg@10"]["mean"] == pytest.approx((1 + 1 / np.log2(3)) / 2)
    assert summaries[1]["recall@10"]["mean"] == pytest.approx(2 / 3)
    assert summaries[1]["ndcg@10"]["mean"] == pytest.approx((1 / np.log2(5) + 0 + 1) / 3)
    assert all(np.isnan(v) for v in summaries[2]["ndcg@10"].values())  # a group without users


def test_hit_category_diversity_by_hand():
    categories = [(), ("a",), ("a", "b"), ("c",), (), ("d",)]  # four catalogue categories
    assert hit_category_diversity([1, 1], categories) == (1, 0.0)  # every hit in one category
    distinct, entropy = hit_category_diversity([1, 3, 5, 2, 2, 0], categories)  # weights a 2, b 1, c 1, d 1
    p = np.array([2, 1, 1, 1]) / 5
    assert distinct == 4 and entropy == pytest.approx(-(p * np.log(p)).sum() / np.log(4))
    assert hit_category_diversity([1, 3], categories) == (2, pytest.approx(0.5))  # two of four categories, evenly
    assert hit_category_diversity([1, 2, 3, 5, 4], [(), ("a",), ("b",), ("c",), ("d",), ()])[1] == pytest.approx(1.0)
    distinct, entropy = hit_category_diversity([4], categories)  # no hit with categories
    assert distinct == 0 and np.isnan(entropy)


# --- bootstrap ----------------------------------------------------------------------------------------------


def test_bootstrap_constant_input():
    for values in (np.full(1000, 0.1), np.array([3.0])):
        mean, low, high = bootstrap_interval(values)
        assert low == mean == high == pytest.approx(values[0])


def test_bootstrap_interval_contains_mean_and_is_deterministic():
    values = np.random.default_rng(1).normal(size=500)
    mean, low, high = bootstrap_interval(values)
    assert mean == pytest.approx(values.mean())
    assert low < mean < high
    assert high - low == pytest.approx(2 * 1.96 * values.std() / math.sqrt(500), rel=0.2)
    assert bootstrap_interval(values, seed=0) == (mean, low, high)
    assert bootstrap_interval(values, seed=1) != (mean, low, high)


def test_bootstrap_drops_nan_and_handles_empty():
    values = np.random.default_rng(2).random(200)
    with_nan = np.concatenate([values, [np.nan, np.nan]])
    assert bootstrap_interval(with_nan) == bootstrap_interval(values)
    assert all(math.isnan(x) for x in bootstrap_interval(np.array([np.nan])))


def test_paired_difference():
    rng = np.random.default_rng(3)
    a = rng.normal(1.0, 1.0, size=500)
    same = paired_difference(a, a.copy())
    assert same == {"mean": 0.0, "low": 0.0, "high": 0.0, "excludes_zero": False}
    b = a - 0.5 + rng.normal(0.0, 0.1, size=500)
    shifted = paired_difference(a, b)
    assert shifted["excludes_zero"] is True
    assert shifted["low"] < shifted["mean"] < shifted["high"]
    assert shifted["mean"] == pytest.approx(0.5, abs=0.05)
    assert paired_difference(a, b) == shifted
    noise = paired_difference(a, a + rng.normal(0.0, 1.0, size=500))
    assert noise["low"] < 0 < noise["high"] and noise["excludes_zero"] is False


def test_summarize():
    ranks = np.random.default_rng(4).integers(0, 30, size=300)
    per_user = ranking_metrics(ranks)
    per_user["diversity"] = np.where(np.arange(300) % 3 == 0, np.nan, 0.5)
    summary = summarize(per_user, n_resamples=200)
    assert set(summary) == set(per_user)
    json.dumps(summary)
    for name, stats in summary.items():
        assert set(stats) == {"mean", "low", "high"}
        assert all(type(v) is float for v in stats.values())
        assert stats["low"] <= stats["mean"] <= stats["high"]
        assert stats["mean"] == pytest.approx(np.nanmean(per_user[name]))
        # Bootstrapping metrics together gives the same intervals as one at a time.
        alone = bootstrap_interval(per_user[name], n_resamples=200)
        assert [stats["mean"], stats["low"], stats["high"]] == pytest.approx(list(alone), abs=1e-12)
    assert summary["diversity"] == {"mean": 0.5, "low": 0.5, "high": 0.5}
    assert summarize(per_user, n_resamples=200) == summary
