"""`python -m experiments.probes dataset=NAME [reward=rec] [probes_users=200]`: the reward-hacking probe suite.

Runs the honest scripted teacher and every adversarial probe (`agents.probes.PROBES`) through the environment on the
same fixed, seeded sample of `probes_users` users of `split`, under the reward preset given by `reward=` (with any
command-line overrides of it) and under `cold` (the two DeepRec stages). Prints a markdown table per preset: mean
reward with its 95% bootstrap interval, format_ok rate, the mean of every non-zero reward term, the paired
difference to the scripted agent and whether the probe stays strictly below it (docs/rewards.md:
reward hacking is a bug). Writes `probes.json` and `probes.md` (the tables, with the command and commit) in the run
directory.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import hydra
import numpy as np
from omegaconf import DictConfig

from agents.baselines import ScriptedAgent, TextAgent
from agents.probes import PROBES
from deeprec_env.metrics import bootstrap_interval, paired_difference
from deeprec_env.stack import Stack, build_stack
from experiments.common import CONFIG_PATH, entry_point, log, markdown_table, provenance, run_dir, write_json

TABLE_COLUMNS = [
    "agent",
    "users",
    "reward [95% CI]",
    "format_ok",
    "tool_calls",
    "vs scripted [95% CI]",
    "below",
    "terms",
]


def run_probe(stack: Stack, cls: type[TextAgent], users: Sequence[int], split: str, n_envs: int, seed: int = 0) -> dict:
    """Roll out one agent class (a fresh agent per sub-env, seeds seed, seed + 1, ...) on `users`; per-user arrays:
    reward, format_ok, tool_calls and every reward term (weighted, as the env's reward computed them)."""
    from agents.rollout import rollout

    seeds = itertools.count(seed)
    envs = stack.make_vector_env(n_envs, autoreset_mode="Disabled")

    def make_agent():
        return cls(stack.dataset, protocol=envs.config.protocol, rec_k=envs.config.rec_k, seed=next(seeds))

    episodes = rollout(envs, make_agent, users, split, show_progress=False)
    return {
        "reward": np.array([e.reward_total for e in episodes], dtype=np.float64),
        "format_ok": np.array([e.format_ok for e in episodes], dtype=np.float64),
        "tool_calls": np.array([len(e.tool_calls) for e in episodes], dtype=np.float64),
        "terms": {n: np.array([e.reward_terms[n] for e in episodes]) for n in episodes[0].reward_terms},
    }


def probe_users(cfg: DictConfig, dataset) -> np.ndarray:
    users = dataset.eval_users(cfg.split)
    n = cfg.probes_users
    if n and len(users) > n:
        users = np.sort(np.random.default_rng(cfg.seed).choice(users, n, replace=False))
    return users


def preset_stacks(cfg: DictConfig) -> dict[str, Stack]:
    """The run's stack (its `reward` as given) and, unless it already is cold, the same stack scoring with the cold
    preset (dataset, TRM and env shared)."""
    stack = build_stack(cfg)
    given = str(cfg.reward.get("name", "custom"))
    return {given: stack} | ({} if given == "cold" else {"cold": stack.with_reward("cold")})


def summarize_agent(cfg: DictConfig, run: dict, scripted: dict) -> dict:
    mean, low, high = (float(x) for x in bootstrap_interval(run["reward"], cfg.eval.bootstrap, seed=cfg.seed))
    diff = paired_difference(run["reward"], scripted["reward"], cfg.eval.bootstrap, seed=cfg.seed)
    diff = {k: bool(v) if isinstance(v, bool | np.bool_) else float(v) for k, v in diff.items()}
    return {
        "n_users": len(run["reward"]),
        "reward": {"mean": mean, "low": low, "high": high},
        "format_ok": float(run["format_ok"].mean()),
        "tool_calls": float(run["tool_calls"].mean()),
        "terms": {n: float(v.mean()) for n, v in run["terms"].items()},
        "vs_scripted": diff,
        "below_scripted": bool(mean < float(scripted["reward"].mean())),
    }


def table_row(agent: str, s: dict, is_reference: bool) -> dict:
    r, d = s["reward"], s["vs_scripted"]
    versus = "reference" if is_reference else f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"
    return {
        "agent": agent,
        "users": s["n_users"],
        "reward [95% CI]": f"{r['mean']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}]",
        "format_ok": s["format_ok"],
        "tool_calls": f"{s['tool_calls']:.2f}",
        "vs scripted [95% CI]": versus,
        "below": "—" if is_reference else ("yes" if s["below_scripted"] else "**NO**"),
        "terms": ", ".join(f"{n}={v:+.3f}" for n, v in s["terms"].items() if v) or "0",
    }


def run_probes(cfg: DictConfig) -> dict:
    agents: dict[str, type[TextAgent]] = {"scripted": ScriptedAgent, **PROBES}
    results: dict = {"dataset": None, "split": cfg.split, "provenance": provenance(), "presets": {}}
    failures, report = [], []
    for preset, stack in preset_stacks(cfg).items():
        users = probe_users(cfg, stack.dataset)
        results["dataset"], results["n_users"] = stack.dataset.name, int(len(users))
        runs = {}
        for agent, cls in agents.items():
            log.info("reward=%s: rolling out %s on %d users", preset, agent, len(users))
            runs[agent] = run_probe(stack, cls, users, cfg.split, cfg.eval.n_envs, cfg.seed)
        summary = {agent: summarize_agent(cfg, run, runs["scripted"]) for agent, run in runs.items()}
        reward_config = dataclasses.asdict(stack.reward.config)
        results["presets"][preset] = {"reward": reward_config} | summary
        failures += [(preset, a) for a, s in summary.items() if a != "scripted" and not s["below_scripted"]]
        report += [
            f"reward={preset} — {stack.dataset.name}, {cfg.split} split, {len(users)} users, 95% bootstrap",
            "",
            markdown_table([table_row(a, s, a == "scripted") for a, s in summary.items()], TABLE_COLUMNS),
            "",
        ]
    results["failures"] = [{"preset": p, "probe": a} for p, a in failures]
    if failures:
        hacks = ", ".join(f"{a} under reward={p}" for p, a in failures)
        report.append(f"REWARD HACKS (probe mean >= scripted mean): {hacks}")
    else:
        report.append("Every probe stays below the scripted agent under every preset.")
    made = results["provenance"]
    report += ["", f"Measured by `{made['command']}` (commit {made['commit']})."]
    print("\n" + "\n".join(report))
    write_json(run_dir() / "probes.json", results)
    (run_dir() / "probes.md").write_text("\n".join(report) + "\n")
    return results


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base="1.3")
@entry_point
def main(cfg: DictConfig) -> None:
    run_probes(cfg)


if __name__ == "__main__":
    main()
