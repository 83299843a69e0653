"""The two-phase trainer's recipe: one dataclass per phase, their defaults the recipe `experiments.train` runs.

Fields named like a TRL argument (`learning_rate`, `num_train_epochs`, `per_device_train_batch_size`, `beta`, ...)
are passed to TRL's `SFTConfig` / `GRPOConfig` under that name; `extra_args` passes any other TRL argument through
unchanged (e.g. `+trainer.stage2.extra_args.top_p=0.9`). The other fields are the trainer's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agents.tag_actions import ANSWER_RULES, MAX_TAGS, MIN_ITEMS

PHASES = ("warm_start", "stage1", "stage2", "evaluate")


@dataclass
class WarmStartConfig:
    """Warm start: the teacher's episodes on train users, then supervised fine-tuning (TRL's SFTTrainer)."""

    # a text agent (agents.baselines.TEXT_AGENTS) or a trained tag policy's directory; or a list of them, which share
    # the episodes equally: a policy that has seen several behaviours gives GRPO a choice between them
    teacher: Any = "scripted-copy"
    episodes: int = 1000  # train (user, cut point) episodes (seeded sample) the teacher plays: the SFT set
    eval_every: int = 200  # optimizer steps between validation rollouts; 0: only at the end
    num_train_epochs: float = 6.0
    learning_rate: float = 3e-3
    per_device_train_batch_size: int = 4  # small batches, more updates: a CPU step costs by the token
    max_length: int = 4096  # tokens per example; longer ones are truncated
    lr_scheduler_type: str = "cosine"
    warmup_steps: int = 10
    activation_checkpointing: bool = False  # recompute activations in backward: less memory, more compute
    save_steps: int = 200
    logging_steps: int = 5
    extra_args: dict[str, Any] = field(default_factory=dict)

    def trl_args(self) -> dict[str, Any]:
        """The SFTConfig arguments of this phase."""
        names = (
            "num_train_epochs",
            "learning_rate",
            "per_device_train_batch_size",
            "max_length",
            "lr_scheduler_type",
            "warmup_steps",
            "activation_checkpointing",
            "save_steps",
            "logging_steps",
        )
        return {name: getattr(self, name) for name in names} | dict(self.extra_args)


@dataclass
class GRPOStageConfig:
    """One GRPO stage (TRL's GRPOTrainer). The defaults are stage 2's recipe; `stage1` overrides some."""

    reward: str | None = None  # a configs/reward preset; None: the root `reward` config
    episodes: int = 400  # train episodes, (user, cut point) pairs, to draw prompts from (seeded)
    difficulty_filter: bool = True  # keep episodes whose target the TRM (empty query) ranks in its top `difficulty_top`
    difficulty_top: int = 100
    eval_every: int = 20  # validation (greedy policy, `trainer.validation.reward`) every N steps; 0: only at the end
    max_steps: int = 90
    num_generations: int = 8  # group size
    per_device_train_batch_size: int = 64  # completions per step: num_generations per prompt
    learning_rate: float = 5e-5
    beta: float = 0.04  # KL coefficient
    epsilon: float = 0.2  # clip range: binds only when num_iterations > 1 (one update per batch is on-policy)
    num_iterations: int = 1  # optimizer steps per batch of generated episodes (the GRPO paper's mu)
    scale_rewards: str = "group"  # advantage scale: group std (GRPO) | batch std | none (Dr. GRPO)
    loss_type: str = "dapo"  # token-level loss normalisation: dapo | grpo | dr_grpo | bnpo
    temperature: float = 0.7
    max_completion_length: int = 1280  # generated + tool-result tokens per episode
    activation_checkpointing: bool = True  # recompute activations in backward: a GRPO batch's memory, at little cost
    save_steps: int = 10
    logging_steps: int = 1
    extra_args: dict[str, Any] = field(default_factory=dict)

    def trl_args(self) -> dict[str, Any]:
        """The GRPOConfig arguments of this stage."""
        names = (
            "max_steps",
            "num_generations",
            "per_device_train_batch_size",
            "learning_rate",
            "beta",
            "epsilon",
            "num_iterations",
            "scale_rewards",
            "loss_type",
            "temperature",
            "max_completion_length",
            "activation_checkpointing",
            "save_steps",
            "logging_steps",
        )
        return {name: getattr(self, name) for name in names} | dict(self.extra_args)


def _stage1() -> GRPOStageConfig:
    return GRPOStageConfig(
        reward="cold",
        max_steps=20,
        num_generations=4,
        per_device_train_batch_size=8,
        learning_rate=1e-4,
        temperature=1.0,
    )


def _policy_env() -> dict[str, Any]:
    return {
        "protocol": "chat",
        "recall_k": 10,  # = rec_k: one-call agents (trm-agent, oracle) fill their answer from a single call
        "history_items": 5,  # short episodes: CPU training time is per token
        "instructions": "brief",
        "max_tool_calls": 4,
        "max_turns": 8,
        "item_refs": "handles",  # answers name items by handle: a small policy copies "#3" where titles fail
        "train_cuts": 5,  # training episodes at each user's last 5 training items
    }


@dataclass
class TagPPOConfig:
    """RLlib PPO for tag-action policies (`policy=tag-ppo`, `agents.training.ppo`): its env runners, learner and
    network. Each of `stage1` / `stage2` in `trainer.phases` is one PPO phase scored with that stage's reward."""

    iterations: int = 40  # PPO iterations per phase (each samples `train_batch` env steps, then updates)
    train_batch: int = 4000  # env steps per iteration, over all env runners
    minibatch: int = 256
    epochs: int = 6  # passes over each iteration's batch
    lr: float = 3e-4
    entropy_coeff: float = 0.01
    clip_param: float = 0.2
    gamma: float = 1.0  # episodes are a few steps long; the reward comes at the end
    gae_lambda: float = 0.95
    hidden: int = 128  # two tanh layers of this width for the policy and for the value function
    num_env_runners: int = 1  # Ray actors that step envs (0: sample in the driver)
    envs_per_runner: int = 8
    cpus_per_runner: float = 1.0
    max_tags: int = MAX_TAGS  # tag vocabulary: the most common item aspects (`agents.tag_actions.TagVocabulary`)
    min_items: int = MIN_ITEMS  # a tag must describe at least this many items
    # the answer actions' rules (of `agents.tag_actions.ANSWER_RULES`); with one rule only the queries are chosen
    answer_rules: list[str] = field(default_factory=lambda: list(ANSWER_RULES))
    eval_every: int = 10  # iterations between greedy validation rollouts (`trainer.validation.users`); 0: at the end
    checkpoint_every: int = 10  # iterations between checkpoints (a rerun resumes from the last one)


@dataclass
class ValidationConfig:
    users: int = 64  # fixed, seeded validation users for the learning curves
    reward: str = "rec"  # the reward preset validation scores with (curves, warm start vs the last GRPO stage)


@dataclass
class EvaluationConfig:
    valid_users: int = 1000  # seeded validation users for the warm start vs last GRPO stage comparison (0: all)
    users: int = 300  # seeded test users for the final table
    agents: list[str] = field(default_factory=lambda: ["pop", "sasrec", "trm", "scripted", "oracle"])


@dataclass
class TrainerConfig:
    """Phases, the env the policy plays, and each phase's recipe (`experiments.train`)."""

    output_dir: str = "runs/${dataset.name}-${policy.name}"  # one per run: sweeps must vary it
    phases: list[str] = field(default_factory=lambda: list(PHASES))
    n_envs: int = 16  # episodes generated together during teacher rollouts and evaluation
    tool_holdout: bool = True  # training episodes use a TRM trained without their targets (`Stack.for_agent_training`)
    env: dict[str, Any] = field(default_factory=_policy_env)  # EnvConfig fields over the root `env` for the policy
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    stage1: GRPOStageConfig = field(default_factory=_stage1)
    stage2: GRPOStageConfig = field(default_factory=GRPOStageConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    ppo: TagPPOConfig = field(default_factory=TagPPOConfig)
