"""Tag actions (`agents.tag_actions`) and tag-action policies trained with RLlib PPO (`agents.training.ppo`): the
wrapper is a Gymnasium citizen, its masks say what an action would do, the wrapper and the text agent play the same
episode, and a short PPO run on `synthetic` learns, resumes and leaves no Ray process behind."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.rollout import rollout
from agents.tag_actions import ANSWER_RULES, TagActionAgent, TagActionEnv, TagVocabulary, action_names
from agents.workers import RolloutPool
from tests.fakes import random_stack, ray_processes, ray_processes_left

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stack(dataset):
    import experiments.config  # noqa: F401  (registers the experiments schema)
    from deeprec_env.config import compose

    return random_stack(dataset, reward_node=compose("config", ["reward=rec"]).reward)


@pytest.mark.parametrize("protocol", ["tags", "chat"])
@pytest.mark.parametrize("requests", [False, True])
def test_tag_env_passes_check_env(stack, protocol, requests):
    env = TagActionEnv(stack.make_env(protocol=protocol, requests=requests, item_refs="handles"))
    check_env(env, skip_render_check=True)
    assert env.action_space.n == len(env.vocabulary) + 1 + requests + len(ANSWER_RULES)


def test_vocabulary_holds_the_common_aspects_and_reads_them_as_whole_words(dataset):
    vocabulary = TagVocabulary.build(dataset, max_tags=6, min_items=1)
    assert len(vocabulary) == 6 and vocabulary.item_tags.shape == (dataset.n_items + 1, 6)
    counts = vocabulary.item_tags.sum(axis=0)
    assert list(counts) == sorted(counts, reverse=True) and not vocabulary.item_tags[0].any()
    tag = vocabulary.tags[0]
    found = vocabulary.in_text(f"Some {tag.upper()} titles, please")
    assert found[0] == 1 and found.sum() == 1
    assert not vocabulary.in_text(f"x{tag}x").any()
    items = np.flatnonzero(vocabulary.item_tags[:, 0])[:3]
    assert vocabulary.shares(items)[0] == 1.0 and not vocabulary.shares([]).any()


def test_masks_follow_the_episode(stack):
    env = TagActionEnv(stack.make_env(max_tool_calls=2, requests=False))
    agent = env.agent
    obs, _ = env.reset(seed=3)
    mask = obs["action_mask"]
    assert mask[: agent.n_queries].all() and not mask[agent.n_queries :].any()  # no answer before a call
    obs, *_ = env.step(1)  # the first tag
    assert obs["action_mask"][1] == 0 and obs["action_mask"][agent.n_queries :].all()
    obs, *_ = env.step(0)  # the empty query: the call limit is reached
    assert not obs["action_mask"][: agent.n_queries].any() and obs["action_mask"][agent.n_queries :].all()
    calls_share = obs["observations"][3 * len(env.vocabulary) + agent.n_queries]
    assert calls_share == 1.0
    _, reward, terminated, truncated, info = env.step(agent.n_queries + ANSWER_RULES.index("fused"))
    assert terminated and not truncated and info["deeprec"].format_ok and info["action_name"] == "answer:fused"
    assert reward == info["deeprec"].reward_total


def test_a_masked_action_still_acts_through_the_protocol(stack):
    env = TagActionEnv(stack.make_env())
    env.reset(seed=0)
    _, _, terminated, _, info = env.step(env.agent.n_queries)  # an answer before any call: masked, yet valid
    assert terminated and not info["deeprec"].format_ok


def test_the_wrapper_and_the_text_agent_play_the_same_episode(stack, dataset):
    """What the policy sees and does is the same whether RLlib steps the wrapper or evaluation runs the agent."""

    def choose(observation):  # ask the first two allowed queries, then answer with the fused rule
        mask = observation["action_mask"]
        asked = int(observation["observations"][3 * len(vocabulary) : 3 * len(vocabulary) + n_queries].sum())
        return int(np.flatnonzero(mask)[0]) if asked < 2 else n_queries + ANSWER_RULES.index("fused")

    env = TagActionEnv(stack.make_env(split="valid", requests=True, item_refs="handles"))
    vocabulary, n_queries = env.vocabulary, env.agent.n_queries
    users = [int(u) for u in dataset.eval_users("valid")[:5]]
    wrapped = []
    for user in users:
        obs, _ = env.reset(options={"user": user, "split": "valid"})
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(choose(obs))
            done = terminated or truncated
        wrapped.append(info["deeprec"])
    envs = stack.make_vector_env(2, autoreset_mode="Disabled", requests=True, item_refs="handles")

    def make_agent():
        return TagActionAgent(dataset, vocabulary, True, envs.config.max_tool_calls, choose, protocol="tags")

    played = rollout(envs, make_agent, users, "valid", show_progress=False)
    for a, b in zip(wrapped, played, strict=True):
        fields = ("user", "transcript", "answer_ids", "reward_total")
        assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]
        assert len(a.tool_calls) == 2 and a.format_ok


@settings(max_examples=60, deadline=None)
@given(
    calls=st.lists(st.lists(st.integers(1, 30), max_size=12, unique=True), min_size=1, max_size=4),
    history=st.lists(st.integers(1, 30), max_size=8),
    rule=st.sampled_from(ANSWER_RULES),
)
def test_answer_rules_rank_every_retrieved_item_outside_the_history_once(dataset, calls, history, rule):
    agent = TagActionAgent(dataset, TagVocabulary.build(dataset), False, 4)
    agent.history = history
    ranked = agent.ranked(rule, [{"preference": "drama", "item_ids": ids} for ids in calls])
    expected = {i for ids in calls for i in ids} - set(history)
    assert len(ranked) == len(set(ranked)) and set(ranked) == expected
    if rule in ("history", "last"):  # "history" falls back to the first call's list: no call here has no preference
        chosen = [i for i in calls[0 if rule == "history" else -1] if i not in history]
        assert ranked[: len(chosen)] == chosen


def test_action_names_fix_the_action_order(dataset):
    vocabulary = TagVocabulary.build(dataset)
    names = action_names(vocabulary, requests=True)
    assert names[0] == "query:" and names[1 : len(vocabulary) + 1] == [f"query:{t}" for t in vocabulary.tags]
    assert names[len(vocabulary) + 1] == "query:<request>"
    assert names[-len(ANSWER_RULES) :] == [f"answer:{r}" for r in ANSWER_RULES]


def test_a_configured_answer_rule_is_the_only_answer_action(stack):
    env = TagActionEnv(stack.make_env(requests=False), answer_rules=["history"])
    check_env(env, skip_render_check=True)
    assert env.action_space.n == len(env.vocabulary) + 2 and env.agent.actions[-1] == "answer:history"
    env.reset(seed=1)
    env.step(1)  # a tag query first: the history rule still answers the empty query's list
    env.step(0)
    _, _, terminated, _, info = env.step(env.action_space.n - 1)
    episode = info["deeprec"]
    empty_list = [i for i in episode.tool_calls[1].item_ids if i not in set(env.agent.history)]
    assert terminated and info["action_name"] == "answer:history"
    assert list(episode.answer_ids) == empty_list[: len(episode.answer_ids)] and len(episode.answer_ids) == 10
    with pytest.raises(ValueError, match="give one or more of history"):
        action_names(env.vocabulary, False, ["best"])


PPO = [
    "dataset=synthetic",
    "dataset.synthetic.n_users=80",
    "dataset.synthetic.n_items=60",
    "prepare.models=[trm]",
    "trm.train.max_steps=60",
    "trm.train.eval_every=30",
    "sasrec.train.max_steps=60",
    "sasrec.train.eval_every=30",
    "policy=tag-ppo",
    "trainer.stage2.reward=cold",  # process terms only: a signal a minute of PPO can follow
    "trainer.ppo.iterations=8",
    "trainer.ppo.train_batch=600",
    "trainer.ppo.minibatch=100",
    "trainer.ppo.envs_per_runner=4",
    "trainer.ppo.eval_every=4",
    "trainer.ppo.checkpoint_every=4",
    "trainer.validation.users=8",
    "trainer.evaluation.users=10",
    "trainer.evaluation.valid_users=10",
    "trainer.evaluation.agents=[trm,scripted]",
    "eval.bootstrap=50",
    "ray.num_cpus=2",
    "threads=1",
]


def test_tag_ppo_learns_on_synthetic_resumes_and_leaves_no_ray_process(tmp_path):
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    before = ray_processes()  # another Ray on this machine is not ours to judge
    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "experiments.train",
        *PPO,
        f"artifacts={tmp_path / 'artifacts'}",
        f"trainer.output_dir={run}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    ]
    first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    assert not ray_processes_left(before)
    history = json.loads((run / "stage2" / "history.json").read_text())["history"]
    assert [h["iteration"] for h in history] == list(range(1, 9))
    returns = [h["train/episode_return"] for h in history]
    assert np.mean(returns[-2:]) > np.mean(returns[:2]) + 0.1, returns
    assert {"train/reward/hit_rank", "train/ndcg@10", "learner/entropy", "time/env_steps_per_s"} <= set(history[-1])
    assert [h["iteration"] for h in history if "valid/reward" in h] == [4, 8]
    for path in ("report.md", "curve_tag_stage2.png", "evaluation/results.json", "evaluation-valid/comparisons.json"):
        assert (run / path).exists(), path
    records = {r["agent"]: r for r in json.loads((run / "evaluation" / "results.json").read_text())}
    assert set(records) == {"trm", "scripted", "tag-ppo"} and records["tag-ppo"]["n_users"] == 10
    assert "reward" in json.loads((run / "evaluation-valid" / "comparisons.json").read_text())["tag-ppo-vs-scripted"]

    # a rerun with more iterations resumes from the last checkpoint instead of starting over
    (run / "stage2" / "final").rename(run / "stage2" / "first-final")
    more = subprocess.run([*command, "trainer.ppo.iterations=10", "trainer.phases=[stage2]"], cwd=ROOT, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert more.returncode == 0, more.stderr[-3000:]
    assert "resuming stage2 at iteration 8" in more.stderr + more.stdout
    history = json.loads((run / "stage2" / "history.json").read_text())["history"]
    assert [h["iteration"] for h in history] == list(range(1, 11))
    assert not ray_processes_left(before)
    again = subprocess.run([*command, "trainer.phases=[stage2]"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "stage2 already done" in again.stderr + again.stdout  # a finished phase is kept

    evaluation = subprocess.run(  # the policy of the first run from the command line, as the trainer evaluated it
        [
            sys.executable,
            "-m",
            "experiments.evaluate",
            *PPO,
            "agent=tag-ppo",
            "eval.max_users=10",
            f"policy.path={os.path.relpath(run / 'stage2' / 'first-final', ROOT)}",  # a relative path works too
            f"artifacts={tmp_path / 'artifacts'}",
            f"hydra.run.dir={tmp_path / 'evaluate'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    (again,) = json.loads((tmp_path / "evaluate" / "results.json").read_text())
    assert again["metrics"]["ndcg@10"] == records["tag-ppo"]["metrics"]["ndcg@10"]
    assert again["episode"]["reward"] == records["tag-ppo"]["episode"]["reward"]


def test_a_saved_tag_policy_is_an_evaluation_agent_and_a_warm_start_teacher(tmp_path, stack, dataset):
    """An untrained module saved the way training saves one: loaded as a text agent it plays the LLM policy's chat env
    as a teacher, every episode well-formed, and acts the same on a rerun."""
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from agents.training.ppo import is_tag_policy, masked_module_class, save_tag_policy
    from agents.training.warm_start import teacher_episodes

    env = TagActionEnv(stack.make_env(max_tool_calls=3))
    spec = RLModuleSpec(
        module_class=masked_module_class(),
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config={"hidden": 8},
    )
    settings = {"max_tags": 48, "min_items": 10, "requests": False, "max_tool_calls": 3}
    final = save_tag_policy(spec.build(), dataset, settings, tmp_path / "final")
    assert is_tag_policy(final) and not is_tag_policy(tmp_path)
    chat = {"protocol": "chat", "item_refs": "handles", "max_tool_calls": 3, "split": "train"}
    users = [int(u) for u in dataset.eval_users("train")[:6]]
    episodes = teacher_episodes(RolloutPool(), stack, chat, users, str(final), 3, 0)
    assert [e.user for e in episodes] == users
    assert all(e.format_ok and 1 <= len(e.tool_calls) <= 3 and len(e.answer_ids) == 10 for e in episodes)
    again = teacher_episodes(RolloutPool(), stack, chat, users, str(final), 2, 0)
    assert [e.transcript for e in again] == [e.transcript for e in episodes]
