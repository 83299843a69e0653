"""`python -m experiments.reference dataset=NAME`: the published SASRec recipe beside ours, on our split and protocol.

SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018) as the literature runs it, written
here from the paper's description with the settings of its widely used PyTorch port (`ReferenceConfig`): learned
item and position embeddings (items scaled by sqrt(hidden)), blocks of pre-norm causal self-attention and a
position-wise two-layer feed-forward net, each with a residual connection and dropout, a final layer norm, Xavier-normal
initial weights; for every
position of a user's last `max_len` training items, a binary cross-entropy on the next item against ONE sampled item
the user never interacted with; Adam (betas 0.9, 0.98). The epoch is chosen by NDCG@10 on the validation users under
this project's protocol (full ranking, history excluded), every `eval_every` epochs.

It prints, and writes to `reference.json` / `reference.md` in the run directory, the reference's best validation
NDCG@10 and Recall@10 beside the project's SASRec (`sasrec`, from the artifact cache or trained now) on the same
users, so that a change which weakens the baseline shows up. The test split is never read.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from deeprec_env.cache import cached, config_hash
from deeprec_env.data.dataset import RecDataset, stack_histories
from deeprec_env.evaluation import Scorer, evaluate_scorer
from deeprec_env.metrics import bootstrap_interval, paired_difference, ranking_metrics
from deeprec_env.runtime import progress
from deeprec_env.stack import Stack, build_stack
from deeprec_env.trm.retriever import InProcessRetriever
from deeprec_env.trm.train import partial_state_path, resumable_state, save_training_state, stop_signals
from experiments.common import CONFIG_PATH, entry_point, log, markdown_table, provenance, publish
from experiments.config import ReferenceConfig


class ReferenceSASRec(nn.Module):
    """The SASRec network of the paper (see the module docstring); item id 0 is padding."""

    def __init__(self, n_items: int, config: ReferenceConfig):
        super().__init__()
        self.config = config
        self.items = nn.Embedding(n_items + 1, config.hidden, padding_idx=0)
        self.positions = nn.Embedding(config.max_len, config.hidden)
        self.dropout = nn.Dropout(config.dropout)
        self.attention_norms = nn.ModuleList(nn.LayerNorm(config.hidden, eps=1e-8) for _ in range(config.blocks))
        self.attentions = nn.ModuleList(
            nn.MultiheadAttention(config.hidden, config.heads, dropout=config.dropout, batch_first=True)
            for _ in range(config.blocks)
        )
        self.forward_norms = nn.ModuleList(nn.LayerNorm(config.hidden, eps=1e-8) for _ in range(config.blocks))
        self.feed_forwards = nn.ModuleList(
            nn.Sequential(
                nn.Linear(config.hidden, config.hidden),
                nn.Dropout(config.dropout),
                nn.ReLU(),
                nn.Linear(config.hidden, config.hidden),
                nn.Dropout(config.dropout),
            )
            for _ in range(config.blocks)
        )
        self.final_norm = nn.LayerNorm(config.hidden, eps=1e-8)
        for parameter in self.parameters():  # Xavier-normal for every matrix, as the paper's code
            if parameter.dim() >= 2:
                nn.init.xavier_normal_(parameter)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def hidden_states(self, sequences: torch.Tensor) -> torch.Tensor:
        """(batch, max_len) left-padded item ids -> (batch, max_len, hidden)."""
        length = sequences.shape[1]
        x = self.items(sequences) * math.sqrt(self.config.hidden)
        x = self.dropout(x + self.positions(torch.arange(length, device=sequences.device)))
        keep = (sequences > 0).unsqueeze(-1)
        x = x * keep
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=sequences.device), diagonal=1)
        for attention_norm, attention, forward_norm, feed_forward in zip(
            self.attention_norms, self.attentions, self.forward_norms, self.feed_forwards, strict=True
        ):
            query = attention_norm(x)
            attended, _ = attention(query, x, x, attn_mask=causal, need_weights=False)
            x = forward_norm(query + attended)
            x = (x + feed_forward(x)) * keep
        return self.final_norm(x)

    @torch.inference_mode()
    def scores(self, histories, queries=None) -> np.ndarray:
        """The `deeprec_env.evaluation.Scorer` interface: (batch, n_items + 1) scores of the next item, padding
        -inf; queries are ignored."""
        self.eval()
        sequences = torch.as_tensor(stack_histories(histories, self.config.max_len))
        last = self.hidden_states(sequences)[:, -1]
        scores = (last @ self.items.weight.T).float().numpy()
        scores[:, 0] = -np.inf
        return scores


def training_batches(dataset: RecDataset, config: ReferenceConfig, rng: np.random.Generator):
    """One epoch: per user (shuffled) its last `max_len` training transitions, as (inputs, positives, negatives)
    tensors of `batch_size` users; a negative is a uniformly drawn item outside the user's training sequence."""
    sequences = [s for s in dataset.training_sequences() if len(s) >= 2]
    order = rng.permutation(len(sequences))
    for start in range(0, len(order), config.batch_size):
        chosen = [sequences[i] for i in order[start : start + config.batch_size]]
        inputs = stack_histories([s[:-1] for s in chosen], config.max_len)
        positives = stack_histories([s[1:] for s in chosen], config.max_len)
        negatives = np.zeros_like(positives)
        for row, sequence in enumerate(chosen):
            seen = set(sequence.tolist())
            for col in np.flatnonzero(positives[row]):
                item = int(rng.integers(1, dataset.n_items + 1))
                while item in seen:
                    item = int(rng.integers(1, dataset.n_items + 1))
                negatives[row, col] = item
        yield (torch.as_tensor(inputs), torch.as_tensor(positives), torch.as_tensor(negatives))


