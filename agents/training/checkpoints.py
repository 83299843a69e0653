"""Resuming a phase: its newest checkpoint, and finishing a phase whose last step was already checkpointed."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def last_checkpoint(out_dir: Path) -> tuple[str | None, bool]:
    """The newest `checkpoint-N` in `out_dir` (None if there is none) and whether it already holds the run's last
    step: a kill after the last checkpoint but before `final/` was written. Resuming such a checkpoint would make
    the Trainer take one step more than `max_steps`, so it is finished with `finish_from` instead."""
    from transformers.trainer_utils import get_last_checkpoint

    path = get_last_checkpoint(str(out_dir)) if out_dir.exists() else None
    if path is None:
        return None, False
    state = json.loads((Path(path) / "trainer_state.json").read_text())
    return path, state["global_step"] >= state["max_steps"]


def finish_from(checkpoint: str, tokenizer, final: Path) -> Path:
    """Write `final/` from a checkpoint that completed the phase: its weights, `tokenizer`, its trainer state."""
    from transformers import AutoModelForCausalLM

    log.info("the phase already reached its last step in %s: writing %s from it", checkpoint, final)
    AutoModelForCausalLM.from_pretrained(checkpoint).save_pretrained(final)
    tokenizer.save_pretrained(final)
    shutil.copy(Path(checkpoint) / "trainer_state.json", final / "trainer_state.json")
    return final
