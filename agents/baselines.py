"""Baseline recommenders. ID-level scorers (popularity) rank the catalogue directly; the text agents that act
through the environment join them later."""

from __future__ import annotations

import numpy as np

from deeprec_env.data.dataset import RecDataset
from deeprec_env.evaluation import Scorer


def popularity_scorer(dataset: RecDataset) -> Scorer:
    """Scores every item by its training-interaction count, the same for every user."""
    popularity = dataset.item_popularity().astype(np.float64)
    popularity[0] = -np.inf

    def score(histories, queries=None) -> np.ndarray:
        return np.broadcast_to(popularity, (len(histories), len(popularity))).copy()

    return score
