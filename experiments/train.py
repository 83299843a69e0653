"""`python -m experiments.train dataset=NAME policy=tiny|smollm2-135m|hf`: the two-phase trainer.

Phases (`trainer.phases`, in order): `warm_start` (the scripted teacher's episodes through the env, SFT),
`stage1` (GRPO with the process-reward preset `trainer.stage1.reward`, default `cold`), `stage2` (GRPO with the
root `reward` config, default `rec`), `evaluate` (warm start vs stage 2 on the same validation users, then the
test table beside pop, sasrec, trm, scripted and oracle). Everything lands in `trainer.output_dir`: a finished
phase (its `final/` model) is skipped on a rerun, an interrupted one resumes from its last checkpoint.
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

from agents.llm import LLMPolicy, llm_agents, policy_config, policy_dir
from agents.training.grpo import GRPOStageConfig, train_grpo
from agents.training.monitor import ValidationCallback, policy_episodes, validation_scalars
from agents.training.warm_start import WarmStartConfig, teacher_episodes, warm_start
from deeprec_env.config import typed
from deeprec_env.data.dataset import RecDataset
from deeprec_env.env import DeepRecEnv
from deeprec_env.metrics import paired_difference
from experiments.common import CONFIG_PATH, markdown_table, write_json
from experiments.prepare import prepare

log = logging.getLogger("deeprec")
PHASES = ("warm_start", "stage1", "stage2", "evaluate")


def seeded_sample(users: np.ndarray, n: int, seed: int) -> np.ndarray:
    if n and len(users) > n:
        return np.sort(np.random.default_rng(seed).choice(users, n, replace=False))
    return users


def stage_env(cfg: DictConfig, reward: str | None, split: str) -> DeepRecEnv:
    """The chat-codec env for training or evaluating the policy, with a reward preset (None = the root one)."""
    from deeprec_env.registration import CONFIG_DIR, build_env

    node = cfg.copy()
    if reward is not None:
        with open_dict(node):
            node.reward = OmegaConf.load(CONFIG_DIR / "reward" / f"{reward}.yaml")
    return build_env(node, protocol="chat", split=split, **OmegaConf.to_container(cfg.trainer.env))


def env_factory(env: DeepRecEnv):
    """Fresh episodes sharing the env's dataset, retriever, reward and title matcher."""
    return lambda: DeepRecEnv(
        env.dataset, env.retriever, env.reward_fn, env.reward_levels, env.config, env.count_tokens, matcher=env.matcher
    )


def trainable_users(cfg: DictConfig, env: DeepRecEnv, stage: GRPOStageConfig) -> np.ndarray:
    """Train-split users for a GRPO stage: a seeded sample, kept only if the TRM (empty query) ranks their target
    in its top `difficulty_top` when the difficulty filter is on."""
    from deeprec_env.evaluation import evaluate_scorer

    users = env.dataset.eval_users("train")
    if stage.difficulty_filter:
        ranks = evaluate_scorer(
            env.retriever.scores, env.dataset, users, "train", exclude_history=env.config.exclude_history, list_k=1
        ).ranks
        kept = users[ranks < stage.difficulty_top]
        log.info(
            "difficulty filter: %d of %d train users have their target in the TRM's top %d",
            len(kept),
            len(users),
            stage.difficulty_top,
        )
        users = kept
    return seeded_sample(users, stage.users, cfg.seed)


def done(phase_dir: Path) -> bool:
    return (phase_dir / "final" / "config.json").exists()


def run_warm_start(cfg: DictConfig, out: Path, initial: Path, valid_users: np.ndarray) -> Path:
    phase = out / "warm_start"
    if done(phase):
        log.info("warm start already done: %s", phase / "final")
        return phase / "final"
    config = typed(WarmStartConfig, cfg.trainer.warm_start)
    env = stage_env(cfg, None, "train")
    users = seeded_sample(env.dataset.eval_users("train"), config.users, cfg.seed)
    episodes = teacher_episodes(env, users, config.teacher, cfg.trainer.n_envs, cfg.seed)
    callback = validation_callback(cfg, out, "warm_start", config.eval_every, valid_users)
    return warm_start(initial, episodes, config, phase, cfg.seed, out / "tensorboard" / "warm_start", [callback])


def validation_callback(
    cfg: DictConfig, out: Path, phase: str, every: int, valid_users: np.ndarray
) -> ValidationCallback:
    """Greedy rollouts of the policy being trained on the validation users (`rec` reward), logged to TensorBoard
    and to `out/phase/validation.json`."""
    return ValidationCallback(
        env_factory(stage_env(cfg, "rec", "valid")),
        valid_users,
        out / "tensorboard" / phase,
        every,
        policy_config(cfg.policy),
        cfg.trainer.n_envs,
        phase,
        out / phase / "validation.json",
    )


def run_stage(cfg: DictConfig, out: Path, name: str, start: Path, valid_users: np.ndarray) -> Path:
    phase = out / name
    if done(phase):
        log.info("%s already done: %s", name, phase / "final")
        return phase / "final"
    stage = typed(GRPOStageConfig, cfg.trainer[name])
    env = stage_env(cfg, stage.reward, "train")
    callback = validation_callback(cfg, out, name, stage.eval_every, valid_users)
    return train_grpo(
        start,
        env_factory(env),
        trainable_users(cfg, env, stage),
        stage,
        phase,
        cfg.seed,
        out / "tensorboard" / name,
        [callback],
    )