def validation_metrics(score: Scorer, dataset: RecDataset, users: np.ndarray) -> dict[str, np.ndarray]:
    """Per-user NDCG@10 and Recall@10 of a scorer's full ranking on the validation users (history excluded)."""
    per_user = ranking_metrics(evaluate_scorer(score, dataset, users, "valid").ranks)
    return {metric: per_user[metric] for metric in ("ndcg@10", "recall@10")}


def train_reference(
    dataset: RecDataset,
    config: ReferenceConfig,
    seed: int = 0,
    resume: dict | None = None,
    save_state: Callable[[dict], None] | None = None,
) -> tuple[ReferenceSASRec, dict]:
    """Train the reference and keep the weights of its best validation epoch: (model, log).

    After every validation the whole training state (weights, optimizer, both random generators, the best epoch so
    far) goes to `save_state`; passing it back as `resume` continues the run with the same result as an
    uninterrupted one, which is how a run longer than a session (Games: 200 epochs of 395 steps) finishes. A stop
    signal (SIGINT, SIGTERM) lets the current epoch finish, saves the state and raises KeyboardInterrupt."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    users = dataset.eval_users("valid")
    model = ReferenceSASRec(dataset.n_items, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.98))
    best = {"epoch": 0, "ndcg@10": -1.0, "recall@10": 0.0}
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    history, first_epoch, earlier_seconds = [], 1, 0.0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        torch.set_rng_state(resume["torch_rng"])
        rng.bit_generator.state = json.loads(resume["data_rng"])
        best, best_state, history = json.loads(resume["best"]), resume["best_model"], json.loads(resume["history"])
        first_epoch, earlier_seconds = resume["epoch"] + 1, resume["train_seconds"]
    started = time.perf_counter() - earlier_seconds

    def snapshot(epoch: int) -> dict:
        return {
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "data_rng": json.dumps(rng.bit_generator.state),
            "best": json.dumps(best),
            "best_model": best_state,
            "history": json.dumps(history),
            "train_seconds": time.perf_counter() - started,
        }

    epochs = range(first_epoch, config.epochs + 1)
    with stop_signals() as stop:
        for epoch in progress(epochs, desc=f"reference SASRec on {dataset.name}"):
            model.train()
            for inputs, positives, negatives in training_batches(dataset, config, rng):
                hidden = model.hidden_states(inputs)
                positive_logits = (hidden * model.items(positives)).sum(-1)
                negative_logits = (hidden * model.items(negatives)).sum(-1)
                mask = positives > 0
                loss = F.binary_cross_entropy_with_logits(
                    positive_logits[mask], torch.ones_like(positive_logits[mask])
                ) + F.binary_cross_entropy_with_logits(negative_logits[mask], torch.zeros_like(negative_logits[mask]))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            validated = epoch % config.eval_every == 0 or epoch == config.epochs
            if validated:
                metrics = {k: float(v.mean()) for k, v in validation_metrics(model.scores, dataset, users).items()}
                history.append({"epoch": epoch, "loss": loss.item(), **metrics})
                log.info(
                    "reference epoch %d: loss %.4f, validation NDCG@10 %.4f", epoch, loss.item(), metrics["ndcg@10"]
                )
                if metrics["ndcg@10"] > best["ndcg@10"]:
                    best = {"epoch": epoch, **metrics}
                    best_state = {k: v.clone() for k, v in model.state_dict().items()}
                elif config.patience and epoch >= best["epoch"] + config.patience * config.eval_every:
                    break
            if save_state is not None and (validated or stop.is_set()):
                save_state(snapshot(epoch))
            if stop.is_set():
                saved = "; its state is saved to resume from" if save_state is not None else ""
                log.warning("reference training stopped by a signal after epoch %d%s", epoch, saved)
                raise KeyboardInterrupt
    model.load_state_dict(best_state)
    return model, {"best": best, "history": history, "train_seconds": round(time.perf_counter() - started, 1)}


def load_or_train_reference(stack: Stack, config: ReferenceConfig, seed: int) -> tuple[ReferenceSASRec, dict]:
    """The reference trained on the stack's dataset, from the artifact cache (keyed by the recipe and seed) or
    trained now, resuming from the state an interrupted run saved at its last validation (a run that differs only in
    `patience` resumes it too); `experiments.evaluate agent=reference` ranks with the same cached model."""
    directory = Path(stack.root) / f"reference-sasrec-{config_hash(asdict(config) | {'seed': seed})}"
    trajectory = asdict(replace(config, patience=None)) | {"seed": seed}  # patience decides only where training stops
    state_path = partial_state_path(Path(stack.root) / f"reference-sasrec-{config_hash(trajectory)}")
    key = json.dumps(trajectory, sort_keys=True)

    def build(tmp: Path) -> None:
        model, training = train_reference(
            stack.dataset,
            config,
            seed,
            resume=resumable_state(state_path, key, "reference SASRec"),
            save_state=lambda state: save_training_state(state_path, key, state),
        )
        torch.save(model.state_dict(), tmp / "model.pt")
        (tmp / "train_log.json").write_text(json.dumps(training, indent=1))

    cached(directory, build, "reference SASRec")
    shutil.rmtree(state_path.parent, ignore_errors=True)
    model = ReferenceSASRec(stack.dataset.n_items, config)
    model.load_state_dict(torch.load(directory / "model.pt", weights_only=True))
    return model.eval(), json.loads((directory / "train_log.json").read_text())


def run_reference(cfg: DictConfig) -> dict:
    stack = build_stack(cfg, with_reward=False)
    dataset = stack.dataset
    config = ReferenceConfig(**cfg.reference)
    users = dataset.eval_users("valid")
    reference, training = load_or_train_reference(stack, config, cfg.seed)
    sasrec, _ = stack.recommender("sasrec")

    ours = validation_metrics(InProcessRetriever(sasrec).scores, dataset, users)
    theirs = validation_metrics(reference.scores, dataset, users)
    rows = []
    for name, per_user in (("reference SASRec (published recipe)", theirs), ("sasrec (this project)", ours)):
        row = {"model": name, "users": len(users)}
        for metric in ("ndcg@10", "recall@10"):
            mean, low, high = bootstrap_interval(per_user[metric], cfg.eval.bootstrap, seed=cfg.seed)
            row[f"valid {metric} [95% CI]"] = f"{mean:.4f} [{low:.4f}, {high:.4f}]"
        rows.append(row)
    difference = paired_difference(ours["ndcg@10"], theirs["ndcg@10"], cfg.eval.bootstrap, seed=cfg.seed)
    result = {
        "dataset": dataset.name,
        "provenance": provenance(),
        "reference_config": asdict(config),
        "reference": training,
        "ours_minus_reference_ndcg@10": {k: float(v) for k, v in difference.items()},
        "table": rows,
    }
    report = [
        f"{dataset.name}, validation split, {len(users)} users, full ranking with history excluded, 95% bootstrap",
        "",
        markdown_table(rows, list(rows[0])),
        "",
        f"Reference best epoch {training['best']['epoch']} of {training['history'][-1]['epoch']} trained, "
        f"trained in {training['train_seconds']} s. "
        f"sasrec minus reference, NDCG@10: {difference['mean']:+.4f} [{difference['low']:+.4f}, "
        f"{difference['high']:+.4f}] (paired).",
    ]
    publish("reference", result, report)
    return result


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base="1.3")
@entry_point
def main(cfg: DictConfig) -> None:
    run_reference(cfg)


if __name__ == "__main__":
    main()
