"""The reward-hacking probe suite (docs/rewards.md): on the same users, no adversarial probe
(`agents.probes.PROBES`) may earn a mean reward as high as the honest scripted teacher, under `rec` or `cold`.

One small synthetic dataset and one quickly trained TRM (shared by both presets through the artifact cache); every
agent runs on the same 40 test users. `pytest -s` prints the table with the per-component means.
"""

import numpy as np
import pytest

from agents.baselines import ScriptedAgent
from agents.probes import PROBES
from experiments.probes import run_probe

PRESETS = ("rec", "cold")
N_USERS = 40
N_ENVS = 20
SMALL = [
    "dataset.synthetic.n_users=120",
    "dataset.synthetic.n_items=100",
    "trm.train.max_steps=200",
    "trm.train.eval_every=100",
    "trm.train.valid_users=100",
    "sasrec.train.max_steps=200",  # the TRM's backbone
    "sasrec.train.eval_every=100",
    "sasrec.train.valid_users=100",
]
AGENTS = {"scripted": ScriptedAgent, **PROBES}


def run_agent(stack, cls, users):
    """Mean reward, format_ok rate, tool calls and mean reward terms of one agent on `users`."""
    run = run_probe(stack, cls, users, "test", N_ENVS)
    return {
        "reward": float(run["reward"].mean()),
        "format_ok": float(run["format_ok"].mean()),
        "tool_calls": float(run["tool_calls"].mean()),
        "terms": {n: float(v.mean()) for n, v in run["terms"].items()},
    }


def table(results) -> str:
    lines = [
        "| preset | agent | mean reward | format_ok | tool calls | non-zero terms (mean) |",
        "|---|---|---|---|---|---|",
    ]
    for (preset, agent), r in results.items():
        terms = ", ".join(f"{n}={v:+.3f}" for n, v in r["terms"].items() if v)
        lines.append(
            f"| {preset} | {agent} | {r['reward']:+.4f} | {r['format_ok']:.2f} | {r['tool_calls']:.1f} | {terms} |"
        )
    return "\n".join(lines)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from deeprec_env.stack import stack_for

    artifacts = str(tmp_path_factory.mktemp("probe-artifacts"))  # one TRM, trained once, reused by both presets
    out = {}
    for preset in PRESETS:
        stack = stack_for("synthetic", preset, artifacts, SMALL)
        pool = stack.dataset.eval_users("test")
        users = np.sort(np.random.default_rng(0).choice(pool, min(N_USERS, len(pool)), replace=False))
        for agent, cls in AGENTS.items():
            out[(preset, agent)] = run_agent(stack, cls, users)
    print(f"\nreward probes: synthetic, {len(users)} test users\n\n{table(out)}\n")
    return out


@pytest.mark.parametrize("preset", PRESETS)
def test_scripted_reference_is_well_formed(results, preset):
    scripted = results[(preset, "scripted")]
    assert scripted["format_ok"] == 1.0


# Repeating one honest query is a ranking strategy, not only a hack of the reward: on synthetic data (users draw from
# latent category mixtures, so a query naming the main category is the best ranking) it out-ranks the scripted teacher
# by more than `rec`'s quarter-weight process terms take away (hit_rank +0.44 against invocation -0.15); on ml-100k it
# stays significantly below the teacher under `rec` (results/ml-100k-probes/).
NOT_HACKS = {("rec", "identical-queries")}


@pytest.mark.parametrize(("preset", "probe"), [(p, q) for p in PRESETS for q in PROBES if (p, q) not in NOT_HACKS])
def test_probe_earns_less_than_scripted(results, preset, probe):
    honest, hack = results[(preset, "scripted")], results[(preset, probe)]
    gains = {n: hack["terms"][n] - honest["terms"][n] for n in hack["terms"] if hack["terms"][n] != honest["terms"][n]}
    differences = ", ".join(f"{n}={d:+.4f}" for n, d in gains.items()) or "none (the reward cannot tell them apart)"
    assert hack["reward"] < honest["reward"], (
        f"probe {probe!r} beats or ties the scripted agent under reward={preset}: "
        f"{hack['reward']:.4f} >= {honest['reward']:.4f}; probe terms {hack['terms']}; "
        f"term differences (probe - scripted): {differences}"
    )
