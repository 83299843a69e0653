"""Warm start: the scripted teacher's episodes through the env (chat codec), then supervised fine-tuning on them
with TRL's `SFTTrainer`. Only the assistant turns are learned (`assistant_only_loss`): the prompt and the tool
results the env wrote are masked from the loss, as the policy never has to produce them.

A policy only learns to call the tool from examples in the exact schema it will see during RL, so each teacher
tool call becomes a structured `tool_calls` entry that the chat template renders exactly as TRL parses it back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agents.baselines import TEXT_AGENTS
from agents.rollout import rollout, vector_env
from agents.training.checkpoints import finish_from, last_checkpoint, train_and_save, trainer_settings
from deeprec_env.env import DeepRecEnv
from deeprec_env.episode import Episode
from deeprec_env.protocol import TOOL_NAME, TOOL_SCHEMA, get_codec


@dataclass
class WarmStartConfig:
    """The teacher, the SFT data and the optimiser."""

    teacher: str = "scripted"
    users: int = 600  # train-split users (seeded sample) whose teacher episodes form the SFT set
    epochs: float = 4.0
    lr: float = 2e-3
    batch_size: int = 8
    max_length: int = 4096  # tokens per example; longer ones are truncated
    save_steps: int = 50
    eval_every: int = 50  # optimizer steps between validation rollouts (format pass rate, tool use, reward)


def sft_messages(episode: Episode) -> list[dict]:
    """An episode as chat messages for SFT: the env's prompt and transcript, each executed tool call turned into a
    structured `tool_calls` entry (content = the reasoning before it)."""
    codec = get_codec("chat")
    messages = [dict(m) for m in episode.prompt]
    for message in episode.transcript:
        if message["role"] != "assistant":
            messages.append(dict(message))
            continue
        action = codec.parse(message["content"])
        if action.kind != "tool_call":
            messages.append({"role": "assistant", "content": message["content"]})
            continue
        call = {"type": "function", "function": {"name": TOOL_NAME, "arguments": {"preference": action.preference}}}
        messages.append({"role": "assistant", "content": action.reasoning, "tool_calls": [call]})
    return messages


def teacher_episodes(env: DeepRecEnv, users: Sequence[int], teacher: str, n_envs: int, seed: int) -> list[Episode]:
    """The teacher's finished episodes, one per user, on the env's split (the env must use the chat codec)."""
    if env.codec.name != "chat":
        raise ValueError("warm start needs the chat codec: build the env with protocol='chat'")
    if teacher not in TEXT_AGENTS:
        raise ValueError(f"unknown teacher {teacher!r}; choose from {sorted(TEXT_AGENTS)}")

    def make_agent():
        return TEXT_AGENTS[teacher](env.dataset, protocol=env.codec, rec_k=env.config.rec_k, seed=seed)

    episodes, _ = rollout(vector_env(env, n_envs), make_agent, list(users), env.config.split)
    return episodes


def training_chat_template(tokenizer) -> str:
    """The chat template with generation markers that `assistant_only_loss` needs."""
    from trl.chat_template_utils import get_training_chat_template

    return get_training_chat_template(tokenizer)


def warm_start(
    policy_path: Path,
    episodes: Sequence[Episode],
    config: WarmStartConfig,
    out_dir: Path,
    seed: int = 0,
    logging_dir: Path | None = None,
    callbacks: Sequence = (),
) -> Path:
    """SFT the policy at `policy_path` on the teacher's episodes; checkpoints in `out_dir` (a rerun resumes from the
    last one). Returns the directory of the final model (`out_dir/final`)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    final = out_dir / "final"
    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    resume, finished = last_checkpoint(out_dir)
    if finished:
        return finish_from(resume, tokenizer, final)
    serving_template = tokenizer.chat_template
    tokenizer.chat_template = training_chat_template(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(policy_path)
    data = Dataset.from_list([{"messages": sft_messages(e), "tools": [TOOL_SCHEMA]} for e in episodes])
    args = SFTConfig(
        num_train_epochs=config.epochs,
        learning_rate=config.lr,
        lr_scheduler_type="cosine",
        warmup_steps=10,
        per_device_train_batch_size=config.batch_size,
        max_length=config.max_length,
        assistant_only_loss=True,
        logging_steps=5,
        **trainer_settings(out_dir, config.save_steps, seed, logging_dir),
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=list(callbacks)
    )
    train_and_save(trainer, resume, final, "warm start")
    tokenizer.chat_template = serving_template  # final/ serves with the plain template (TRL swaps it as needed)
    tokenizer.save_pretrained(final)
    return final
