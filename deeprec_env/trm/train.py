"""Training the sequential recommender: full-softmax cross-entropy, early stopping on validation NDCG@10.

Recipe. Each user's training sequence (validation and test targets removed) is cut into windows of
`max_len + 1` items ending at its newest item; every position with a real predecessor predicts the next item
(SASRec). When the model is preference-aware, each predicted position also gets a query: one of the target
item's pre-encoded phrasings of its metadata (`query_bank[target, variant]`, never the title verbatim),
replaced by the empty query with probability `query_dropout` so the empty query stays plain sequential
recommendation; with `sequence_loss` every target is also predicted with the empty query (an extra loss term),
so the sequence-only path learns from every transition, not just the dropped share. A share `query_swap` of
positions instead gets a random catalogue item as target together with that item's query (never dropped):
without these counterfactual pairs every query agrees with the history and the model never learns to follow a
query that leads away from it. Validation (empty query, a fixed user
sample) runs every `eval_every` optimizer steps; training stops after `patience` validations without
improvement and keeps the best weights. A stop signal or a kill never leaves a half-trained model in the cache:
`load_or_train` resumes such a run from the state saved at its last validation (or at the signal).

Backbone initialisation (`backbone`, the TRM's default: the trained SASRec). The shared layers (item id and
position embeddings, transformer blocks, final norm, item bias) start from the backbone's trained weights and the
fusion layers start at zero (item text projection, last layer of the query projection), so training begins at the
backbone's sequential ranking and only has to learn what text and queries add (docs/notes/history.md has the
measurements behind this recipe).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from deeprec_env import runtime
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
    schedule: str = "constant"  # constant | cosine (from lr to 0 over max_steps, after the warmup)
    warmup_steps: int = 0  # linear warmup from 0 to lr
    weight_decay: float = 0.0
    negatives: int = 0  # 0: softmax over the whole catalogue; n > 0: sampled softmax against n uniform items
    batch_size: int = 128
    max_steps: int = 30000
    eval_every: int = 100  # optimizer steps between validations
    patience: int = 10  # validations without improvement of NDCG@10 before stopping
    valid_users: int | None = 3000  # fixed validation sample for early stopping (None = all)
    query_dropout: float = 0.0  # preference-aware training only: share of targets trained with the empty query
    query_variants: int = 4  # phrasings per item in the query bank
    query_swap: float = 0.0  # preference-aware training only: share of counterfactual (random target, its query)
    sequence_loss: float = 0.0  # preference-aware training only: weight of an extra empty-query loss on every target
    # preference-aware training only: validation score = empty-query NDCG@10 + this weight x NDCG@10 with the oracle
    # query (the target's first phrasing in the query bank), so the kept checkpoint also follows queries
    select_oracle_weight: float = 0.0
    # with a backbone: train only the layers it lacks (item text and query fusion), so the empty query keeps the
    # backbone's sequential ranking plus what item text adds, and the query path cannot trade it away
    freeze_backbone: bool = False
    # leave out each user's last `holdout` training items: the tool that serves the agent's training episodes, whose
    # targets those items are, has then never seen them (`Stack.for_agent_training`)
    holdout: int = 0
    seed: int = 0


@dataclass
class TRMConfig:
    """A trained recommender: architecture plus training recipe (Hydra group `trm`). The defaults are SASRec's."""

    name: str = "sasrec"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # A trained model whose shared layers initialise this one (see below): a TRMConfig or its mapping (the `trm`
    # preset points it at the config's `sasrec` node, an interpolation that only a typed-as-Any field can hold).
    backbone: Any = None

    def __post_init__(self) -> None:
        if self.backbone is not None and not isinstance(self.backbone, TRMConfig):
            from omegaconf import OmegaConf

            self.backbone = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TRMConfig), self.backbone))


def training_windows(dataset: RecDataset, max_len: int, holdout: int = 0) -> np.ndarray:
    """(n_windows, max_len + 1) item ids, left-padded: consecutive windows of each training sequence (without its
    last `holdout` items)."""
    windows = []
    for seq in dataset.training_sequences(holdout):
        for end in range(len(seq), 1, -max_len):
            window = seq[max(0, end - max_len - 1) : end]
            windows.append(np.pad(window, (max_len + 1 - len(window), 0)))
    return np.stack(windows).astype(np.int64)


