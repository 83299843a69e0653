"""Test doubles and small fixtures shared by the test modules."""

import os
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np

from agents.baselines import ScriptedAgent
from deeprec_env.data.dataset import RecDataset
from deeprec_env.data.source import DatasetConfig, SyntheticConfig, data_roots, load_dataset


class HashEncoder:
    """Deterministic across processes: each word maps to a fixed random vector (seeded by its CRC32); a text is
    the normalised sum of its words' vectors; the empty string is the zero vector. Counts its calls. Like
    `TextEncoder` it raises on an unpaired surrogate (a word's UTF-8 bytes are hashed). `use_cache` is accepted as
    `TextEncoder.encode` takes it (nothing is cached)."""

    def __init__(self, dim: int = 8):
        self.dim = dim
        self.calls: list[list[str]] = []

    def encode(self, texts, use_cache: bool = True):
        self.calls.append(list(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row] += np.random.default_rng(zlib.crc32(word.encode())).standard_normal(self.dim)
            norm = np.linalg.norm(out[row])
            if norm > 0:
                out[row] /= norm
        return out


def synthetic_config(**sizes) -> DatasetConfig:
    """The built-in synthetic dataset's config with `SyntheticConfig` fields overridden."""
    return DatasetConfig(
        name="synthetic", format="synthetic", dir=None, min_core=1, files={}, synthetic=SyntheticConfig(**sizes)
    )


def synthetic_dataset(artifacts: Path, **sizes) -> RecDataset:
    """A small synthetic dataset, cached under `artifacts`."""
    return load_dataset(synthetic_config(**sizes), artifacts)


def real_data_root() -> Path:
    """Where the real datasets are, found as the project finds them ($DEEPREC_DATA, ./data, ../shared/data)."""
    return next((root for root in data_roots(None) if root.is_dir()), data_roots(None)[-1])


def random_stack(dataset, config=None, reward_node=None, text_dim: int = 8, root=None):
    """A `Stack` of hand-made parts instead of trained ones: a small random preference-aware TRM, a hash encoder
    and (given a reward config node) the reward bound to them (with the rule judge of reasons on the hash encoder)."""
    import torch

    from deeprec_env.config import StackConfig
    from deeprec_env.protocol import TitleMatcher
    from deeprec_env.stack import BoundReward, Stack, latent_interests
    from deeprec_env.trm.model import ModelConfig, SequentialRecommender
    from deeprec_env.trm.queries import aspect_table
    from deeprec_env.trm.retriever import InProcessRetriever
    from rewards import RewardContext, build_reward
    from rewards.judge import RuleJudge

    torch.manual_seed(0)
    item_text = torch.randn(dataset.n_items + 1, text_dim)
    item_text[0] = 0
    model_config = ModelConfig(max_len=10, hidden=16, n_layers=1, fuse_item_text=True, fuse_query=True)
    model = SequentialRecommender(dataset.n_items, model_config, item_text).eval()
    encoder = HashEncoder(text_dim)
    reward = None
    if reward_node is not None:
        unit = torch.nn.functional.normalize(item_text, dim=1).numpy()
        vectors = torch.nn.functional.normalize(model.item_vectors().detach(), dim=1).numpy()
        context = RewardContext(
            encoder=encoder,
            item_text=unit,
            item_vectors=vectors,
            item_aspects=aspect_table(dataset),
            names_item=TitleMatcher(dataset).names_item,
            latent_interests=latent_interests(dataset),
            judge=RuleJudge(dataset, HashEncoder(256)),  # wide: random word vectors make no false synonyms
        )
        reward = BoundReward(build_reward(reward_node), context)
    return Stack(
        config or StackConfig(),
        dataset,
        root,
        encoder=encoder,
        trm=model,
        retriever=InProcessRetriever(model, encoder),
        matcher=TitleMatcher(dataset),
        reward=reward,
    )


def chat_stack(dataset):
    """A chat-codec stack of hand-made parts (`random_stack`): a small random TRM, a hash encoder, the `rec` reward
    without its point term, 10 items per call and up to 4 calls."""
    from deeprec_env.config import StackConfig
    from deeprec_env.env import EnvConfig

    env = EnvConfig(protocol="chat", recall_k=10, max_tool_calls=4)
    return random_stack(dataset, StackConfig(env=env), {"point": {"weight": 0.0}}, text_dim=16)


class CrashOnceAgent(ScriptedAgent):
    """The scripted agent, except that its process dies (`os._exit`) at the first episode of `crash_user` anywhere:
    the file `marker` records that it happened. For tests of rollout workers dying mid-batch."""

    def __init__(self, *args, marker: Path, crash_user: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.marker, self.crash_user = Path(marker), crash_user

    def reset(self, observation, info):
        if info["user"] == self.crash_user and not self.marker.exists():
            self.marker.write_text("crashed")
            os._exit(1)
        super().reset(observation, info)


def ray_processes() -> set[str]:
    """Ray's processes now running on this machine (pid and command line; exited ones not yet reaped left out)."""
    found = subprocess.run(["pgrep", "-af", "raylet|gcs_server|ray::"], capture_output=True, text=True).stdout
    return {line for line in found.splitlines() if "pgrep" not in line and "<defunct>" not in line}


def ray_processes_left(before: set[str], wait: float = 10.0) -> set[str]:
    """The Ray processes running now that were not in `before`, after waiting up to `wait` seconds for them to exit
    (a shut-down Ray's processes end shortly after `ray.shutdown` returns)."""
    deadline = time.monotonic() + wait
    while (left := ray_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left
