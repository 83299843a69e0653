"""Running agents through the vector environment, one batched retrieval per step.

`rollout`: text agents, one per sub-env; a finished sub-env takes the next user at once (the vector env's autoreset
is off; the rollout resets by mask). `policy_trajectories`: an LLM policy's episodes as the token sequences RL trains
on (chat codec): the prompt's tokens, then every generated token and every token of the env's replies in order, with
a mask telling the two apart and the log-probability of each generated token. Both serve the local backend and the
Ray rollout workers (`agents.workers`) alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from agents.baselines import TextAgent
from deeprec_env.episode import Episode
from deeprec_env.protocol import TOOL_SCHEMA
from deeprec_env.runtime import progress
from deeprec_env.vector import DeepRecVectorEnv, unbatch_info


def rollout(
    envs: DeepRecVectorEnv,
    make_agent: Callable[[], TextAgent],
    users: Sequence[int],
    split: str,
    show_progress: bool = True,
    cuts: Sequence[int] | None = None,
) -> list[Episode]:
    """One episode per user on `split`, returned in the order of `users` (their rewards: `Episode.reward_total`);
    `cuts`: the train cut point of each (`DeepRecEnv.reset`). `envs` must have autoreset disabled
    (`Stack.make_vector_env(n, autoreset_mode="Disabled")`)."""
    if envs.autoreset_mode.value != "Disabled":
        raise ValueError("rollout resets sub-envs itself: build the vector env with autoreset_mode='Disabled'")
    n = envs.num_envs
    agents = [make_agent() for _ in range(n)]
    cuts = [None] * len(users) if cuts is None else [None if c is None else int(c) for c in cuts]
    queue = list(enumerate(zip((int(u) for u in users), cuts, strict=True)))
    episodes: list[Episode | None] = [None] * len(queue)
    running: list[int | None] = [None] * n  # which queue entry each sub-env plays
    observations: list[str] = [""] * n
    infos: list[dict] = [{} for _ in range(n)]
    bar = progress(total=len(queue), desc=f"rollout {agents[0].name}", disable=not show_progress)

    def start(slots: list[int]) -> None:
        slots = slots[: len(queue)]
        if not slots:
            return
        mask = np.zeros(n, dtype=bool)
        chosen: list[int | None] = [None] * n
        chosen_cuts: list[int | None] = [None] * n
        for slot in slots:
            running[slot], (chosen[slot], chosen_cuts[slot]) = queue.pop(0)
            mask[slot] = True
        options = {"reset_mask": mask, "users": chosen, "cuts": chosen_cuts, "split": split}
        obs, batched = envs.reset(options=options)
        for slot in slots:
            observations[slot], infos[slot] = obs[slot], unbatch_info(batched, slot)
            agents[slot].reset(observations[slot], infos[slot])

    act_many = getattr(type(agents[0]), "act_many", None) or (
        lambda group, obs, infos: [agent.act(o, i) for agent, o, i in zip(group, obs, infos, strict=True)]
    )  # a user's agent class may act one episode at a time
    start(list(range(n)))
    while any(r is not None for r in running):
        active = [i for i in range(n) if running[i] is not None]
        acted = act_many([agents[i] for i in active], [observations[i] for i in active], [infos[i] for i in active])
        actions = [""] * n
        for i, action in zip(active, acted, strict=True):
            actions[i] = action
        obs, _, terminated, truncated, batched = envs.step(actions)
        finished = []
        for i in active:
            observations[i], infos[i] = obs[i], unbatch_info(batched, i)
            if terminated[i] or truncated[i]:
                episodes[running[i]] = infos[i]["deeprec"]
                running[i] = None
                finished.append(i)
        bar.update(len(finished))
        start(finished)
    bar.close()
    return episodes


@dataclass
class Generation:
    """How a policy samples a trajectory: `temperature` 0 is greedy; `turn_tokens` caps one turn; `max_tokens` caps
    the whole completion (generated and env tokens together), past which the episode ends truncated."""

    temperature: float = 0.0
    turn_tokens: int = 256
    max_tokens: int = 1024


@dataclass
class Trajectory:
    """One episode as token ids: `completion_ids` follow `prompt_ids`; `env_mask[i]` is 1 where the policy generated
    completion token i and 0 where the env wrote it (tool results, hints); `logprobs[i]` is the sampling
    log-probability of a generated token (0.0 for env tokens); `episode` is the env's scored record."""

    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    episode: Episode | None = None


