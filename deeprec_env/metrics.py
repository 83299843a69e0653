"""Evaluation metrics for leave-one-out, full-ranking recommendation (numpy only).

Conventions shared by every function here:

* Item ids are contiguous ints ``1..n_items``; id 0 is padding. Score matrices have shape
  ``(batch, n_items + 1)`` and column 0 is never ranked or recommended.
* Ranks are 0-based. Ties are broken by item id ascending, so an item's rank is the number of eligible items
  with a strictly greater score plus the number of tied items with a lower id. `top_k` uses the same order,
  hence ``target in top_k(scores, k)[row]`` exactly when ``target_ranks(scores, targets)[row] < k``.
* ``exclude[row]`` holds item ids (usually the user's history) removed from row ``row``'s ranking; padding ids
  and duplicates in it are ignored.
* Per-user metrics are returned as arrays; `summarize` turns them into means with bootstrap confidence
  intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

NOT_FOUND = np.iinfo(np.int64).max
"""Rank that `list_ranks` gives a target missing from its list; every top-k metric scores it 0."""

_BOOTSTRAP_CHUNK = 1 << 22  # resampled values held in memory at once
_DIVERSITY_CHUNK = 1 << 22  # (list position x category) or (position x position) cells held at once


def _check_scores(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must have shape (batch, n_items + 1) with n_items >= 1, got {scores.shape}")
    if np.issubdtype(scores.dtype, np.floating) and np.isnan(scores[:, 1:]).any():
        raise ValueError("scores contain NaN")
    return scores


def _exclusion_pairs(exclude: Sequence[np.ndarray] | None, batch: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Flatten ``exclude`` into deduplicated (row, item id) pairs, padding ids dropped."""
    if exclude is None:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    if len(exclude) != batch:
        raise ValueError(f"exclude has {len(exclude)} rows, scores have {batch}")
    ids = [np.asarray(e, dtype=np.int64).reshape(-1) for e in exclude]
    rows = np.repeat(np.arange(batch, dtype=np.int64), [len(e) for e in ids])
    flat = np.concatenate(ids) if ids else np.empty(0, np.int64)
    if flat.size and (flat.min() < 0 or flat.max() > n_items):
        raise ValueError(f"excluded item ids must lie in 0..{n_items}")
    keys = np.unique(rows * (n_items + 1) + flat)
    rows, flat = np.divmod(keys, n_items + 1)
    keep = flat != 0
    return rows[keep], flat[keep]


