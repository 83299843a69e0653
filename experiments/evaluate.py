"""`python -m experiments.evaluate dataset=NAME agent=pop|sasrec` (or `agent=[pop,sasrec]`), including the text agents
(random, trm-agent, scripted, oracle) that act through the environment on the same users.

Prepares whatever is missing (through the cache), evaluates every agent on the same users of the split with
full ranking, prints a markdown table with 95% bootstrap intervals and writes `results.json` in the run
directory: one object per agent `{"dataset", "split", "agent", "n_users", "metrics", "beyond"}` (a list of
them when several agents run), plus `comparisons.json` with paired differences between every pair of agents.
"""

from __future__ import annotations

from collections.abc import Callable

import hydra
import numpy as np
from omegaconf import DictConfig, ListConfig

from agents.baselines import popularity_scorer
from deeprec_env.data.dataset import RecDataset
from deeprec_env.evaluation import Evaluation, evaluate_scorer
from deeprec_env.metrics import (
    coverage,
    intra_list_diversity,
    list_ranks,
    long_tail_share,
    paired_difference,
    summarize,
)
from deeprec_env.trm.retriever import InProcessRetriever
from experiments.common import CONFIG_PATH, markdown_table, run_dir, text_encoder, trained_model, write_json
from experiments.prepare import prepare

REPORTED = ["recall@10", "ndcg@10", "mrr@10"]
TABLE_COLUMNS = [
    "agent",
    "users",
    *REPORTED,
    "coverage@10",
    "long-tail",
    "turns",
    "tool_calls",
    "invalid_rate",
    "format_ok",
    "reward",
]


def oracle_queries(cfg: DictConfig, dataset: RecDataset, users: np.ndarray, mismatch: bool) -> dict[int, str]:
    """A query phrased from each user's true target (the oracle), or from another user's target (the control)."""
    from deeprec_env.trm.queries import query_phrasings

    sources = np.random.default_rng(cfg.seed).permutation(users) if mismatch else users
    if mismatch:  # a derangement: nobody keeps their own target's query
        sources = np.roll(sources, 1)
    return {
        int(user): query_phrasings(dataset, dataset.history_and_target(int(source), cfg.split)[1], 1, cfg.seed)[0]
        for user, source in zip(users, sources, strict=True)
    }


def agent_scorers(cfg: DictConfig, dataset: RecDataset, root, users: np.ndarray) -> dict[str, Callable]:
    """Builders of (scorer, per-user query or None) for every ID-level agent, instantiated only when asked for."""

    def trm(queries: dict[int, str] | None):
        model, _ = trained_model(cfg, "trm", dataset, root)
        return InProcessRetriever(model, text_encoder(cfg)).scores, (queries or {}).get

    return {
        "pop": lambda: (popularity_scorer(dataset), None),
        "sasrec": lambda: (InProcessRetriever(trained_model(cfg, "sasrec", dataset, root)[0]).scores, None),
        "trm": lambda: trm({int(u): "" for u in users}),
        "trm-oracle": lambda: trm(oracle_queries(cfg, dataset, users, mismatch=False)),
        "trm-mismatch": lambda: trm(oracle_queries(cfg, dataset, users, mismatch=True)),
    }


