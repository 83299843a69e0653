"""Watching a policy learn: greedy episodes of the current policy on fixed validation users, scored with the stack's
reward (the trainer passes a `rec` stack), written to TensorBoard (scalars and a sample transcript) at intervals."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from transformers import TrainerCallback

from agents.llm import LLMAgentFactory, LLMPolicy, PolicyConfig
from agents.workers import RolloutPool
from deeprec_env.metrics import list_ranks, ranking_metrics
from deeprec_env.stack import Stack

log = logging.getLogger(__name__)


def policy_episodes(
    pool: RolloutPool,
    policy: LLMPolicy | LLMAgentFactory,
    stack: Stack,
    env: dict,
    users: Sequence[int],
    split: str,
    n_envs: int,
    progress: bool = False,
    version: int | None = None,
) -> list:
    """The policy's episodes (one per user) on `split`, in the stack's env with the `env` overrides, played by the
    pool's workers; `version`: a new one sends a factory's current weights to Ray workers."""
    factory = policy if isinstance(policy, LLMAgentFactory) else LLMAgentFactory(policy)
    return pool.play(stack, env, factory, list(users), split, n_envs, show_progress=progress, version=version)


def validation_scalars(episodes: Sequence) -> dict[str, float]:
    """NDCG@10, Recall@10, reward, its RecGPT terms (where the env asks for them), format pass rate and tool use of a
    set of episodes."""
    metrics = ranking_metrics(list_ranks([e.ranked_ids for e in episodes], [e.target for e in episodes]))
    return {
        "valid/ndcg@10": float(np.mean(metrics["ndcg@10"])),
        "valid/recall@10": float(np.mean(metrics["recall@10"])),
        "valid/reward": float(np.mean([e.reward_total for e in episodes])),
        "valid/format_ok": float(np.mean([e.format_ok for e in episodes])),
        "valid/called_tool": float(np.mean([len(e.tool_calls) > 0 for e in episodes])),
        "valid/tool_calls": float(np.mean([len(e.tool_calls) for e in episodes])),
    } | {
        f"valid/{term}": float(np.mean([e.reward_unweighted.get(term, 0.0) for e in episodes]))
        for term, shown in (("interest", "interests"), ("explanation", "answer_reasons"))
        if any(getattr(e, shown) for e in episodes)
    }


def transcript_text(episode) -> str:
    """An episode's conversation after the system prompt, as Markdown-safe text for TensorBoard."""
    messages = [*episode.prompt[1:], *episode.transcript] if isinstance(episode.prompt, list) else []
    body = json.dumps(messages, ensure_ascii=False, indent=1) if messages else episode.prompt + episode.transcript
    return "    " + body.replace("\n", "\n    ")  # indented: TensorBoard renders it verbatim


class ValidationCallback(TrainerCallback):
    """Every `every` optimizer steps (and at the end), run the policy greedily on the validation users and log.

    Each validation is also written to `history_path` as it happens (`{"history": [{"step": ..., ...}, ...]}`), and an
    existing file is continued, so a resumed phase keeps the validations it made before the interruption."""

    def __init__(
        self,
        stack: Stack,
        env: dict,
        users: Sequence[int],
        log_dir: Path,
        every: int,
        policy_config: PolicyConfig,
        n_envs: int,
        tag: str,
        history_path: Path,
        pool: RolloutPool,
    ):
        self.stack, self.env, self.users, self.every, self.pool = stack, env, list(users), every, pool
        self.factory: LLMAgentFactory | None = None
        self.model = None
        self.log_dir, self.policy_config, self.n_envs, self.tag = log_dir, policy_config, n_envs, tag
        self.history_path = history_path
        self.history: list[dict] = json.loads(history_path.read_text())["history"] if history_path.exists() else []

    def _validate(self, state, model, tokenizer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        was_training = model.training
        if self.model is not model:  # one factory per model: Ray workers get its copy once, then weights per step
            self.factory, self.model = LLMAgentFactory(LLMPolicy(model, tokenizer, self.policy_config)), model
        model.eval()
        step = state.global_step
        episodes = policy_episodes(
            self.pool, self.factory, self.stack, self.env, self.users, "valid", self.n_envs, version=step
        )
        model.train(was_training)
        scalars = validation_scalars(episodes)
        # a resumed phase redoes the steps after its checkpoint: their earlier validations are replaced
        self.history = [h for h in self.history if h["step"] < state.global_step]
        self.history.append({"step": state.global_step, **scalars})
        self.history_path.parent.mkdir(parents=True, exist_ok=True)
        self.history_path.write_text(json.dumps({"history": self.history}, indent=1))
        log.info("%s step %d: %s", self.tag, state.global_step, " ".join(f"{k}={v:.4f}" for k, v in scalars.items()))
        with SummaryWriter(str(self.log_dir)) as writer:
            for name, value in scalars.items():
                writer.add_scalar(f"{self.tag}/{name}", value, state.global_step)
            writer.add_text(f"{self.tag}/transcript", transcript_text(episodes[0]), state.global_step)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.every and state.global_step % self.every == 0:
            self._validate(state, model, processing_class)

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not self.history or self.history[-1]["step"] != state.global_step:
            self._validate(state, model, processing_class)
