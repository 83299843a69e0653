"""`python -m experiments.bench`: throughput and memory figures as JSON (never timed tests).

Each measurement runs in its own subprocess so its peak resident memory is its own. Figures:
- `sasrec_train`: seconds per training epoch and peak RSS while training (a fresh model, `bench.epochs`
  epochs), plus the full early-stopped training time recorded by `prepare` when that checkpoint is cached.
Select with `bench.tasks=[sasrec_train] bench.datasets=[ml-100k,games]`; results go to `bench.json` in the run
directory and to stdout.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict, replace

import hydra
from omegaconf import DictConfig

from experiments.common import CONFIG_PATH, log, prepared_dataset, run_dir, trm_config, write_json


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_sasrec_train(cfg: DictConfig) -> dict:
    """Epoch time and peak memory of SASRec training on one dataset."""
    from deeprec_env.cache import config_hash
    from deeprec_env.trm.train import train_model

    dataset, root = prepared_dataset(cfg)
    config = trm_config(cfg.sasrec)
    cached_log = root / f"trm-{config.name}-{config_hash(asdict(config))}"
    budget = replace(config, train=replace(config.train, max_epochs=cfg.bench.epochs, patience=cfg.bench.epochs))
    started = time.perf_counter()
    _, train_log = train_model(dataset, budget, progress=False)
    seconds = time.perf_counter() - started
    full = json.loads((cached_log / "train_log.json").read_text()) if (cached_log / "train_log.json").exists() else None
    return {
        "dataset": dataset.name,
        "n_train_windows": train_log["n_windows"],
        "epochs_timed": len(train_log["epochs"]),
        "seconds_per_epoch": round(seconds / len(train_log["epochs"]), 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "full_training": None
        if full is None
        else {
            "seconds": round(full["train_seconds"], 1),
            "epochs": len(full["epochs"]),
            "best_epoch": full["best_epoch"],
            "best_valid_ndcg10": round(full["best_valid_ndcg10"], 4),
        },
    }


TASKS = {"sasrec_train": bench_sasrec_train}


def run_child(task: str, dataset: str, overrides: list[str]) -> dict:
    """One measurement in a fresh interpreter; it prints its JSON result as the last stdout line."""
    cmd = [sys.executable, "-m", "experiments.bench", f"bench.child={task}", f"dataset={dataset}", *overrides,
           "hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench {task} on {dataset} failed: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if cfg.bench.child:
        print(json.dumps(TASKS[cfg.bench.child](cfg)))
        return
    unknown = [t for t in cfg.bench.tasks if t not in TASKS]
    if unknown:
        raise SystemExit(f"unknown bench task {unknown[0]!r}; choose from {', '.join(TASKS)}")
    passthrough = [f"artifacts={cfg.artifacts}", f"bench.epochs={cfg.bench.epochs}"]
    results = {"cpu_threads": __import__("torch").get_num_threads(), "tasks": {}}
    for task in cfg.bench.tasks:
        results["tasks"][task] = []
        for dataset in cfg.bench.datasets:
            log.info("bench %s on %s", task, dataset)
            results["tasks"][task].append(run_child(task, dataset, passthrough))
    print(json.dumps(results, indent=1))
    write_json(run_dir() / "bench.json", results)


if __name__ == "__main__":
    main()
