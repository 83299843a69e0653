"""RL with TRL's `GRPOTrainer`: an `environment_factory` adapter over `DeepRecEnv` (chat codec) and one reward
function per reward component.

The adapter only delegates. While TRL generates, each `retrieve` tool call is a step of the env (the env parses
it, retrieves with the TRM and writes the tool message). To score, the adapter replays the finished completion
(every assistant message, reasoning included) through a fresh episode of the same user, so the env checks the
format and the reward components score exactly the text the policy wrote; retrieval is deterministic, so the
replayed tool results are the ones the policy saw. A completion that stops without an answer (the generation
budget ran out) ends as truncated. An assistant message carrying several tool calls counts as one segment, as in
the env's protocol (its first call).

Each component with a non-zero weight is its own reward function, returning the component's unweighted value
(after the format gate) and weighted by TRL with the configured weight, so TRL logs every component and their
weighted sum is the env's reward. Episode statistics (tool calls, format failures, invalid and duplicate rates)
are logged through TRL's `log_metric`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agents.training.checkpoints import finish_from, last_checkpoint, train_and_save, trainer_settings
from deeprec_env.env import DeepRecEnv
from deeprec_env.protocol import _render_assistant


@dataclass
class GRPOStageConfig:
    """One GRPO stage (the reward preset is chosen by the stage's name in `trainer.stages`)."""

    reward: str | None = "rec"  # a configs/reward preset; None = the root `reward` config
    max_steps: int = 20
    num_generations: int = 4  # group size
    prompts_per_step: int = 2  # distinct users per optimizer step (batch = prompts_per_step * num_generations)
    lr: float = 5e-5
    beta: float = 0.04  # KL coefficient
    epsilon: float = 0.2  # clip range (binds only when num_iterations > 1: one update per batch is on-policy)
    num_iterations: int = 1  # optimizer steps per batch of generated episodes (the GRPO paper's mu)
    scale_rewards: str = "group"  # advantage scale: group std (GRPO) | batch std | none (Dr. GRPO)
    loss_type: str = "dapo"  # TRL's token-level loss normalisation: dapo | grpo | dr_grpo | bnpo
    temperature: float = 1.0
    max_completion_length: int = 1536  # generated + tool-result tokens per episode
    users: int = 400  # train-split users to draw prompts from (seeded)
    difficulty_filter: bool = True  # keep users whose target the TRM (empty query) ranks in its top `difficulty_top`
    difficulty_top: int = 100
    save_steps: int = 5
    eval_every: int = 10  # validation (greedy policy, `rec` reward) every N steps; 0 = off


class DeepRecToolEnv:
    """The env as TRL sees it: `reset(user, split)` and the `retrieve` tool. `_replay(completion)` scores; it is
    private because TRL exposes every public method as a tool."""

    def __init__(self, env: DeepRecEnv):
        if env.codec.name != "chat":
            raise ValueError("GRPO tool calling needs the chat codec: build the env with protocol='chat'")
        self.env = env
        self._result: dict | None = None

    def reset(self, user: int, split: str = "train", **_: object) -> None:
        """Start the user's episode; the prompt is already in the training example (the env rendered it)."""
        self.env.reset(options={"user": int(user), "split": split})
        self._result = None

    def retrieve(self, preference: str) -> str:
        """Retrieve items matching a preference description.

        Args:
            preference: Short preference phrases separated by ';', e.g. "light-hearted comedy; 1990s; animation".

        Returns:
            A numbered list of matching items, one "Title (year) | categories" card per line.
        """
        obs, _, terminated, truncated, info = self.env.step(self.env.codec.render_tool_call(preference))
        if terminated or truncated:
            return f"No more tool calls ({info.get('truncated_by') or 'episode over'}): write the final answer."
        return json.loads(obs)[0]["content"] if obs else ""

    def _replay(self, completion: Sequence[dict]) -> dict:
        """The final info of the completion replayed through the env (cached until the next reset)."""
        if self._result is None:
            episode = self.env.episode
            self.env.reset(options={"user": episode.user, "split": episode.split})
            info: dict | None = None
            for message in completion:
                if message.get("role") != "assistant":
                    continue
                _, _, terminated, truncated, info = self.env.step(_render_assistant(message))
                if terminated or truncated:
                    break
            else:
                info = self.env.end("no answer")
            self._result = info
        return self._result


def episode_metrics(infos: Sequence[dict], rec_k: int) -> dict[str, float]:
    """Means over finished episodes: tool calls, format failures, invalid and duplicate answer rates."""
    return {
        "episode/tool_calls": float(np.mean([i["n_tool_calls"] for i in infos])),
        "episode/format_failure": float(np.mean([bool(i["format_problems"]) for i in infos])),
        "episode/invalid_rate": float(np.mean([i["n_invalid"] / rec_k for i in infos])),
        "episode/duplicate_rate": float(np.mean([i["n_duplicate"] / rec_k for i in infos])),
        "episode/answered": float(np.mean([i.get("truncated_by") is None for i in infos])),
    }


def component_rewards(names: Sequence[str], rec_k: int) -> list[Callable]:
    """One TRL reward function per component (named after it); the first also logs the episode statistics."""

    def make(name: str, log_stats: bool) -> Callable:
        def reward(completions, environments, log_metric=None, **_):
            infos = [env._replay(c) for env, c in zip(environments, completions, strict=True)]
            if log_stats and log_metric is not None:
                for key, value in episode_metrics(infos, rec_k).items():
                    log_metric(key, value)
            return [float(i["reward_unweighted"].get(name, 0.0)) for i in infos]

        reward.__name__ = name
        return reward

    return [make(name, i == 0) for i, name in enumerate(names)]


def active_components(env: DeepRecEnv) -> tuple[list[str], list[float]]:
    """The reward's components with a non-zero weight, and their weights."""
    components = [c for c in env.reward_fn.reward.components if c.weight != 0]
    return [c.name for c in components], [float(c.weight) for c in components]


def train_grpo(
    policy_path: Path,
    make_env: Callable[[], DeepRecEnv],
    users: Sequence[int],
    config: GRPOStageConfig,
    out_dir: Path,
    seed: int = 0,
    logging_dir: Path | None = None,
    callbacks: Sequence = (),
) -> Path:
    """One GRPO stage from the policy at `policy_path` on train-split `users`; checkpoints every `save_steps` in
    `out_dir` and a rerun resumes from the last one. Returns the final model directory (`out_dir/final`)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    final = out_dir / "final"
    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    tokenizer.padding_side = "left"
    resume, finished = last_checkpoint(out_dir)
    if finished:
        return finish_from(resume, tokenizer, final)
    probe = make_env()
    names, weights = active_components(probe)
    rows = []
    for user in users:  # the env renders every prompt; the adapter's reset starts the same episode
        probe.reset(options={"user": int(user), "split": "train"})
        rows.append({"prompt": probe.prompt, "user": int(user), "split": "train"})
    model = AutoModelForCausalLM.from_pretrained(policy_path)
    args = GRPOConfig(
        max_steps=config.max_steps,
        per_device_train_batch_size=config.prompts_per_step * config.num_generations,
        num_generations=config.num_generations,
        learning_rate=config.lr,
        beta=config.beta,
        epsilon=config.epsilon,
        num_iterations=config.num_iterations,
        scale_rewards=config.scale_rewards,
        loss_type=config.loss_type,
        temperature=config.temperature,
        max_completion_length=config.max_completion_length,
        max_tool_calling_iterations=probe.config.max_tool_calls,
        reward_weights=weights,
        logging_steps=1,
        **trainer_settings(out_dir, config.save_steps, seed, logging_dir),
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=component_rewards(names, probe.config.rec_k),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        environment_factory=lambda: DeepRecToolEnv(make_env()),
        callbacks=list(callbacks),
    )
    train_and_save(trainer, resume, final, f"GRPO ({config.reward or 'root reward'})")
    tokenizer.save_pretrained(final)
    return final
