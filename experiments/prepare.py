"""`python -m experiments.prepare dataset=NAME`: dataset -> item text embeddings -> trained SASRec and TRM.

Everything is cached under artifacts/<dataset>/<config-hash>/; a second run reuses it and says so. Which models
are trained is `prepare.models` (default: sasrec and the preference-aware trm).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from experiments.common import CONFIG_PATH, log, markdown_table, prepared_dataset, trained_model


def prepare(cfg: DictConfig, models: list[str] | None = None):
    """Prepare the dataset and the models the later stages need; returns (dataset, artifact dir)."""
    dataset, root = prepared_dataset(cfg)
    stats = dataset.stats()
    print(markdown_table([stats], list(stats)))
    for name in cfg.prepare.models if models is None else models:
        _, train_log = trained_model(cfg, name, dataset, root)
        log.info(
            "%s: best validation NDCG@10 %.4f (step %d, epoch %d, %.0fs)",
            name,
            train_log["best_valid_ndcg10"],
            train_log["best_step"],
            train_log["best_epoch"],
            train_log["train_seconds"],
        )
    return dataset, root


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    prepare(cfg)


if __name__ == "__main__":
    main()
