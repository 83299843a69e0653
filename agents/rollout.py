"""Running text agents through the vector environment: one agent per sub-env, one batched retrieval per step, and a
finished sub-env takes the next user at once (the vector env's autoreset is off; the rollout resets by mask)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from agents.baselines import TextAgent
from deeprec_env.data.dataset import RecDataset
from deeprec_env.episode import Episode
from deeprec_env.runtime import progress
from deeprec_env.stack import Stack
from deeprec_env.vector import DeepRecVectorEnv, unbatch_info


def play(
    stack: Stack,
    env: dict,
    make_agent: Callable[[RecDataset, str, int], TextAgent],
    users: Sequence[int],
    split: str,
    n_envs: int,
    show_progress: bool = False,
) -> list[Episode]:
    """One episode per user on `split` in the stack's env with the `env` overrides (EnvConfig fields), `n_envs` at
    a time; `make_agent(dataset, codec, rec_k)` builds each sub-env's agent."""
    envs = stack.make_vector_env(n_envs, autoreset_mode="Disabled", **env)
    config = envs.config
    return rollout(envs, lambda: make_agent(stack.dataset, config.protocol, config.rec_k), users, split, show_progress)


def rollout(
    envs: DeepRecVectorEnv,
    make_agent: Callable[[], TextAgent],
    users: Sequence[int],
    split: str,
    show_progress: bool = True,
    cuts: Sequence[int] | None = None,
) -> list[Episode]:
    """One episode per user on `split`, returned in the order of `users` (their rewards: `Episode.reward_total`);
    `cuts`: the train cut point of each (`DeepRecEnv.reset`). `envs` must have autoreset disabled
    (`Stack.make_vector_env(n, autoreset_mode="Disabled")`)."""
    if envs.autoreset_mode.value != "Disabled":
        raise ValueError("rollout resets sub-envs itself: build the vector env with autoreset_mode='Disabled'")
    n = envs.num_envs
    agents = [make_agent() for _ in range(n)]
    cuts = [None] * len(users) if cuts is None else [int(c) for c in cuts]
    queue = list(enumerate(zip((int(u) for u in users), cuts, strict=True)))
    episodes: list[Episode | None] = [None] * len(queue)
    running: list[int | None] = [None] * n  # which queue entry each sub-env plays
    observations: list[str] = [""] * n
    infos: list[dict] = [{} for _ in range(n)]
    bar = progress(total=len(queue), desc=f"rollout {agents[0].name}", disable=not show_progress)

    def start(slots: list[int]) -> None:
        slots = slots[: len(queue)]
        if not slots:
            return
        mask = np.zeros(n, dtype=bool)
        chosen: list[int | None] = [None] * n
        chosen_cuts: list[int | None] = [None] * n
        for slot in slots:
            running[slot], (chosen[slot], chosen_cuts[slot]) = queue.pop(0)
            mask[slot] = True
        options = {"reset_mask": mask, "users": chosen, "cuts": chosen_cuts, "split": split}
        obs, batched = envs.reset(options=options)
        for slot in slots:
            observations[slot], infos[slot] = obs[slot], unbatch_info(batched, slot)
            agents[slot].reset(observations[slot], infos[slot])

    act_many = getattr(type(agents[0]), "act_many", None) or (
        lambda group, obs, infos: [agent.act(o, i) for agent, o, i in zip(group, obs, infos, strict=True)]
    )  # a user's agent class may act one episode at a time
    start(list(range(n)))
    while any(r is not None for r in running):
        active = [i for i in range(n) if running[i] is not None]
        acted = act_many([agents[i] for i in active], [observations[i] for i in active], [infos[i] for i in active])
        actions = [""] * n
        for i, action in zip(active, acted, strict=True):
            actions[i] = action
        obs, _, terminated, truncated, batched = envs.step(actions)
        finished = []
        for i in active:
            observations[i], infos[i] = obs[i], unbatch_info(batched, i)
            if terminated[i] or truncated[i]:
                episodes[running[i]] = infos[i]["deeprec"]
                running[i] = None
                finished.append(i)
        bar.update(len(finished))
        start(finished)
    bar.close()
    return episodes
