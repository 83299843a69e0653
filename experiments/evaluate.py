"""`python -m experiments.evaluate dataset=NAME agent=NAME` (or `agent=[pop,sasrec,...]`): every agent on the same
users of the split, full ranking.

Agents: ID-level rankers (`pop`, `reference`: the published SASRec recipe of `experiments.reference`, `sasrec`, `trm`,
`trm-oracle`, `trm-mismatch`, `trm-request`: the TRM queried with the user request the env would show,
`deeprec_env.requests`), text agents that act through the environment (`random`, `trm-agent`, `scripted`,
`scripted-copy`, `scripted-request`, `oracle`, or a class path `my_pkg.module.MyAgent`), and `llm` / `tag-ppo`, the
trained LLM or tag-action policy at `policy.path`. A trained policy is evaluated in the env it was trained with (its
`deeprec.json`); the run's other text agents play that env too, and a command-line `env.*` override that contradicts
it is one error line unless `eval.force_env=true`.

Prints markdown tables with 95% bootstrap intervals, overall and per item-popularity group, and writes into the run
directory `results.json` (one object per agent: `{"dataset", "split", "agent", "n_users", "metrics", "beyond",
"popularity_groups", "episode", "provenance"}`, the last naming the command and commit that made it), `results.md`,
`popularity.png` (NDCG@10 and exposure share per popularity group, `experiments.popularity`) and `comparisons.json`
with paired differences between every pair of agents, overall and within each popularity group.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, ListConfig

from agents.baselines import AgentFactory, TargetOf, popularity_scorer, text_agent_class
from agents.workers import RolloutPool
from deeprec_env.data.dataset import RecDataset
from deeprec_env.env import EnvConfig
from deeprec_env.evaluation import Evaluation, evaluate_scorer
from deeprec_env.metrics import (
    coverage,
    exposure_shares,
    group_popularity_ranges,
    group_summaries,
    hit_category_diversity,
    intra_list_diversity,
    list_ranks,
    long_tail_share,
    paired_difference,
    popularity_groups,
    summarize,
)
from deeprec_env.stack import Stack, build_stack
from experiments.common import (
    CONFIG_PATH,
    command_pool,
    entry_point,
    markdown_table,
    provenance,
    run_dir,
    seeded_sample,
    write_json,
)
from experiments.popularity import GROUP_METRICS, GROUPS_HEADING, group_table, plot_groups

REPORTED = ["recall@10", "ndcg@10", "mrr@10"]
TABLE_COLUMNS = [
    "agent",
    "users",
    *REPORTED,
    "coverage@10",
    "long-tail",
    "hit categories",
    "hit entropy",
    "turns",
    "tool_calls",
    "invalid_rate",
    "format_ok",
    "reward",
]
ID_AGENTS = ("pop", "reference", "sasrec", "trm", "trm-oracle", "trm-mismatch", "trm-request")
POLICY_AGENTS = {  # agents that play the trained policy at `policy.path`, with an example path
    "llm": "runs/ml-100k-tiny/stage2/final",
    "tag-ppo": "runs/ml-100k-tag-ppo/stage2/final",
}


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


def id_ranker(
    cfg: DictConfig, stack: Stack, name: str, users: np.ndarray, env: dict[str, Any]
) -> tuple[Callable, Callable | None]:
    """(scorer, per-user query or None) of an ID-level agent; `env`: the run's env fields (request shares)."""
    from deeprec_env.trm.retriever import InProcessRetriever

    if name == "pop":
        return popularity_scorer(stack.dataset), None
    if name == "sasrec":
        return InProcessRetriever(stack.recommender("sasrec")[0]).scores, None
    if name == "reference":
        from experiments.config import ReferenceConfig
        from experiments.reference import load_or_train_reference

        return load_or_train_reference(stack, ReferenceConfig(**cfg.reference), cfg.seed)[0].scores, None
    queries = {int(u): "" for u in users}
    if name == "trm-request":
        from deeprec_env.requests import user_request

        config = stack.env_config(**env)
        shares = (config.request_uninformative, config.request_misleading)
        target = {int(u): stack.dataset.history_and_target(int(u), cfg.split)[1] for u in users}
        queries = {u: user_request(stack.dataset, cfg.split, u, 0, t, *shares).text for u, t in target.items()}
    elif name != "trm":
        queries = oracle_queries(cfg, stack.dataset, users, mismatch=name == "trm-mismatch")
    return stack.retriever.scores, queries.get


