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
from deeprec_env.data.dataset import RecDataset
from deeprec_env.evaluation import evaluate_scorer
from deeprec_env.trm.model import ModelConfig, SequentialRecommender
from deeprec_env.trm.retriever import InProcessRetriever

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
    query_dropout: float = 0.3  # preference-aware training only: share of targets trained with the empty query
    query_variants: int = 4  # phrasings per item in the query bank
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
        result = evaluate_scorer(InProcessRetriever(model).scores, dataset, valid_users, "valid", list_k=1)
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
            items = model.item_vectors()
            states, targets = model.sequence_states(inputs, items)[real], targets[real]
            if config.model.fuse_query:
                queries = _window_queries(targets, query_bank, config.train.query_dropout, gen)
                states = model.fuse(states, queries)
            loss = F.cross_entropy(model.logits(states, items), targets)
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


def query_bank_embeddings(dataset: RecDataset, encoder, n_variants: int, seed: int, cache_root: Path) -> np.ndarray:
    """(n_items + 1, n_variants, dim) encoded query phrasings of every item's metadata (row 0: empty queries)."""
    from deeprec_env.trm.queries import query_bank_texts

    directory = cache_root / f"query-bank-{encoder.name}-{n_variants}v-seed{seed}"

    def build(tmp: Path) -> None:
        texts = query_bank_texts(dataset, n_variants, seed)
        flat = encoder.encode([t for row in texts for t in row])
        np.save(tmp / "embeddings.npy", flat.reshape(len(texts), n_variants, -1).astype(np.float32))

    cached(directory, build, f"query bank of {dataset.name}")
    return np.load(directory / "embeddings.npy")


def load_or_train(
    dataset: RecDataset, config: TRMConfig, cache_root: Path, encoder=None, progress: bool = True
) -> tuple[SequentialRecommender, dict]:
    """The trained model for this dataset and config, from `cache_root/trm-<name>-<hash>/` or trained now.

    Text fusion needs `encoder` (a `deeprec_env.text.TextEncoder`): item text embeddings and, for training a
    preference-aware model, the query bank are computed with it (and cached)."""
    uses_text = config.model.fuse_item_text or config.model.fuse_query
    if uses_text and encoder is None:
        raise ValueError(f"trm {config.name!r} fuses text: pass a text encoder (deeprec_env.text.TextEncoder)")
    item_text = None
    if uses_text:
        from deeprec_env.text import item_text_embeddings

        item_text = torch.from_numpy(item_text_embeddings(dataset, encoder, cache_root))
    key = asdict(config) | ({"encoder": encoder.name} if uses_text else {})
    directory = cache_root / f"trm-{config.name}-{config_hash(key)}"

    def build(tmp: Path) -> None:
        query_bank = None
        if config.model.fuse_query:
            bank = query_bank_embeddings(dataset, encoder, config.train.query_variants, config.train.seed, cache_root)
            query_bank = torch.from_numpy(bank)
        model, train_log = train_model(dataset, config, item_text, query_bank, progress)
        torch.save(model.state_dict(), tmp / "model.pt")
        (tmp / "train_log.json").write_text(json.dumps(train_log, indent=1))
        (tmp / "config.json").write_text(json.dumps(key, indent=1))

    cached(directory, build, f"{config.name} model")
    model = SequentialRecommender(dataset.n_items, config.model, item_text)
    model.load_state_dict(torch.load(directory / "model.pt", weights_only=True))
    model.eval()
    return model, json.loads((directory / "train_log.json").read_text())
