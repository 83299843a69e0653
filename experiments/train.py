"""`python -m experiments.train dataset=NAME policy=tiny|smollm2-135m|hf`: the two-phase trainer.

Phases (`trainer.phases`, in order): `warm_start` (the scripted teacher's episodes through the env, SFT),
`stage1` (GRPO with the process-reward preset `trainer.stage1.reward`, default `cold`), `stage2` (GRPO with the
root `reward` config, default `rec`), `evaluate` (warm start vs the last GRPO stage that ran on the same validation
users, then the test table beside pop, sasrec, trm, scripted and oracle). Everything lands in `trainer.output_dir`:
a finished phase (its `final/` model) is skipped on a rerun, an interrupted one resumes from its last checkpoint.
TensorBoard: `tensorboard --logdir <output_dir>/tensorboard`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from agents.llm import LLMPolicy, policy_config, policy_dir, save_policy_settings
from agents.training.config import PHASES, GRPOStageConfig, TrainerConfig, WarmStartConfig
from agents.training.grpo import WorkerRollouts, train_grpo
from agents.training.monitor import ValidationCallback, policy_episodes, validation_scalars
from agents.training.warm_start import teacher_episodes, warm_start
from agents.workers import RolloutPool, start_ray
from deeprec_env.config import typed
from deeprec_env.data.dataset import RecDataset
from deeprec_env.episode import Episode
from deeprec_env.metrics import list_ranks, paired_difference, ranking_metrics
from deeprec_env.stack import Stack
from experiments.common import CONFIG_PATH, command_pool, entry_point, markdown_table, seeded_sample, write_json
from experiments.prepare import prepare

log = logging.getLogger("deeprec")


def train_episodes(dataset: RecDataset, cuts: int) -> np.ndarray:
    """Every train-split episode, (user, cut) rows: each user's first `cuts` cut points (`RecDataset.n_cuts`)."""
    rows = [(int(u), c) for u in dataset.eval_users("train") for c in range(dataset.n_cuts(int(u), cuts))]
    return np.array(rows, dtype=np.int64).reshape(-1, 2)


def sampled_teacher_episodes(
    pool: RolloutPool, stack: Stack, env: dict, config: WarmStartConfig, cuts: int, n_envs: int, seed: int
) -> list[Episode]:
    """The warm start's data: the teacher (`config.teacher`) on a seeded sample of `config.episodes` train-split
    (user, cut) episodes; a list of teachers shares them out in equal parts, each episode to a seeded choice."""
    chosen = seeded_sample(train_episodes(stack.dataset, cuts), config.episodes, seed)
    env = env | {"split": "train"}
    teachers = [config.teacher] if isinstance(config.teacher, str) else list(config.teacher)
    share = np.random.default_rng(seed).permutation(len(chosen)) % len(teachers)
    episodes = []
    for k, teacher in enumerate(teachers):
        mine = chosen[share == k]
        episodes += teacher_episodes(pool, stack, env, mine[:, 0], teacher, n_envs, seed, mine[:, 1])
    return episodes


def trainable_episodes(stack: Stack, stage: GRPOStageConfig, cuts: int, seed: int) -> np.ndarray:
    """Train-split (user, cut) episodes for a GRPO stage: a seeded sample, kept only if the stack's TRM (empty
    query) ranks their target in its top `difficulty_top` when the difficulty filter is on."""
    from deeprec_env.evaluation import evaluate_scorer

    episodes = train_episodes(stack.dataset, cuts)
    if stage.difficulty_filter:
        exclude = stack.config.env.exclude_history
        ranks = evaluate_scorer(
            stack.retriever.scores,
            stack.dataset,
            episodes[:, 0],
            "train",
            exclude_history=exclude,
            list_k=1,
            cuts=episodes[:, 1],
        ).ranks
        kept = episodes[ranks < stage.difficulty_top]
        log.info(
            "difficulty filter: %d of %d train episodes have their target in the TRM's top %d",
            len(kept),
            len(episodes),
            stage.difficulty_top,
        )
        episodes = kept
    return seeded_sample(episodes, stage.episodes, seed)


def done(phase_dir: Path) -> bool:
    return (phase_dir / "final" / "config.json").exists()


