"""`python -m experiments.pipeline` (what `make demo` runs): prepare the default dataset, evaluate the baselines
on the test split, print the table and write `report.md` beside `results.json` in the run directory."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, open_dict

from experiments.common import CONFIG_PATH, run_dir
from experiments.evaluate import evaluate, results_table


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with open_dict(cfg):
        cfg.agent = list(cfg.pipeline.agents)
    records = evaluate(cfg)
    table = results_table(records)
    report = run_dir() / "report.md"
    report.write_text(
        f"# deeprec demo: {records[0]['dataset']}\n\n"
        f"Test split, {records[0]['n_users']} users, leave-one-out, full ranking over the catalogue, history items "
        f"excluded; 95% bootstrap intervals.\n\n{table}\n"
    )
    print(f"\nDemo outputs: {run_dir()} (report.md, results.json, comparisons.json)")


if __name__ == "__main__":
    main()
