"""`DeepRecVectorEnv`: many `DeepRecEnv` episodes stepped together as a `gymnasium.vector.VectorEnv`.

The sub-envs share one dataset, retriever, reward and title matcher; every `step` serves all their tool calls with ONE
batched retriever call (a query the retriever fails on fails only its own tool call: `deeprec_env.env.serve`), and
a sub-env's results never depend on the others'. Observations are tuples of strings, rewards, terminations and
truncations numpy arrays, and infos Gymnasium's dict of arrays with `_key` masks (`unbatch_info` gives one env's info
back).

Autoreset follows Gymnasium 1.x (`metadata["autoreset_mode"]`, chosen with `autoreset_mode=`): NEXT_STEP (the
default: the step after an episode ends resets that sub-env and ignores its action), SAME_STEP (the ending step
resets at once and puts the last observation and info under `final_obs` / `final_info`), or DISABLED (the caller
resets sub-envs with `options={"reset_mask": mask}`; a sub-env that is not running an episode, never reset or
finished, returns ("", 0.0, its last terminated, its last truncated) and runs nothing).

`reset(seed=s, options=...)` seeds sub-env i with s + i; options may carry `"users"` (one user id or None per
sub-env), `"cuts"` (one train cut point or None per sub-env), `"split"` and `"reset_mask"`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from deeprec_env.data.dataset import RecDataset
from deeprec_env.env import DeepRecEnv, EnvConfig, RewardFn, serve
from deeprec_env.protocol import TitleMatcher
from deeprec_env.trm.retriever import Retriever


class DeepRecVectorEnv(VectorEnv):
    """`num_envs` DeepRecEnv episodes with one batched retrieval per step (see the module docstring)."""

    metadata = {"render_modes": ["ansi"], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        dataset: RecDataset,
        retriever: Retriever,
        num_envs: int,
        reward_fn: RewardFn | None = None,
        config: EnvConfig | None = None,
        count_tokens: Callable[[str], int] | None = None,
        matcher: TitleMatcher | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        render_mode: str | None = None,
    ):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        config = config if config is not None else EnvConfig()
        config.validate()
        matcher = matcher if matcher is not None else TitleMatcher(dataset, config.fuzzy_threshold)
        self.config = config
        self.retriever = retriever
        self.envs = [
            DeepRecEnv(dataset, retriever, reward_fn, config, count_tokens, matcher, render_mode)
            for _ in range(num_envs)
        ]
        self.num_envs = num_envs
        self.autoreset_mode = AutoresetMode(autoreset_mode)
        self.metadata = {**self.metadata, "autoreset_mode": self.autoreset_mode}
        self.render_mode = render_mode
        self.single_observation_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._needs_reset = np.zeros(num_envs, dtype=bool)
        self._running = np.zeros(num_envs, dtype=bool)
        self._ended = np.zeros((2, num_envs), dtype=bool)  # the last terminated / truncated of each sub-env
        self._obs = [""] * num_envs

    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: Mapping[str, Any] | None = None
    ) -> tuple[tuple[str, ...], dict]:
        options = dict(options or {})
        mask = np.asarray(options.pop("reset_mask", np.ones(self.num_envs, dtype=bool)), dtype=bool)
        users, cuts = options.pop("users", None), options.pop("cuts", None)
        if mask.shape != (self.num_envs,):
            raise ValueError(f"options['reset_mask'] needs shape ({self.num_envs},), got {mask.shape}")
        for name, given in (("users", users), ("cuts", cuts)):
            if given is not None and len(given) != self.num_envs:
                raise ValueError(f"options[{name!r}] needs {self.num_envs} entries (None where any will do)")
        seeds = [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else seed or [None] * self.num_envs
        infos: dict = {}
        for i in np.flatnonzero(mask):
            env_options = dict(options) | ({"user": users[i]} if users is not None and users[i] is not None else {})
            env_options |= {"cut": cuts[i]} if cuts is not None and cuts[i] is not None else {}
            self._obs[i], info = self.envs[i].reset(seed=seeds[i], options=env_options)
            infos = self._add_info(infos, info, i)
            self._needs_reset[i], self._running[i], self._ended[:, i] = False, True, False
        return tuple(self._obs), infos

    def step(self, actions: Sequence[Any]) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, np.ndarray, dict]:
        if isinstance(actions, str) or len(actions) != self.num_envs:
            raise ValueError(f"step needs a sequence of {self.num_envs} actions, one per sub-env")
        rewards = np.zeros(self.num_envs)
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        infos: dict = {}
        resetting = self._needs_reset & (self.autoreset_mode == AutoresetMode.NEXT_STEP)
        idle = ~self._running & (self.autoreset_mode == AutoresetMode.DISABLED)
        terminated[idle], truncated[idle] = self._ended[0, idle], self._ended[1, idle]
        for i in np.flatnonzero(idle):
            self._obs[i] = ""
        pending = [
            None if resetting[i] or idle[i] else env.begin_step(action)
            for i, (env, action) in enumerate(zip(self.envs, actions, strict=True))
        ]
        stepped = [i for i, p in enumerate(pending) if p is not None]
        found = serve(self.retriever, self.config, [pending[i] for i in stepped])
        for i, results in zip(stepped, found, strict=True):
            self._obs[i], rewards[i], terminated[i], truncated[i], info = self.envs[i].end_step(pending[i], results)
            if (terminated[i] or truncated[i]) and self.autoreset_mode == AutoresetMode.SAME_STEP:
                infos = self._add_info(infos, {"final_obs": self._obs[i], "final_info": info}, i)
                self._obs[i], info = self.envs[i].reset()
            infos = self._add_info(infos, info, i)
        for i in np.flatnonzero(resetting):
            self._obs[i], info = self.envs[i].reset()
            infos = self._add_info(infos, info, i)
        ended = terminated | truncated
        self._ended[:, stepped] = terminated[stepped], truncated[stepped]
        self._running[stepped] &= ~ended[stepped] | (self.autoreset_mode == AutoresetMode.SAME_STEP)
        self._needs_reset = ended & (self.autoreset_mode == AutoresetMode.NEXT_STEP)
        return tuple(self._obs), rewards, terminated, truncated, infos

    def render(self) -> tuple[str | None, ...]:
        return tuple(env.render() for env in self.envs)

    def close_extras(self, **kwargs: Any) -> None:
        for env in self.envs:
            env.close()


def unbatch_info(infos: Mapping[str, Any], i: int) -> dict[str, Any]:
    """Sub-env i's info dict from a vector env's batched infos (the keys whose `_key` mask is set for i)."""
    out = {}
    for key, value in infos.items():
        if key.startswith("_") or not infos.get(f"_{key}", np.zeros(i + 1, dtype=bool))[i]:
            continue
        out[key] = unbatch_info(value, i) if isinstance(value, Mapping) else value[i]
    return out
