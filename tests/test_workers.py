"""Rollout workers (`agents.workers`): Ray workers give the local backend's episodes and token trajectories, follow
the policy's weights, survive a worker dying mid-batch, drive a GRPO stage, and leave no Ray process behind."""

import json
import os

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from agents.baselines import AgentFactory, ScriptedAgent
from agents.llm import LLMAgentFactory, LLMPolicy, PolicyConfig, tiny_model_config, train_tokenizer
from agents.rollout import Generation
from agents.workers import RolloutConfig, RolloutPool, start_ray, tasks_of
from tests.fakes import CrashOnceAgent, chat_stack, ray_processes, ray_processes_left

GREEDY = Generation(temperature=0.0, turn_tokens=32, max_tokens=160)


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module (2 CPUs); afterwards no Ray process of ours is left."""
    import ray

    before = ray_processes()
    assert start_ray(None, 2)
    yield
    ray.shutdown()
    assert not ray_processes_left(before)


@pytest.fixture(scope="module")
def stack(dataset):
    return chat_stack(dataset)


@pytest.fixture(scope="module")
def policy(dataset):
    tokenizer = train_tokenizer(dataset, vocab_size=512)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_model_config(PolicyConfig(n_layer=2, n_embd=64), tokenizer))
    return LLMPolicy(model, tokenizer, PolicyConfig(max_new_tokens=32))


def ray_pool(**overrides) -> RolloutPool:
    return RolloutPool(RolloutConfig(backend="ray", workers=2, tasks_per_batch=3, **overrides))


def same_episode(a, b) -> bool:
    return (a.user, a.transcript, a.ranked_ids, a.reward_unweighted) == (
        b.user,
        b.transcript,
        b.ranked_ids,
        b.reward_unweighted,
    )


def test_ray_workers_play_text_agents_and_the_llm_policy_as_the_local_backend(ray_session, dataset, stack, policy):
    users = [int(u) for u in dataset.eval_users("valid")[:8]]
    agents = {"scripted": AgentFactory(ScriptedAgent, seed=0), "llm": LLMAgentFactory(policy)}
    local_pool = RolloutPool(RolloutConfig(tasks_per_batch=3))
    with ray_pool() as pool:
        assert len(set(pool.worker_pids()) | {os.getpid()}) == 3  # two worker processes besides this one
        for name, make_agent in agents.items():
            local = local_pool.play(stack, {}, make_agent, users, "valid", 2)
            remote = pool.play(stack, {}, make_agent, users, "valid", 2)
            assert [e.user for e in remote] == users, name
            assert all(same_episode(a, b) for a, b in zip(local, remote, strict=True)), name
            counts = {key: pool.report[key] for key in ("tasks", "batches", "workers_replaced", "tasks_rerun")}
            assert counts == {"tasks": 8, "batches": 3, "workers_replaced": 0, "tasks_rerun": 0}
            assert 0 < pool.report["worker_s"] < 2 * pool.report["wall_s"]  # two workers at most
    scripted = local_pool.play(stack, {}, agents["scripted"], users, "valid", 2)
    # what was compared: answered episodes, tool results, and the encoder-based diversity term (served by the TRM actor)
    assert all(e.format_ok and e.ranked_ids and e.reward_unweighted["diversity"] > 0 for e in scripted)


def test_ray_trajectories_are_the_local_tokens_and_follow_the_weights(ray_session, dataset, stack, policy):
    tasks = tasks_of([int(u) for u in dataset.eval_users("train")[:6]], [0, 1, 0, 2, 1, 0], seed=5)
    local_pool = RolloutPool(RolloutConfig(tasks_per_batch=3))
    with ray_pool() as pool:
        for version in (0, 1):
            if version == 1:  # the trainer changed the weights: the workers must play the new ones
                with torch.no_grad():
                    for parameter in policy.model.parameters():
                        parameter.add_(0.05 * torch.randn_like(parameter))
            local = local_pool.trajectories(stack, {"split": "train"}, policy, tasks, "train", 3, GREEDY)
            remote = pool.trajectories(stack, {"split": "train"}, policy, tasks, "train", 3, GREEDY, version=version)
            for a, b in zip(local, remote, strict=True):
                assert (a.prompt_ids, a.completion_ids, a.env_mask) == (b.prompt_ids, b.completion_ids, b.env_mask)
                np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)
                assert same_episode(a.episode, b.episode)
            if version == 0:
                before = [t.completion_ids for t in local]
    assert before != [t.completion_ids for t in local]  # the new weights act differently
    for trajectory in local:
        assert len(trajectory.completion_ids) == len(trajectory.env_mask) == len(trajectory.logprobs)
        assert len(trajectory.completion_ids) <= GREEDY.max_tokens
        generated = [lp for lp, m in zip(trajectory.logprobs, trajectory.env_mask, strict=True) if m]
        assert all(lp <= 0 for lp in generated)
        env_tokens = [t for t, m in zip(trajectory.completion_ids, trajectory.env_mask, strict=True) if not m]
        if trajectory.episode.n_turns > 1:  # the env replied between turns: its tokens are masked out
            reply = policy.tokenizer.decode(env_tokens)
            assert "user" in reply or "tool" in reply


def test_a_worker_that_dies_mid_batch_is_replaced_and_every_task_runs_once(ray_session, tmp_path, dataset, stack):
    users = [int(u) for u in dataset.eval_users("valid")[:12]]
    crashing = AgentFactory(CrashOnceAgent, seed=0, marker=tmp_path / "crashed", crash_user=users[7])
    with ray_pool() as pool:
        episodes = pool.play(stack, {}, crashing, users, "valid", 3)
        assert (tmp_path / "crashed").exists()
        assert pool.report["workers_replaced"] == 1 and pool.report["tasks_rerun"] == 3
        assert len(set(pool.worker_pids())) == 2
    assert [e.user for e in episodes] == users
    expected = RolloutPool().play(stack, {}, AgentFactory(ScriptedAgent, seed=0), users, "valid", 3)
    assert all(same_episode(a, b) for a, b in zip(expected, episodes, strict=True))


def test_grpo_stage_runs_on_ray_rollout_workers(ray_session, tmp_path, stack, policy):
    from agents.training.config import GRPOStageConfig
    from agents.training.grpo import WorkerRollouts, train_grpo

    start = tmp_path / "start"
    policy.model.save_pretrained(start)
    policy.tokenizer.save_pretrained(start)
    stage = GRPOStageConfig(
        max_steps=2,
        num_generations=2,
        per_device_train_batch_size=4,
        max_completion_length=96,
        activation_checkpointing=False,
        save_steps=2,
        temperature=1.0,
    )
    env = {"split": "train"}
    episodes = [(int(u), 0) for u in stack.dataset.eval_users("train")[:4]]
    with ray_pool() as pool:
        rollouts = WorkerRollouts(pool, stack, env, n_envs=4, turn_tokens=24, seed=0)
        final = train_grpo(start, lambda: stack.make_env(**env), episodes, stage, tmp_path / "stage", rollouts=rollouts)
        # the last step's episodes (2 prompts x 2 generations), one batch for each worker
        assert (pool.report["tasks"], pool.report["batches"]) == (4, 2)
    state = json.loads(next((tmp_path / "stage").glob("checkpoint-*/trainer_state.json")).read_text())
    logged = [row for row in state["log_history"] if "reward" in row]
    assert len(logged) == 2 and all(np.isfinite(row["reward"]) for row in logged)
    assert any(key.startswith("rewards/format") for key in logged[0])
    assert (final / "config.json").exists()