class Run:
    """One training run: the config, its stack, the policy's env, the rollout pool and the output directory."""

    def __init__(self, cfg: DictConfig, stack: Stack, pool: RolloutPool):
        self.cfg = cfg
        self.stack = stack
        self.pool = pool  # plays every rollout of the run: teacher data, validation, GRPO (backend=ray), evaluation
        self.trainer = typed(TrainerConfig, cfg.trainer)
        self.env = dict(self.trainer.env)  # EnvConfig fields over the root env: the env the policy plays
        self.cuts = stack.env_config(**self.env).train_cuts  # train cut points per user
        # the tool of the training episodes: trained without their targets when `tool_holdout` (docs/training.md)
        self.train_stack = stack.for_agent_training(self.cuts) if self.trainer.tool_holdout else stack
        self.out = Path(self.trainer.output_dir)
        self.policy = policy_config(cfg.policy)
        self.valid_stack = stack.with_reward(self.trainer.validation.reward)  # what validation scores with
        self.valid_users = seeded_sample(stack.dataset.eval_users("valid"), self.trainer.validation.users, cfg.seed)

    def finished(self, final: Path) -> Path:
        """Record the dataset, env and generation settings beside a phase's model (evaluation loads them)."""
        save_policy_settings(final, self.stack.dataset.name, self.stack.env_config(**self.env), self.policy)
        return final

    def validation_callback(self, phase: str, every: int) -> ValidationCallback:
        """Greedy rollouts of the policy being trained on the validation users (`trainer.validation.reward`), logged to
        TensorBoard and to `out/phase/validation.json`."""
        return ValidationCallback(
            self.valid_stack,
            self.env,
            self.valid_users,
            self.out / "tensorboard" / phase,
            every,
            self.policy,
            self.trainer.n_envs,
            phase,
            self.out / phase / "validation.json",
            self.pool,
        )

    def warm_start(self, initial: Path) -> Path:
        phase = self.out / "warm_start"
        if done(phase):
            log.info("warm start already done: %s", phase / "final")
            return phase / "final"
        config: WarmStartConfig = self.trainer.warm_start
        episodes = sampled_teacher_episodes(
            self.pool, self.train_stack, self.env, config, self.cuts, self.trainer.n_envs, self.cfg.seed
        )
        callback = self.validation_callback("warm_start", config.eval_every)
        logs = self.out / "tensorboard" / "warm_start"
        return self.finished(warm_start(initial, episodes, config, phase, self.cfg.seed, logs, [callback]))

    def stage(self, name: str, start: Path) -> Path:
        phase = self.out / name
        if done(phase):
            log.info("%s already done: %s", name, phase / "final")
            return phase / "final"
        stage: GRPOStageConfig = getattr(self.trainer, name)
        stack = self.train_stack.with_reward(stage.reward) if stage.reward else self.train_stack
        env = self.env | {"split": "train"}
        rollouts = None
        if self.pool.config.backend == "ray":
            rollouts = WorkerRollouts(
                self.pool, stack, env, self.trainer.n_envs, self.policy.max_new_tokens, self.cfg.seed
            )
        final = train_grpo(
            start,
            lambda: stack.make_env(**env),
            trainable_episodes(stack, stage, self.cuts, self.cfg.seed),
            stage,
            phase,
            self.cfg.seed,
            self.out / "tensorboard" / name,
            [self.validation_callback(name, stage.eval_every)],
            turn_tokens=self.policy.max_new_tokens,
            rollouts=rollouts,
        )
        return self.finished(final)

    def compare_on_validation(self, models: dict[str, Path], users: np.ndarray) -> dict:
        """Greedy episodes of each model on the same validation users, scored with `trainer.validation.reward`; the
        paired differences of the last model against the first (when there are two) in reward, NDCG@10 and each
        reward term that is on (unweighted), and each user's rewards (`validation_rewards.csv`, for re-analysis such
        as a subset's interval)."""
        reward = self.valid_stack.reward
        active = [name for name, weight in reward.reward.weights.items() if weight]
        rewards, per_user, summary = {}, {}, {}
        for name, path in models.items():
            policy = LLMPolicy.load(path, self.policy)
            episodes = policy_episodes(
                self.pool, policy, self.valid_stack, self.env, users, "valid", self.trainer.n_envs, True
            )
            rewards[name] = np.array([e.reward_total for e in episodes])
            ranks = list_ranks([e.ranked_ids[: e.rec_k] for e in episodes], [e.target for e in episodes])
            per_user[name] = {"reward": rewards[name], "ndcg@10": ranking_metrics(ranks)["ndcg@10"]}
            per_user[name] |= {term: np.array([e.reward_unweighted[term] for e in episodes]) for term in active}
            summary[name] = validation_scalars(episodes)
        first, last = list(models)[0], list(models)[-1]
        result = {"users": len(users), "reward": self.trainer.validation.reward, "models": summary}
        if last != first:  # a warm start alone has nothing to be compared with
            result |= {
                f"{metric} {last}-vs-{first}": paired_difference(
                    per_user[last][metric], per_user[first][metric], self.cfg.eval.bootstrap, seed=self.cfg.seed
                )
                for metric in per_user[first]
            }
        write_json(self.out / "validation_comparison.json", result)
        columns = np.column_stack([users, *rewards.values()])
        np.savetxt(
            self.out / "validation_rewards.csv",
            columns,
            delimiter=",",
            header=",".join(["user", *rewards]),
            comments="",
            fmt=["%d"] + ["%.6f"] * len(rewards),
        )
        return result

    def evaluate(self, models: dict[str, Path]) -> dict:
        """Warm start vs the last GRPO stage on `trainer.evaluation.valid_users` validation users, then the test
        table: the policies in the env they were trained in, beside the baselines on the same users."""
        from experiments.evaluate import evaluate

        evaluation_config = self.trainer.evaluation
        valid_users = seeded_sample(
            self.stack.dataset.eval_users("valid"), evaluation_config.valid_users, self.cfg.seed
        )
        validation = self.compare_on_validation(models, valid_users)
        node = self.cfg.copy()
        with open_dict(node):
            node.agent = list(evaluation_config.agents)
            node.eval.max_users = evaluation_config.users
        out = self.out / "evaluation"
        out.mkdir(parents=True, exist_ok=True)
        return {"validation": validation, "test": evaluate(node, self.stack, models, out, self.pool)}

    def evaluate_tag_policy(self, models: dict[str, Path]) -> dict:
        """The tag policy of the last phase beside the baselines (with requests: `trm-request`, `scripted-request`)
        on `trainer.evaluation.valid_users` validation users, then on `trainer.evaluation.users` test users."""
        from experiments.evaluate import evaluate

        evaluation_config = self.trainer.evaluation
        policy = {"tag-ppo": list(models.values())[-1]}
        requests = self.stack.env_config(**self.env).requests
        extra = ["trm-request", "scripted-request"] if requests else []
        results = {}
        for split, folder, agents, users in (
            ("valid", "evaluation-valid", ["trm", "scripted", *extra], evaluation_config.valid_users),
            ("test", "evaluation", [*evaluation_config.agents, *extra], evaluation_config.users),
        ):
            node = self.cfg.copy()
            with open_dict(node):
                node.agent = agents
                node.split = split
                node.eval.max_users = users or None
            out = self.out / folder
            out.mkdir(parents=True, exist_ok=True)
            results[split] = evaluate(node, self.stack, policy, out, self.pool)
        return results


