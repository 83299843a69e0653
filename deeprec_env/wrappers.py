"""Gymnasium wrappers for `DeepRecEnv`: every behaviour beyond the paper's episode lives here.

* `ScoreTruncated`: an episode that a wrapper inside this one truncated (Gymnasium's `TimeLimit`) is ended and scored
  as the env's own limits end and score it, so a time limit never leaves an episode unscored. `gymnasium.make`
  applies it outside its `TimeLimit`; apply it yourself outside a `TimeLimit` you add.
* `PerTurnReward`: pays the reward's process-level terms (format, tool use, query diversity) as they are earned and the
  rest when the episode ends; the per-step rewards sum exactly to the episode's total.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import gymnasium
from gymnasium.utils import RecordConstructorArgs

TIME_LIMIT = "time_limit"  # Episode.truncated_by of an episode ended by ScoreTruncated


class ScoreTruncated(gymnasium.Wrapper, RecordConstructorArgs):
    """End and score an episode that an inner wrapper truncated (see the module docstring)."""

    def __init__(self, env: gymnasium.Env):
        RecordConstructorArgs.__init__(self)
        gymnasium.Wrapper.__init__(self, env)

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        inner = self.env.unwrapped
        if truncated and not inner.done:
            final_reward, final_info = inner.end(TIME_LIMIT)
            reward, info = float(reward) + final_reward, {**info, **final_info}
        return obs, reward, terminated, truncated, info


def _exact_remainder(total: float, paid: float) -> float:
    """r with paid + r == total in floating point (when such an r exists near total - paid)."""
    rest = total - paid
    for _ in range(4):
        got = paid + rest
        if got == total or not math.isfinite(got):
            break
        rest = math.nextafter(rest, math.inf if got < total else -math.inf)
    return rest


class PerTurnReward(gymnasium.Wrapper, RecordConstructorArgs):
    """Pay process-level reward terms when they are earned (see the module docstring).

    After every step that does not end the episode, the breakdown of the episode so far (with no format problem
    recorded yet) is computed and the change of its process-level terms is paid; the step that ends the episode pays
    the rest of the total. Terms the reward does not list as "process" count as outcome terms.
    """

    def __init__(self, env: gymnasium.Env):
        RecordConstructorArgs.__init__(self)
        gymnasium.Wrapper.__init__(self, env)
        reward_fn = env.unwrapped.reward_fn
        if reward_fn is None or not hasattr(reward_fn, "levels"):
            raise ValueError("PerTurnReward needs an env whose reward_fn has `levels` (term -> 'process' | 'outcome')")
        self.levels: dict[str, str] = dict(reward_fn.levels)
        self._paid = 0.0

    def reset(self, **kwargs: Any):
        self._paid = 0.0
        return self.env.reset(**kwargs)

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if "deeprec" in info:  # the step that ended the episode
            reward = _exact_remainder(info["deeprec"].reward_total, self._paid)
        elif terminated or truncated:  # stepped again after the end: nothing more is paid
            reward = 0.0
        else:
            reward = self._process_value() - self._paid
        self._paid += reward
        return obs, reward, terminated, truncated, info

    def _process_value(self) -> float:
        inner = self.env.unwrapped
        episode = inner.episode
        transcript = list(episode.transcript) if isinstance(episode.transcript, list) else episode.transcript
        provisional = dataclasses.replace(
            episode, format_problems=(), tool_calls=list(episode.tool_calls), transcript=transcript
        )
        terms = inner.reward_fn(provisional).terms
        return sum(float(v) for k, v in dict(terms).items() if self.levels.get(k) == "process")
