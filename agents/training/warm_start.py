"""Warm start: the teacher's episodes through the env (chat codec), then supervised fine-tuning on them with TRL's
`SFTTrainer`. Only the assistant turns are learned (`assistant_only_loss`): the prompt and the tool results the env
wrote are masked from the loss, as the policy never has to produce them.

A policy only learns to call the tool from examples in the exact schema it will see during RL, so each teacher tool
call becomes a structured `tool_calls` entry that the chat template renders exactly as TRL parses it back.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from agents.baselines import AgentFactory, text_agent_class
from agents.training.checkpoints import finish_from, last_checkpoint, train_and_save, trainer_settings
from agents.training.config import WarmStartConfig
from agents.training.learned_positions import learned_token_scores
from agents.training.ppo import is_tag_policy, load_tag_agent
from agents.workers import RolloutPool
from deeprec_env.episode import Episode
from deeprec_env.protocol import TOOL_SCHEMA, get_codec, structured_call
from deeprec_env.stack import Stack


def sft_messages(episode: Episode) -> list[dict]:
    """An episode as chat messages for SFT: the env's prompt and transcript, each tool call turned into a structured
    `tool_calls` entry (content = the reasoning before it)."""
    codec = get_codec("chat")
    messages = [dict(m) for m in episode.prompt]
    for message in episode.transcript:
        if message["role"] != "assistant":
            messages.append(dict(message))
            continue
        action = codec.parse(message)
        if action.kind != "tool_call":
            messages.append({"role": "assistant", "content": message["content"]})
            continue
        calls = [structured_call(call.preference) for call in action.calls]
        messages.append({"role": "assistant", "content": action.reasoning, "tool_calls": calls})
    return messages


def teacher_episodes(
    pool: RolloutPool,
    stack: Stack,
    env_overrides: dict,
    users: Sequence[int],
    teacher: str,
    n_envs: int,
    seed: int,
    cuts: Sequence[int] | None = None,
) -> list[Episode]:
    """The teacher's finished episodes, one per user (at its train cut point in `cuts`, if given), on the env's
    split (the env must use the chat codec), played by the pool's workers. `teacher`: a text agent's name
    (`agents.baselines.text_agent_class`) or the directory of a trained tag policy (a `final/` of `policy=tag-ppo`),
    which then plays this env."""
    config = stack.env_config(**env_overrides)
    if config.protocol != "chat":
        raise ValueError("warm start needs the chat codec: set trainer.env.protocol=chat")
    if is_tag_policy(teacher):
        make_agent = load_tag_agent(teacher, stack.dataset)
    else:
        make_agent = AgentFactory(text_agent_class(teacher), seed=seed)
    return pool.play(stack, env_overrides, make_agent, list(users), config.split, n_envs, cuts)


def training_chat_template(tokenizer) -> str:
    """The chat template with generation markers that `assistant_only_loss` needs."""
    from trl.chat_template_utils import get_training_chat_template

    return get_training_chat_template(tokenizer)


def sft_dataset(episodes: Sequence[Episode]):
    """The SFT dataset of teacher episodes: one conversational example per episode, with the tool's schema."""
    from datasets import Dataset

    return Dataset.from_list([{"messages": sft_messages(e), "tools": [TOOL_SCHEMA]} for e in episodes])


def policy_sft_trainer_class():
    """`PolicySFTTrainer`, defined on first use so that importing this module does not import TRL."""
    from trl import SFTTrainer

    class PolicySFTTrainer(SFTTrainer):
        """TRL's `SFTTrainer` with the loss taken from the model's own head at the learned positions only
        (`learned_positions`): the loss (the mean negative log-likelihood of the learned tokens) and the logged
        `entropy`, `mean_token_accuracy` and `num_tokens` are TRL's, at the cost of one ordinary forward."""

        tokens_seen = 0  # input tokens trained on so far, TRL's `num_tokens`

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs:  # evaluation that wants logits: TRL's path
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
            scores = learned_token_scores(model, inputs["labels"], **model_inputs)
            mode = "train" if model.training else "eval"
            learned_count = max(1, scores.log_probs.numel())
            self._metrics[mode]["entropy"].append(scores.entropy.sum().item() / learned_count)
            self._metrics[mode]["mean_token_accuracy"].append(scores.is_top1.sum().item() / learned_count)
            if mode == "train":
                self.tokens_seen += int(inputs["attention_mask"].sum())
                self._metrics[mode]["num_tokens"] = [self.tokens_seen]
            return scores.loss(num_items_in_batch)

    return PolicySFTTrainer


def sft_config(config: WarmStartConfig, out_dir: Path, seed: int = 0, logging_dir: Path | None = None):
    """TRL's `SFTConfig` of the warm start: the phase's TRL arguments and the settings every phase shares."""
    from trl import SFTConfig

    return SFTConfig(assistant_only_loss=True, **config.trl_args(), **trainer_settings(out_dir, seed, logging_dir))


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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = out_dir / "final"
    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    resume, finished = last_checkpoint(out_dir)
    if finished:
        return finish_from(resume, tokenizer, final)
    serving_template = tokenizer.chat_template
    tokenizer.chat_template = training_chat_template(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(policy_path)
    trainer = policy_sft_trainer_class()(
        model=model,
        args=sft_config(config, out_dir, seed, logging_dir),
        train_dataset=sft_dataset(episodes),
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    train_and_save(trainer, resume, final, "warm start")
    tokenizer.chat_template = serving_template  # final/ serves with the plain template (TRL swaps it as needed)
    tokenizer.save_pretrained(final)
    return final
