"""What every training phase shares: CPU trainer settings with TensorBoard logs and checkpoints, resuming from
the newest checkpoint, and writing the phase's `final/` model."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def last_checkpoint(out_dir: Path) -> tuple[str | None, bool]:
    """The newest complete `checkpoint-N` in `out_dir` (None if there is none) and whether it already holds the
    run's last step. A checkpoint is complete once its `trainer_state.json` is written (the Trainer writes it last),
    so one cut short by a kill is passed over. A checkpoint at the last step means a kill after the last checkpoint
    but before `final/` was written: resuming it would make the Trainer take one step more than `max_steps`, so it
    is finished with `finish_from` instead."""
    steps = []
    for path in out_dir.glob("checkpoint-*") if out_dir.exists() else ():
        suffix = path.name.removeprefix("checkpoint-")
        if suffix.isdigit() and (path / "trainer_state.json").exists():
            steps.append((int(suffix), path))
    if not steps:
        return None, False
    path = max(steps)[1]
    state = json.loads((path / "trainer_state.json").read_text())
    return str(path), state["global_step"] >= state["max_steps"]


def finish_from(checkpoint: str, tokenizer, final: Path) -> Path:
    """Write `final/` from a checkpoint that completed the phase: its weights, `tokenizer`, its trainer state."""
    from transformers import AutoModelForCausalLM

    log.info("the phase already reached its last step in %s: writing %s from it", checkpoint, final)
    AutoModelForCausalLM.from_pretrained(checkpoint).save_pretrained(final)
    tokenizer.save_pretrained(final)
    shutil.copy(Path(checkpoint) / "trainer_state.json", final / "trainer_state.json")
    return final


def trainer_settings(out_dir: Path, seed: int, logging_dir: Path | None) -> dict:
    """The TRL config fields every phase uses: checkpoints in `out_dir`, TensorBoard logs in `logging_dir`, CPU, and
    a progress bar only in a terminal (in a log, the logged metrics show progress)."""
    if logging_dir is not None:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(logging_dir)  # where transformers' TensorBoard callback writes
    return {
        "output_dir": str(out_dir),
        "save_total_limit": 2,
        "disable_tqdm": not sys.stderr.isatty(),
        "report_to": ["tensorboard"],
        "use_cpu": True,
        "bf16": False,
        "seed": seed,
        "dataloader_num_workers": 0,
    }


def train_and_save(trainer, resume: str | None, final: Path, what: str) -> Path:
    """Train (from `resume` when given), then write the model and the trainer state to `final/` (the caller adds
    the tokenizer it serves with)."""
    if resume:
        log.info("%s resumes from %s", what, resume)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(final))
    trainer.state.save_to_json(str(final / "trainer_state.json"))  # the log history, for learning curves
    return final