def _queries_for(targets: torch.Tensor, query_bank: torch.Tensor, train: TrainConfig, gen: torch.Generator):
    """Per-position (targets, query embeddings): a random phrasing of each target or the empty (zero) query, and
    a `query_swap` share of counterfactual positions with a random target and its (never empty) query."""
    swap = torch.rand(targets.shape, generator=gen) < train.query_swap
    random_items = torch.randint(1, query_bank.shape[0], targets.shape, generator=gen)
    targets = torch.where(swap, random_items, targets)
    variant = torch.randint(query_bank.shape[1], targets.shape, generator=gen)
    keep = (torch.rand(targets.shape, generator=gen) >= train.query_dropout) | swap
    return targets, query_bank[targets, variant] * keep.unsqueeze(-1)


def next_item_loss(
    model: SequentialRecommender,
    states: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    negatives: int,
    gen: torch.Generator,
) -> torch.Tensor:
    """Cross-entropy of each state's target: a softmax over the whole catalogue, or (`negatives` > 0) over the
    target and `negatives` uniformly drawn items shared by the batch (a drawn item equal to a row's target does
    not count as its negative)."""
    if not negatives:
        return F.cross_entropy(model.logits(states, items), targets)
    sampled = torch.randint(1, items.shape[0], (negatives,), generator=gen)
    negative = model.logits(states, items, sampled).masked_fill(sampled == targets.unsqueeze(-1), float("-inf"))
    logits = torch.cat([model.target_logits(states, targets, items).unsqueeze(-1), negative], dim=-1)
    return F.cross_entropy(logits, torch.zeros_like(targets))


def learning_rate(train: TrainConfig, step: int) -> float:
    """The learning rate of optimizer step `step` (0-based): linear warmup, then constant or cosine to 0."""
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    if train.schedule == "constant":
        return train.lr
    if train.schedule == "cosine":
        progress = (step - train.warmup_steps) / max(1, train.max_steps - train.warmup_steps)
        return train.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    raise ValueError(f"train.schedule={train.schedule!r} is not one of: constant, cosine")


def validation_ndcg(
    model: SequentialRecommender, dataset: RecDataset, users: np.ndarray, oracle_bank: torch.Tensor | None = None
) -> float:
    """Mean validation NDCG@10 with the empty query, or with each target's oracle query when `oracle_bank`
    ((n_items + 1, text_dim): one encoded phrasing per item) is given; full ranking, history excluded."""
    retriever = InProcessRetriever(model)
    score, queries = retriever.scores, None
    if oracle_bank is not None:
        bank = oracle_bank.numpy()

        def score(histories, vectors):
            return retriever.score_matrix(histories, np.stack(vectors))

        def queries(user):
            return bank[dataset.history_and_target(user, "valid")[1]]

    result = evaluate_scorer(score, dataset, users, "valid", queries, list_k=1)
    return float(result.per_user()["ndcg@10"].mean())


def initialise_from_backbone(model: SequentialRecommender, backbone: SequentialRecommender) -> None:
    """Copy the backbone's trained layers into `model` and zero its fusion outputs, so that the two rank alike."""
    state = backbone.state_dict()
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if mismatched:
        raise ValueError(
            f"backbone layers {mismatched[:3]} do not fit this model: give the backbone the same model.max_len, "
            "model.hidden, model.n_layers and model.n_heads"
        )
    model.load_state_dict(state, strict=False)
    with torch.no_grad():
        if model.config.fuse_item_text:
            model.text_projection.weight.zero_()
            model.text_projection.bias.zero_()
        if model.config.fuse_query:
            model.query_projection[-1].weight.zero_()
            model.query_projection[-1].bias.zero_()


@dataclass
class LoopState:
    """Everything the batch loop carries from one optimizer step to the next. Saved together with the model, the
    optimizer and both random generators, it continues an interrupted run exactly where it stopped."""

    order: torch.Tensor  # this epoch's permutation of the training windows
    step: int = 0  # optimizer steps done
    epoch: int = 0
    position: int = 0  # windows of `order` already trained on
    best_score: float = -1.0
    best_state: dict | None = None  # model weights at the best validation
    stale: int = 0  # validations since the best one
    losses: list[float] = field(default_factory=list)  # since the last validation
    evaluations: list[dict] = field(default_factory=list)
    seconds: float = 0.0  # training time spent before this process took over
    stop_reason: str | None = None  # set once training is over
    resumed_from_steps: list[int] = field(default_factory=list)


