"""`python -m experiments.bench`: throughput and memory figures as JSON (never timed tests).

Each measurement runs in its own subprocess so its peak resident memory is its own. Figures:
- `sasrec_train`, `trm_train`: training speed (a fresh model for `bench.steps` optimizer steps, validating at the
  recipe's cadence) and peak RSS, plus the full early-stopped training time recorded by `prepare` when that
  checkpoint is cached, and that run's steps at the speed timed here (its training time on a machine like this one).
- `contention`: SASRec training speed idle and beside one busy process, with the `threads` setting (default:
  half the cores) and with every core, the torch default that collapses on a shared machine.
- `env_steps`: env steps per second with the scripted agent (single env and vector form) and the share of env
  time spent in retrieval (agent time excluded).
- `retrieval`: p50/p95 latency of a batched tool call (query encoding included) for `bench.batch_sizes`,
  in-process and through the shared Ray actor.
- `title_matching`: p50/p95 latency of matching one answer (copied cards, near-miss titles, unknown lines) to items.
- `grpo_step`: a GRPO step's time by section (generation, tool, env, scoring, other rollout work, update) and its
  generated tokens per second against the same policy's raw generation speed (not in the default task list: run it
  with `bench.tasks=[grpo_step] bench.datasets=[ml-100k] bench.policy=runs/<run>/warm_start/final`).
- `warm_start_step`: a warm-start SFT step with TRL's `SFTTrainer` and with `PolicySFTTrainer` on the same batches of
  teacher episodes, and the speed-up (run it with `bench.tasks=[warm_start_step] bench.datasets=[ml-100k]`, and
  `trainer=demo` for the demo's teacher).
- `tag_ppo`: RLlib PPO on tag actions with 1 and 2 Ray env runners: env steps and episodes per second, learner time
  per iteration, iteration wall time (run it with `policy=tag-ppo bench.tasks=[tag_ppo] bench.datasets=[ml-100k]`).
- `rollouts`: episodes per second of the scripted agent on the local backend and on Ray with 1 and 2 rollout
  workers, Ray's overhead per episode, and the trainer's evaluation phase wall time local vs 2 workers (run it with
  `bench.tasks=[rollouts] bench.datasets=[ml-100k]`, and `trainer.evaluation.*` to size the phase).
- `judge`: the rule judge's ms per answer line (mean, p50/p95 over answers) on 10-line answers of the labelled set
  of `experiments.judge` (every kind of reason), after warm-up answers that taught it their words, and on the first
  answer, whose words are all new (run it with `bench.tasks=[judge] bench.datasets=[ml-100k]`).
Select with `bench.tasks=[sasrec_train] bench.datasets=[ml-100k,games]`; results go to `bench.json` in the run
directory and to stdout.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import replace

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from deeprec_env.runtime import configure_threads
from deeprec_env.stack import build_stack, stack_config, text_encoder
from experiments.common import CONFIG_PATH, entry_point, log, provenance, run_dir, seeded_sample, write_json


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dataset_parts(cfg: DictConfig):
    """(stack config, dataset, artifact root) without training anything."""
    from deeprec_env.data.source import artifact_root, load_dataset

    config = stack_config(cfg)
    return config, load_dataset(config.dataset, config.artifacts), artifact_root(config.artifacts, config.dataset)


def timed_training(cfg: DictConfig, name: str) -> tuple[float, dict]:
    """Seconds and training log of `bench.steps` optimizer steps of a fresh `name` recommender (sasrec or trm): the
    training loop's own time (steps and validations), as a full training's log records it, without the set-up
    (training windows, model) that a full training pays once."""
    from deeprec_env.trm.train import text_inputs, train_model

    config, dataset, root = dataset_parts(cfg)
    model = getattr(config, name)
    encoder = text_encoder(config.text) if model.model.uses_text else None
    item_text, query_bank = text_inputs(dataset, model, root, encoder, for_training=True)
    steps = cfg.bench.steps
    cadence = min(steps, model.train.eval_every)  # validate as the recipe does, so the time per step includes it
    budget = replace(model, train=replace(model.train, max_steps=steps, eval_every=cadence))
    _, train_log = train_model(dataset, budget, item_text, query_bank, progress=False)
    return train_log["train_seconds"], train_log


def bench_train(cfg: DictConfig, name: str) -> dict:
    """Step time and peak memory of training the `name` recommender (sasrec or trm) on one dataset."""
    from deeprec_env.trm.train import checkpoint_dir

    config, dataset, root = dataset_parts(cfg)
    model = getattr(config, name)
    seconds, train_log = timed_training(cfg, name)
    steps = cfg.bench.steps
    encoder = text_encoder(config.text) if model.model.uses_text else None
    full_log = checkpoint_dir(model, root, encoder, dataset.catalogue) / "train_log.json"
    full = json.loads(full_log.read_text()) if full_log.exists() else None
    steps_per_epoch = -(-train_log["n_windows"] // model.train.batch_size)
    seconds_per_step = seconds / steps
    return {
        "dataset": dataset.name,
        "model": name,
        "threads": torch.get_num_threads(),
        "n_train_windows": train_log["n_windows"],
        "steps_timed": steps,
        "validations_timed": len(train_log["evaluations"]),
        "seconds_per_100_steps": round(100 * seconds_per_step, 2),
        "seconds_per_epoch": round(steps_per_epoch * seconds_per_step, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "full_training": None
        if full is None
        else {
            "seconds": round(full["train_seconds"], 1),
            "seconds_at_this_speed": round(full["steps"] * seconds_per_step),  # its steps at the speed timed here
            "steps": full["steps"],
            "best_step": full["best_step"],
            "best_valid_ndcg10": round(full["best_valid_ndcg10"], 4),
        },
    }


def bench_contention(cfg: DictConfig) -> dict:
    """SASRec training steps per second, idle and beside one busy single-threaded process, with the configured thread
    count and with every core (torch's default)."""
    result = {"dataset": None, "cores": os.cpu_count(), "runs": []}
    for threads in dict.fromkeys([configure_threads(cfg.threads), os.cpu_count() or 1]):
        torch.set_num_threads(threads)
        speeds = {}
        for load in ("idle", "busy"):
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load == "busy" else None
            try:
                seconds, train_log = timed_training(cfg, "sasrec")
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
            speeds[load] = round(cfg.bench.steps / seconds, 2)
        result["runs"].append(
            {"threads": threads, "steps_per_s": speeds, "busy_over_idle": round(speeds["busy"] / speeds["idle"], 3)}
        )
    result["dataset"] = dataset_parts(cfg)[1].name
    return result


def bench_retrieval(cfg: DictConfig) -> dict:
    """Latency of one batched tool call (query encoding + TRM forward + top-k), p50/p95 per batch size, for the
    in-process and the Ray backend. Every query is a fresh phrasing, so the encoder's cache never answers."""
    import ray

    from deeprec_env.trm.queries import query_bank_texts
    from deeprec_env.trm.retriever import RayRetriever

    stack = build_stack(cfg, with_reward=False)
    dataset, encoder, local = stack.dataset, stack.encoder, stack.retriever
    rng = np.random.default_rng(cfg.seed)
    users = dataset.eval_users("test")
    phrasings = [q for row in query_bank_texts(dataset, 4, cfg.seed)[1:] for q in row]
    result = {"dataset": dataset.name, "n_items": dataset.n_items, "k": cfg.bench.recall_k, "backends": {}}

    def measure(retriever, clear) -> dict:
        out = {}
        for size in cfg.bench.batch_sizes:
            latencies = []
            for _ in range(cfg.bench.repeats):
                batch = rng.choice(users, size)
                histories = [dataset.history_and_target(int(u), "test")[0] for u in batch]
                queries = [phrasings[i] for i in rng.choice(len(phrasings), size)]
                clear()
                started = time.perf_counter()
                retriever.retrieve(histories, queries, cfg.bench.recall_k)
                latencies.append(1000 * (time.perf_counter() - started))
            p50, p95 = np.percentile(latencies, [50, 95])
            out[f"batch_{size}"] = {"p50_ms": round(float(p50), 1), "p95_ms": round(float(p95), 1)}
        return out

    local.retrieve([dataset.history_and_target(int(users[0]), "test")[0]], ["warm up"], cfg.bench.recall_k)
    result["backends"]["in_process"] = measure(local, encoder.clear_cache)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        encoder_factory = functools.partial(text_encoder, stack.config.text)  # ships the config, not the stack
        remote = RayRetriever.from_in_process(local, encoder_factory=encoder_factory)
        remote.retrieve([[1]], ["warm up"], cfg.bench.recall_k)
        result["backends"]["ray_actor"] = measure(remote, lambda: None)
        remote.close()
    finally:
        ray.shutdown()
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return result


class TimedRetriever:
    """A retriever that accumulates the seconds spent in `retrieve` (and counts the batched calls)."""

    def __init__(self, inner):
        self.inner, self.seconds, self.calls = inner, 0.0, 0

    def retrieve(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self.inner.retrieve(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1


def bench_env_steps(cfg: DictConfig) -> dict:
    """Env steps per second with the scripted agent, single env and vector form (one batched retrieval per step),
    and the share of env time spent in retrieval. Agent time is measured apart and excluded from env time."""
    from agents.baselines import ScriptedAgent
    from agents.rollout import rollout

    stack = build_stack(cfg)
    dataset = stack.dataset
    users = seeded_sample(dataset.eval_users("test"), cfg.bench.env_episodes, cfg.seed)
    result = {"dataset": dataset.name, "episodes": len(users), "agent": "scripted"}
    agent_seconds = [0.0]

    class TimedScripted(ScriptedAgent):
        @staticmethod
        def act_many(agents, observations, infos):
            started = time.perf_counter()
            try:
                return ScriptedAgent.act_many(agents, observations, infos)
            finally:
                agent_seconds[0] += time.perf_counter() - started

    for form, n_envs in (("single", 1), ("vector", cfg.eval.n_envs)):
        retriever = TimedRetriever(stack.retriever)
        envs = stack.replace(retriever=retriever).make_vector_env(n_envs, autoreset_mode="Disabled")
        agent_seconds[0] = 0.0
        started = time.perf_counter()
        episodes = rollout(
            envs,
            lambda: TimedScripted(dataset, protocol=stack.config.env.protocol, rec_k=stack.config.env.rec_k),
            users,
            "test",
            show_progress=False,
        )
        total = time.perf_counter() - started
        steps = sum(e.n_turns for e in episodes)
        env_seconds = total - agent_seconds[0]
        result[form] = {
            "n_envs": n_envs,
            "steps": steps,
            "env_steps_per_s": round(steps / env_seconds, 1),
            "steps_per_s_with_agent": round(steps / total, 1),
            "episodes_per_s_with_agent": round(len(episodes) / total, 2),
            "retrieval_calls": retriever.calls,
            "retrieval_share_of_env_time": round(retriever.seconds / env_seconds, 3),
        }
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return result


def bench_title_matching(cfg: DictConfig) -> dict:
    """Latency of matching one `env.rec_k`-line answer to item ids on the dataset's catalogue: copied cards (exact),
    titles with one letter dropped (fuzzy) and unknown lines (a full fuzzy scan), 40 retrieved items preferred."""
    from deeprec_env.protocol import TitleMatcher, item_cards

    config, dataset, _ = dataset_parts(cfg)
    rng = np.random.default_rng(cfg.seed)
    started = time.perf_counter()
    matcher = TitleMatcher(dataset)
    build_s = time.perf_counter() - started
    k, latencies, correct = config.env.rec_k, [], 0
    for _ in range(cfg.bench.repeats):
        preferred = [int(i) for i in rng.choice(np.arange(1, dataset.n_items + 1), 40, replace=False)]
        picks = preferred[: k - 2]
        cards = item_cards(dataset, picks, config.env.card_chars)
        lines = [card if j % 2 else card[:3] + card[4:] for j, card in enumerate(cards)]
        lines += ["Completely Unknown Title Of Nothing", "qwerty asdfgh zxcvbn"]
        started = time.perf_counter()
        match = matcher.match_answer(lines, preferred)
        latencies.append(1000 * (time.perf_counter() - started))
        correct += sum(a == b for a, b in zip(match.item_ids[: len(picks)], picks, strict=True))
    p50, p95 = np.percentile(latencies, [50, 95])
    return {
        "dataset": dataset.name,
        "n_items": dataset.n_items,
        "answer_lines": k,
        "build_s": round(build_s, 2),
        "p50_ms": round(float(p50), 1),
        "p95_ms": round(float(p95), 1),
        "matched_back": round(correct / (cfg.bench.repeats * (k - 2)), 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


class Stopwatch:
    """Seconds and calls per named section, timed by wrapping methods (of a class or an object) for the duration of
    a `with` block; `count` turns a method's return value into a number summed per section (e.g. tokens)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: dict[str, int] = collections.defaultdict(int)
        self.counts: dict[str, float] = collections.defaultdict(float)

    @contextlib.contextmanager
    def timing(self, owner, method: str, name: str, count=None):
        original = getattr(owner, method)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                out = original(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started
                self.calls[name] += 1
            if count is not None:
                self.counts[name] += count(out)
            return out

        setattr(owner, method, timed)
        try:
            yield
        finally:
            setattr(owner, method, original)


def raw_generation_speed(policy_path: str, prompts: list, tools: list, batch: int, tokens: int, temperature: float):
    """Tokens per second of the policy's own sampled generation (`generate`, no tools, no training) for `batch`
    prompts of the GRPO batch, each forced to `tokens` new tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(policy_path).eval()
    texts = [
        tokenizer.apply_chat_template(p, tools=tools, tokenize=False, add_generation_prompt=True)
        for p in (prompts * batch)[:batch]
    ]
    inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    settings = {"do_sample": True, "temperature": temperature, "min_new_tokens": tokens, "max_new_tokens": tokens}
    with torch.inference_mode():
        model.generate(**inputs, **settings | {"min_new_tokens": 8, "max_new_tokens": 8})  # warm-up
        started = time.perf_counter()
        model.generate(**inputs, **settings, pad_token_id=tokenizer.pad_token_id)
        seconds = time.perf_counter() - started
    return batch * tokens / seconds


def bench_grpo_step(cfg: DictConfig) -> dict:
    """Where a GRPO step's wall time goes and how fast it generates: `bench.grpo_steps` steps of the stage-2 recipe
    (`trainer.stage2`, its group size and batch) from the policy at `bench.policy` (default: the untrained tiny
    policy) in the trainer's env. Sections: generation (every `generate` of the tool loop), the tool (retrieval with
    query encoding), the env (the rest of a tool call: limits, record, rendering), scoring (format checks and reward
    components), other rollout work (tokenising, old and reference log-probabilities) and the update (forward,
    backward, optimizer). The ratio compares the step's generated tokens per second of wall time with the raw
    sampled generation speed of the same model on the same machine (`raw_generation_speed`)."""
    import tempfile
    from pathlib import Path

    from transformers import TrainerCallback
    from trl import GRPOTrainer

    from agents.llm import policy_config, policy_dir
    from agents.training.config import TrainerConfig
    from agents.training.grpo import DeepRecToolEnv, train_grpo
    from deeprec_env.config import typed
    from deeprec_env.protocol import TOOL_SCHEMA
    from experiments.train import train_episodes

    stack = build_stack(cfg)
    trainer_config = typed(TrainerConfig, cfg.trainer)
    env = dict(trainer_config.env) | {"split": "train"}
    steps = cfg.bench.grpo_steps
    stage = replace(trainer_config.stage2, max_steps=steps, save_steps=10**6, eval_every=0)
    start = cfg.bench.policy or str(policy_dir(policy_config(cfg.policy), stack.dataset, stack.root))
    prompts_per_step = stage.per_device_train_batch_size // stage.num_generations
    cuts = stack.env_config(**env).train_cuts
    episodes = seeded_sample(train_episodes(stack.dataset, cuts), prompts_per_step * steps, cfg.seed)
    retriever = TimedRetriever(stack.retriever)
    timed_stack = stack.replace(retriever=retriever)
    watch = Stopwatch()
    step_seconds: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step_seconds.append(time.perf_counter() - self.started)

    def tokens(out) -> int:
        return sum(len(ids) for ids in out[0])

    with (
        tempfile.TemporaryDirectory() as out,
        watch.timing(GRPOTrainer, "_generate_single_turn", "generation", tokens),
        watch.timing(GRPOTrainer, "_generate_and_score_completions", "rollout"),
        watch.timing(GRPOTrainer, "_calculate_rewards", "scoring"),
        watch.timing(DeepRecToolEnv, "retrieve", "tool_call"),
    ):
        make_env = functools.partial(timed_stack.make_env, **env)
        turn_tokens = policy_config(cfg.policy).max_new_tokens
        train_grpo(Path(start), make_env, episodes, stage, Path(out), cfg.seed, None, [StepTimer()], turn_tokens)
    probe = stack.make_env(**env)
    prompts = []
    for user, cut in episodes[:prompts_per_step]:
        probe.reset(options={"user": int(user), "split": "train", "cut": int(cut)})
        prompts.append(probe.prompt)
    raw = raw_generation_speed(
        start, prompts, [TOOL_SCHEMA], stage.per_device_train_batch_size, cfg.bench.raw_tokens, stage.temperature
    )
    total = sum(step_seconds)
    env_seconds = watch.seconds["tool_call"] - retriever.seconds
    other_rollout = watch.seconds["rollout"] - watch.seconds["generation"] - watch.seconds["tool_call"]
    other_rollout -= watch.seconds["scoring"]
    shares = {
        "generation": watch.seconds["generation"],
        "tool": retriever.seconds,
        "env": env_seconds,
        "scoring": watch.seconds["scoring"],
        "other_rollout": other_rollout,
        "update": total - watch.seconds["rollout"],
    }
    generated_per_s = watch.counts["generation"] / total
    return {
        "dataset": stack.dataset.name,
        "policy": start,
        "steps": len(step_seconds),
        "completions_per_step": stage.per_device_train_batch_size,
        "step_s": round(total / max(len(step_seconds), 1), 1),
        "generated_tokens_per_step": round(watch.counts["generation"] / max(len(step_seconds), 1)),
        "generated_tokens_per_s": round(generated_per_s, 1),
        "raw_generation_tokens_per_s": round(raw, 1),
        "throughput_ratio": round(generated_per_s / raw, 3),
        "generate_calls": watch.calls["generation"],
        "tool_calls": watch.calls["tool_call"],
        "seconds": {name: round(value, 1) for name, value in shares.items()},
        "share_of_step": {name: round(value / total, 3) for name, value in shares.items()},
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def bench_warm_start_step(cfg: DictConfig) -> dict:
    """A warm-start SFT step's loss, forward and backward, with TRL's `SFTTrainer`, whose loss runs its tiled
    log-probability kernel, and with `PolicySFTTrainer`, which projects only the learned positions: the same batches
    of the trainer's teacher episodes (`trainer.warm_start.teacher`, `bench.warm_start_batches` batches) from the
    untrained policy, the two trainers alternating batch by batch so both see the same machine."""
    import copy
    import tempfile
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from agents.llm import policy_config, policy_dir
    from agents.training.config import TrainerConfig
    from agents.training.warm_start import policy_sft_trainer_class, sft_config, sft_dataset, training_chat_template
    from agents.workers import RolloutPool
    from deeprec_env.config import typed
    from experiments.train import sampled_teacher_episodes

    stack = build_stack(cfg)
    trainer_config = typed(TrainerConfig, cfg.trainer)
    config = trainer_config.warm_start
    env = dict(trainer_config.env)
    cuts = stack.env_config(**env).train_cuts
    sample = replace(config, episodes=cfg.bench.warm_start_batches * config.per_device_train_batch_size)
    episodes = sampled_teacher_episodes(RolloutPool(), stack, env, sample, cuts, trainer_config.n_envs, cfg.seed)
    data = sft_dataset(episodes)
    start = policy_dir(policy_config(cfg.policy), stack.dataset, stack.root)
    tokenizer = AutoTokenizer.from_pretrained(start)
    tokenizer.chat_template = training_chat_template(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(start)
    seconds = {"trl_sft_trainer": 0.0, "policy_sft_trainer": 0.0}
    with tempfile.TemporaryDirectory() as out:
        args = sft_config(config, Path(out), cfg.seed)
        trainers = {
            name: trainer_class(model=copy.deepcopy(model), args=args, train_dataset=data, processing_class=tokenizer)
            for name, trainer_class in zip(seconds, (SFTTrainer, policy_sft_trainer_class()), strict=True)
        }
        for trainer in trainers.values():
            trainer.model.train()
        loader = trainers["trl_sft_trainer"].get_train_dataloader()
        tokens = learned = 0
        for batch in loader:
            tokens += int(batch["attention_mask"].sum())
            learned += int((batch["labels"] != -100).sum())
            for name, trainer in trainers.items():
                started = time.perf_counter()
                trainer.compute_loss(trainer.model, dict(batch)).backward()
                seconds[name] += time.perf_counter() - started
    steps = len(loader)
    return {
        "dataset": stack.dataset.name,
        "teacher": config.teacher,
        "steps": steps,
        "examples_per_step": config.per_device_train_batch_size,
        "tokens_per_step": round(tokens / steps),
        "learned_tokens_per_step": round(learned / steps),
        "step_s": {name: round(value / steps, 3) for name, value in seconds.items()},
        "speedup": round(seconds["trl_sft_trainer"] / seconds["policy_sft_trainer"], 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def bench_tag_ppo(cfg: DictConfig) -> dict:
    """PPO on tag actions with 1 and 2 Ray env runners: env steps and episodes per second of sampling, the learner's
    time per iteration and the whole iteration's wall time (`bench.ppo_iterations` timed after one warm-up)."""
    import ray
    from omegaconf import OmegaConf

    from agents.training.config import TagPPOConfig
    from agents.training.ppo import ppo_config, tag_env_config
    from agents.workers import start_ray
    from deeprec_env.config import typed

    node = OmegaConf.to_container(cfg, resolve=True)
    base = typed(TagPPOConfig, cfg.trainer.ppo)
    stack = build_stack(cfg)
    cuts = stack.env_config(**cfg.trainer.env).train_cuts
    result = {"dataset": stack.dataset.name, "train_batch": base.train_batch, "runs": []}
    for runners in (1, 2):
        config = replace(base, num_env_runners=runners)
        start_ray(None, max(2, runners))
        try:
            env_config = tag_env_config(node, dict(cfg.trainer.env), cuts, None, config)
            algo = ppo_config(config, env_config, cfg.seed).build_algo()
            algo.train()  # warm-up: the runners' first episodes and the learner's first update
            walls, steps, episodes, sampling, learning = [], 0, 0, 0.0, 0.0
            for _ in range(cfg.bench.ppo_iterations):
                started = time.perf_counter()
                out = algo.train()
                walls.append(time.perf_counter() - started)
                steps += out["env_runners"]["num_env_steps_sampled"]
                episodes += out["env_runners"]["num_episodes"]
                sampling += out["timers"]["env_runner_sampling_timer"]
                learning += out["timers"]["learner_update_timer"]
            algo.stop()
        finally:
            ray.shutdown()
        result["runs"].append(
            {
                "env_runners": runners,
                "env_steps_per_s": round(steps / sampling, 1),
                "episodes_per_s": round(episodes / sampling, 1),
                "learner_s_per_iteration": round(learning / len(walls), 2),
                "iteration_wall_s": round(float(np.mean(walls)), 2),
            }
        )
    return result


def bench_rollouts(cfg: DictConfig) -> dict:
    """Rollouts on the local backend and on Ray with 1 and 2 workers: the scripted agent's episodes per second on
    `bench.env_episodes` test users (after a warm-up call that starts the workers and ships the stack), the share of
    the wall time the workers spent playing and the rest per episode (Ray's and the driver's overhead), and the wall
    time of the trainer's evaluation phase (`Run.evaluate`: the policy at `bench.policy` as both compared models, the
    default untrained tiny one otherwise) local vs 2 workers."""
    import tempfile

    from omegaconf import open_dict

    from agents.baselines import AgentFactory, ScriptedAgent
    from agents.llm import policy_config, policy_dir
    from agents.workers import RolloutConfig, rollout_pool
    from experiments.train import Run

    stack = build_stack(cfg)
    users = seeded_sample(stack.dataset.eval_users("test"), cfg.bench.env_episodes, cfg.seed)
    backends = {
        "local": RolloutConfig(),
        "ray-1": RolloutConfig(backend="ray", workers=1),
        "ray-2": RolloutConfig(backend="ray", workers=2),
    }
    scripted = AgentFactory(ScriptedAgent, seed=cfg.seed)
    result: dict = {"dataset": stack.dataset.name, "episodes": len(users), "scripted": {}, "evaluation_phase": {}}
    for label, config in backends.items():
        with rollout_pool(config, cfg.ray.address, cfg.ray.num_cpus) as pool:
            started = time.perf_counter()
            pool.play(stack, {}, scripted, users[: config.workers], "test", cfg.eval.n_envs)
            warm_up = time.perf_counter() - started
            pool.play(stack, {}, scripted, users, "test", cfg.eval.n_envs)
            report = pool.report
        workers = config.workers if config.backend == "ray" else 1
        result["scripted"][label] = {
            "episodes_per_s": round(len(users) / report["wall_s"], 1),
            "warm_up_s": round(warm_up, 2),
            "workers_busy": round(report["worker_s"] / (report["wall_s"] * workers), 3),
            "overhead_ms_per_episode": round(1000 * (report["wall_s"] - report["worker_s"] / workers) / len(users), 2),
        }
    policy = cfg.bench.policy or str(policy_dir(policy_config(cfg.policy), stack.dataset, stack.root))
    models = {"warm-start": policy, "grpo-stage2": policy}
    node = cfg.copy()
    for label in ("local", "ray-2"):
        with (
            tempfile.TemporaryDirectory() as out,
            rollout_pool(backends[label], cfg.ray.address, cfg.ray.num_cpus) as pool,
        ):
            with open_dict(node):
                node.trainer.output_dir = out
            started = time.perf_counter()
            Run(node, stack, pool).evaluate(models)
            result["evaluation_phase"][label] = {"wall_s": round(time.perf_counter() - started, 1)}
    evaluation = node.trainer.evaluation
    result["evaluation_phase"] |= {"valid_users": evaluation.valid_users, "test_users": evaluation.users}
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return result


def bench_judge(cfg: DictConfig) -> dict:
    """Milliseconds per answer line of the rule judge (`rewards.judge.RuleJudge`) on the 10-line answers of the
    labelled set of `bench.repeats` users (four answers each, one per kind of reason): timed on the second half, the
    first half having taught the judge its words; and on the first answer it ever saw (every word new)."""
    from experiments.judge import labelled_cases
    from rewards.judge import RuleJudge

    config, dataset, _ = dataset_parts(cfg)
    judge = RuleJudge(dataset, text_encoder(config.text))
    cases = [c.case for c in labelled_cases(dataset, cfg.bench.repeats, 10, cfg.seed)]
    started = time.perf_counter()
    judge(cases[0])
    first = 1000 * (time.perf_counter() - started) / len(cases[0].items)
    latencies = []
    for case in cases[1:]:
        started = time.perf_counter()
        judge(case)
        latencies.append(1000 * (time.perf_counter() - started) / len(case.items))
    timed = latencies[len(latencies) // 2 :]
    p50, p95 = np.percentile(timed, [50, 95])
    return {
        "dataset": dataset.name,
        "answer_lines": len(cases[0].items),
        "answers_timed": len(timed),
        "ms_per_line_mean": round(float(np.mean(timed)), 2),
        "ms_per_line_p50": round(float(p50), 2),
        "ms_per_line_p95": round(float(p95), 2),
        "ms_per_line_first_answer": round(first, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


TASKS = {
    "contention": bench_contention,
    "rollouts": bench_rollouts,
    "grpo_step": bench_grpo_step,
    "warm_start_step": bench_warm_start_step,
    "env_steps": bench_env_steps,
    "retrieval": bench_retrieval,
    "title_matching": bench_title_matching,
    "judge": bench_judge,
    "tag_ppo": bench_tag_ppo,
    "sasrec_train": lambda cfg: bench_train(cfg, "sasrec"),
    "trm_train": lambda cfg: bench_train(cfg, "trm"),
}


def run_child(task: str, dataset: str, overrides: list[str]) -> dict:
    """One measurement in a fresh interpreter; it prints its JSON result as the last stdout line."""
    cmd = [
        sys.executable,
        "-m",
        "experiments.bench",
        f"bench.child={task}",
        f"dataset={dataset}",
        *overrides,
        "hydra.run.dir=.",
        "hydra.output_subdir=null",
        "hydra/job_logging=none",
        "hydra/hydra_logging=none",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench {task} on {dataset} failed: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base="1.3")
@entry_point
def main(cfg: DictConfig) -> None:
    if cfg.bench.child:
        print(json.dumps(TASKS[cfg.bench.child](cfg)))
        return
    unknown = [t for t in cfg.bench.tasks if t not in TASKS]
    if unknown:
        raise SystemExit(f"unknown bench task {unknown[0]!r}; choose from {', '.join(TASKS)}")
    own = ("dataset=", "bench.tasks=", "bench.datasets=", "bench.child=")
    passthrough = [o for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith(own)]
    results = {"cpu_threads": torch.get_num_threads(), "provenance": provenance(), "tasks": {}}
    for task in cfg.bench.tasks:
        results["tasks"][task] = []
        for dataset in cfg.bench.datasets:
            log.info("bench %s on %s", task, dataset)
            results["tasks"][task].append(run_child(task, dataset, passthrough))
    print(json.dumps(results, indent=1))
    write_json(run_dir() / "bench.json", results)


if __name__ == "__main__":
    main()
