"""What every entry point shares: typed configs from the Hydra tree, logging, result tables and files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from deeprec_env.config import text_encoder as shared_text_encoder
from deeprec_env.config import typed
from deeprec_env.data.dataset import RecDataset
from deeprec_env.data.source import DatasetConfig, artifact_root, load_dataset
from deeprec_env.trm.train import TRMConfig

CONFIG_PATH = str(Path(__file__).resolve().parents[1] / "configs")
log = logging.getLogger("deeprec")


def dataset_config(cfg: DictConfig) -> DatasetConfig:
    return typed(DatasetConfig, cfg.dataset)


def trm_config(node: DictConfig) -> TRMConfig:
    return typed(TRMConfig, node)


def prepared_dataset(cfg: DictConfig) -> tuple[RecDataset, Path]:
    """The processed dataset (cached) and the artifact directory derived from its config."""
    data_cfg = dataset_config(cfg)
    return load_dataset(data_cfg, cfg.artifacts), artifact_root(cfg.artifacts, data_cfg)


def text_encoder(cfg: DictConfig):
    """The sentence encoder of `cfg.text` (one instance per process)."""
    return shared_text_encoder(cfg.text)


def trained_model(cfg: DictConfig, name: str, dataset: RecDataset, root: Path):
    """A trained model from the `trm` config group (`sasrec` or `trm`): from the cache, else trained now."""
    from deeprec_env.trm.train import load_or_train

    config = trm_config(cfg[name])
    return load_or_train(dataset, config, root, text_encoder(cfg) if config.model.uses_text else None)


def run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A GitHub markdown table; floats get 4 decimals."""

    def cell(value) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=1))
    log.info("wrote %s", path)
