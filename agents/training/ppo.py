"""Tag-action policies trained with RLlib PPO (new API stack): `python -m experiments.train policy=tag-ppo`.

The env is `agents.tag_actions.TagActionEnv` over the stack's `DeepRecEnv` on train episodes (many cut points per
user, `env.train_cuts`; the tool trained without their targets with `trainer.tool_holdout`). Env runners are Ray
actors (`trainer.ppo.num_env_runners`, `cpus_per_runner`; `ray.address` joins a cluster), each building the stack
from the run's config and the artifact cache; the learner runs in the driver. `MaskedTagModule` is the policy: two
MLPs (policy and value) over the observation features, with masked actions' logits pushed to `MASKED_LOGIT`.

Per phase (`stage1` / `stage2`, scored with that stage's reward) in `trainer.output_dir/<phase>/`: RLlib checkpoints
(`checkpoint/`, a rerun resumes from the last one), every iteration's scalars (`history.json`) and TensorBoard
(`tensorboard/<phase>`: episode return, every reward term's unweighted value, NDCG@10, format pass rate, tool calls,
learner losses, env-runner throughput, and greedy validation rollouts every `eval_every` iterations), and the final
policy (`final/`: the RLModule, the run's `deeprec.json` and `tag_policy.json`). `load_tag_agent` turns a `final/`
directory into a text agent, which is how evaluation, the warm start and every other consumer use it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from agents.tag_actions import ANSWER_RULES, TagActionAgent, TagActionEnv, TagVocabulary
from agents.training.config import TagPPOConfig
from deeprec_env.data.dataset import RecDataset
from deeprec_env.metrics import list_ranks, ranking_metrics

log = logging.getLogger(__name__)
MASKED_LOGIT = -1e9  # the logit of a masked action: probability 0 without infinities in the loss
POLICY_FILE = "tag_policy.json"  # beside a final tag policy: its vocabulary settings and action names
ENV_NAME = "deeprec-tag-actions"


def make_tag_env(env_config: dict[str, Any]) -> TagActionEnv:
    """The env creator RLlib calls in every env runner: the stack of the run's config (`node`, a plain dict),
    `for_agent_training(holdout)`, scored with the `reward` preset (None: the config's), wrapped in tag actions."""
    from omegaconf import OmegaConf

    from deeprec_env.stack import build_stack

    stack = build_stack(OmegaConf.create(env_config["node"])).for_agent_training(env_config["holdout"])
    if env_config["reward"]:
        stack = stack.with_reward(env_config["reward"])
    env = stack.make_env(**env_config["env"])
    return TagActionEnv(env, env_config["max_tags"], env_config["min_items"], env_config["answer_rules"])


def masked_module_class():
    """`MaskedTagModule`, defined when RLlib is imported (Ray stays out of every import of this module)."""
    from ray.rllib.core.columns import Columns
    from ray.rllib.core.rl_module.apis import ValueFunctionAPI
    from ray.rllib.core.rl_module.torch import TorchRLModule

    class MaskedTagModule(TorchRLModule, ValueFunctionAPI):
        """Policy and value MLPs over `observations`; actions with `action_mask` 0 get `MASKED_LOGIT`."""

        def setup(self):
            features = self.observation_space["observations"].shape[0]
            hidden = int(self.model_config.get("hidden", 128))
            self.pi = _mlp(features, hidden, self.action_space.n)
            self.vf = _mlp(features, hidden, 1)

        def _forward(self, batch, **kwargs):
            obs = batch[Columns.OBS]
            logits = self.pi(obs["observations"])
            return {Columns.ACTION_DIST_INPUTS: logits.masked_fill(obs["action_mask"] < 0.5, MASKED_LOGIT)}

        def compute_values(self, batch, embeddings=None):
            return self.vf(batch[Columns.OBS]["observations"]).squeeze(-1)

    return MaskedTagModule


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    layers = [nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, outputs)]
    return nn.Sequential(*layers)


def episode_callbacks_class():
    """RLlib callbacks that log each finished episode's reward terms (unweighted), NDCG@10, format pass and calls."""
    from ray.rllib.callbacks.callbacks import RLlibCallback

    class EpisodeTerms(RLlibCallback):
        def on_episode_end(self, *, episode, metrics_logger=None, **kwargs):
            record = episode.get_infos(-1).get("deeprec")
            if record is None or metrics_logger is None:
                return
            for name, value in record.reward_unweighted.items():
                metrics_logger.log_value(f"reward/{name}", value)
            ndcg = ranking_metrics(list_ranks([record.ranked_ids], [record.target]))["ndcg@10"][0]
            metrics_logger.log_value("episode/ndcg@10", float(ndcg))
            metrics_logger.log_value("episode/format_ok", float(record.format_ok))
            metrics_logger.log_value("episode/tool_calls", float(len(record.tool_calls)))

    return EpisodeTerms