@contextlib.contextmanager
def stop_signals():
    """Turn SIGINT (Ctrl-C) and SIGTERM (`kill PID`: background jobs ignore SIGINT) into a request that a training
    loop honours between optimizer steps (or epochs), so that a stop always leaves a consistent state to save.
    Yields the request (an Event); handlers are only set in the main thread and restored on exit."""
    requested = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(signum) not in (signal.SIG_IGN, None):
                previous[signum] = signal.signal(signum, lambda *_: requested.set())
    try:
        yield requested
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def train_model(
    dataset: RecDataset,
    config: TRMConfig,
    item_text: torch.Tensor | None = None,
    query_bank: torch.Tensor | None = None,
    progress: bool = True,
    initial: SequentialRecommender | None = None,
    resume: dict | None = None,
    save_state: Callable[[dict], None] | None = None,
) -> tuple[SequentialRecommender, dict]:
    """Train on the training sequences and keep the weights with the best validation NDCG@10, starting from the
    trained `initial` backbone's shared layers if given. Returns the model (eval mode) and a training log with
    loss and validation NDCG@10 at every validation.

    `save_state(state)` receives the resumable training state after every validation and when a stop signal
    (SIGINT, SIGTERM) arrives; after a signal, the current optimizer step completes, the state is saved and
    KeyboardInterrupt is raised. Passing that state back as `resume` continues the run with the same result as
    an uninterrupted one."""
    train = config.train
    torch.manual_seed(train.seed)
    gen = torch.Generator().manual_seed(train.seed)
    rng = np.random.default_rng(train.seed)
    model = SequentialRecommender(dataset.n_items, config.model, item_text)
    if initial is not None:
        initialise_from_backbone(model, initial)
        if train.freeze_backbone:
            shared = initial.state_dict()
            for name, parameter in model.named_parameters():
                parameter.requires_grad_(name not in shared)
    elif train.freeze_backbone:
        raise ValueError(f"{config.name}: train.freeze_backbone needs a backbone to start from")
    if config.model.fuse_query and query_bank is None:
        raise ValueError("a preference-aware model needs a query_bank to train on")
    if train.select_oracle_weight and not config.model.fuse_query:
        raise ValueError(f"{config.name}: train.select_oracle_weight needs a preference-aware model (fuse_query)")
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=train.lr, weight_decay=train.weight_decay)
    windows = torch.from_numpy(training_windows(dataset, config.model.max_len, train.holdout))
    valid_users = dataset.eval_users("valid")
    if train.valid_users and len(valid_users) > train.valid_users:
        valid_users = np.sort(rng.choice(valid_users, train.valid_users, replace=False))
    if resume is None:
        loop = LoopState(order=torch.randperm(len(windows), generator=gen))
    else:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        torch.set_rng_state(resume["torch_rng"])
        gen.set_state(resume["data_rng"])
        loop = LoopState(**resume["loop"])
        loop.resumed_from_steps.append(loop.step)
    started = time.perf_counter()

    def elapsed() -> float:
        return loop.seconds + time.perf_counter() - started

    def snapshot() -> dict:
        return {
            "loop": {f.name: getattr(loop, f.name) for f in fields(loop)} | {"seconds": elapsed()},
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "data_rng": gen.get_state(),
        }

    def validate() -> dict[str, float]:
        scores = {"valid_ndcg@10": validation_ndcg(model, dataset, valid_users)}
        if train.select_oracle_weight:
            scores["valid_oracle_ndcg@10"] = validation_ndcg(model, dataset, valid_users, query_bank[:, 0])
        model.train()
        return scores | {
            "score": scores["valid_ndcg@10"] + train.select_oracle_weight * scores.get("valid_oracle_ndcg@10", 0.0)
        }

    model.train()
    bar = runtime.progress(total=train.max_steps, desc=f"train {config.name}", disable=not progress)
    with stop_signals() as stop, bar:
        bar.update(loop.step)
        while loop.stop_reason is None:  # set at max_steps or by early stopping
            if loop.position >= len(loop.order):  # next epoch, in a new order
                loop.epoch, loop.position = loop.epoch + 1, 0
                loop.order = torch.randperm(len(windows), generator=gen)
            batch = windows[loop.order[loop.position : loop.position + train.batch_size]]
            loop.position += len(batch)
            inputs, targets = batch[:, :-1], batch[:, 1:]
            real = (inputs > 0) & (targets > 0)  # real transitions only: most of a short window is padding
            items = model.item_vectors()
            states, targets = model.sequence_states(inputs, items)[real], targets[real]
            loss = 0.0
            if config.model.fuse_query:
                if train.sequence_loss:
                    empty = model.fuse(states, None)
                    loss = train.sequence_loss * next_item_loss(model, empty, items, targets, train.negatives, gen)
                targets, queries = _queries_for(targets, query_bank, train, gen)
                states = model.fuse(states, queries)
            loss = loss + next_item_loss(model, states, items, targets, train.negatives, gen)
            optimizer.zero_grad(set_to_none=True)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(train, loop.step)
            loss.backward()
            optimizer.step()
            loop.step += 1
            loop.losses.append(loss.item())
            bar.update()
            validated = loop.step % train.eval_every == 0 or loop.step >= train.max_steps
            if validated:
                scores, mean_loss = validate(), float(np.mean(loop.losses))
                loop.evaluations.append({"step": loop.step, "epoch": loop.epoch, "loss": mean_loss} | scores)
                shown = {k.removeprefix("valid_").replace("@", ""): f"{v:.4f}" for k, v in scores.items()}
                bar.set_postfix(epoch=loop.epoch, loss=f"{mean_loss:.3f}", **shown)
                loop.losses = []
                score = scores["score"]
                if score > loop.best_score:
                    loop.best_score, loop.best_state, loop.stale = score, copy.deepcopy(model.state_dict()), 0
                else:
                    loop.stale += 1
                if loop.stale >= train.patience:
                    loop.stop_reason = "patience"
                elif loop.step >= train.max_steps:
                    loop.stop_reason = "max_steps"
                if save_state is not None:
                    save_state(snapshot())
            if stop.is_set():
                if save_state is not None and not validated:
                    save_state(snapshot())
                saved = "; its state is saved to resume from" if save_state is not None else ""
                log.warning("training %s stopped by a signal after step %d%s", config.name, loop.step, saved)
                raise KeyboardInterrupt
    model.load_state_dict(loop.best_state)
    model.eval()
    best = max(loop.evaluations, key=lambda e: e["score"])
    log_ = {
        "evaluations": loop.evaluations,
        "n_windows": len(windows),
        "n_valid_users": len(valid_users),
        "best_valid_ndcg10": best["valid_ndcg@10"],
        "best_valid_oracle_ndcg10": best.get("valid_oracle_ndcg@10"),
        "best_step": best["step"],
        "best_epoch": best["epoch"],
        "steps": loop.step,
        "stop_reason": loop.stop_reason,
        "train_seconds": elapsed(),
        "resumed_from_steps": loop.resumed_from_steps,
    }
    log.info(
        "trained %s: best valid NDCG@10 %.4f at step %d (epoch %d) of %d (%.0fs)",
        config.name,
        log_["best_valid_ndcg10"],
        best["step"],
        best["epoch"],
        loop.step,
        log_["train_seconds"],
    )
    return model, log_


