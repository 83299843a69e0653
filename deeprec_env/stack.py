"""One builder for the whole stack: dataset, sentence encoder, preference-aware TRM, retriever, reward and envs.

    stack = build_stack(cfg)                 # cfg: a composed config (configs/env_config.yaml or config.yaml)
    env = stack.make_env(protocol="chat")    # DeepRecEnv; EnvConfig fields override cfg.env
    envs = stack.make_vector_env(8)          # DeepRecVectorEnv: one batched retrieval per step

`gymnasium.make("deeprec/DeepRec-v0", ...)` and `gymnasium.make_vec(...)` call `make_env` / `make_vector_env` below;
every `experiments` command, the trainers and the bench call `build_stack`. Models missing from the artifact cache
are TRAINED when the stack is built (minutes on a CPU for the real datasets; `python -m experiments.prepare` does it
ahead). Heavy modules (Hydra, torch models, `rewards`) are imported when a stack is built, never at
`import deeprec_env`.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from deeprec_env.config import StackConfig, compose, typed
from deeprec_env.data.dataset import RecDataset
from deeprec_env.env import DeepRecEnv, EnvConfig
from deeprec_env.vector import DeepRecVectorEnv

log = logging.getLogger(__name__)


class BoundReward:
    """A reward with its context bound: `episode -> breakdown`, with the reward's `levels` and the `config` it was
    built from (picklable)."""

    def __init__(self, reward: Any, context: Any, config: Any = None):
        self.reward = reward
        self.context = context
        self.config = config

    @property
    def levels(self) -> dict[str, str]:
        return dict(self.reward.levels)

    def __call__(self, episode: Any) -> Any:
        return self.reward(episode, self.context)


@functools.cache
def _encoder(path: str | None, batch_size: int, max_seq_length: int):
    from deeprec_env.text import EncoderConfig, TextEncoder

    return TextEncoder(EncoderConfig(path=path, batch_size=batch_size, max_seq_length=max_seq_length))


def text_encoder(config: Any):
    """The sentence encoder of an `EncoderConfig` (the `text` node): one instance per process and setting."""
    return _encoder(config.path, config.batch_size, config.max_seq_length)


class Stack:
    """The parts every env of a run shares: the typed stack `config`, the dataset and its artifact directory, and
    the encoder, TRM, retriever, title matcher, judge and reward, each built from the config when first used (so a
    command trains only what it needs) and then kept. Parts given to the constructor are used as they are."""

    def __init__(
        self,
        config: StackConfig,
        dataset: RecDataset,
        root: Path | None,
        *,
        encoder: Any = None,
        trm: Any = None,
        retriever: Any = None,
        matcher: Any = None,
        judge: Any = None,
        reward: BoundReward | None = None,
        reward_node: Any = None,
    ):
        self.config, self.dataset, self.root = config, dataset, root
        self._parts = {
            "encoder": encoder,
            "trm": trm,
            "retriever": retriever,
            "matcher": matcher,
            "judge": judge,
            "reward": reward,
        }
        self._reward_node = reward_node

    @property
    def encoder(self):
        """The sentence encoder (deeprec_env.text.TextEncoder)."""
        return self._part("encoder", lambda: text_encoder(self.config.text))

    @property
    def trm(self):
        """The trained preference-aware model (from the cache, or trained now)."""
        return self._part("trm", lambda: self.recommender("trm")[0])

    @property
    def retriever(self):
        """The TRM as a tool, in this process (deeprec_env.trm.retriever.InProcessRetriever)."""
        from deeprec_env.trm.retriever import InProcessRetriever

        return self._part("retriever", lambda: InProcessRetriever(self.trm, self.encoder))

    @property
    def matcher(self):
        """The title matcher every env of the stack shares."""
        from deeprec_env.protocol import TitleMatcher

        return self._part("matcher", lambda: TitleMatcher(self.dataset, self.config.env.fuzzy_threshold))

    @property
    def judge(self):
        """The judge of answer-line reasons the config names (`rewards.judge`; the `judge` group, default `rule`)."""
        from rewards.judge import JudgeConfig, build_judge

        return self._part(
            "judge", lambda: build_judge(typed(JudgeConfig, self.config.judge or {}), self.dataset, self.encoder)
        )

    @property
    def reward(self) -> BoundReward | None:
        """The bound reward of the stack's reward config, or None for zero rewards."""
        if self._reward_node is None:
            return self._parts["reward"]
        return self._part("reward", lambda: bind_reward(self._reward_node, self))

    def _part(self, name: str, build: Callable[[], Any]) -> Any:
        if self._parts[name] is None:
            self._parts[name] = build()
        return self._parts[name]

    def replace(self, **parts: Any) -> Stack:
        """A stack sharing this one's parts, with `parts` (encoder=, retriever=, reward_node=, ...) replaced."""
        own = {**self._parts, "reward_node": self._reward_node}
        if "reward_node" in parts:
            own["reward"] = None
        return Stack(self.config, self.dataset, self.root, **(own | parts))

    def for_agent_training(self, cuts: int) -> Stack:
        """The stack that serves an agent's training episodes at the first `cuts` train cut points (`env.train_cuts`):
        the same dataset, encoder, matcher and reward config, but a tool (the SASRec backbone and the TRM) trained
        without those cut points' targets (`TrainConfig.holdout`), so the agent learns from tool results as good as
        the ones it gets at evaluation, not from a tool that has seen the target. `cuts` <= 0: this stack."""
        if cuts <= 0:
            return self
        config = copy.deepcopy(self.config)
        for model in (config.sasrec, config.trm, config.trm.backbone):
            if model is not None:
                model.train.holdout = cuts
        shared = {"encoder": self._parts["encoder"], "matcher": self._parts["matcher"], "judge": self._parts["judge"]}
        if self._reward_node is None:
            shared["reward"] = self._parts["reward"]
        return Stack(config, self.dataset, self.root, **shared, reward_node=self._reward_node)

    def with_reward(self, node: Any) -> Stack:
        """The same stack scoring with another reward config (a `reward` node or preset name, e.g. "cold")."""
        if isinstance(node, str):
            node = compose(overrides=[f"reward={node}"]).reward
        return self.replace(reward_node=node)

    def env_config(self, **overrides: Any) -> EnvConfig:
        """The stack's env config with `overrides` (EnvConfig fields), validated."""
        fields = [f.name for f in dataclasses.fields(EnvConfig)]
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise TypeError(f"unknown env arguments {unknown}; EnvConfig fields are {fields}")
        config = dataclasses.replace(self.config.env, **overrides)
        config.validate()
        return config

    def make_env(
        self, count_tokens: Callable[[str], int] | None = None, render_mode: str | None = None, **overrides: Any
    ) -> DeepRecEnv:
        """A `DeepRecEnv` on the stack's dataset, retriever and reward; `overrides` are EnvConfig fields."""
        config = self.env_config(**overrides)
        return DeepRecEnv(
            self.dataset, self.retriever, self.reward, config, count_tokens, self._matcher(config), render_mode
        )

    def make_vector_env(
        self,
        num_envs: int,
        count_tokens: Callable[[str], int] | None = None,
        autoreset_mode: Any = "NextStep",
        **overrides: Any,
    ) -> DeepRecVectorEnv:
        """A `DeepRecVectorEnv` of `num_envs` episodes; `overrides` are EnvConfig fields."""
        config = self.env_config(**overrides)
        return DeepRecVectorEnv(
            self.dataset,
            self.retriever,
            num_envs,
            self.reward,
            config,
            count_tokens,
            self._matcher(config),
            autoreset_mode,
        )

    def recommender(self, name: str) -> tuple[Any, dict]:
        """A trained model of the config (`"sasrec"` or `"trm"`) and its training log, from the cache or trained
        now."""
        from deeprec_env.trm.train import load_or_train

        config = getattr(self.config, name)
        return load_or_train(self.dataset, config, self.root, self.encoder if config.model.uses_text else None)

    def _matcher(self, config: EnvConfig):
        from deeprec_env.protocol import TitleMatcher

        if config.fuzzy_threshold != self.matcher.fuzzy_threshold:
            return TitleMatcher(self.dataset, config.fuzzy_threshold)
        return self.matcher


