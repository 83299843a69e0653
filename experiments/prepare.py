"""`python -m experiments.prepare dataset=NAME`: dataset -> cache -> trained SASRec, printing statistics.

Everything is cached under artifacts/<dataset>/<config-hash>/; a second run reuses it and says so.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from deeprec_env.trm.train import load_or_train
from experiments.common import CONFIG_PATH, log, markdown_table, prepared_dataset, trm_config


def prepare(cfg: DictConfig):
    """Prepare everything the evaluation and training entry points need; returns (dataset, artifacts dir)."""
    dataset, root = prepared_dataset(cfg)
    stats = dataset.stats()
    print(markdown_table([stats], list(stats)))
    _, train_log = load_or_train(dataset, trm_config(cfg.sasrec), root)
    log.info(
        "sasrec: best validation NDCG@10 %.4f (epoch %d, %.0fs)",
        train_log["best_valid_ndcg10"],
        train_log["best_epoch"],
        train_log["train_seconds"],
    )
    return dataset, root


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    prepare(cfg)


if __name__ == "__main__":
    main()
