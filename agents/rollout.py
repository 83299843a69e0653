"""Running text agents through the batched environment: one agent per sub-env, one batched retrieval per step."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tqdm.auto import tqdm

from agents.baselines import TextAgent
from deeprec_env.env import DeepRecEnv, DeepRecVectorEnv
from deeprec_env.episode import Episode


def vector_env(env: DeepRecEnv, n_envs: int) -> DeepRecVectorEnv:
    """`n_envs` copies of `env` (same dataset, retriever, reward and limits) stepping together."""
    return DeepRecVectorEnv(
        env.dataset, env.retriever, n_envs, env.reward_fn, env.reward_levels, env.config, env.count_tokens
    )


def rollout(
    envs: DeepRecVectorEnv,
    make_agent: Callable[[], TextAgent],
    users: Sequence[int],
    split: str,
    progress: bool = True,
) -> tuple[list[Episode], list[float]]:
    """One episode per user, in order: the finished `Episode` records and the episodes' total rewards."""
    agents = [make_agent() for _ in range(envs.num_envs)]
    episodes: list[Episode] = []
    rewards: list[float] = []
    bar = tqdm(total=len(users), desc=f"rollout {agents[0].name}", disable=not progress)
    for start in range(0, len(users), envs.num_envs):
        chunk = [int(u) for u in users[start : start + envs.num_envs]]
        padded = chunk + [chunk[0]] * (envs.num_envs - len(chunk))  # surplus slots run a throwaway episode
        observations, infos = envs.reset(options={"users": padded, "split": split})
        for agent, observation, info in zip(agents, observations, infos, strict=True):
            agent.reset(observation, info)
        finished: list[dict | None] = [None] * envs.num_envs
        totals = [0.0] * envs.num_envs
        while any(f is None for f in finished):
            active = [i for i, done in enumerate(finished) if done is None]
            actions = [""] * envs.num_envs
            acted = type(agents[0]).act_many(
                [agents[i] for i in active], [observations[i] for i in active], [infos[i] for i in active]
            )
            for i, action in zip(active, acted, strict=True):
                actions[i] = action
            observations, step_rewards, terminated, truncated, infos = envs.step(actions)
            for i, info in enumerate(infos):
                if finished[i] is None:
                    totals[i] += step_rewards[i]
                    if terminated[i] or truncated[i]:
                        finished[i] = info
        episodes += [info["episode"] for info in finished[: len(chunk)]]
        rewards += totals[: len(chunk)]
        bar.update(len(chunk))
    bar.close()
    return episodes, rewards