def target_ranks(scores: np.ndarray, targets: np.ndarray, exclude: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """0-based rank of each row's target among all items ``1..n_items`` minus ``exclude[row]``.

    The target itself is never excluded, even when it appears in ``exclude[row]``. Ties go to the lower item
    id. Returns an int64 array of shape (batch,).
    """
    scores = _check_scores(scores)
    batch, n_cols = scores.shape
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    if targets.shape != (batch,):
        raise ValueError(f"targets must have shape ({batch},), got {targets.shape}")
    if targets.size and (targets.min() < 1 or targets.max() >= n_cols):
        raise ValueError(f"targets must lie in 1..{n_cols - 1}")

    items = scores[:, 1:]
    ids = np.arange(1, n_cols)
    target_scores = scores[np.arange(batch), targets][:, None]
    beats = (items > target_scores) | ((items == target_scores) & (ids < targets[:, None]))
    ranks = beats.sum(axis=1, dtype=np.int64)

    # Excluded items that outrank the target no longer count; the target never outranks itself, so listing it
    # in `exclude` changes nothing.
    rows, ex = _exclusion_pairs(exclude, batch, n_cols - 1)
    ex_scores, ex_targets = scores[rows, ex], target_scores[rows, 0]
    ex_beats = (ex_scores > ex_targets) | ((ex_scores == ex_targets) & (ex < targets[rows]))
    return ranks - np.bincount(rows[ex_beats], minlength=batch)


def top_k(scores: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """The ``k`` best item ids per row, best first, ties broken by lower item id; shape (batch, k), int64.

    Padding and ``exclude[row]`` ids are never returned; a row with fewer than ``k`` eligible items raises
    ValueError.
    """
    scores = _check_scores(scores)
    batch, n_cols = scores.shape
    n_items = n_cols - 1
    if not 1 <= k <= n_items:
        raise ValueError(f"k must lie in 1..{n_items}, got {k}")

    work = scores[:, 1:].astype(np.result_type(scores.dtype, np.float32), copy=True)  # column j = item j + 1
    eligible = np.ones(work.shape, dtype=bool)
    rows, ex = _exclusion_pairs(exclude, batch, n_items)
    eligible[rows, ex - 1] = False
    work[rows, ex - 1] = -np.inf
    n_eligible = eligible.sum(axis=1)
    if (n_eligible < k).any():
        raise ValueError(f"a row has only {n_eligible.min()} eligible items, fewer than k={k}")

    # argpartition finds a top-k set, but ties at the k-th score may be split arbitrarily (and -inf excluded
    # items may slip in): rows where that can happen are redone exactly.
    chosen = np.argpartition(work, n_items - k, axis=1)[:, n_items - k :]
    kth = np.take_along_axis(work, chosen, axis=1).min(axis=1)
    ambiguous = np.isneginf(kth) | ((work >= kth[:, None]).sum(axis=1) != k)
    for row in np.flatnonzero(ambiguous):
        above = np.flatnonzero(eligible[row] & (work[row] > kth[row]))
        tied = np.flatnonzero(eligible[row] & (work[row] == kth[row]))
        chosen[row] = np.concatenate([above, tied[: k - len(above)]])

    # Order the chosen items: ascending id first, then a stable sort by descending score.
    chosen = np.sort(chosen, axis=1)
    order = np.argsort(-np.take_along_axis(work, chosen, axis=1), axis=1, kind="stable")
    return np.take_along_axis(chosen, order, axis=1).astype(np.int64) + 1


def list_ranks(lists: Sequence[Sequence[int]], targets: Sequence[int] | np.ndarray) -> np.ndarray:
    """0-based position of each target's first occurrence in its ranked list, or `NOT_FOUND` when absent."""
    if len(lists) != len(targets):
        raise ValueError(f"{len(lists)} lists but {len(targets)} targets")
    ranks = np.full(len(lists), NOT_FOUND, dtype=np.int64)
    for row, (items, target) in enumerate(zip(lists, targets, strict=True)):
        for position, item in enumerate(items):
            if item == target:
                ranks[row] = position
                break
    return ranks


def ranking_metrics(
    ranks: np.ndarray,
    ks_recall: Sequence[int] = (1, 5, 10, 20),
    ks_ndcg: Sequence[int] = (5, 10, 20),
    mrr_k: int = 10,
) -> dict[str, np.ndarray]:
    """Per-user ``recall@k``, ``ndcg@k`` and ``mrr@k`` (float64 arrays) from 0-based target ranks.

    With one target per user: recall@k = 1[rank < k], ndcg@k = 1 / log2(rank + 2) and mrr@k = 1 / (rank + 1)
    when rank < k, else 0.
    """
    ranks = np.asarray(ranks, dtype=np.int64)
    if ranks.size and ranks.min() < 0:
        raise ValueError("ranks must be non-negative")
    # Clipping keeps NOT_FOUND from overflowing; every clipped rank lies outside all the cut-offs anyway.
    top = max([*ks_recall, *ks_ndcg, mrr_k], default=0)
    r = np.minimum(ranks, top).astype(np.float64)
    out: dict[str, np.ndarray] = {}
    for k in ks_recall:
        out[f"recall@{k}"] = (ranks < k).astype(np.float64)
    for k in ks_ndcg:
        out[f"ndcg@{k}"] = np.where(ranks < k, 1.0 / np.log2(r + 2.0), 0.0)
    out[f"mrr@{mrr_k}"] = np.where(ranks < mrr_k, 1.0 / (r + 1.0), 0.0)
    return out


def _valid_ids(items: Sequence[int]) -> np.ndarray:
    """A list's item ids with padding and non-positive placeholders (e.g. unmatched titles) dropped."""
    ids = np.asarray(items, dtype=np.int64).reshape(-1)
    return ids[ids > 0]


def coverage(lists: Sequence[Sequence[int]], n_items: int) -> float:
    """Catalogue coverage: distinct item ids recommended across all lists / ``n_items`` (ids <= 0 ignored)."""
    valid = [_valid_ids(items) for items in lists]
    distinct = np.unique(np.concatenate(valid)) if valid else np.empty(0, np.int64)
    if distinct.size and distinct.max() > n_items:
        raise ValueError(f"item id {distinct.max()} exceeds n_items={n_items}")
    return distinct.size / n_items


def intra_list_diversity(lists: Sequence[Sequence[int]], item_categories: Sequence[tuple[str, ...]]) -> np.ndarray:
    """Per-list mean pairwise category dissimilarity, 1 - Jaccard(categories of item a, categories of item b).

    ``item_categories[i]`` holds item ``i``'s categories (index 0 = padding). Pairs in which either item has
    no categories (or an id <= 0) are skipped; a list with no valid pair gets NaN. Repeated items form pairs
    with dissimilarity 0.
    """
    vocab = {c: j for j, c in enumerate(sorted({c for cats in item_categories for c in cats}))}
    multi_hot = np.zeros((len(item_categories), max(len(vocab), 1)), dtype=bool)
    for item, cats in enumerate(item_categories):
        multi_hot[item, [vocab[c] for c in cats]] = True
    multi_hot[0] = False

    # Pad to a rectangle with id 0 (no categories, so its pairs are skipped).
    valid = [_valid_ids(items) for items in lists]
    length = max((len(v) for v in valid), default=0)
    ids = np.zeros((len(valid), length), dtype=np.int64)
    for row, v in enumerate(valid):
        ids[row, : len(v)] = v
    if ids.size and ids.max() >= len(item_categories):
        raise ValueError(f"item id {ids.max()} has no entry in item_categories")

    out = np.full(len(valid), np.nan)
    upper = np.triu(np.ones((length, length), dtype=bool), k=1)
    step = max(1, _DIVERSITY_CHUNK // max(1, length * max(length, multi_hot.shape[1])))
    for start in range(0, len(valid), step):
        hot = multi_hot[ids[start : start + step]].astype(np.float32)  # (b, L, C)
        sizes = hot.sum(axis=2)
        inter = np.einsum("blc,bmc->blm", hot, hot)
        union = sizes[:, :, None] + sizes[:, None, :] - inter
        pairs = upper & (sizes[:, :, None] > 0) & (sizes[:, None, :] > 0)
        dissim = np.where(pairs, 1.0 - inter / np.where(pairs, union, 1.0), 0.0)
        n_pairs = pairs.sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + step] = np.where(n_pairs > 0, dissim.sum(axis=(1, 2)) / n_pairs, np.nan)
    return out


def head_items(popularity: np.ndarray, head_fraction: float = 0.2) -> np.ndarray:
    """Mask over ids ``0..n_items`` of the ``head_fraction * n_items`` (rounded half up) most popular items.

    ``popularity[i]`` is item ``i``'s interaction count, e.g. in the training data (index 0 = padding, never
    head). Ties at the cut-off go to the lower item id.
    """
    if not 0.0 <= head_fraction <= 1.0:
        raise ValueError(f"head_fraction must lie in [0, 1], got {head_fraction}")
    popularity = np.asarray(popularity)
    n_items = len(popularity) - 1
    n_head = math.floor(head_fraction * n_items + 0.5)
    order = np.lexsort((np.arange(1, n_items + 1), -popularity[1:].astype(np.float64)))  # by -count, then id
    head = np.zeros(n_items + 1, dtype=bool)
    head[order[:n_head] + 1] = True
    return head


def long_tail_share(lists: Sequence[Sequence[int]], popularity: np.ndarray, head_fraction: float = 0.2) -> np.ndarray:
    """Per-list share of recommended items outside the head (see `head_items`); NaN for a list with no id.

    The head is the top ``head_fraction`` of items by popularity count (default: top 20% of the catalogue),
    the long tail is everything else. Ids <= 0 are ignored.
    """
    head = head_items(popularity, head_fraction)
    out = np.full(len(lists), np.nan)
    for row, items in enumerate(lists):
        ids = _valid_ids(items)
        if ids.size:
            out[row] = 1.0 - head[ids].mean()
    return out


def _bootstrap_columns(
    columns: np.ndarray, n_resamples: int, confidence: float, seed: int
) -> list[tuple[float, float, float]]:
    """``(mean, low, high)`` for each column of an (n, m) NaN-free array; all columns share the resamples."""
    n, m = columns.shape
    if n == 0:
        return [(float("nan"),) * 3] * m
    rng = np.random.default_rng(seed)
    step = max(1, _BOOTSTRAP_CHUNK // n)  # resamples per chunk: bounds memory to ~_BOOTSTRAP_CHUNK indices
    index_dtype = np.int32 if n < 2**31 else np.int64
    boot = np.empty((n_resamples, m))
    for start in range(0, n_resamples, step):
        size = min(step, n_resamples - start)
        idx = rng.integers(0, n, size=(size, n), dtype=index_dtype)
        if m < 4:  # gathering the resampled values is cheapest for a few columns
            boot[start : start + size] = np.stack([np.take(c, idx).mean(axis=1) for c in columns.T], axis=1)
        else:  # for many, count how often each user is drawn: one (size x n) @ (n x m) product
            flat = (idx + n * np.arange(size)[:, None]).ravel()
            boot[start : start + size] = np.bincount(flat, minlength=size * n).reshape(size, n) @ columns / n
    alpha = 1.0 - confidence
    lows, highs = np.quantile(boot, [alpha / 2, 1 - alpha / 2], axis=0)
    out = []
    for column, mean, low, high in zip(columns.T, columns.mean(axis=0), lows, highs, strict=True):
        if np.all(column == column[0]):  # exact, free of rounding in the resampled means
            low = high = mean
        out.append((float(mean), float(low), float(high)))
    return out


def bootstrap_interval(
    values: np.ndarray, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap confidence interval ``(mean, low, high)``; NaN values are dropped first.

    All NaN (or empty) input gives ``(nan, nan, nan)``; constant input gives ``low == mean == high``.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    return _bootstrap_columns(values[~np.isnan(values), None], n_resamples, confidence, seed)[0]


def paired_difference(
    a: np.ndarray, b: np.ndarray, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict[str, float | bool]:
    """Paired bootstrap of ``mean(a - b)`` over the same users; users with a NaN in either array are dropped.

    Returns ``mean``, ``low``, ``high`` and ``excludes_zero`` (the interval lies strictly on one side of 0).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    mean, low, high = bootstrap_interval(a - b, n_resamples, confidence, seed)
    return {"mean": mean, "low": low, "high": high, "excludes_zero": bool(low > 0 or high < 0)}


def summarize(
    per_user: dict[str, np.ndarray], n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict[str, dict[str, float]]:
    """``{metric: {"mean", "low", "high"}}`` (plain floats) as `bootstrap_interval` gives them, NaNs dropped.

    Metrics defined on the same users (same NaN pattern) share their resamples and are bootstrapped together.
    """
    arrays = {name: np.asarray(values, dtype=np.float64).reshape(-1) for name, values in per_user.items()}
    groups: dict[bytes, list[str]] = {}
    for name, values in arrays.items():
        groups.setdefault(np.isnan(values).tobytes(), []).append(name)
    out = {}
    for names in groups.values():
        keep = ~np.isnan(arrays[names[0]])
        columns = np.stack([arrays[name][keep] for name in names], axis=1)
        results = _bootstrap_columns(columns, n_resamples, confidence, seed)
        for name, (mean, low, high) in zip(names, results, strict=True):
            out[name] = {"mean": mean, "low": low, "high": high}
    return {name: out[name] for name in per_user}


def popularity_groups(popularity: np.ndarray, n_groups: int = 5) -> np.ndarray:
    """Popularity group of every id ``0..n_items``: quantile bins holding equal numbers of items (padding: -1).

    ``popularity[i]`` is item ``i``'s interaction count (index 0 = padding). Items are ordered from least to most
    popular and cut into ``n_groups`` consecutive runs whose sizes differ by at most one (the larger runs first), so
    group 0 holds the least popular items and group ``n_groups - 1`` the most popular ones. Items with equal counts
    are ordered by descending id, the order `head_items` uses: tied items may fall on both sides of a cut, and the
    lower id then lands in the more popular group, so the top group is the head whenever
    ``head_fraction * n_items`` equals its size.
    """
    popularity = np.asarray(popularity)
    n_items = len(popularity) - 1
    if not 1 <= n_groups <= n_items:
        raise ValueError(f"the number of popularity groups must lie in 1..{n_items} (the items), got {n_groups}")
    ids = np.arange(1, n_items + 1)
    order = np.lexsort((-ids, popularity[1:].astype(np.float64)))  # by count, then by descending id
    groups = np.full(n_items + 1, -1, dtype=np.int64)
    groups[order + 1] = np.arange(n_items) * n_groups // n_items
    return groups


def group_popularity_ranges(popularity: np.ndarray, groups: np.ndarray) -> list[tuple[int, int]]:
    """The bin edges of `popularity_groups`: ``(fewest, most)`` interactions of an item in each group."""
    popularity, groups = np.asarray(popularity), np.asarray(groups)
    return [
        (int(popularity[groups == g].min()), int(popularity[groups == g].max())) for g in range(int(groups.max()) + 1)
    ]


def exposure_shares(lists: Sequence[Sequence[int]], groups: np.ndarray) -> np.ndarray:
    """Share of all recommended slots (over every list) that hold an item of each popularity group.

    ``groups`` is `popularity_groups`' output. Ids <= 0 (padding, unmatched titles) fill no slot; the shares sum to
    1 over the groups, or are all NaN when no list holds an item.
    """
    groups = np.asarray(groups)
    valid = [_valid_ids(items) for items in lists]
    ids = np.concatenate(valid) if valid else np.empty(0, np.int64)
    if ids.size and ids.max() >= len(groups):
        raise ValueError(f"item id {ids.max()} has no popularity group")
    counts = np.bincount(groups[ids], minlength=int(groups.max()) + 1).astype(np.float64)
    return counts / ids.size if ids.size else np.full(counts.shape, np.nan)


def group_summaries(
    per_user: dict[str, np.ndarray],
    user_groups: np.ndarray,
    n_groups: int,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[dict[str, dict[str, float]]]:
    """`summarize` of the per-user metrics over the users of each group (``user_groups[u]``: the popularity group
    of user ``u``'s target); a group without users gets NaN means and intervals."""
    user_groups = np.asarray(user_groups)
    return [
        summarize(
            {name: np.asarray(v)[user_groups == g] for name, v in per_user.items()}, n_resamples, confidence, seed
        )
        for g in range(n_groups)
    ]


def hit_category_diversity(hit_items: Sequence[int], item_categories: Sequence[tuple[str, ...]]) -> tuple[int, float]:
    """How varied the categories of the recommended items that were hits are: ``(distinct, normalised entropy)``.

    ``hit_items`` holds one item id per hit (a user's target found in their list; repeats count again) and
    ``item_categories[i]`` item ``i``'s categories. Each hit spreads a weight of 1 evenly over its categories, so a
    multi-category item counts as much as a single-category one; hits without categories are skipped. ``distinct``
    is the number of categories with weight, the entropy is the Shannon entropy of the weights divided by the log of
    the catalogue's category count: 0 when every hit shares one category, 1 when the hits spread evenly over all
    the catalogue's categories. The entropy is NaN without a weighted hit or with fewer than two categories.
    """
    vocab = {c: j for j, c in enumerate(sorted({c for cats in item_categories for c in cats}))}
    weights = np.zeros(len(vocab))
    for item in _valid_ids(hit_items):
        cats = item_categories[item]
        for c in cats:
            weights[vocab[c]] += 1.0 / len(cats)
    total = weights.sum()
    if total == 0 or len(vocab) < 2:
        return int((weights > 0).sum()), float("nan")
    p = weights[weights > 0] / total
    return int(p.size), float(-(p * np.log(p)).sum() / math.log(len(vocab)))
