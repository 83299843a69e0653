"""The environment's config schema and its composition from the Hydra tree in `configs/`.

Every default lives in a dataclass: `StackConfig` gathers the dataclasses of the parts an episode needs (dataset,
the two recommenders, the sentence encoder, the env, the reward preset, the cache root, threads), and Hydra's
config store registers it as `stack_schema`; the YAML files in `configs/` only choose presets (`dataset=games`,
`reward=cold`) and override fields. `configs/env_config.yaml` composes the stack alone (what `gymnasium.make`
uses); `configs/config.yaml` extends it for the `experiments` commands.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deeprec_env.data.source import DatasetConfig
from deeprec_env.env import EnvConfig
from deeprec_env.text import EncoderConfig
from deeprec_env.trm.train import TRMConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class StackConfig:
    """Everything an episode needs, as config. `reward` is a preset of the `reward` group (`rewards.RewardConfig`),
    `judge` one of the `judge` group (`rewards.judge.JudgeConfig`: what scores the answer lines' reasons)."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    sasrec: TRMConfig = field(default_factory=TRMConfig)
    trm: TRMConfig = field(default_factory=TRMConfig)
    reward: Any = None
    judge: Any = None
    env: EnvConfig = field(default_factory=EnvConfig)
    text: EncoderConfig = field(default_factory=EncoderConfig)
    artifacts: str = "artifacts"  # cache root: datasets, embeddings, checkpoints
    seed: int = 0
    threads: int | None = None  # torch threads of every entry point and worker; None: half the cores (at least 1)


def typed(schema: type, node: Any) -> Any:
    """Validate a config node against its dataclass and return the dataclass instance. Interpolations are resolved
    against the node's root first (`trm.backbone: ${sasrec}`)."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))


def register_configs() -> None:
    """Register the schemas the YAML tree builds on (idempotent). Imports `rewards` here, never at module import."""
    from hydra.core.config_store import ConfigStore

    from rewards import RewardConfig
    from rewards.judge import JudgeConfig

    store = ConfigStore.instance()
    store.store(name="stack_schema", node=StackConfig)
    store.store(group="reward", name="schema", node=RewardConfig)
    store.store(group="judge", name="schema", node=JudgeConfig)


def compose(primary: str = "env_config", overrides: Sequence[str] = ()) -> Any:
    """A primary config of `configs/` composed with Hydra overrides, without disturbing a running Hydra app: the
    global Hydra state is saved and restored around the composition."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    global_hydra = GlobalHydra.instance()
    previous = global_hydra.hydra
    global_hydra.clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            return hydra_compose(config_name=primary, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()
        if previous is not None:
            GlobalHydra.instance().initialize(previous)
