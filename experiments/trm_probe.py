"""`python -m experiments.trm_probe dataset=synthetic`: does the TRM follow the query, and without one, the user?

On the synthetic dataset every user's true category mixture is known, so two questions have exact answers:
- category following: for each user and each category, the query naming that category; the share of the top-20
  items carrying that category (primary or secondary), against the share without a query;
- latent mix recovery: with the empty query, the category distribution of the top-20 against the user's latent
  mixture (total variation distance; share of items in the user's own categories), beside popularity.
Writes `trm_probe.json` in the run directory.
"""

from __future__ import annotations

import hydra
import numpy as np
from omegaconf import DictConfig

from agents.baselines import popularity_scorer
from deeprec_env.data.synthetic import synthetic_category_names
from deeprec_env.metrics import top_k
from deeprec_env.stack import build_stack
from deeprec_env.trm.queries import category_query
from experiments.common import CONFIG_PATH, entry_point, markdown_table, run_dir, write_json


def category_shares(lists: np.ndarray, item_category: np.ndarray, n_categories: int) -> np.ndarray:
    """(users, n_categories): share of each list's items per primary category."""
    counts = np.stack([np.bincount(item_category[row], minlength=n_categories) for row in lists])
    return counts / lists.shape[1]


def probe(cfg: DictConfig) -> dict:
    stack = build_stack(cfg, with_reward=False)
    dataset, retriever = stack.dataset, stack.retriever
    if "user_preferences" not in dataset.extras:
        raise SystemExit("trm_probe needs a dataset with known user preferences: use dataset=synthetic")
    preferences = dataset.extras["user_preferences"]
    item_category = dataset.extras["item_category"]
    names = synthetic_category_names(preferences.shape[1])
    k = cfg.probe.k
    users = dataset.eval_users(cfg.split)[: cfg.probe.max_users]
    histories = [dataset.history_and_target(int(u), cfg.split)[0] for u in users]

    has_category = np.array([[name in meta.categories for name in names] for meta in dataset.items])
    following, unqueried = [], []
    empty_ids, _ = retriever.retrieve(histories, [""] * len(users), k)
    for c, name in enumerate(names):
        ids, _ = retriever.retrieve(histories, [category_query(name, "titles")] * len(users), k)
        following.append(has_category[ids, c].mean(axis=1))
        unqueried.append(has_category[empty_ids, c].mean(axis=1))
    per_category = {
        name: {"with_query": float(np.mean(f)), "without_query": float(np.mean(u))}
        for name, f, u in zip(names, following, unqueried, strict=True)
    }

    pop_ids = top_k(popularity_scorer(dataset)(histories), k, histories)
    user_prefs = preferences[users]
    mix = {}
    for label, ids in (("trm_empty_query", empty_ids), ("popularity", pop_ids)):
        shares = category_shares(ids, item_category, preferences.shape[1])
        mix[label] = {
            "total_variation": float(0.5 * np.abs(shares - user_prefs).sum(axis=1).mean()),
            "share_in_user_categories": float((shares * (user_prefs > 0)).sum(axis=1).mean()),
            "top_category_match": float((shares.argmax(1) == user_prefs.argmax(1)).mean()),
        }
    return {
        "dataset": dataset.name,
        "n_users": len(users),
        "k": k,
        "category_following": {
            "mean_share_with_query": float(np.mean(following)),
            "min_category_share_with_query": float(min(v["with_query"] for v in per_category.values())),
            "mean_share_without_query": float(np.mean(unqueried)),
            "per_category": per_category,
        },
        "latent_mix": mix,
    }


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base="1.3")
@entry_point
def main(cfg: DictConfig) -> None:
    result = probe(cfg)
    rows = [{"category": n, **v} for n, v in result["category_following"]["per_category"].items()]
    print(f"\nCategory queries, share of top-{result['k']} items in the named category ({result['n_users']} users)\n")
    print(markdown_table(rows, ["category", "with_query", "without_query"]))
    print("\nEmpty query vs the users' latent category mixtures\n")
    print(
        markdown_table(
            [{"ranker": k, **v} for k, v in result["latent_mix"].items()],
            ["ranker", "total_variation", "share_in_user_categories", "top_category_match"],
        )
    )
    write_json(run_dir() / "trm_probe.json", result)


if __name__ == "__main__":
    main()