def bind_reward(node: Any, stack: Stack) -> BoundReward:
    """The reward of a `reward` config node with its context bound: the encoder, item text embeddings, TRM item
    vectors, item aspects, the title matcher (to tell a query that names an item), the users' latent interests where
    the dataset knows them (synthetic) and, when the explanation term is on, the judge."""
    import numpy as np
    import torch

    from deeprec_env.text import item_text_embeddings
    from deeprec_env.trm.queries import aspect_table
    from rewards import RewardContext, build_reward, load_reward_config

    with torch.inference_mode():
        vectors = stack.trm.item_vectors().detach().float().cpu().numpy()
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = np.where(norms > 0, vectors / np.maximum(norms, 1e-12), 0.0).astype(np.float32)
    vectors[0] = 0.0
    item_text = item_text_embeddings(stack.dataset, stack.encoder, stack.root)
    config = load_reward_config(node)
    context = RewardContext(
        encoder=stack.encoder,
        item_text=np.asarray(item_text, np.float32),
        item_vectors=vectors,
        item_aspects=aspect_table(stack.dataset),
        names_item=stack.matcher.names_item,
        latent_interests=latent_interests(stack.dataset),
        judge=stack.judge if config.explanation.weight else None,
    )
    return BoundReward(build_reward(config), context, config)


