"""Every command in the README works as written: each `python -m experiments.*` line composes its config (every key
exists, every value type-checks, every agent and bench task resolves), each `make` target and `pip` extra exists,
and the Python agent loop runs to the end (on a small random TRM instead of a trained one: the training it would do
on first use is what the rest of the suite tests). The README stays under 1,200 words and its status table holds
the numbers of the results file it names."""

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from fakes import random_stack

import deeprec_env.stack
import experiments.config  # noqa: F401  (registers the experiments schema)
from agents.baselines import text_agent_class
from deeprec_env.config import compose
from deeprec_env.data.source import load_dataset
from deeprec_env.stack import stack_config
from experiments.bench import TASKS
from experiments.evaluate import ID_AGENTS, POLICY_AGENTS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, flags=re.DOTALL)
COMMANDS = [line.strip() for kind, body in BLOCKS if not kind for line in body.splitlines() if line.strip()]


def test_readme_is_short():
    assert len(README.split()) < 1200


@pytest.mark.parametrize("line", [c for c in COMMANDS if c.startswith("python -m experiments.")])
def test_experiment_commands_compose(line):
    words = shlex.split(line, comments=True)
    module = words[2]
    main = __import__(module, fromlist=["main"]).main
    assert callable(main)
    if module == "experiments.report":
        return  # argparse: directories and --out
    overrides = [w for w in words[3:] if w != "-m"]
    overrides = [o.split(",")[0] if "," in o and "[" not in o else o for o in overrides]  # a sweep's first job
    cfg = compose("config", overrides)
    agents = cfg.agent if isinstance(cfg.agent, str) else list(cfg.agent)
    for agent in [agents] if isinstance(agents, str) else agents:
        assert agent in ID_AGENTS or agent in POLICY_AGENTS or text_agent_class(agent)
    assert set(cfg.bench.tasks) <= set(TASKS)


def test_tag_policy_status_rows_match_their_results():
    table = README[README.index("Tag-query policies") : README.index("## Install")]
    folders = {"paper setting": "ml-100k-tag-ppo-two-phase", "user requests": "ml-100k-tag-ppo-requests"}
    for setting, folder in folders.items():
        row = re.search(rf"^\| {setting}[^|]*\| (\S+ \[\S+, \S+\]) \| (\S+) \| (\S+) (\S+) \|$", table, flags=re.M)
        results = json.loads((ROOT / "results" / folder / "evaluation" / "results.json").read_text())
        ndcg = {r["agent"]: r["metrics"]["ndcg@10"] for r in results}
        policy, trm, other, other_ndcg = row.groups()
        assert policy == f"{ndcg['tag-ppo']['mean']:.4f} [{ndcg['tag-ppo']['low']:.4f}, {ndcg['tag-ppo']['high']:.4f}]"
        assert (trm, other_ndcg) == (f"{ndcg['trm']['mean']:.4f}", f"{ndcg[other]['mean']:.4f}")


def test_make_targets_and_pip_extras_exist():
    makefile = (ROOT / "Makefile").read_text()
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for line in COMMANDS:
        words = shlex.split(line, comments=True)
        if words[0] == "make":
            assert re.search(rf"^{words[1]}:", makefile, flags=re.MULTILINE), line
        if words[:2] == ["pip", "install"] and "-e" in words:
            wanted = re.findall(r"\[(.*)\]", words[-1])
            assert not wanted or set(wanted[0].split(",")) <= extras, line
        if words[0] == "tensorboard":
            assert any("tensorboard" in dependency for dependency in extras_of("train"))


def extras_of(name: str) -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][name]


def test_agent_loop_runs(tmp_path, monkeypatch, capsys):
    (snippet,) = [body for kind, body in BLOCKS if kind == "python"]
    built = []

    def small_stack(dataset, reward, artifacts, overrides):
        """The stack the snippet asks for, with a small random TRM and a hash encoder instead of trained ones."""
        cfg = compose("env_config", [f"dataset={dataset}", f"reward={reward}", *overrides])
        config = stack_config(cfg)
        built.append(config)
        return random_stack(load_dataset(config.dataset, tmp_path), config, cfg.reward, root=tmp_path)

    monkeypatch.setattr(deeprec_env.stack, "stack_for", small_stack)
    exec(compile(snippet, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and all(line.startswith("user ") for line in printed)
    assert built[0].sasrec.train.max_steps == 200 and built[0].trm.train.max_steps == 200


def test_status_table_matches_its_results_file():
    source = re.search(r"\(`(results/[^`]+)/`", README).group(1)
    records = {r["agent"]: r for r in json.loads((ROOT / source / "results.json").read_text())}
    table = README[README.index("## Status") : README.index("## Install")]
    rows = re.findall(r"^\| (\S+) \| (\d\.\d{4} \[\d\.\d{4}, \d\.\d{4}\]) \|", table, flags=re.M)
    assert len(rows) >= 3
    for agent, shown in rows:
        ndcg = records[agent]["metrics"]["ndcg@10"]
        assert shown == f"{ndcg['mean']:.4f} [{ndcg['low']:.4f}, {ndcg['high']:.4f}]"