def text_agent_evaluation(
    cfg: DictConfig, dataset: RecDataset, env, users: np.ndarray, agent: str, make_agent: Callable | None = None
):
    """Run a text agent through the environment on `users`: its Evaluation (answers matched to item ids) and
    per-user episode statistics. `make_agent` builds agents not in TEXT_AGENTS (an LLM policy)."""
    from agents.baselines import TEXT_AGENTS
    from agents.rollout import rollout, vector_env

    extra = {"target_of": lambda user, split: dataset.history_and_target(user, split)[1]} if agent == "oracle" else {}

    def make_baseline():
        return TEXT_AGENTS[agent](dataset, protocol=env.codec, rec_k=env.config.rec_k, seed=cfg.seed, **extra)

    episodes, rewards = rollout(vector_env(env, cfg.eval.n_envs), make_agent or make_baseline, users, env.config.split)
    lists = np.zeros((len(episodes), cfg.eval.list_k), dtype=np.int64)
    for row, episode in enumerate(episodes):
        ranked = episode.ranked_ids[: cfg.eval.list_k]
        lists[row, : len(ranked)] = ranked
    ranks = list_ranks([e.ranked_ids for e in episodes], [e.target for e in episodes])
    rec_k = env.config.rec_k
    stats = {
        "reward": np.asarray(rewards),
        "format_ok": np.array([e.format_ok for e in episodes], dtype=float),
        "turns": np.array([e.n_turns for e in episodes], dtype=float),
        "tool_calls": np.array([len(e.tool_calls) for e in episodes], dtype=float),
        "invalid_rate": np.array([e.n_invalid / rec_k for e in episodes]),
        "duplicate_rate": np.array([e.n_duplicate / rec_k for e in episodes]),
        "truncated": np.array([e.truncated for e in episodes], dtype=float),
    }
    if "user_preferences" in dataset.extras:
        stats |= latent_category_recovery(dataset, episodes)
    return Evaluation(users, ranks, lists), stats


def latent_category_recovery(dataset: RecDataset, episodes) -> dict[str, np.ndarray]:
    """Synthetic data: precision and recall of the categories an agent's queries name against the user's true
    (latent) categories."""
    from deeprec_env.data.synthetic import synthetic_category_names

    names = synthetic_category_names(dataset.extras["user_preferences"].shape[1])
    precision, recall = [], []
    for episode in episodes:
        true = {n for n, w in zip(names, dataset.extras["user_preferences"][episode.user], strict=True) if w > 0}
        text = " ".join(episode.preferences).lower()
        named = {n for n in names if n.lower() in text}
        precision.append(len(named & true) / len(named) if named else np.nan)
        recall.append(len(named & true) / len(true))
    return {"query_category_precision": np.array(precision), "query_category_recall": np.array(recall)}


def evaluation_users(cfg: DictConfig, dataset: RecDataset) -> np.ndarray:
    """All users with a target in the split, or a fixed seeded sample of `eval.max_users`."""
    users = dataset.eval_users(cfg.split)
    if cfg.eval.max_users and len(users) > cfg.eval.max_users:
        users = np.sort(np.random.default_rng(cfg.seed).choice(users, cfg.eval.max_users, replace=False))
    return users


def result_record(
    cfg: DictConfig, dataset: RecDataset, agent: str, outcome: Evaluation, episode_stats: dict | None = None
) -> dict:
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
        "beyond": {"coverage": coverage(lists, dataset.n_items)} | summarize(beyond, cfg.eval.bootstrap, seed=cfg.seed),
    } | ({"episode": summarize(episode_stats, cfg.eval.bootstrap, seed=cfg.seed)} if episode_stats else {})


def table_row(record: dict) -> dict:
    row = {"agent": record["agent"], "users": record["n_users"]}
    for name in REPORTED:
        m = record["metrics"][name]
        row[name] = f"{m['mean']:.4f} [{m['low']:.4f}, {m['high']:.4f}]"
    row["coverage@10"] = record["beyond"]["coverage"]
    row["long-tail"] = record["beyond"]["long_tail_share"]["mean"]
    for name in ("turns", "tool_calls", "invalid_rate", "format_ok", "reward"):
        row[name] = record["episode"][name]["mean"] if "episode" in record else ""
    return row


def results_table(records: list[dict]) -> str:
    """The markdown table of a run; episode columns appear only when a text agent ran."""
    rows = [table_row(r) for r in records]
    return markdown_table(rows, [c for c in TABLE_COLUMNS if any(row.get(c, "") != "" for row in rows)])


