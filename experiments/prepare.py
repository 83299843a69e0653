"""`python -m experiments.prepare dataset=NAME`: dataset -> item text embeddings -> trained SASRec and TRM.

Everything is cached under artifacts/<dataset>/<config-hash>/; a second run reuses it and says so. Which models are
trained is `prepare.models` (default: sasrec and the preference-aware trm). An interrupted training resumes where it
stopped on the next run.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from deeprec_env.stack import Stack, build_stack
from experiments.common import CONFIG_PATH, entry_point, log, markdown_table


def prepare(cfg: DictConfig) -> Stack:
    """Build the stack (dataset, encoder, the TRM and its backbone) and the other models of `prepare.models`."""
    stack = build_stack(cfg, with_reward=False)
    stats = stack.dataset.stats()
    print(markdown_table([stats], list(stats)))
    for name in cfg.prepare.models:
        _, train_log = stack.recommender(name)
        log.info(
            "%s: best validation NDCG@10 %.4f (step %d, epoch %d, %.0fs)",
            name,
            train_log["best_valid_ndcg10"],
            train_log["best_step"],
            train_log["best_epoch"],
            train_log["train_seconds"],
        )
    return stack


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base="1.3")
@entry_point
def main(cfg: DictConfig) -> None:
    prepare(cfg)


if __name__ == "__main__":
    main()
