"""`python -m experiments.evaluate dataset=NAME agent=pop|sasrec` (or `agent=[pop,sasrec]`).

Prepares whatever is missing (through the cache), evaluates every agent on the same users of the split with
full ranking, prints a markdown table with 95% bootstrap intervals and writes `results.json` in the run
directory: one object per agent `{"dataset", "split", "agent", "n_users", "metrics", "beyond"}` (a list of
them when several agents run), plus `comparisons.json` with paired differences against the first agent.
"""

from __future__ import annotations

from collections.abc import Callable

import hydra
import numpy as np
from omegaconf import DictConfig, ListConfig

from agents.baselines import popularity_scorer
from deeprec_env.data.dataset import RecDataset
from deeprec_env.evaluation import Evaluation, evaluate_scorer
from deeprec_env.metrics import coverage, intra_list_diversity, long_tail_share, paired_difference, summarize
from deeprec_env.trm.train import load_or_train, scorer_for
from experiments.common import CONFIG_PATH, log, markdown_table, run_dir, trm_config, write_json
from experiments.prepare import prepare

REPORTED = ["recall@10", "ndcg@10", "mrr@10"]


def agent_scorers(cfg: DictConfig, dataset: RecDataset, root) -> dict[str, Callable]:
    """Builders for the ID-level agents, instantiated only when asked for."""
    return {
        "pop": lambda: popularity_scorer(dataset),
        "sasrec": lambda: scorer_for(load_or_train(dataset, trm_config(cfg.sasrec), root)[0]),
    }


def evaluation_users(cfg: DictConfig, dataset: RecDataset) -> np.ndarray:
    """All users with a target in the split, or a fixed seeded sample of `eval.max_users`."""
    users = dataset.eval_users(cfg.split)
    if cfg.eval.max_users and len(users) > cfg.eval.max_users:
        users = np.sort(np.random.default_rng(cfg.seed).choice(users, cfg.eval.max_users, replace=False))
    return users


def result_record(cfg: DictConfig, dataset: RecDataset, agent: str, outcome: Evaluation) -> dict:
    """The `results.json` object for one agent: accuracy and beyond-accuracy metrics with intervals."""
    lists = outcome.lists[:, : cfg.eval.list_k]
    beyond = {
        "category_diversity": intra_list_diversity(lists, [m.categories for m in dataset.items]),
        "long_tail_share": long_tail_share(lists, dataset.item_popularity(), cfg.eval.long_tail_head),
    }
    return {
        "dataset": dataset.name,
        "split": cfg.split,
        "agent": agent,
        "n_users": int(len(outcome.users)),
        "metrics": summarize(outcome.per_user(), cfg.eval.bootstrap, seed=cfg.seed),
        "beyond": {"coverage": coverage(lists, dataset.n_items)}
        | summarize(beyond, cfg.eval.bootstrap, seed=cfg.seed),
    }


def table_row(record: dict) -> dict:
    row = {"agent": record["agent"], "users": record["n_users"]}
    for name in REPORTED:
        m = record["metrics"][name]
        row[name] = f"{m['mean']:.4f} [{m['low']:.4f}, {m['high']:.4f}]"
    row["coverage@10"] = record["beyond"]["coverage"]
    row["long-tail"] = record["beyond"]["long_tail_share"]["mean"]
    return row


def evaluate(cfg: DictConfig) -> list[dict]:
    agents = list(cfg.agent) if isinstance(cfg.agent, ListConfig) else [str(cfg.agent)]
    dataset, root = prepare(cfg)
    builders = agent_scorers(cfg, dataset, root)
    unknown = [a for a in agents if a not in builders]
    if unknown:
        raise SystemExit(f"unknown agent {unknown[0]!r}; choose from {', '.join(builders)}")
    users = evaluation_users(cfg, dataset)
    outcomes = {
        agent: evaluate_scorer(
            builders[agent](),
            dataset,
            users,
            cfg.split,
            exclude_history=cfg.eval.exclude_history,
            batch_size=cfg.eval.batch_size,
            progress=True,
        )
        for agent in agents
    }
    records = [result_record(cfg, dataset, agent, outcome) for agent, outcome in outcomes.items()]
    print(
        f"\n{dataset.name} — {cfg.split} split, {len(users)} users, full ranking, 95% bootstrap intervals\n"
    )
    print(
        markdown_table(
            [table_row(r) for r in records], ["agent", "users", *REPORTED, "coverage@10", "long-tail"]
        )
    )

    out = run_dir()
    write_json(out / "results.json", records[0] if len(records) == 1 else records)
    if len(agents) > 1:
        base = outcomes[agents[0]].per_user()
        comparisons = {
            f"{agent}-vs-{agents[0]}": {
                name: paired_difference(
                    outcomes[agent].per_user()[name], base[name], cfg.eval.bootstrap, seed=cfg.seed
                )
                for name in REPORTED
            }
            for agent in agents[1:]
        }
        write_json(out / "comparisons.json", comparisons)
        for pair, diffs in comparisons.items():
            d = diffs["ndcg@10"]
            log.info("%s: NDCG@10 difference %+.4f [%+.4f, %+.4f]", pair, d["mean"], d["low"], d["high"])
    return records


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