def reply_ids(tokenizer, messages: Sequence[dict]) -> list[int]:
    """The tokens the chat template puts between the end of an assistant turn (its end-of-turn token) and the next
    assistant turn's first token, for the env's reply `messages` (tool results or a hint)."""
    turn = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    before = tokenizer.apply_chat_template(turn, tokenize=True, return_dict=False)
    after = tokenizer.apply_chat_template(
        [*turn, *messages], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    ends = [i for i, token in enumerate(before) if token == tokenizer.eos_token_id]
    before = before[: ends[-1] + 1] if ends else before
    if after[: len(before)] != before:
        raise ValueError(
            "the chat template renders a reply by changing the turn before it; use a prefix-stable template"
        )
    return list(after[len(before) :])


def policy_trajectories(
    envs: DeepRecVectorEnv, policy, tasks: Sequence[tuple[int, int | None, int]], split: str, generation: Generation
) -> list[Trajectory]:
    """One trajectory per (user, cut, seed) task, all `envs.num_envs` at a time on `split`, in task order. Every turn
    generates for all running episodes in one batch (sampling seeded with the group's first task seed), decodes
    each new segment, steps it through the env and appends the env's reply as tokens. `policy`: an
    `agents.llm.LLMPolicy` (its model is put in eval mode while generating and restored)."""
    if envs.autoreset_mode.value != "Disabled" or envs.config.protocol != "chat":
        raise ValueError("policy_trajectories needs a chat-codec vector env with autoreset_mode='Disabled'")
    out: list[Trajectory] = []
    model, tokenizer = policy.model, policy.tokenizer
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):  # seeding each group leaves the caller's random state alone
            for start in range(0, len(tasks), envs.num_envs):
                out += _play_group(envs, model, tokenizer, tasks[start : start + envs.num_envs], split, generation)
    finally:
        model.train(was_training)
    return out


def _play_group(envs, model, tokenizer, tasks, split, generation: Generation) -> list[Trajectory]:
    n = envs.num_envs
    mask = np.zeros(n, dtype=bool)
    mask[: len(tasks)] = True
    users = [int(t[0]) for t in tasks] + [None] * (n - len(tasks))
    cuts = [None if t[1] is None else int(t[1]) for t in tasks] + [None] * (n - len(tasks))
    _, infos = envs.reset(options={"reset_mask": mask, "users": users, "cuts": cuts, "split": split})
    trajectories = []
    for slot in range(len(tasks)):
        messages = unbatch_info(infos, slot)["messages"]
        ids = tokenizer.apply_chat_template(
            messages, tools=[TOOL_SCHEMA], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        trajectories.append(Trajectory(prompt_ids=list(ids)))
    running = list(range(len(tasks)))
    if generation.temperature > 0:
        torch.manual_seed(int(tasks[0][2]))
    while running:
        budgets = [generation.max_tokens - len(trajectories[i].completion_ids) for i in running]
        new = _generate(model, tokenizer, [trajectories[i] for i in running], generation, max(budgets))
        actions = [""] * n
        for i, budget, (tokens, logprobs) in zip(running, budgets, new, strict=True):
            tokens, logprobs = (
                tokens[: min(budget, generation.turn_tokens)],
                logprobs[: min(budget, generation.turn_tokens)],
            )
            trajectory = trajectories[i]
            trajectory.completion_ids += tokens
            trajectory.env_mask += [1] * len(tokens)
            trajectory.logprobs += logprobs
            actions[i] = tokenizer.decode(tokens, skip_special_tokens=True)
        obs, _, terminated, truncated, batched = envs.step(actions)
        still = []
        for i in running:
            info = unbatch_info(batched, i)
            trajectory = trajectories[i]
            if terminated[i] or truncated[i]:
                trajectory.episode = info["deeprec"]
                continue
            reply = reply_ids(tokenizer, json.loads(obs[i]))
            if len(trajectory.completion_ids) + len(reply) >= generation.max_tokens:
                trajectory.episode = envs.envs[i].end("max_completion_tokens")[1]["deeprec"]
                continue
            trajectory.completion_ids += reply
            trajectory.env_mask += [0] * len(reply)
            trajectory.logprobs += [0.0] * len(reply)
            still.append(i)
        running = still
    return trajectories


def _generate(model, tokenizer, trajectories, generation: Generation, budget: int) -> list[tuple[list, list]]:
    """One turn for each trajectory (its prompt and completion so far, left-padded into one batch): the new tokens
    up to and including the end-of-turn token, and their log-probabilities under the sampling distribution."""
    sequences = [t.prompt_ids + t.completion_ids for t in trajectories]
    width = max(len(s) for s in sequences)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(s)) + s for s in sequences], device=model.device)
    attention = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], device=model.device)
    sampling = generation.temperature > 0
    with torch.inference_mode():
        result = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            max_new_tokens=max(1, min(generation.turn_tokens, budget)),
            do_sample=sampling,
            temperature=generation.temperature if sampling else None,
            top_p=None,
            top_k=None,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
    new = result.sequences[:, width:]
    logits = torch.stack(result.logits, dim=1).float() / (generation.temperature if sampling else 1.0)
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
    out = []
    for row in range(len(sequences)):
        tokens = new[row].tolist()
        end = tokens.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in tokens else len(tokens)
        out.append((tokens[:end], logprobs[row, :end].tolist()))
    return out