def latent_interests(dataset: RecDataset) -> list[dict[str, float]] | None:
    """Per user id, the synthetic users' latent category mixture as {category in lower case: weight}, every category
    present (0 where the user has none); None for a dataset that does not know its users' interests."""
    if "user_preferences" not in dataset.extras:
        return None
    from deeprec_env.data.synthetic import synthetic_category_names

    preferences = dataset.extras["user_preferences"]
    names = [name.lower() for name in synthetic_category_names(preferences.shape[1])]
    return [{n: float(w) for n, w in zip(names, row, strict=True)} for row in preferences]


def stack_config(cfg: Any) -> StackConfig:
    """The typed stack part of a composed config (an experiments config carries more)."""
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    return typed(StackConfig, {f.name: node[f.name] for f in dataclasses.fields(StackConfig) if f.name in node})


def build_stack(cfg: Any, with_reward: bool = True) -> Stack:
    """The stack of a composed config: the dataset (read and cached now) and, built when first used, the encoder,
    the trained `trm` (trained then if not cached), in-process retrieval, the title matcher and (unless
    `with_reward=False` or the config has none) the `reward`. Sets the process's torch threads from `cfg.threads`."""
    from deeprec_env.data.source import artifact_root, load_dataset
    from deeprec_env.runtime import configure_threads, quiet_library_progress

    config = stack_config(cfg)
    configure_threads(config.threads)
    quiet_library_progress()
    dataset = load_dataset(config.dataset, config.artifacts)
    reward_node = cfg.get("reward") if with_reward else None
    return Stack(config, dataset, artifact_root(config.artifacts, config.dataset), reward_node=reward_node)


# -- gymnasium entry points ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _cached_stack(overrides: tuple[str, ...], with_reward: bool) -> Stack:
    return build_stack(compose("env_config", overrides), with_reward)


def stack_for(dataset: str, reward: str | None, artifacts: str | None, overrides: Sequence[str]) -> Stack:
    """The stack of `configs/env_config.yaml` with these choices (built once per process and setting)."""
    choices = [
        f"dataset={dataset}",
        *([f"reward={reward}"] if reward else []),
        *([f"artifacts={artifacts}"] if artifacts else []),
    ]
    return _cached_stack((*choices, *overrides), reward is not None)


def make_env(
    dataset: str = "ml-100k",
    reward: str | None = "rec",
    artifacts: str | None = None,
    overrides: Sequence[str] = (),
    count_tokens: Callable[[str], int] | None = None,
    render_mode: str | None = None,
    **env: Any,
) -> DeepRecEnv:
    """The entry point of `gymnasium.make("deeprec/DeepRec-v0", ...)`.

    dataset: a `configs/dataset/` name; reward: a `configs/reward/` preset ("rec", "cold") or None for zero rewards;
    artifacts: the cache root; overrides: Hydra overrides of the stack config (e.g. ["trm.train.max_steps=200",
    "text.path=DIR", "reward.point.weight=0"]); env: `EnvConfig` fields (protocol="chat", recall_k=..., ...).
    """
    return stack_for(dataset, reward, artifacts, overrides).make_env(count_tokens, render_mode, **env)


def make_vector_env(
    num_envs: int = 1,
    dataset: str = "ml-100k",
    reward: str | None = "rec",
    artifacts: str | None = None,
    overrides: Sequence[str] = (),
    count_tokens: Callable[[str], int] | None = None,
    autoreset_mode: Any = "NextStep",
    **env: Any,
) -> DeepRecVectorEnv:
    """The vector entry point of `gymnasium.make_vec("deeprec/DeepRec-v0", num_envs=N, ...)` (same arguments as
    `make_env`, plus Gymnasium's autoreset mode)."""
    return stack_for(dataset, reward, artifacts, overrides).make_vector_env(
        num_envs, count_tokens, autoreset_mode, **env
    )