def tag_env_config(
    node: dict[str, Any], env: dict[str, Any], holdout: int, reward: str | None, config: TagPPOConfig
) -> dict[str, Any]:
    """What `make_tag_env` needs to build a runner's env on train episodes (see its docstring)."""
    return {
        "node": node,
        "holdout": holdout,
        "reward": reward,
        "env": env | {"split": "train"},
        "max_tags": config.max_tags,
        "min_items": config.min_items,
        "answer_rules": list(config.answer_rules),
    }


def ppo_config(config: TagPPOConfig, env_config: dict[str, Any], seed: int):
    """The RLlib `PPOConfig` of a phase."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.tune.registry import register_env

    register_env(ENV_NAME, make_tag_env)
    return (
        PPOConfig()
        .environment(ENV_NAME, env_config=env_config)
        .env_runners(
            num_env_runners=config.num_env_runners,
            num_envs_per_env_runner=config.envs_per_runner,
            num_cpus_per_env_runner=config.cpus_per_runner,
        )
        .learners(num_learners=0)
        .training(
            lr=config.lr,
            train_batch_size_per_learner=config.train_batch,
            minibatch_size=config.minibatch,
            num_epochs=config.epochs,
            entropy_coeff=config.entropy_coeff,
            clip_param=config.clip_param,
            gamma=config.gamma,
            lambda_=config.gae_lambda,
        )
        .rl_module(
            rl_module_spec=RLModuleSpec(module_class=masked_module_class(), model_config={"hidden": config.hidden})
        )
        .callbacks(episode_callbacks_class())
        .debugging(seed=seed)
    )


def greedy_choice(module) -> Callable[[dict[str, np.ndarray]], int]:
    """observation -> the module's most likely allowed action."""
    from ray.rllib.core.columns import Columns

    def choose(observation: dict[str, np.ndarray]) -> int:
        batch = {Columns.OBS: {k: torch.as_tensor(v)[None] for k, v in observation.items()}}
        with torch.no_grad():
            logits = module.forward_inference(batch)[Columns.ACTION_DIST_INPUTS]
        return int(torch.argmax(logits[0]))

    return choose


def tag_agent_factory(
    dataset: RecDataset, choose: Callable, settings: dict[str, Any]
) -> Callable[[RecDataset, Any, int], TagActionAgent]:
    """`make_agent(dataset, codec, rec_k)` for rollouts: tag agents with the policy's vocabulary and env limits."""
    vocabulary = TagVocabulary.build(dataset, settings["max_tags"], settings["min_items"])

    def make_agent(dataset, codec, rec_k):
        return TagActionAgent(
            dataset,
            vocabulary,
            settings["requests"],
            settings["max_tool_calls"],
            choose,
            answer_rules(settings),
            protocol=codec,
            rec_k=rec_k,
        )

    return make_agent


def answer_rules(settings: dict[str, Any]) -> list[str]:
    """The answer rules of a saved tag policy's settings (policies saved before rules were configurable had all)."""
    return settings.get("answer_rules", list(ANSWER_RULES))


def is_tag_policy(path: str | Path) -> bool:
    return (Path(path) / POLICY_FILE).exists()


def load_tag_agent(path: str | Path, dataset: RecDataset) -> Callable[[RecDataset, Any, int], TagActionAgent]:
    """`make_agent(dataset, codec, rec_k)` of the trained tag policy in `path` (a phase's `final/`), acting greedily."""
    from ray.rllib.core.rl_module.rl_module import RLModule

    settings = json.loads((Path(path) / POLICY_FILE).read_text())
    module = RLModule.from_checkpoint(Path(path).resolve() / "module")  # RLlib reads absolute paths only
    module.eval()
    return tag_agent_factory(dataset, greedy_choice(module), settings)


