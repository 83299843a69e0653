"""`python -m experiments.probes dataset=NAME [probes_users=200] [env.protocol=chat]`: the reward-hacking probe suite.

Runs the honest scripted teacher and every adversarial probe (`agents.probes.PROBES`, and `RECGPT_PROBES` where the env
asks for interests or reasons, e.g. `+preset=recgpt "probes_presets=[recgpt]"`) through the environment on the
same fixed, seeded sample of `probes_users` users of `split`, under every reward preset of `probes_presets` (default:
`rec`, `cold` and the paper's `rec-paper`, `cold-paper`). Prints a markdown table per preset: mean reward with its
95% bootstrap interval, the paired difference to the scripted agent, NDCG@10 and its paired difference, format_ok,
tool calls and the mean of every non-zero reward term. A probe is "below" when its paired reward interval lies
strictly below zero. Under the presets of `probes_strict` every probe must be below (docs/rewards.md: reward hacking
is a bug); the paper presets' tables show which tricks they admit. Writes `probes.json` and `probes.md` (the tables,
with the command and commit) in the run directory.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import hydra
import numpy as np
from omegaconf import DictConfig

from agents.baselines import ScriptedAgent, TextAgent
from agents.probes import PROBES, RECGPT_PROBES, ProbeAgent
from deeprec_env.episode import Episode
from deeprec_env.metrics import bootstrap_interval, paired_difference
from deeprec_env.stack import Stack, build_stack
from experiments.common import CONFIG_PATH, entry_point, log, markdown_table, provenance, publish, seeded_sample

TABLE_COLUMNS = [
    "agent",
    "reward [95% CI]",
    "vs scripted [95% CI]",
    "below",
    "NDCG@10",
    "NDCG vs scripted [95% CI]",
    "format_ok",
    "tool_calls",
    "terms",
]


def run_probe(stack: Stack, cls: type[TextAgent], users: Sequence[int], split: str, n_envs: int, seed: int = 0) -> dict:
    """Roll out one agent class (a fresh agent per sub-env, seeds seed, seed + 1, ...) on `users`; per-user arrays:
    reward, NDCG@10 of the answer, format_ok, tool_calls and every reward term (weighted, as the env's reward computed
    them). Probes (`ProbeAgent`) are told the reward's context: they may attack it white-box."""
    from agents.rollout import rollout

    seeds = itertools.count(seed)
    envs = stack.make_vector_env(n_envs, autoreset_mode="Disabled")

    knows = {"reward_context": stack.reward.context} if issubclass(cls, ProbeAgent) and stack.reward else {}

    def make_agent():
        return cls(stack.dataset, protocol=envs.config.protocol, rec_k=envs.config.rec_k, seed=next(seeds), **knows)

    episodes = rollout(envs, make_agent, users, split, show_progress=False)
    return {
        "reward": np.array([e.reward_total for e in episodes], dtype=np.float64),
        "ndcg": np.array([answer_ndcg(e) for e in episodes], dtype=np.float64),
        "format_ok": np.array([e.format_ok for e in episodes], dtype=np.float64),
        "tool_calls": np.array([len(e.tool_calls) for e in episodes], dtype=np.float64),
        "terms": {n: np.array([e.reward_terms[n] for e in episodes]) for n in episodes[0].reward_terms},
    }


def answer_ndcg(episode: Episode) -> float:
    """NDCG@rec_k of the episode's answer (valid, de-duplicated items; 0 when unanswered)."""
    ranked = list(episode.ranked_ids[: episode.rec_k])
    return 1.0 / math.log2(ranked.index(episode.target) + 2) if episode.target in ranked else 0.0


def probe_users(cfg: DictConfig, dataset) -> np.ndarray:
    return seeded_sample(dataset.eval_users(cfg.split), cfg.probes_users, cfg.seed)


def preset_stacks(cfg: DictConfig) -> dict[str, Stack]:
    """One stack per preset of `probes_presets`, sharing the dataset, TRM and env; the run's own `reward` overrides
    apply to the preset it names."""
    stack = build_stack(cfg)
    given = str(cfg.reward.get("name", "custom"))
    return {preset: stack if preset == given else stack.with_reward(preset) for preset in cfg.probes_presets}


def _plain(diff: dict) -> dict:
    return {k: bool(v) if isinstance(v, bool | np.bool_) else float(v) for k, v in diff.items()}


