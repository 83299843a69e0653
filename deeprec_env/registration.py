"""`make_env`: a ready `DeepRecEnv` from the Hydra config tree, the entry point of `deeprec/DeepRec-v0`.

    import gymnasium, deeprec_env
    env = gymnasium.make("deeprec/DeepRec-v0", dataset="ml-100k", protocol="tags", reward="rec")

This loads (and caches under `artifacts/`) the dataset, the sentence encoder and the trained preference-aware TRM.
A TRM not yet in the cache is TRAINED NOW, which takes minutes on a CPU for the real datasets (run
`python -m experiments.prepare dataset=NAME` once beforehand). Heavy modules (Hydra, torch models, `rewards`) are
imported only when `make_env` is called, never at `import deeprec_env`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from deeprec_env.config import text_encoder, typed
from deeprec_env.env import DeepRecEnv, EnvConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def compose_config(overrides: Sequence[str] = ()) -> Any:
    """The root config (`configs/config.yaml`) composed with Hydra overrides, without disturbing a running Hydra
    app: the global Hydra state is saved and restored around the composition."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    global_hydra = GlobalHydra.instance()
    previous = global_hydra.hydra
    global_hydra.clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            return compose(config_name="config", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()
        if previous is not None:
            GlobalHydra.instance().initialize(previous)


class BoundReward:
    """A reward with its context bound: `episode -> breakdown`, with the reward's `levels` (picklable)."""

    def __init__(self, reward: Any, context: Any):
        self.reward = reward
        self.context = context

    @property
    def levels(self) -> dict[str, str]:
        return dict(self.reward.levels)

    def __call__(self, episode: Any) -> Any:
        return self.reward(episode, self.context)


def _group_override(group: str, option: str) -> str:
    """`group=option` when the root config's defaults list has the group, else `+group=option` (adds it)."""
    from omegaconf import OmegaConf

    defaults = OmegaConf.load(CONFIG_DIR / "config.yaml").get("defaults") or []
    listed = any((isinstance(d, str) and d == group) or (hasattr(d, "keys") and group in d) for d in defaults)
    return f"{group}={option}" if listed else f"+{group}={option}"


def build_reward_fn(node: Any, encoder: Any, item_text: Any, model: Any) -> BoundReward:
    """The reward of a composed `reward` config node, with its context bound (imports `rewards` here only)."""
    import numpy as np
    import torch

    from rewards import RewardContext, build_reward

    with torch.inference_mode():
        vectors = model.item_vectors().detach().float().cpu().numpy()
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = np.where(norms > 0, vectors / np.maximum(norms, 1e-12), 0.0).astype(np.float32)
    vectors[0] = 0.0
    context = RewardContext(encoder=encoder, item_text=np.asarray(item_text, np.float32), item_vectors=vectors)
    return BoundReward(build_reward(node), context)


def build_env(
    cfg: Any,
    protocol: str | None = None,
    split: str | None = None,
    with_reward: bool = True,
    count_tokens: Callable[[str], int] | None = None,
    render_mode: str | None = None,
    **overrides: Any,
) -> DeepRecEnv:
    """A DeepRecEnv from a composed root config: its dataset, the trained `trm` (trained now if not cached),
    in-process retrieval, the `reward` node (unless `with_reward=False`) and the `env` node with `overrides`."""
    from deeprec_env.data.source import DatasetConfig, artifact_root, load_dataset
    from deeprec_env.text import item_text_embeddings
    from deeprec_env.trm.retriever import InProcessRetriever
    from deeprec_env.trm.train import TRMConfig, load_or_train

    fields = list(EnvConfig.__dataclass_fields__)
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise TypeError(f"unknown env arguments {unknown}; EnvConfig fields are {fields}")
    config = typed(EnvConfig, cfg.env) if "env" in cfg else EnvConfig()
    given = {"protocol": protocol, "split": split, **overrides}
    config = dataclasses.replace(config, **{k: v for k, v in given.items() if v is not None})
    config.validate()

    data_cfg = typed(DatasetConfig, cfg.dataset)
    data = load_dataset(data_cfg, cfg.artifacts)
    root = artifact_root(cfg.artifacts, data_cfg)
    encoder = text_encoder(cfg.text)
    model, _ = load_or_train(data, typed(TRMConfig, cfg.trm), root, encoder)
    retriever = InProcessRetriever(model, encoder)
    reward_fn = None
    if with_reward and "reward" in cfg:
        reward_fn = build_reward_fn(cfg.reward, encoder, item_text_embeddings(data, encoder, root), model)
    levels = reward_fn.levels if reward_fn is not None else None
    return DeepRecEnv(data, retriever, reward_fn, levels, config, count_tokens, render_mode=render_mode)


def make_env(
    dataset: str = "ml-100k",
    protocol: str = "tags",
    reward: str | None = "rec",
    artifacts: str = "artifacts",
    split: str = "test",
    hydra_overrides: Sequence[str] = (),
    count_tokens: Callable[[str], int] | None = None,
    render_mode: str | None = None,
    **overrides: Any,
) -> DeepRecEnv:
    """A DeepRecEnv on a prepared dataset with the trained preference-aware TRM (in-process retrieval).

    dataset: a `configs/dataset/` name; protocol: "tags" | "chat"; reward: a `configs/reward/` preset ("rec",
    "cold") or None for zero rewards; artifacts: the cache root; hydra_overrides: extra overrides of the root
    config (e.g. ["trm.train.max_steps=200", "text.path=DIR", "reward.point.weight=0"]); overrides: `EnvConfig`
    fields (recall_k=..., ...), applied over an `env` node of the composed config if there is one. Trains the TRM
    if it is not cached (slow). The reward's levels are passed on, so `reward_mode="per_turn"` works.
    """
    groups = [f"dataset={dataset}"] + ([_group_override("reward", reward)] if reward is not None else [])
    cfg = compose_config([*groups, f"artifacts={artifacts}", *hydra_overrides])
    return build_env(cfg, protocol, split, reward is not None, count_tokens, render_mode, **overrides)
