"""What every entry point shares: the config schema (registered on import), result tables and files."""

from __future__ import annotations

import functools
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from hydra.core.hydra_config import HydraConfig

import experiments.config  # noqa: F401  (registers the config schemas before Hydra composes)

CONFIG_PATH = str(Path(__file__).resolve().parents[1] / "configs")
log = logging.getLogger("deeprec")


def entry_point(main: Callable) -> Callable:
    """What every command does around its work: set the torch threads from `threads`, and end on a stop signal
    (Ctrl-C, SIGTERM) with one line and exit status 130 instead of a traceback (whatever was interrupted resumes
    when the same command runs again)."""

    @functools.wraps(main)
    def run(cfg):
        from deeprec_env.runtime import configure_threads, quiet_library_progress

        configure_threads(cfg.threads)
        quiet_library_progress()
        try:
            return main(cfg)
        except KeyboardInterrupt:
            print("stopped; run the same command again to resume", file=sys.stderr)
            raise SystemExit(130) from None

    return run


def command_pool(cfg):
    """The rollout pool of a command's config (`rollout.*`, on the Ray of `ray.*`), as a context manager."""
    from agents.workers import RolloutConfig, rollout_pool
    from deeprec_env.config import typed

    return rollout_pool(typed(RolloutConfig, cfg.rollout), cfg.ray.address, cfg.ray.num_cpus)


def provenance() -> dict[str, str]:
    """The command that is running and the commit of the code it runs ("-dirty" with uncommitted changes)."""
    command = " ".join([f"python -m {_module_name()}", *sys.argv[1:]])
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"command": command, "commit": "unknown"}
    return {"command": command, "commit": commit + ("-dirty" if dirty.strip() else "")}


def _module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else Path(sys.argv[0]).stem


def run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A GitHub markdown table; floats get 4 decimals."""

    def cell(value) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, payload: dict | list) -> None:
    path.write_text(json.dumps(payload, indent=1))
    log.info("wrote %s", path)


def publish(name: str, results: dict, report: list[str]) -> None:
    """End a command's run: print the report lines with a closing "Measured by" line (from `results["provenance"]`)
    and write `<name>.json` (the results) and `<name>.md` (the report) in the run directory."""
    made = results["provenance"]
    lines = [*report, "", f"Measured by `{made['command']}` (commit {made['commit']})."]
    print("\n" + "\n".join(lines))
    write_json(run_dir() / f"{name}.json", results)
    (run_dir() / f"{name}.md").write_text("\n".join(lines) + "\n")


def seeded_sample(rows: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded sample of n rows (users, or (user, cut) episodes), kept in their order; all of them when n is 0 or
    there are fewer. Every command draws its users and episodes with it, so the same seed picks the same ones."""
    if n and len(rows) > n:
        return rows[np.sort(np.random.default_rng(seed).choice(len(rows), n, replace=False))]
    return rows