def summarize_agent(cfg: DictConfig, run: dict, scripted: dict) -> dict:
    mean, low, high = (float(x) for x in bootstrap_interval(run["reward"], cfg.eval.bootstrap, seed=cfg.seed))
    diff = _plain(paired_difference(run["reward"], scripted["reward"], cfg.eval.bootstrap, seed=cfg.seed))
    ndcg = _plain(paired_difference(run["ndcg"], scripted["ndcg"], cfg.eval.bootstrap, seed=cfg.seed))
    return {
        "n_users": len(run["reward"]),
        "reward": {"mean": mean, "low": low, "high": high},
        "ndcg": float(run["ndcg"].mean()),
        "format_ok": float(run["format_ok"].mean()),
        "tool_calls": float(run["tool_calls"].mean()),
        "terms": {n: float(v.mean()) for n, v in run["terms"].items()},
        "vs_scripted": diff,
        "ndcg_vs_scripted": ndcg,
        "below_scripted": bool(diff["high"] < 0),
    }


def _interval(d: dict) -> str:
    return f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def table_row(agent: str, s: dict, is_reference: bool) -> dict:
    r = s["reward"]
    return {
        "agent": agent,
        "reward [95% CI]": f"{r['mean']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}]",
        "vs scripted [95% CI]": "reference" if is_reference else _interval(s["vs_scripted"]),
        "below": "—" if is_reference else ("yes" if s["below_scripted"] else "**NO**"),
        "NDCG@10": f"{s['ndcg']:.4f}",
        "NDCG vs scripted [95% CI]": "reference" if is_reference else _interval(s["ndcg_vs_scripted"]),
        "format_ok": f"{s['format_ok']:.2f}",
        "tool_calls": f"{s['tool_calls']:.2f}",
        "terms": ", ".join(f"{n}={v:+.3f}" for n, v in s["terms"].items() if v) or "0",
    }


def run_probes(cfg: DictConfig) -> dict:
    recgpt = cfg.env.interests or cfg.env.explanations  # the RecGPT tricks need the env to ask for their blocks
    agents: dict[str, type[TextAgent]] = {"scripted": ScriptedAgent, **PROBES, **(RECGPT_PROBES if recgpt else {})}
    results: dict = {"dataset": None, "split": cfg.split, "provenance": provenance(), "presets": {}}
    failures, report = [], []
    for preset, stack in preset_stacks(cfg).items():
        users = probe_users(cfg, stack.dataset)
        results["dataset"], results["n_users"] = stack.dataset.name, int(len(users))
        runs = {}
        protocol = stack.config.env.protocol
        for agent, cls in agents.items():
            log.info("reward=%s: rolling out %s on %d users", preset, agent, len(users))
            runs[agent] = run_probe(stack, cls, users, cfg.split, cfg.eval.n_envs, cfg.seed)
        summary = {agent: summarize_agent(cfg, run, runs["scripted"]) for agent, run in runs.items()}
        reward_config = dataclasses.asdict(stack.reward.config)
        results["protocol"] = protocol
        results["presets"][preset] = {"reward": reward_config} | summary
        if preset in cfg.probes_strict:
            failures += [(preset, a) for a, s in summary.items() if a != "scripted" and not s["below_scripted"]]
        admitted = [a for a, s in summary.items() if a != "scripted" and not s["below_scripted"]]
        report += [
            f"reward={preset} — {stack.dataset.name}, {cfg.split} split, {len(users)} users, protocol {protocol}, "
            f"paired 95% bootstrap; not significantly below the teacher: {', '.join(admitted) or 'none'}",
            "",
            markdown_table([table_row(a, s, a == "scripted") for a, s in summary.items()], TABLE_COLUMNS),
            "",
        ]
    results["failures"] = [{"preset": p, "probe": a} for p, a in failures]
    if failures:
        hacks = ", ".join(f"{a} under reward={p}" for p, a in failures)
        report.append(f"REWARD HACKS (probe not significantly below the scripted teacher): {hacks}")
    elif cfg.probes_strict:
        strict = ", ".join(cfg.probes_strict)
        report.append(f"Every probe stays significantly below the scripted teacher under {strict}.")
    publish("probes", results, report)
    return results


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base="1.3")
@entry_point
def main(cfg: DictConfig) -> None:
    run_probes(cfg)


if __name__ == "__main__":
    main()
