"""RL with TRL's `GRPOTrainer`: an `environment_factory` adapter over `DeepRecEnv` (chat codec) and one reward function
per reward component.

The adapter only delegates, and scores the live episode the policy played. While TRL generates, each `retrieve` tool
call TRL parses from the policy's text runs as a tool call of the env's episode (`DeepRecEnv.run_tool`: the limits,
the retrieval, the record; no text round trip). When generation is over, the completion TRL recorded (assistant
messages and tool messages) ends that same episode (`DeepRecEnv.finish`): the env checks the format and the reward
components score it; nothing is retrieved again. A completion that stops without an answer (the generation budget ran
out) ends as truncated.

Each component with a non-zero weight is its own reward function, returning the component's unweighted value (after
the format gate) and weighted by TRL with the configured weight, so TRL logs every component and their weighted sum
is the env's reward. Episode statistics (tool calls, format failures, invalid and duplicate rates) are logged through
TRL's `log_metric`.

With rollout workers (`rollout.backend=ray`), `WorkerRollouts` is TRL's `rollout_func` instead: the workers play each
prompt's episode with a copy of the policy whose weights follow every optimizer step (`agents.workers`), and return
the token trajectories (generated tokens and the env's replies, masked apart) with the scored episodes, which the same
reward functions read. The env then runs every turn as in evaluation (a malformed turn gets the env's hint and the
episode goes on), where TRL's own loop ends a completion at its first turn without a tool call.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from agents.training.checkpoints import finish_from, last_checkpoint, train_and_save, trainer_settings
from agents.training.config import GRPOStageConfig
from agents.training.learned_positions import use_learned_position_head
from deeprec_env.env import DeepRecEnv, EnvConfig
from deeprec_env.episode import Episode
from deeprec_env.protocol import tool_docstring

log = logging.getLogger(__name__)


class DeepRecToolEnv:
    """The env as TRL sees it: `reset(user, split, cut)` and the `retrieve` tool (its description: the protocol's
    `TOOL_SCHEMA`, through the docstring). `_finish(completion)` scores; it is private because TRL exposes every
    public method as a tool."""

    def __init__(self, env: DeepRecEnv):
        if not env.chat:
            raise ValueError("GRPO tool calling needs the chat codec: build the env with protocol='chat'")
        self.env = env
        self._episode: Episode | None = None

    def reset(self, user: int, split: str = "train", cut: int = 0, **_: object) -> None:
        """Start the user's episode at train cut point `cut`; the prompt is already in the training example (the
        env rendered it)."""
        self.env.reset(options={"user": int(user), "split": split, "cut": int(cut)})
        self._episode = None

    def retrieve(self, preference: str) -> str:
        return self.env.run_tool(preference)

    retrieve.__doc__ = tool_docstring()

    def _finish(self, completion: Sequence[dict]) -> Episode:
        """The scored episode, ended with the completion TRL recorded (once; later calls return the same record)."""
        if self._episode is None:
            _, info = self.env.finish(completion)
            self._episode = info["deeprec"]
        return self._episode


def episode_metrics(episodes: Sequence[Episode]) -> dict[str, float]:
    """Means over finished episodes: tool calls, format failures, invalid and duplicate answer rates."""
    return {
        "episode/tool_calls": float(np.mean([len(e.tool_calls) for e in episodes])),
        "episode/format_failure": float(np.mean([not e.format_ok for e in episodes])),
        "episode/invalid_rate": float(np.mean([e.n_invalid / e.rec_k for e in episodes])),
        "episode/duplicate_rate": float(np.mean([e.n_duplicate / e.rec_k for e in episodes])),
        "episode/answered": float(np.mean([e.truncated_by is None for e in episodes])),
    }


def component_rewards(names: Sequence[str]) -> list[Callable]:
    """One TRL reward function per component (named after it); the first also logs the episode statistics."""

    def make(name: str, log_stats: bool) -> Callable:
        def reward(completions, environments=None, episode=None, log_metric=None, **_):
            if episode is not None:  # played by rollout workers (`WorkerRollouts`)
                episodes = list(episode)
            else:
                episodes = [env._finish(c) for env, c in zip(environments, completions, strict=True)]
            if log_stats and log_metric is not None:
                for key, value in episode_metrics(episodes).items():
                    log_metric(key, value)
            return [float(e.reward_unweighted.get(name, 0.0)) for e in episodes]

        reward.__name__ = name
        return reward

    return [make(name, i == 0) for i, name in enumerate(names)]


def prompt_key(prompt: Sequence[dict]) -> str:
    """A training prompt (chat messages) as a lookup key."""
    return json.dumps(list(prompt), sort_keys=True, ensure_ascii=False)


class WorkerRollouts:
    """TRL's `rollout_func` on rollout workers (see the module docstring): each prompt of a GRPO batch is looked up
    to its (user, cut) episode, played by the pool with the trainer's current weights (sampled at the trainer's
    temperature, `turn_tokens` per turn, `max_completion_length` in all), and returned as token ids, log-probs, the
    env mask and the scored episode."""

    def __init__(self, pool, stack, env: dict, n_envs: int, turn_tokens: int, seed: int = 0):
        self.pool, self.stack, self.env, self.n_envs = pool, stack, dict(env), n_envs
        self.turn_tokens, self.seed = turn_tokens, seed
        self.episodes: dict[str, tuple[int, int]] = {}
        self.policy = None

    def index(self, rows: Sequence[dict]) -> None:
        """Learn which (user, cut) each training prompt belongs to (`rows`: the training dataset's rows)."""
        for row in rows:
            self.episodes.setdefault(prompt_key(row["prompt"]), (int(row["user"]), int(row["cut"])))

    def __call__(self, prompts: Sequence, trainer) -> dict:
        from agents.llm import LLMPolicy
        from agents.rollout import Generation
        from agents.workers import tasks_of

        model = trainer.model
        if self.policy is None or self.policy.model is not model:
            training = model.training
            self.policy = LLMPolicy(model, trainer.processing_class)
            model.train(training)
        pairs = [self.episodes[prompt_key(p)] for p in prompts]
        step = trainer.state.global_step
        tasks = tasks_of([u for u, _ in pairs], [c for _, c in pairs], self.seed + 1_000_003 * step)
        generation = Generation(trainer.args.temperature, self.turn_tokens, trainer.args.max_completion_length)
        trajectories = self.pool.trajectories(
            self.stack, self.env, self.policy, tasks, "train", self.n_envs, generation, version=step
        )
        if self.pool.report.get("workers_replaced"):
            log.warning("GRPO step %d: rollout workers replaced: %s", step, self.pool.report)
        return {
            "prompt_ids": [t.prompt_ids for t in trajectories],
            "completion_ids": [t.completion_ids for t in trajectories],
            "logprobs": [t.logprobs for t in trajectories],
            "env_mask": [t.env_mask for t in trajectories],
            "episode": [t.episode for t in trajectories],
        }


def active_components(env: DeepRecEnv) -> tuple[list[str], list[float]]:
    """The reward's components with a non-zero weight, and their weights."""
    components = [c for c in env.reward_fn.reward.components if c.weight != 0]
    return [c.name for c in components], [float(c.weight) for c in components]


def grpo_config(
    config: GRPOStageConfig,
    env_config: EnvConfig,
    reward_weights: Sequence[float],
    out_dir: Path,
    seed: int = 0,
    logging_dir: Path | None = None,
    turn_tokens: int | None = None,
):
    """TRL's `GRPOConfig` of a stage: the stage's TRL arguments, the tool-call rounds the env allows, the tokens one
    turn may generate (`turn_tokens`, the policy's `max_new_tokens` as in evaluation; None: TRL lets every turn use
    the whole completion budget, so one rambling completion keeps its whole batch generating), the reward weights
    and the settings every phase shares."""
    from trl import GRPOConfig

    args = config.trl_args()
    if turn_tokens is not None:
        args["generation_kwargs"] = {"max_new_tokens": turn_tokens} | dict(args.get("generation_kwargs") or {})
    return GRPOConfig(
        **args,
        max_tool_calling_iterations=min(env_config.max_tool_calls, env_config.max_turns - 1),
        reward_weights=list(reward_weights),
        **trainer_settings(out_dir, seed, logging_dir),
    )


def train_grpo(
    policy_path: Path,
    make_env: Callable[[], DeepRecEnv],
    episodes: Sequence[tuple[int, int]],
    config: GRPOStageConfig,
    out_dir: Path,
    seed: int = 0,
    logging_dir: Path | None = None,
    callbacks: Sequence = (),
    turn_tokens: int | None = None,
    rollouts: WorkerRollouts | None = None,
) -> Path:
    """One GRPO stage from the policy at `policy_path` on train-split `episodes` ((user, cut) pairs); checkpoints
    every `save_steps` in `out_dir` and a rerun resumes from the last one. Returns the final model directory
    (`out_dir/final`). `turn_tokens`: the tokens one turn may generate (`grpo_config`). `rollouts`: generation by
    rollout workers (TRL's `rollout_func`) instead of TRL's own tool loop over `make_env`'s envs."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer

    final = out_dir / "final"
    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    tokenizer.padding_side = "left"
    resume, finished = last_checkpoint(out_dir)
    if finished:
        return finish_from(resume, tokenizer, final)
    probe = make_env()
    names, weights = active_components(probe)
    rows = []
    for user, cut in episodes:  # the env renders every prompt; the adapter's reset starts the same episode
        probe.reset(options={"user": int(user), "split": "train", "cut": int(cut)})
        rows.append({"prompt": probe.prompt, "user": int(user), "split": "train", "cut": int(cut)})
    generation: dict = {"environment_factory": lambda: DeepRecToolEnv(make_env())}
    if rollouts is not None:
        rollouts.index(rows)
        generation = {"rollout_func": rollouts}
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(policy_path),
        reward_funcs=component_rewards(names),
        args=grpo_config(config, probe.config, weights, out_dir, seed, logging_dir, turn_tokens),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=list(callbacks),
        **generation,
    )
    if trainer.args.device.type == "cpu":  # TRL's tiled head pays off on accelerators only (`learned_positions`)
        for model in (trainer.model, trainer.ref_model):
            if model is not None:
                use_learned_position_head(model, trainer.args.temperature)
    train_and_save(trainer, resume, final, f"GRPO ({config.reward or 'root reward'})")
    tokenizer.save_pretrained(final)
    return final