def command_line_env(cfg: DictConfig) -> dict[str, Any]:
    """The `env` fields the command line (or a preset) set away from EnvConfig's defaults (the split aside)."""
    given, default = dataclasses.asdict(stack_env(cfg)), dataclasses.asdict(EnvConfig())
    return {k: v for k, v in given.items() if k not in TRAINING_ONLY and v != default[k]}


TRAINING_ONLY = ("split", "train_cuts")  # env fields of a policy's training that shape no evaluation episode


def stack_env(cfg: DictConfig) -> EnvConfig:
    from deeprec_env.config import typed

    return typed(EnvConfig, cfg.env)


def _conflicts(given: dict[str, Any], trained: dict[str, Any], prefix: str) -> list[str]:
    return [f"{prefix}.{k}={given[k]} (trained with {trained[k]})" for k in sorted(given) if given[k] != trained.get(k)]


def policy_settings(cfg: DictConfig, policies: dict[str, Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(env fields, generation settings) the run's text agents and policies use: the policies' recorded ones when a
    trained policy is evaluated (they must agree), else the command line's env. A command-line override that
    contradicts a policy's training is one error line unless `eval.force_env=true`."""
    from agents.llm import GENERATION_FIELDS, PolicyConfig, load_policy_settings

    env = command_line_env(cfg)
    recorded = {name: load_policy_settings(path) for name, path in policies.items()}
    recorded = {name: s for name, s in recorded.items() if s is not None}
    if not recorded:
        return env, {}

    def evaluated(settings: dict) -> tuple[dict, dict]:  # what shapes an evaluation episode
        return {k: v for k, v in settings["env"].items() if k not in TRAINING_ONLY}, settings["generation"]

    first, *others = recorded.values()
    if any(evaluated(s) != evaluated(first) for s in others):
        raise SystemExit(f"the policies {sorted(recorded)} were trained with different env or generation settings")
    trained_env = evaluated(first)[0]
    policy = dataclasses.asdict(PolicyConfig())
    generation = {k: cfg.policy[k] for k in GENERATION_FIELDS if cfg.policy[k] != policy[k]}
    conflicts = _conflicts(env, trained_env, "env") + _conflicts(generation, first["generation"], "policy")
    if first["dataset"] != cfg.dataset.name:
        conflicts.append(f"dataset={cfg.dataset.name} (trained on {first['dataset']})")
    if conflicts and not cfg.eval.force_env:
        raise SystemExit(
            f"the policy was trained otherwise than this command asks: {', '.join(conflicts)}; drop these overrides "
            "(the policy's deeprec.json is used) or add eval.force_env=true"
        )
    return trained_env | (env if cfg.eval.force_env else {}), first["generation"] | (
        generation if cfg.eval.force_env else {}
    )


def text_agent_evaluation(
    cfg: DictConfig,
    stack: Stack,
    env: dict[str, Any],
    users: np.ndarray,
    name: str,
    make_agent: Callable | None,
    pool: RolloutPool,
) -> tuple[Evaluation, dict[str, np.ndarray]]:
    """A text agent through the environment on `users` (answers matched to item ids), played by the pool's workers,
    and per-user episode statistics. `make_agent(dataset, codec, rec_k)` builds agents not found by name (a trained
    policy)."""
    dataset, rec_k = stack.dataset, stack.env_config(**env).rec_k
    if make_agent is None:
        extra = {"target_of": TargetOf(dataset)} if name == "oracle" else {}
        make_agent = AgentFactory(text_agent_class(name), seed=cfg.seed, **extra)
    episodes = pool.play(stack, env, make_agent, users, cfg.split, cfg.eval.n_envs, show_progress=True)
    lists = np.zeros((len(episodes), cfg.eval.list_k), dtype=np.int64)
    for row, episode in enumerate(episodes):
        ranked = episode.ranked_ids[: cfg.eval.list_k]
        lists[row, : len(ranked)] = ranked
    ranks = list_ranks([e.ranked_ids for e in episodes], [e.target for e in episodes])
    stats = {
        "reward": np.array([e.reward_total for e in episodes]),
        "format_ok": np.array([e.format_ok for e in episodes], dtype=float),
        "turns": np.array([e.n_turns for e in episodes], dtype=float),
        "tool_calls": np.array([len(e.tool_calls) for e in episodes], dtype=float),
        "invalid_rate": np.array([e.n_invalid / rec_k for e in episodes]),
        "duplicate_rate": np.array([e.n_duplicate / rec_k for e in episodes]),
        "truncated": np.array([e.truncated for e in episodes], dtype=float),
    }
    weights = stack.reward.reward.weights if stack.reward is not None else {}
    for term in ("interest", "explanation"):  # the RecGPT terms, unweighted, where the reward scores them
        if weights.get(term):
            stats[term] = np.array([e.reward_unweighted[term] for e in episodes])
    if "user_preferences" in dataset.extras:
        stats |= latent_category_recovery(dataset, episodes)
    return Evaluation(users, ranks, lists), stats


def latent_category_recovery(dataset: RecDataset, episodes) -> dict[str, np.ndarray]:
    """Synthetic data: precision and recall of the categories an agent's queries name against the user's true
    (latent) categories and, for episodes with an interest block, whether its heaviest long-term category tag is the
    user's top latent category (`interest_top_latent`)."""
    from deeprec_env.data.synthetic import synthetic_category_names

    preferences = dataset.extras["user_preferences"]
    names = synthetic_category_names(preferences.shape[1])
    tags = [name.lower() for name in names]
    precision, recall, top = [], [], []
    for episode in episodes:
        true = {n for n, w in zip(names, preferences[episode.user], strict=True) if w > 0}
        text = " ".join(episode.preferences).lower()
        named = {n for n in names if n.lower() in text}
        precision.append(len(named & true) / len(named) if named else np.nan)
        recall.append(len(named & true) / len(true))
        stated = [(w, t) for t, w in episode.interests.long_term if t in tags] if episode.interests else []
        heaviest = max(stated, key=lambda wt: wt[0])[1] if stated else None
        top.append(heaviest == tags[int(np.argmax(preferences[episode.user]))])
    recovery = {"query_category_precision": np.array(precision), "query_category_recall": np.array(recall)}
    if any(e.interests for e in episodes):
        recovery["interest_top_latent"] = np.array(top, dtype=float)
    return recovery


def evaluation_users(cfg: DictConfig, dataset: RecDataset) -> np.ndarray:
    """All users with a target in the split, or a fixed seeded sample of `eval.max_users`."""
    return seeded_sample(dataset.eval_users(cfg.split), cfg.eval.max_users, cfg.seed)


def split_targets(dataset: RecDataset, users: np.ndarray, split: str) -> np.ndarray:
    """Each user's target item in the split."""
    return np.array([dataset.history_and_target(int(u), split)[1] for u in users], dtype=np.int64)


def group_records(cfg: DictConfig, popularity: np.ndarray, outcome: Evaluation, targets: np.ndarray) -> list[dict]:
    """Per popularity group (`eval.popularity_groups` equal-size bins of the items by training interactions,
    `popularity`): its items and their interactions (the bin edges), the users whose target is in it with their
    Recall@10 and NDCG@10 (95% intervals), and the share of the run's top-`list_k` slots it gets."""
    groups = popularity_groups(popularity, cfg.eval.popularity_groups)
    per_user = {m: values for m, values in outcome.per_user().items() if m in GROUP_METRICS}
    n_groups = cfg.eval.popularity_groups
    metrics = group_summaries(per_user, groups[targets], n_groups, cfg.eval.bootstrap, seed=cfg.seed)
    exposure = exposure_shares(outcome.lists[:, : cfg.eval.list_k], groups)
    ranges = group_popularity_ranges(popularity, groups)
    return [
        {
            "group": g,
            "items": int((groups == g).sum()),
            "training_interactions": {"min": ranges[g][0], "max": ranges[g][1]},
            "users": int((groups[targets] == g).sum()),
        }
        | metrics[g]
        | {"exposure_share": float(exposure[g])}
        for g in range(n_groups)
    ]


def result_record(
    cfg: DictConfig,
    dataset: RecDataset,
    agent: str,
    outcome: Evaluation,
    targets: np.ndarray,
    episode_stats: dict | None = None,
) -> dict:
    """The `results.json` object for one agent: accuracy and beyond-accuracy metrics with intervals, overall and
    per popularity group; `targets`: each user's target."""
    lists = outcome.lists[:, : cfg.eval.list_k]
    categories, popularity = [m.categories for m in dataset.items], dataset.item_popularity()
    beyond = {
        "category_diversity": intra_list_diversity(lists, categories),
        "long_tail_share": long_tail_share(lists, popularity, cfg.eval.long_tail_head),
    }
    hit_categories, hit_entropy = hit_category_diversity(targets[outcome.ranks < cfg.eval.list_k], categories)
    return {
        "dataset": dataset.name,
        "split": cfg.split,
        "agent": agent,
        "n_users": int(len(outcome.users)),
        "metrics": summarize(outcome.per_user(), cfg.eval.bootstrap, seed=cfg.seed),
        "beyond": {"coverage": coverage(lists, dataset.n_items)}
        | summarize(beyond, cfg.eval.bootstrap, seed=cfg.seed)
        | {"hit_categories": hit_categories, "hit_category_entropy": hit_entropy},
        "popularity_groups": group_records(cfg, popularity, outcome, targets),
    } | ({"episode": summarize(episode_stats, cfg.eval.bootstrap, seed=cfg.seed)} if episode_stats else {})


def table_row(record: dict) -> dict:
    row = {"agent": record["agent"], "users": record["n_users"]}
    for name in REPORTED:
        m = record["metrics"][name]
        row[name] = f"{m['mean']:.4f} [{m['low']:.4f}, {m['high']:.4f}]"
    row["coverage@10"] = record["beyond"]["coverage"]
    row["long-tail"] = record["beyond"]["long_tail_share"]["mean"]
    row["hit categories"] = record["beyond"]["hit_categories"]
    row["hit entropy"] = record["beyond"]["hit_category_entropy"]
    for name in ("turns", "tool_calls", "invalid_rate", "format_ok", "reward"):
        row[name] = record["episode"][name]["mean"] if "episode" in record else ""
    return row


def results_table(records: list[dict]) -> str:
    """The markdown table of a run; episode columns appear only when a text agent ran."""
    rows = [table_row(r) for r in records]
    return markdown_table(rows, [c for c in TABLE_COLUMNS if any(row.get(c, "") != "" for row in rows)])


def comparison_row(pair: str, diff: dict) -> dict:
    return {k: diff[k] for k in ("mean", "low", "high", "excludes_zero")} | {"pair": pair}


def agent_names(cfg: DictConfig) -> list[str]:
    return [str(a) for a in cfg.agent] if isinstance(cfg.agent, ListConfig | list) else [str(cfg.agent)]


def evaluate(
    cfg: DictConfig,
    stack: Stack | None = None,
    policies: dict[str, Path] | None = None,
    out: Path | None = None,
    pool: RolloutPool | None = None,
) -> list[dict]:
    """Evaluate `cfg.agent` and the trained `policies` (name -> model directory; `llm` on the command line is
    `policy.path`) on the same users of `cfg.split`; writes the results into `out` (default: the Hydra run dir).
    Text agents and policies play on `pool` (None: one built from `cfg.rollout` for this call)."""
    if pool is None:
        with command_pool(cfg) as pool:
            return evaluate(cfg, stack, policies, out, pool)
    from agents.llm import LLMAgentFactory, LLMPolicy, policy_config
    from agents.training.ppo import is_tag_policy, load_tag_agent

    names = agent_names(cfg)
    policies = dict(policies or {})
    for name in POLICY_AGENTS:
        if name in names:
            if not cfg.policy.get("path"):
                raise SystemExit(f"agent={name} needs policy.path=DIR (a trained policy, e.g. {POLICY_AGENTS[name]})")
            policies[name] = Path(cfg.policy.path)
    names += [name for name in policies if name not in names]
    for name in names:
        if name not in ID_AGENTS and name not in policies:
            try:
                text_agent_class(name)
            except ValueError as err:
                raise SystemExit(f"{err}; the ID-level agents are {', '.join(ID_AGENTS)}") from None
    stack = stack or build_stack(cfg)
    env, generation = policy_settings(cfg, policies)
    users = evaluation_users(cfg, stack.dataset)
    outcomes, stats = {}, {}
    for name in names:
        if name in ID_AGENTS:
            scorer, queries = id_ranker(cfg, stack, name, users, env)
            outcomes[name] = evaluate_scorer(
                scorer,
                stack.dataset,
                users,
                cfg.split,
                queries,
                cfg.eval.exclude_history,
                cfg.eval.batch_size,
                progress=True,
            )
            continue
        make_agent = None
        if name in policies and is_tag_policy(policies[name]):
            make_agent = load_tag_agent(policies[name], stack.dataset)
        elif name in policies:
            config = dataclasses.replace(policy_config(cfg.policy), **generation)
            make_agent = LLMAgentFactory(LLMPolicy.load(policies[name], config))
        outcomes[name], stats[name] = text_agent_evaluation(cfg, stack, env, users, name, make_agent, pool)
    made_by = provenance()
    targets = split_targets(stack.dataset, users, cfg.split)
    records = [result_record(cfg, stack.dataset, name, outcomes[name], targets, stats.get(name)) for name in names]
    records = [record | {"provenance": made_by} for record in records]
    print(f"\n{stack.dataset.name}: {cfg.split} split, {len(users)} users, full ranking, 95% bootstrap intervals\n")
    print(results_table(records))
    print(f"\n{GROUPS_HEADING}\n")
    print(group_table(records))

    out = out or run_dir()
    write_json(out / "results.json", records)
    (out / "results.md").write_text(f"{results_table(records)}\n\n{GROUPS_HEADING}\n\n{group_table(records)}\n")
    plot_groups(records, out / "popularity.png")
    if len(names) > 1:
        per_user = {name: outcome.per_user() for name, outcome in outcomes.items()}
        for name, episode_stats in stats.items():  # text agents: the episode reward is compared too
            per_user[name] = per_user[name] | {"reward": episode_stats["reward"]}
        user_groups = popularity_groups(stack.dataset.item_popularity(), cfg.eval.popularity_groups)[targets]
        comparisons = {
            f"{later}-vs-{earlier}": {
                metric: paired_difference(
                    per_user[later][metric], per_user[earlier][metric], cfg.eval.bootstrap, seed=cfg.seed
                )
                for metric in [*REPORTED, "reward"]
                if metric in per_user[later] and metric in per_user[earlier]
            }
            | {"popularity_groups": group_differences(cfg, per_user[later], per_user[earlier], user_groups)}
            for i, earlier in enumerate(names)
            for later in names[i + 1 :]
        }
        write_json(out / "comparisons.json", comparisons)
        print("\nPaired differences in NDCG@10 (same users, 95% bootstrap)\n")
        rows = [comparison_row(pair, diffs["ndcg@10"]) for pair, diffs in comparisons.items()]
        print(markdown_table(rows, ["pair", "mean", "low", "high", "excludes_zero"]))
        print("\nPaired differences in NDCG@10 per popularity group (the users whose target is in the group)\n")
        rows = [{"pair": pair} | d for pair, diffs in comparisons.items() for d in diffs["popularity_groups"]]
        print(markdown_table(rows, ["pair", "group", "users", "mean", "low", "high", "excludes_zero"]))
    return records


def group_differences(
    cfg: DictConfig, later: dict[str, np.ndarray], earlier: dict[str, np.ndarray], user_groups: np.ndarray
) -> list[dict]:
    """Per popularity group, the paired NDCG@10 difference `later - earlier` over the users whose target is in it."""
    out = []
    for g in range(cfg.eval.popularity_groups):
        users = user_groups == g
        diff = paired_difference(later["ndcg@10"][users], earlier["ndcg@10"][users], cfg.eval.bootstrap, seed=cfg.seed)
        out.append({"group": g, "users": int(users.sum())} | diff)
    return out


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base="1.3")
@entry_point
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