def train_tag_ppo(
    node: dict[str, Any],
    stack,
    env: dict[str, Any],
    holdout: int,
    reward: str | None,
    config: TagPPOConfig,
    phase_dir: Path,
    seed: int,
    log_dir: Path,
    validation: Callable[[Callable], dict[str, float]],
    start: Path | None = None,
) -> Path:
    """One PPO phase; returns its `final/` directory. `node`: the run's config as a plain dict (env runners build
    their stacks from it); `stack`: the driver's stack (its dataset and env config); `env`: EnvConfig overrides;
    `validation(make_agent)`: greedy validation scalars; `start`: a previous phase's `final/` to start
    from."""
    from ray.rllib.core import DEFAULT_MODULE_ID
    from torch.utils.tensorboard import SummaryWriter

    env_config = tag_env_config(node, env, holdout, reward, config)
    env_settings = stack.env_config(**env)
    settings = {
        "max_tags": config.max_tags,
        "min_items": config.min_items,
        "answer_rules": list(config.answer_rules),
        "requests": env_settings.requests,
        "max_tool_calls": env_settings.max_tool_calls,
    }
    phase_dir = phase_dir.resolve()  # RLlib checkpoints need absolute paths
    checkpoint = phase_dir / "checkpoint"
    phase_dir.mkdir(parents=True, exist_ok=True)
    algo = ppo_config(config, env_config, seed).build_algo()
    writer = SummaryWriter(str(log_dir))
    try:
        done = 0
        if (checkpoint / "progress.json").exists():
            algo.restore_from_path(str(checkpoint))
            done = json.loads((checkpoint / "progress.json").read_text())["iterations"]
            log.info("resuming %s at iteration %d", phase_dir.name, done)
        elif start is not None:  # the learner's module starts from the previous phase's policy; runners follow
            algo.learner_group.load_module_state(
                rl_module_ckpt_dirs={DEFAULT_MODULE_ID: str(start.resolve() / "module")}
            )
            algo.env_runner_group.sync_weights(from_worker_or_learner_group=algo.learner_group, inference_only=True)
        history_path = phase_dir / "history.json"
        history = json.loads(history_path.read_text())["history"] if history_path.exists() else []
        history = [row for row in history if row["iteration"] <= done]  # rows past the checkpoint are redone
        for iteration in range(done + 1, config.iterations + 1):
            started = time.perf_counter()
            result = algo.train()
            scalars = training_scalars(result) | {"time/iteration_s": time.perf_counter() - started}
            if config.eval_every and iteration % config.eval_every == 0 or iteration == config.iterations:
                agent = tag_agent_factory(stack.dataset, greedy_choice(algo.get_module()), settings)
                scalars |= validation(agent)
            for name, value in scalars.items():
                writer.add_scalar(name, value, iteration)
            writer.flush()
            history.append({"iteration": iteration, **scalars})
            history_path.write_text(json.dumps({"history": history}, indent=1))
            log.info(
                "%s iteration %d/%d: return %.3f, ndcg@10 %.4f, %.0f env steps/s",
                phase_dir.name,
                iteration,
                config.iterations,
                scalars.get("train/episode_return", float("nan")),
                scalars.get("train/ndcg@10", float("nan")),
                scalars.get("time/env_steps_per_s", float("nan")),
            )
            if iteration % config.checkpoint_every == 0 or iteration == config.iterations:
                algo.save_to_path(str(checkpoint))
                (checkpoint / "progress.json").write_text(json.dumps({"iterations": iteration}))
        return save_tag_policy(algo.get_module(), stack.dataset, settings, phase_dir / "final")
    finally:
        writer.close()
        algo.stop()


def save_tag_policy(module, dataset: RecDataset, settings: dict[str, Any], final: Path) -> Path:
    """Write a tag policy to `final`: the RLModule (`module/`) and `tag_policy.json` (its vocabulary settings, the
    env limits it acts under and its action names), what `load_tag_agent` reads."""
    from agents.tag_actions import action_names

    module.save_to_path(str(Path(final).resolve() / "module"))
    vocabulary = TagVocabulary.build(dataset, settings["max_tags"], settings["min_items"])
    names = action_names(vocabulary, settings["requests"], answer_rules(settings))
    (Path(final) / POLICY_FILE).write_text(json.dumps(settings | {"actions": names}, indent=1))
    return Path(final)


def training_scalars(result: dict[str, Any]) -> dict[str, float]:
    """TensorBoard scalars of one `algo.train()` result: episode return and terms, learner losses, throughput."""
    runners = result.get("env_runners", {})
    scalars = {"train/episode_return": runners.get("episode_return_mean", float("nan"))}
    for key, value in runners.items():
        if key.startswith(("reward/", "episode/")) and np.isscalar(value):
            scalars[f"train/{key.split('/', 1)[1]}" if key.startswith("episode/") else f"train/{key}"] = float(value)
    learner = result.get("learners", {}).get("default_policy", {})
    for key in ("policy_loss", "vf_loss", "entropy", "mean_kl_loss", "curr_kl_coeff"):
        if np.isscalar(learner.get(key)):
            scalars[f"learner/{key}"] = float(learner[key])
    steps = runners.get("num_env_steps_sampled", 0)
    sample_time = result.get("timers", {}).get("env_runner_sampling_timer")
    if steps and sample_time:
        scalars["time/env_steps_per_s"] = float(steps) / float(sample_time)
    scalars["time/episodes"] = float(runners.get("num_episodes", 0))
    return scalars