def comparison_row(pair: str, diff: dict) -> dict:
    return {
        "pair": pair,
        "difference": diff["mean"],
        "low": diff["low"],
        "high": diff["high"],
        "excludes_zero": diff["excludes_zero"],
    }


def llm_agent_builder(cfg: DictConfig) -> Callable:
    """Agent `llm`: the policy at `policy.path` (e.g. a trained `runs/<dataset>-<policy>/stage2/final`)."""
    from agents.llm import LLMPolicy, llm_agents, policy_config

    if not cfg.policy.get("path"):
        raise SystemExit("agent=llm needs policy.path=DIR (a model directory, e.g. runs/ml-100k-tiny/stage2/final)")
    return llm_agents(LLMPolicy.load(cfg.policy.path, policy_config(cfg.policy)))


def evaluate(cfg: DictConfig, extra_agents: dict[str, Callable] | None = None, env=None, out=None) -> list[dict]:
    """Evaluate `cfg.agent` (plus `extra_agents`: name -> (env -> text-agent builder), e.g. LLM policies) on the
    same users; text agents act through `env` (built from `cfg` when None). Writes results into `out` (default:
    the Hydra run directory)."""
    extra_agents = dict(extra_agents or {})
    agents = list(cfg.agent) if isinstance(cfg.agent, ListConfig) else [str(cfg.agent)]
    if "llm" in agents and "llm" not in extra_agents:
        extra_agents["llm"] = llm_agent_builder(cfg)
    agents += [a for a in extra_agents if a not in agents]
    dataset, root = prepare(cfg, models=[])
    users = evaluation_users(cfg, dataset)
    builders = agent_scorers(cfg, dataset, root, users)
    from agents.baselines import TEXT_AGENTS

    unknown = [a for a in agents if a not in builders and a not in TEXT_AGENTS and a not in extra_agents]
    if unknown:
        raise SystemExit(f"unknown agent {unknown[0]!r}; choose from {', '.join([*builders, *TEXT_AGENTS])}")
    outcomes, stats = {}, {}
    for agent in agents:
        if agent in TEXT_AGENTS or agent in extra_agents:
            if env is None:
                from deeprec_env.registration import build_env

                env = build_env(cfg, split=cfg.split)
            outcomes[agent], stats[agent] = text_agent_evaluation(
                cfg, dataset, env, users, agent, extra_agents[agent](env) if agent in extra_agents else None
            )
            continue
        scorer, queries = builders[agent]()
        outcomes[agent] = evaluate_scorer(
            scorer, dataset, users, cfg.split, queries, cfg.eval.exclude_history, cfg.eval.batch_size, progress=True
        )
    records = [result_record(cfg, dataset, agent, outcomes[agent], stats.get(agent)) for agent in agents]
    print(f"\n{dataset.name} — {cfg.split} split, {len(users)} users, full ranking, 95% bootstrap intervals\n")
    print(results_table(records))

    out = out or run_dir()
    write_json(out / "results.json", records[0] if len(records) == 1 else records)
    if len(agents) > 1:
        per_user = {agent: outcome.per_user() for agent, outcome in outcomes.items()}
        comparisons = {
            f"{later}-vs-{earlier}": {
                name: paired_difference(
                    per_user[later][name], per_user[earlier][name], cfg.eval.bootstrap, seed=cfg.seed
                )
                for name in REPORTED
            }
            for i, earlier in enumerate(agents)
            for later in agents[i + 1 :]
        }
        write_json(out / "comparisons.json", comparisons)
        (out / "results.md").write_text(results_table(records) + "\n")
        print("\nPaired differences in NDCG@10 (same users, 95% bootstrap)\n")
        print(
            markdown_table(
                [comparison_row(pair, diffs["ndcg@10"]) for pair, diffs in comparisons.items()],
                ["pair", "difference", "low", "high", "excludes_zero"],
            )
        )
    return records


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
