"""Gymnasium wrappers for `DeepRecEnv`: every behaviour beyond the paper's episode lives here, except the tag-action
interface for standard RL libraries (`agents.tag_actions.TagActionEnv`), which renders actions through a text agent
and so lives beside the agents.

* `ScoreTruncated`: an episode that a wrapper inside this one truncated (Gymnasium's `TimeLimit`) is ended and scored
  as the env's own limits end and score it, so a time limit never leaves an episode unscored. `gymnasium.make`
  applies it outside its `TimeLimit`; apply it yourself outside a `TimeLimit` you add.
* `PerTurnReward`: pays the reward's process-level terms (format, tool use, query diversity) as they are earned and the
  rest when the episode ends, however it ends; the per-step rewards sum exactly to the episode's total for rewards
  whose terms lie on `rewards.HierarchicalReward`'s grid.
"""

from __future__ import annotations

import dataclasses
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
        if truncated and not self.env.unwrapped.done:
            # the nearest `end` inside: a PerTurnReward's pays what it has not paid, the env's the total
            final_reward, final_info = self.env.get_wrapper_attr("end")(TIME_LIMIT)
            reward, info = float(reward) + final_reward, {**info, **final_info}
        return obs, reward, terminated, truncated, info


class PerTurnReward(gymnasium.Wrapper, RecordConstructorArgs):
    """Pay process-level reward terms when they are earned (see the module docstring).

    After every step that does not end the episode, the breakdown of the episode so far (with no format problem
    recorded yet) is computed and the change of its process-level terms is paid; the step that ends the episode pays
    the rest of the total, and so do `end` and, when the episode was ended around this wrapper (the unwrapped env's
    `end`), the next step. Terms the reward does not list as "process" count as outcome terms.

    Every payment is a plain difference of sums of terms, so the payments sum to `Episode.reward_total` exactly when
    those sums are exact: `rewards.HierarchicalReward` rounds every term to a multiple of `rewards.REWARD_QUANTUM`
    (2**-32) for this. With terms off that grid the sum may differ from the total in the last bits.
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
        if self.env.unwrapped.done:  # the step that ended the episode, or any step after it: the rest, once
            reward = self._pay_rest()
        else:
            reward = self._process_value() - self._paid
            self._paid += reward
        return obs, reward, terminated, truncated, info

    def end(self, reason: str = "agent_stopped") -> tuple[float, dict]:
        """End the current episode now, truncated (`DeepRecEnv.end`), and pay what is left of its total: (reward,
        final info). An episode that already ended pays only what this wrapper has not paid yet."""
        _, info = self.env.unwrapped.end(reason)
        return self._pay_rest(), info

    def _pay_rest(self) -> float:
        """The episode's total less what was paid; from now on the whole total counts as paid."""
        total = self.env.unwrapped.episode.reward_total
        rest, self._paid = total - self._paid, total
        return rest

    def _process_value(self) -> float:
        inner = self.env.unwrapped
        episode = inner.episode
        transcript = list(episode.transcript) if isinstance(episode.transcript, list) else episode.transcript
        provisional = dataclasses.replace(
            episode, format_problems=(), tool_calls=list(episode.tool_calls), transcript=transcript
        )
        terms = inner.reward_fn(provisional).terms
        return sum(float(v) for k, v in dict(terms).items() if self.levels.get(k) == "process")
