"""Training the sequential recommender: full-softmax cross-entropy, early stopping on validation NDCG@10.

Recipe. Each user's training sequence (validation and test targets removed) is cut into windows of
`max_len + 1` items ending at its newest item; every position predicts the next item (SASRec). When the model
is preference-aware, each predicted position also gets a query: one of the target item's pre-encoded query
phrasings (`query_bank[target, variant]`), replaced by the empty query with probability `query_dropout`, so
the empty query keeps working as plain sequential recommendation.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from deeprec_env.cache import cached, config_hash
from deeprec_env.data.dataset import RecDataset, stack_histories
from deeprec_env.evaluation import evaluate_scorer
from deeprec_env.trm.model import ModelConfig, SequentialRecommender

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimisation and early stopping."""

    lr: float = 3e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    max_epochs: int = 200
    patience: int = 10  # epochs without validation NDCG@10 improvement before stopping
    valid_users: int | None = 3000  # fixed validation sample for early stopping (None = all)
    query_dropout: float = 0.3  # preference-aware training only
    seed: int = 0


@dataclass
class TRMConfig:
    """A trained recommender: architecture plus training recipe (Hydra group `trm`)."""

    name: str = "sasrec"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def training_windows(dataset: RecDataset, max_len: int) -> np.ndarray:
    """(n_windows, max_len + 1) item ids, left-padded: consecutive windows of each training sequence."""
    windows = []
    for seq in dataset.training_sequences():
        for end in range(len(seq), 1, -max_len):
            window = seq[max(0, end - max_len - 1) : end]
            windows.append(np.pad(window, (max_len + 1 - len(window), 0)))
    return np.stack(windows).astype(np.int64)


def _window_queries(targets: torch.Tensor, query_bank: torch.Tensor, dropout: float, gen: torch.Generator):
    """Per-position query embeddings for the targets: a random phrasing, or the empty (zero) query."""
    variant = torch.randint(query_bank.shape[1], targets.shape, generator=gen)
    queries = query_bank[targets, variant]
    keep = torch.rand(targets.shape, generator=gen) >= dropout
    return queries * keep.unsqueeze(-1)


def train_model(
    dataset: RecDataset,
    config: TRMConfig,
    item_text: torch.Tensor | None = None,
    query_bank: torch.Tensor | None = None,
    progress: bool = True,
) -> tuple[SequentialRecommender, dict]:
    """Train on the training sequences, keep the epoch with the best validation NDCG@10. Returns the model
    (eval mode) and a training log with per-epoch loss and validation NDCG@10."""
    torch.manual_seed(config.train.seed)
    gen = torch.Generator().manual_seed(config.train.seed)
    rng = np.random.default_rng(config.train.seed)
    model = SequentialRecommender(dataset.n_items, config.model, item_text)
    if config.model.fuse_query and query_bank is None:
        raise ValueError("a preference-aware model needs a query_bank to train on")
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay
    )
    windows = torch.from_numpy(training_windows(dataset, config.model.max_len))
    valid_users = dataset.eval_users("valid")
    if config.train.valid_users and len(valid_users) > config.train.valid_users:
        valid_users = np.sort(rng.choice(valid_users, config.train.valid_users, replace=False))

    def validate() -> float:
        model.eval()
        result = evaluate_scorer(scorer_for(model), dataset, valid_users, "valid", list_k=1)
        model.train()
        return float(result.per_user()["ndcg@10"].mean())

    history = {"epochs": [], "n_windows": len(windows), "n_valid_users": len(valid_users)}
    best_score, best_state, stale, started = -1.0, None, 0, time.perf_counter()
    epochs = tqdm(range(config.train.max_epochs), desc=f"train {config.name}", disable=not progress)
    model.train()
    for epoch in epochs:
        order = torch.randperm(len(windows), generator=gen)
        total, count = 0.0, 0
        for start in range(0, len(windows), config.train.batch_size):
            batch = windows[order[start : start + config.train.batch_size]]
            inputs, targets = batch[:, :-1], batch[:, 1:]
            real = (inputs > 0) & (targets > 0)  # real transitions only: most of a short window is padding
            states, targets = model.sequence_states(inputs)[real], targets[real]
            if config.model.fuse_query:
                queries = _window_queries(targets, query_bank, config.train.query_dropout, gen)
                states = model.fuse(states, queries)
            loss = F.cross_entropy(model.logits(states), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + loss.item(), count + 1
        score = validate()
        history["epochs"].append({"epoch": epoch, "loss": total / count, "valid_ndcg@10": score})
        epochs.set_postfix(loss=f"{total / count:.3f}", valid_ndcg10=f"{score:.4f}")
        if score > best_score:
            best_score, best_state, stale = score, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= config.train.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    history.update(
        best_valid_ndcg10=best_score,
        best_epoch=max(history["epochs"], key=lambda e: e["valid_ndcg@10"])["epoch"],
        train_seconds=time.perf_counter() - started,
    )
    log.info(
        "trained %s: best valid NDCG@10 %.4f at epoch %d (%.0fs)",
        config.name,
        best_score,
        history["best_epoch"],
        history["train_seconds"],
    )
    return model, history


def scorer_for(model: SequentialRecommender, encode_queries=None):
    """Wrap a model as a `Scorer`. Query texts are encoded with `encode_queries(texts) -> (batch, text_dim)`;
    an empty string is the empty query."""

    def score(histories, queries=None) -> np.ndarray:
        with torch.inference_mode():
            batch = torch.from_numpy(stack_histories(histories, model.config.max_len))
            query_text = None
            if queries is not None and model.config.fuse_query:
                query_text = encode_queries(list(queries))
            return model(batch, query_text).numpy()

    return score


def load_or_train(
    dataset: RecDataset,
    config: TRMConfig,
    cache_root: Path,
    item_text: torch.Tensor | None = None,
    query_bank: torch.Tensor | None = None,
) -> tuple[SequentialRecommender, dict]:
    """The trained model for this dataset and config, from `cache_root/trm-<name>-<hash>/` or trained now."""
    directory = cache_root / f"trm-{config.name}-{config_hash(asdict(config))}"

    def build(tmp: Path) -> None:
        model, train_log = train_model(dataset, config, item_text, query_bank)
        torch.save(model.state_dict(), tmp / "model.pt")
        (tmp / "train_log.json").write_text(json.dumps(train_log, indent=1))
        (tmp / "config.json").write_text(json.dumps(asdict(config), indent=1))

    cached(directory, build, f"{config.name} model")
    model = SequentialRecommender(dataset.n_items, config.model, item_text)
    model.load_state_dict(torch.load(directory / "model.pt", weights_only=True))
    model.eval()
    return model, json.loads((directory / "train_log.json").read_text())
