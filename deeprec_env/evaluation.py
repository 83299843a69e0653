"""Leave-one-out, full-ranking evaluation of any ID-level scorer (popularity, SASRec, TRM with a query)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deeprec_env.data.dataset import RecDataset
from deeprec_env.metrics import ranking_metrics, target_ranks, top_k
from deeprec_env.runtime import progress as progress_bar

# histories, optional query text per history -> scores (batch, n_items + 1); column 0 is padding
Scorer = Callable[[Sequence[np.ndarray], Sequence[str] | None], np.ndarray]


@dataclass
class Evaluation:
    """Per-user outcome of one evaluation: the target's 0-based rank and the top-`list_k` list."""

    users: np.ndarray
    ranks: np.ndarray
    lists: np.ndarray

    def per_user(self) -> dict[str, np.ndarray]:
        return ranking_metrics(self.ranks)


def evaluate_scorer(
    score: Scorer,
    dataset: RecDataset,
    users: np.ndarray,
    split: str,
    queries: Callable[[int], Any] | None = None,
    exclude_history: bool = True,
    batch_size: int = 256,
    list_k: int = 20,
    progress: bool = False,
    cuts: Sequence[int] | None = None,
) -> Evaluation:
    """Rank the whole catalogue for each user's split target; history items are excluded by default. `queries`
    gives each user's query as `score` takes it (text for a `Scorer`; a scorer of encoded queries takes vectors).
    `cuts`: each user's train cut point (`RecDataset.history_and_target`), for train-split episodes."""
    ranks, lists = [], []
    cuts = np.zeros(len(users), dtype=np.int64) if cuts is None else np.asarray(cuts)
    for start in progress_bar(range(0, len(users), batch_size), desc=f"evaluate {split}", disable=not progress):
        batch, batch_cuts = users[start : start + batch_size], cuts[start : start + batch_size]
        pairs = zip(batch, batch_cuts, strict=True)
        histories, targets = zip(*(dataset.history_and_target(int(u), split, int(c)) for u, c in pairs), strict=True)
        scores = score(histories, [queries(int(u)) for u in batch] if queries else None)
        exclude = list(histories) if exclude_history else None
        ranks.append(target_ranks(scores, np.asarray(targets), exclude))
        lists.append(top_k(scores, list_k, exclude))
    return Evaluation(np.asarray(users), np.concatenate(ranks), np.concatenate(lists))