def query_bank_embeddings(dataset: RecDataset, encoder, n_variants: int, seed: int, cache_root: Path) -> np.ndarray:
    """(n_items + 1, n_variants, dim) encoded query phrasings of every item's metadata (row 0: empty queries)."""
    from deeprec_env.trm.queries import query_bank_texts

    directory = cache_root / f"query-bank-{encoder.name}-{dataset.catalogue}-{n_variants}v-seed{seed}"

    def build(tmp: Path) -> None:
        texts = query_bank_texts(dataset, n_variants, seed)
        flat = encoder.encode([t for row in texts for t in row], use_cache=False)  # computed once, stored
        np.save(tmp / "embeddings.npy", flat.reshape(len(texts), n_variants, -1).astype(np.float32))

    cached(directory, build, f"query bank of {dataset.name}")
    return np.load(directory / "embeddings.npy")


def _checkpoint_key(config: TRMConfig, encoder=None, catalogue: str | None = None) -> dict:
    """What determines a trained model: the whole config (its backbone's included), for text models the encoder
    and, for preference-aware ones, the dataset's catalogue (its lexicon phrases the training queries)."""
    key = asdict(config) | ({"encoder": encoder.name} if config.model.uses_text else {})
    if config.model.fuse_query:
        if catalogue is None:
            raise ValueError(f"trm {config.name!r} fuses queries: pass catalogue=dataset.catalogue")
        key["catalogue"] = catalogue
    # fields added after checkpoints existed leave the key as it was while at their neutral value
    if config.backbone is None:
        del key["backbone"]
    for name in ("sequence_loss", "freeze_backbone", "holdout"):
        if not key["train"][name]:
            del key["train"][name]
    for name in ("freeze_backbone", "holdout"):
        if key.get("backbone") and not key["backbone"]["train"][name]:
            del key["backbone"]["train"][name]
    return key