def learning_curves(out: Path, valid_reward: str) -> list[Path]:
    """PNG curves from each phase's trainer log: SFT loss, GRPO reward and its components, validation reward (the
    `valid_reward` preset) and format pass rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for phase in PHASES[:3]:
        state = out / phase / "final" / "trainer_state.json"
        if not state.exists():
            continue
        history = json.loads(state.read_text())["log_history"]
        keys = (
            ["loss"]
            if phase == "warm_start"
            else [k for k in history[0] if k.startswith("rewards/") and k.endswith("/mean")] + ["reward"]
        )
        fig, ax = plt.subplots(figsize=(7, 4))
        for key in keys:
            points = [(h["step"], h[key]) for h in history if key in h]
            if points:
                ax.plot(*zip(*points, strict=True), label=key)
        validation = out / phase / "validation.json"
        if validation.exists():
            checks = json.loads(validation.read_text())["history"]
            steps = [h["step"] for h in checks]
            ax.plot(steps, [h["valid/reward"] for h in checks], "k--o", label=f"valid/reward ({valid_reward})")
            share = ax.twinx()
            share.plot(steps, [h["valid/format_ok"] for h in checks], "g:s", label="valid/format_ok")
            share.set_ylim(-0.02, 1.02)
            share.set_ylabel("format pass rate")
            share.legend(fontsize=7, loc="lower right")
        ax.set_xlabel("step")
        ax.set_title(f"{phase}")
        ax.legend(fontsize=7, loc="upper left")
        path = out / f"curve_{phase}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_report(cfg: DictConfig, out: Path, results: dict, timings: dict) -> Path:
    validation = results["validation"]
    lines = [f"# deeprec training run: {cfg.dataset.name}, policy={cfg.policy.name}", ""]
    lines += ["## Test split (same users for every agent)", "", (out / "evaluation" / "results.md").read_text(), ""]
    lines += [f"## Validation users: warm start vs RL (greedy, `{validation['reward']}` reward)", ""]
    rows = [{"model": name, **scalars} for name, scalars in validation["models"].items()]
    lines += [markdown_table(rows, list(rows[0])), ""]
    for key, diff in validation.items():
        if "-vs-" in key:
            lines.append(f"{key}: {diff['mean']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]  ")
    lines += ["", "## Phase wall times (s)", "", markdown_table([timings], list(timings)), ""]
    lines += [f"![{p.stem}]({p.name})" for p in learning_curves(out, validation["reward"])]
    lines += ["", f"TensorBoard: `tensorboard --logdir {out / 'tensorboard'}`"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def compared_models(models: dict[str, Path]) -> dict[str, Path]:
    """What the `evaluate` phase compares: the warm start and the last GRPO stage that ran (stage 2, else stage 1)."""
    stages = [name for name in ("grpo-stage1", "grpo-stage2") if name in models]
    return {name: models[name] for name in ("warm-start", *stages[-1:]) if name in models}


def train(cfg: DictConfig) -> dict:
    unknown = [p for p in cfg.trainer.phases if p not in PHASES]
    if unknown:
        raise SystemExit(f"unknown phase {unknown[0]!r}; trainer.phases takes {list(PHASES)}")
    with command_pool(cfg) as pool:
        return train_run(Run(cfg, prepare(cfg).with_reward(cfg.reward), pool))


def train_run(run: Run) -> dict:
    """The phases of `run` (see the module docstring); returns each phase's wall time."""
    cfg = run.cfg
    run.out.mkdir(parents=True, exist_ok=True)
    (run.out / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    timings_path = run.out / "timings.json"  # each phase's wall time in the run that finished it, kept across reruns
    timings: dict[str, float] = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    if run.policy.name == "tag-ppo":
        return train_tag_policy(run, timings, timings_path)
    models: dict[str, Path] = {}
    current = policy_dir(run.policy, run.stack.dataset, run.stack.root)
    results = None
    for phase in [p for p in PHASES if p in cfg.trainer.phases]:
        skipped = phase != "evaluate" and done(run.out / phase)
        started = time.perf_counter()
        if phase == "warm_start":
            current = models["warm-start"] = run.warm_start(current)
        elif phase in ("stage1", "stage2"):
            current = models[f"grpo-{phase}"] = run.stage(phase, current)
        else:
            results = run.evaluate(compared_models(models))
        if not skipped:
            timings[phase] = round(time.perf_counter() - started, 1)
            write_json(timings_path, timings)
    if results is not None:
        log.info("report: %s", write_report(cfg, run.out, results, timings))
    log.info("outputs in %s (TensorBoard: tensorboard --logdir %s)", run.out, run.out / "tensorboard")
    return timings


def train_tag_policy(run: Run, timings: dict[str, float], timings_path: Path) -> dict:
    """`policy=tag-ppo`: PPO phases (`stage1` / `stage2` in `trainer.phases`, each with its stage's reward) of a
    tag-action policy on Ray env runners, then `evaluate`: the policy beside the baselines on every validation user
    (`trainer.evaluation.valid_users`) and on the test users, and `report.md`."""
    import ray

    from agents.training.ppo import is_tag_policy, train_tag_ppo

    cfg = run.cfg
    node = OmegaConf.to_container(cfg, resolve=True)
    phases = [p for p in PHASES if p in cfg.trainer.phases]
    if "warm_start" in phases:
        raise SystemExit("policy=tag-ppo trains from scratch: drop warm_start from trainer.phases")
    current, models = None, {}
    started_ray = start_ray(cfg.ray.address, cfg.ray.num_cpus)
    # validation while PPO trains plays in this process: the env runners hold the CPUs Ray workers would need
    validation_pool = RolloutPool()
    try:
        for phase in phases:
            started = time.perf_counter()
            phase_dir = run.out / phase
            if phase == "evaluate":
                if not models:
                    raise SystemExit(
                        "evaluate needs a tag policy: list its PPO phase in trainer.phases (a finished one is reused)"
                    )
                results = run.evaluate_tag_policy(models)
            elif is_tag_policy(phase_dir / "final"):
                log.info("%s already done: %s", phase, phase_dir / "final")
                current = models[f"tag-ppo-{phase}"] = phase_dir / "final"
                continue
            else:
                stage: GRPOStageConfig = getattr(run.trainer, phase)

                def validate(make_agent) -> dict[str, float]:
                    users = run.valid_users
                    episodes = validation_pool.play(
                        run.valid_stack, run.env, make_agent, users, "valid", run.trainer.n_envs
                    )
                    return validation_scalars(episodes)

                current = models[f"tag-ppo-{phase}"] = train_tag_ppo(
                    node,
                    run.stack,
                    run.env,
                    run.cuts if run.trainer.tool_holdout else 0,
                    stage.reward,
                    run.trainer.ppo,
                    phase_dir,
                    cfg.seed,
                    run.out / "tensorboard" / phase,
                    validate,
                    current,
                )
                run.finished(current)
            timings[phase] = round(time.perf_counter() - started, 1)
            write_json(timings_path, timings)
    finally:
        validation_pool.close()
        if started_ray:
            ray.shutdown()
    if "evaluate" in phases:
        log.info("report: %s", write_tag_report(cfg, run.out, results, timings))
    return timings


def write_tag_report(cfg: DictConfig, out: Path, results: dict, timings: dict) -> Path:
    """`report.md` of a tag-policy run: the validation and test tables, the paired differences of the policy
    against each baseline, the learning curves."""
    lines = [f"# deeprec tag-policy run: {cfg.dataset.name}, policy=tag-ppo", ""]
    for split, folder in (("Validation", "evaluation-valid"), ("Test", "evaluation")):
        lines += [f"## {split} split (same users for every agent)", "", (out / folder / "results.md").read_text()]
        comparisons = json.loads((out / folder / "comparisons.json").read_text())
        rows = [
            {"pair": pair, "metric": metric, **{k: diffs[metric][k] for k in ("mean", "low", "high", "excludes_zero")}}
            for pair, diffs in comparisons.items()
            if pair.startswith("tag-ppo")
            for metric in ("ndcg@10", "reward")
            if metric in diffs
        ]
        if rows:
            lines += ["Paired differences (95% bootstrap)", "", markdown_table(rows, list(rows[0])), ""]
    lines += ["## Phase wall times (s)", "", markdown_table([timings], list(timings)), ""]
    lines += [f"![{p.stem}]({p.name})" for p in tag_learning_curves(out)]
    lines += ["", f"TensorBoard: `tensorboard --logdir {out / 'tensorboard'}`"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def tag_learning_curves(out: Path) -> list[Path]:
    """PNG per PPO phase: the training episodes' return and the greedy validation reward and NDCG@10 by iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for phase in ("stage1", "stage2"):
        path = out / phase / "history.json"
        if not path.exists():
            continue
        history = json.loads(path.read_text())["history"]
        checks = [h for h in history if "valid/reward" in h]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot([h["iteration"] for h in history], [h["train/episode_return"] for h in history], label="train return")
        ax.plot([h["iteration"] for h in checks], [h["valid/reward"] for h in checks], "k-o", label="valid/reward")
        ax.set_xlabel("PPO iteration")
        ax.set_ylabel("reward")
        ndcg = ax.twinx()
        ndcg.plot([h["iteration"] for h in checks], [h["valid/ndcg@10"] for h in checks], "b--s", label="valid/ndcg@10")
        ndcg.set_ylabel("NDCG@10")
        fig.legend(fontsize=7, loc="lower right")
        ax.set_title(f"tag-ppo {phase}")
        fig.tight_layout()
        written.append(out / f"curve_tag_{phase}.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base="1.3")
@entry_point
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