def compare_on_validation(cfg: DictConfig, out: Path, models: dict[str, Path], users: np.ndarray) -> dict:
    """Greedy episodes of each model on the same validation users with the `rec` reward; the paired difference of
    the reward of the last model against the first, and each user's rewards (`validation_rewards.csv`, for
    re-analysis such as a subset's interval)."""
    env = stage_env(cfg, "rec", "valid")
    rewards, summary = {}, {}
    for name, path in models.items():
        episodes, episode_rewards = policy_episodes(
            LLMPolicy.load(path, policy_config(cfg.policy)), env, users, cfg.trainer.n_envs, progress=True
        )
        rewards[name] = np.asarray(episode_rewards)
        summary[name] = validation_scalars(episodes, episode_rewards)
    first, last = list(models)[0], list(models)[-1]
    result = {
        "users": len(users),
        "models": summary,
        f"reward {last}-vs-{first}": paired_difference(
            rewards[last], rewards[first], cfg.eval.bootstrap, seed=cfg.seed
        ),
    }
    write_json(out / "validation_comparison.json", result)
    columns = np.column_stack([users, *rewards.values()])
    np.savetxt(
        out / "validation_rewards.csv",
        columns,
        delimiter=",",
        header=",".join(["user", *rewards]),
        comments="",
        fmt=["%d"] + ["%.6f"] * len(rewards),
    )
    return result


def run_evaluation(cfg: DictConfig, out: Path, models: dict[str, Path], dataset: RecDataset) -> dict:
    """Warm start vs stage 2 on `trainer.evaluation.valid_users` validation users, then the test table."""
    from experiments.evaluate import evaluate

    valid_users = seeded_sample(dataset.eval_users("valid"), cfg.trainer.evaluation.valid_users, cfg.seed)
    validation = compare_on_validation(cfg, out, models, valid_users)
    node = cfg.copy()
    with open_dict(node):
        node.agent = list(cfg.trainer.evaluation.agents)
        node.eval.max_users = cfg.trainer.evaluation.users
    env = stage_env(node, None, cfg.split)
    policies = {name: llm_agents(LLMPolicy.load(path, policy_config(cfg.policy))) for name, path in models.items()}
    evaluation = out / "evaluation"
    evaluation.mkdir(parents=True, exist_ok=True)
    records = evaluate(node, policies, env=env, out=evaluation)
    return {"validation": validation, "test": records}


def learning_curves(out: Path) -> list[Path]:
    """PNG curves from each phase's trainer log: SFT loss, GRPO reward and its components, validation NDCG@10."""
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
            ax.plot(steps, [h["valid/reward"] for h in checks], "k--o", label="valid/reward (rec)")
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
    lines += ["## Validation users: warm start vs RL (greedy, `rec` reward)", ""]
    rows = [{"model": name, **scalars} for name, scalars in validation["models"].items()]
    lines += [markdown_table(rows, list(rows[0])), ""]
    for key, diff in validation.items():
        if key.startswith("reward"):
            lines.append(f"{key}: {diff['mean']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]")
    lines += ["", "## Phase wall times (s)", "", markdown_table([timings], list(timings)), ""]
    lines += [f"![{p.stem}]({p.name})" for p in learning_curves(out)]
    lines += ["", f"TensorBoard: `tensorboard --logdir {out / 'tensorboard'}`"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def train(cfg: DictConfig) -> dict:
    unknown = [p for p in cfg.trainer.phases if p not in PHASES]
    if unknown:
        raise SystemExit(f"unknown phase {unknown[0]!r}; trainer.phases takes {list(PHASES)}")
    dataset, root = prepare(cfg)
    out = Path(cfg.trainer.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    valid_users = seeded_sample(dataset.eval_users("valid"), cfg.trainer.validation.users, cfg.seed)
    models: dict[str, Path] = {}
    timings_path = out / "timings.json"  # each phase's wall time in the run that finished it, kept across reruns
    timings: dict[str, float] = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    current = policy_dir(policy_config(cfg.policy), dataset, root)
    results = None
    for phase in [p for p in PHASES if p in cfg.trainer.phases]:
        skipped = phase != "evaluate" and done(out / phase)
        started = time.perf_counter()
        if phase == "warm_start":
            current = models["warm-start"] = run_warm_start(cfg, out, current, valid_users)
        elif phase in ("stage1", "stage2"):
            current = models[f"grpo-{phase}"] = run_stage(cfg, out, phase, current, valid_users)
        else:
            compared = {name: path for name, path in models.items() if name in ("warm-start", "grpo-stage2")}
            results = run_evaluation(cfg, out, compared, dataset)
        if not skipped:
            timings[phase] = round(time.perf_counter() - started, 1)
            write_json(timings_path, timings)
    if results is not None:
        log.info("report: %s", write_report(cfg, out, results, timings))
    log.info("outputs in %s (TensorBoard: tensorboard --logdir %s)", out, out / "tensorboard")
    return timings


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