def checkpoint_dir(config: TRMConfig, cache_root: Path, encoder=None, catalogue: str | None = None) -> Path:
    """Where the trained model of this config lives (`catalogue`: the dataset's, needed for query fusion)."""
    return cache_root / f"trm-{config.name}-{config_hash(_checkpoint_key(config, encoder, catalogue))}"


def text_inputs(
    dataset: RecDataset, config: TRMConfig, cache_root: Path, encoder, for_training: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(item text embeddings, query bank) the model needs, built with `encoder` and cached; the query bank only
    for training a preference-aware model."""
    if not config.model.uses_text:
        return None, None
    if encoder is None:
        raise ValueError(f"trm {config.name!r} fuses text: pass a text encoder (deeprec_env.text.TextEncoder)")
    from deeprec_env.text import item_text_embeddings

    item_text = torch.from_numpy(item_text_embeddings(dataset, encoder, cache_root))
    query_bank = None
    if for_training and config.model.fuse_query:
        bank = query_bank_embeddings(dataset, encoder, config.train.query_variants, config.train.seed, cache_root)
        query_bank = torch.from_numpy(bank)
    return item_text, query_bank


def partial_state_path(directory: Path) -> Path:
    """Where the resumable state of an unfinished training of the `directory` entry lives: beside the entry, never
    inside it, so an interrupted run leaves no entry that looks complete."""
    return directory.with_name(f"{directory.name}.partial") / "state.pt"


def resumable_state(path: Path, key: str, name: str) -> dict | None:
    """The saved training state at `path` if it was saved for the config `key`; one saved for another config is
    deleted."""
    if not path.is_file():
        return None
    state = torch.load(path, weights_only=True)
    if state["key"] != key:
        log.warning("discarding the partial %s training state at %s: it was saved for another config", name, path)
        shutil.rmtree(path.parent)
        return None
    where = f"step {state['loop']['step']}" if "loop" in state else f"epoch {state['epoch']}"
    log.info("resuming %s training from %s (interrupted earlier)", name, where)
    return state


def save_training_state(path: Path, key: str, state: dict) -> None:
    """Write atomically: a kill while saving leaves the previous state intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    torch.save(state | {"key": key}, tmp)
    os.replace(tmp, path)


def load_or_train(
    dataset: RecDataset, config: TRMConfig, cache_root: Path, encoder=None, progress: bool = True
) -> tuple[SequentialRecommender, dict]:
    """The trained model for this dataset and config, from `checkpoint_dir` or trained now.

    Text fusion needs `encoder` (a `deeprec_env.text.TextEncoder`): item text embeddings and, for training a
    preference-aware model, the query bank are computed with it (and cached). A `backbone` is loaded (or trained)
    first. Training saves a resumable state at every validation and on a stop signal (`partial_state_path`); the
    next call continues from it, and it is deleted once the model is cached."""
    if config.backbone is not None and config.backbone.train.holdout != config.train.holdout:
        raise ValueError(
            f"{config.name} holds out {config.train.holdout} items but its backbone {config.backbone.train.holdout}: "
            "set the backbone's train.holdout to the same value"
        )
    item_text, _ = text_inputs(dataset, config, cache_root, encoder, for_training=False)
    directory = checkpoint_dir(config, cache_root, encoder, dataset.catalogue)
    state_path = partial_state_path(directory)
    key = json.dumps(_checkpoint_key(config, encoder, dataset.catalogue), sort_keys=True)

    def build(tmp: Path) -> None:
        _, query_bank = text_inputs(dataset, config, cache_root, encoder, for_training=True)
        initial = None
        if config.backbone is not None:
            initial, _ = load_or_train(dataset, config.backbone, cache_root, encoder, progress)
        model, train_log = train_model(
            dataset,
            config,
            item_text,
            query_bank,
            progress,
            initial,
            resume=resumable_state(state_path, key, config.name),
            save_state=lambda state: save_training_state(state_path, key, state),
        )
        torch.save(model.state_dict(), tmp / "model.pt")
        (tmp / "train_log.json").write_text(json.dumps(train_log, indent=1))
        (tmp / "config.json").write_text(json.dumps(_checkpoint_key(config, encoder, dataset.catalogue), indent=1))

    cached(directory, build, f"{config.name} model")
    shutil.rmtree(state_path.parent, ignore_errors=True)
    model = SequentialRecommender(dataset.n_items, config.model, item_text)
    model.load_state_dict(torch.load(directory / "model.pt", weights_only=True))
    model.eval()
    return model, json.loads((directory / "train_log.json").read_text())
