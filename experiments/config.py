"""The `experiments` commands' config schema: the stack's (`deeprec_env.config.StackConfig`) plus what evaluation,
training, probes and the bench read. Every default lives here or in the dataclass a field names; `configs/` only
holds presets and overrides. Importing this module registers the schemas with Hydra."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from agents.llm import PolicyConfig
from agents.training.config import TrainerConfig
from agents.workers import RolloutConfig
from deeprec_env.config import StackConfig, register_configs


@dataclass
class EvalConfig:
    """Offline evaluation (`experiments.evaluate`)."""

    max_users: int | None = None  # evaluate a fixed, seeded sample of users (None: all)
    batch_size: int = 256
    n_envs: int = 64  # episodes stepped together (one batched retrieval per step) for text agents
    exclude_history: bool = True
    bootstrap: int = 1000  # resamples for the 95% intervals
    list_k: int = 10  # list length for beyond-accuracy metrics
    long_tail_head: float = 0.2  # share of most popular items counted as the head
    popularity_groups: int = 5  # equal-size bins of items by training interactions, for per-group metrics
    force_env: bool = False  # evaluate a trained policy under env overrides that differ from its training env


@dataclass
class BenchConfig:
    """Throughput and memory figures (`experiments.bench`)."""

    tasks: list[str] = field(
        default_factory=lambda: ["sasrec_train", "trm_train", "retrieval", "env_steps", "title_matching", "contention"]
    )
    datasets: list[str] = field(default_factory=lambda: ["ml-100k", "ml-latest-small", "games"])
    steps: int = 200  # optimizer steps timed per training measurement
    batch_sizes: list[int] = field(default_factory=lambda: [1, 16, 64])  # retrieval latency
    repeats: int = 30  # retrieval batches and matched answers per measurement
    recall_k: int = 20
    env_episodes: int = 512  # scripted-agent episodes for env_steps
    grpo_steps: int = 2  # GRPO steps timed by grpo_step
    warm_start_batches: int = 20  # warm_start_step: batches of teacher episodes each trainer steps through
    policy: str | None = None  # grpo_step: the policy directory to start from (None: the untrained tiny policy)
    raw_tokens: int = 128  # grpo_step: tokens per sequence of the raw generation measurement
    ppo_iterations: int = 3  # tag_ppo: PPO iterations timed per runner count (after one warm-up)
    child: str | None = None  # internal: the task a measurement subprocess runs


@dataclass
class PrepareConfig:
    models: list[str] = field(default_factory=lambda: ["sasrec", "trm"])  # trained (and cached) by experiments.prepare


@dataclass
class JudgeEvalConfig:
    """`experiments.judge`: the labelled set of reasons and the LLM judge's sample."""

    users: int = 400  # seeded users, split in a development and a reported half
    lines: int = 10  # items (answer lines) per user
    pairs: int = 40  # judge=llm: (user, item) pairs of the reported half judged, each with its four reasons


@dataclass
class ProbeConfig:
    """`experiments.trm_probe` (synthetic dataset)."""

    k: int = 20
    max_users: int = 500


@dataclass
class ReferenceConfig:
    """`experiments.reference`: the published SASRec recipe (the paper's MovieLens settings; `configs/reference/`
    holds its settings for other datasets); change only to study the reference."""

    hidden: int = 50
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.2
    max_len: int = 200
    lr: float = 1e-3
    batch_size: int = 128
    epochs: int = 200
    eval_every: int = 20  # epochs between validations; the best validation epoch is kept
    patience: int | None = None  # stop after this many validations without improvement (None: train every epoch)


@dataclass
class RayConfig:
    """Which Ray runs Ray work (`rollout.backend=ray` workers, `policy=tag-ppo` env runners)."""

    address: str | None = None  # an existing cluster ("auto", "ray://host:10001"); None: start Ray on this machine
    num_cpus: int | None = None  # CPUs of a Ray started here (None: all)


@dataclass
class ExperimentConfig(StackConfig):
    agent: Any = "sasrec"  # a name (`experiments.evaluate` lists them), module.Class, or a list of them
    split: str = "test"  # valid | test: the split evaluation reports
    probes_users: int = 200  # users of `experiments.probes`
    probes_presets: list[str] = field(default_factory=lambda: ["rec", "cold", "rec-paper", "cold-paper"])
    probes_strict: list[str] = field(default_factory=lambda: ["rec", "cold"])  # every probe must stay below there
    eval: EvalConfig = field(default_factory=EvalConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    judge_eval: JudgeEvalConfig = field(default_factory=JudgeEvalConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)


register_configs()
ConfigStore.instance().store(name="experiment_schema", node=ExperimentConfig)
