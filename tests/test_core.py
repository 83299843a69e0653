"""Dataset container, artifact cache, training windows and the sequential recommender."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import synthetic_dataset
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.baselines import popularity_scorer
from deeprec_env.cache import cached
from deeprec_env.data.dataset import ItemMeta, RawInteractions, RecDataset, build_dataset, k_core, stack_histories
from deeprec_env.evaluation import evaluate_scorer
from deeprec_env.trm.model import ModelConfig, SequentialRecommender
from deeprec_env.trm.retriever import InProcessRetriever
from deeprec_env.trm.train import TrainConfig, TRMConfig, load_or_train, training_windows
from experiments.common import trm_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> RecDataset:
    artifacts = tmp_path_factory.mktemp("artifacts")
    return synthetic_dataset(artifacts, n_users=300, n_items=120, n_categories=6, min_len=8, max_len=25, seed=1)


# -- cache ----------------------------------------------------------------------------------------------------
def test_cache_builds_once_and_reuses(tmp_path, caplog):
    calls = []

    def build(directory: Path) -> None:
        calls.append(directory)
        (directory / "a.txt").write_text("payload")

    target = tmp_path / "entry"
    cached(target, build, "thing")
    with caplog.at_level("INFO"):
        cached(target, build, "thing")
    assert len(calls) == 1
    assert (target / "a.txt").read_text() == "payload"
    assert "reusing cached thing" in caplog.text


def test_corrupt_cache_is_detected_and_rebuilt(tmp_path, caplog):
    target = tmp_path / "entry"
    cached(target, lambda d: (d / "a.txt").write_text("payload"), "thing")
    (target / "a.txt").write_text("tampered")
    with caplog.at_level("WARNING"):
        cached(target, lambda d: (d / "a.txt").write_text("payload"), "thing")
    assert "incomplete or corrupt" in caplog.text
    assert (target / "a.txt").read_text() == "payload"


def test_entry_built_concurrently_by_another_process_is_used(tmp_path, monkeypatch):
    """Two runs building the same entry: the one that finishes second keeps the first one's entry."""
    target = tmp_path / "entry"

    def build(directory: Path) -> None:
        (directory / "a.txt").write_text("ours")
        with monkeypatch.context() as other_process:  # its own temporary directory, and it finishes first
            other_process.setattr("deeprec_env.cache.os.getpid", lambda: -1)
            cached(target, lambda d: (d / "a.txt").write_text("theirs"), "thing")

    assert cached(target, build, "thing") == target
    assert (target / "a.txt").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]  # no temporary directory left behind


def test_failed_build_leaves_nothing(tmp_path):
    def build(directory: Path) -> None:
        (directory / "half.txt").write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        cached(tmp_path / "entry", build, "thing")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


# -- dataset ----------------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), min_size=1, max_size=150), st.integers(1, 4))
def test_k_core_is_a_fixed_point(pairs, k):
    users = np.array([str(u) for u, _ in pairs])
    items = np.array([str(i) for _, i in pairs])
    keep = k_core(users, items, k)
    if keep.any():
        _, u_counts = np.unique(users[keep], return_counts=True)
        _, i_counts = np.unique(items[keep], return_counts=True)
        assert u_counts.min() >= k and i_counts.min() >= k


def test_build_dataset_orders_chronologically_with_stable_ties():
    raw = RawInteractions(
        users=np.array(["b", "a", "a", "a", "b"]),
        items=np.array(["3", "2", "1", "3", "1"]),
        timestamps=np.array([5, 7, 7, 1, 5]),
        item_meta={"1": ItemMeta("One"), "2": ItemMeta("Two"), "3": ItemMeta("Three")},
    )
    ds = build_dataset("toy", raw, min_core=1)
    assert ds.raw_item_ids == ["", "1", "2", "3"]
    assert ds.raw_user_ids == ["a", "b"]
    assert ds.sequences[0].tolist() == [3, 2, 1]  # t=1, then the t=7 tie in file order
    assert ds.sequences[1].tolist() == [3, 1]


def test_splits_never_leak_the_target(synthetic):
    for user in range(synthetic.n_users):
        seq = synthetic.sequences[user]
        for split, offset in (("test", 1), ("valid", 2), ("train", 3)):
            history, target = synthetic.history_and_target(user, split)
            assert target == seq[-offset]
            assert history.tolist() == seq[: len(seq) - offset].tolist()
        assert synthetic.training_sequences()[user].tolist() == seq[:-2].tolist()


def test_training_windows_cover_each_training_transition_once(synthetic):
    windows = training_windows(synthetic, max_len=5)
    pairs = {(int(w[i]), int(w[i + 1])) for w in windows for i in range(5) if w[i] > 0}
    expected = {(int(s[i]), int(s[i + 1])) for s in synthetic.training_sequences() for i in range(len(s) - 1)}
    assert pairs == expected
    n_targets = sum(int(((w[:-1] > 0) & (w[1:] > 0)).sum()) for w in windows)
    assert n_targets == sum(len(s) - 1 for s in synthetic.training_sequences())
    assert windows.shape[1] == 6


def test_stack_histories_left_pads_and_cuts():
    out = stack_histories([np.array([1, 2, 3, 4]), np.array([7]), np.array([], dtype=np.int64)], 3)
    assert out.tolist() == [[2, 3, 4], [0, 0, 7], [0, 0, 0]]


def test_item_card_respects_budget():
    ds = RecDataset(
        "toy",
        [ItemMeta("<pad>"), ItemMeta("A Very Long Title Indeed", 1999, ("Drama", "War"))],
        [np.array([1])],
        ["u"],
        ["", "1"],
    )
    assert ds.item_card(1) == "A Very Long Title Indeed (1999) | Drama, War"
    assert len(ds.item_card(1, max_chars=20)) <= 20


# -- model ----------------------------------------------------------------------------------------------------
def test_padding_does_not_change_scores():
    torch.manual_seed(0)
    model = SequentialRecommender(30, ModelConfig(max_len=8, hidden=16, n_layers=2)).eval()
    short = torch.tensor([[0, 0, 0, 0, 0, 4, 9, 2]])
    with torch.inference_mode():
        a = model(short)
        b = model(torch.tensor([[0, 0, 0, 0, 0, 0, 0, 0]]))
    assert torch.isfinite(a[:, 1:]).all() and torch.isfinite(b[:, 1:]).all()
    assert a[0, 0] == float("-inf")
    small = SequentialRecommender(30, ModelConfig(max_len=3, hidden=16, n_layers=2)).eval()
    small.load_state_dict(
        {k: (v[-3:] if k == "position_embedding.weight" else v) for k, v in model.state_dict().items()}
    )
    with torch.inference_mode():
        assert torch.allclose(small(short[:, -3:]), a, atol=1e-5)


def test_sasrec_learns_sequential_patterns(synthetic, tmp_path):
    cfg = TRMConfig(
        model=ModelConfig(max_len=10, hidden=32, n_layers=1, dropout=0.1),
        train=TrainConfig(batch_size=64, max_steps=600, eval_every=50, patience=4, lr=3e-3),
    )
    model, log = load_or_train(synthetic, cfg, tmp_path)
    users = synthetic.eval_users("valid")
    sasrec = evaluate_scorer(InProcessRetriever(model).scores, synthetic, users, "valid").per_user()["ndcg@10"].mean()
    pop = evaluate_scorer(popularity_scorer(synthetic), synthetic, users, "valid").per_user()["ndcg@10"].mean()
    assert log["best_valid_ndcg10"] == pytest.approx(sasrec, abs=1e-6)
    assert sasrec > 1.3 * pop, (sasrec, pop)
    again, _ = load_or_train(synthetic, cfg, tmp_path)  # cached: same weights
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))


def test_evaluate_cli_writes_results(tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "experiments.evaluate",
        "dataset=synthetic",
        "agent=[pop,sasrec]",
        f"artifacts={tmp_path / 'artifacts'}",
        f"hydra.run.dir={run}",
        "sasrec.train.max_steps=20",
        "dataset.synthetic.n_users=80",
        "dataset.synthetic.n_items=60",
        "eval.bootstrap=200",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| pop |" in done.stdout and "| sasrec |" in done.stdout
    records = json.loads((run / "results.json").read_text())
    assert [r["agent"] for r in records] == ["pop", "sasrec"]
    for record in records:
        assert record["dataset"] == "synthetic" and record["split"] == "test" and record["n_users"] == 80
        m = record["metrics"]["ndcg@10"]
        assert m["low"] <= m["mean"] <= m["high"]
        assert {"recall@1", "recall@20", "ndcg@20", "mrr@10"} <= set(record["metrics"])
    comparisons = json.loads((run / "comparisons.json").read_text())
    assert set(comparisons["sasrec-vs-pop"]["ndcg@10"]) == {"mean", "low", "high", "excludes_zero"}
    for diffs in comparisons.values():
        for diff in diffs.values():
            assert diff["low"] <= diff["mean"] <= diff["high"]


def test_unknown_agent_is_one_clear_line(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "experiments.evaluate",
        "dataset=synthetic",
        "agent=nope",
        f"artifacts={tmp_path}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "sasrec.train.max_steps=5",
        "dataset.synthetic.n_users=40",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "unknown agent 'nope'" in done.stderr


def _train_with(synthetic, monkeypatch, on_step):
    """Train a tiny model (validation every 10 steps, all validation users); `on_step(n)` runs before the n-th
    optimizer step."""
    from deeprec_env.trm.train import train_model

    real_step, calls = torch.optim.AdamW.step, [0]

    def step(self, *args, **kwargs):
        calls[0] += 1
        on_step(calls[0])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    train = TrainConfig(eval_every=10, valid_users=None)
    return train_model(
        synthetic, TRMConfig(model=ModelConfig(max_len=10, hidden=16, n_layers=1), train=train), progress=False
    )


def test_interrupted_training_keeps_the_best_validated_weights(synthetic, monkeypatch):
    def interrupt_at_25(n):
        if n == 25:
            raise KeyboardInterrupt  # what Ctrl-C does in the middle of an optimizer step

    model, log = _train_with(synthetic, monkeypatch, interrupt_at_25)
    assert log["stop_reason"] == "interrupted" and log["steps"] == 25
    assert log["best_step"] in (10, 20) and len(log["evaluations"]) == 2
    again = evaluate_scorer(
        InProcessRetriever(model).scores, synthetic, synthetic.eval_users("valid"), "valid", list_k=1
    )
    assert again.per_user()["ndcg@10"].mean() == pytest.approx(log["best_valid_ndcg10"], abs=1e-6)


def test_interrupt_before_any_validation_propagates(synthetic, monkeypatch):
    def interrupt(n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train_with(synthetic, monkeypatch, interrupt)


def test_sigterm_stops_training_like_ctrl_c(synthetic, monkeypatch):
    import os
    import signal

    def terminate_at_15(n):
        if n == 15:
            os.kill(os.getpid(), signal.SIGTERM)  # `kill PID` from another shell

    _, log = _train_with(synthetic, monkeypatch, terminate_at_15)
    assert log["stop_reason"] == "interrupted" and log["best_step"] == 10
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is restored after training


def test_trm_config_starts_from_the_sasrec_node():
    from deeprec_env.registration import compose_config

    cfg = compose_config(["sasrec.train.lr=0.01"])
    trm, sasrec = trm_config(cfg.trm), trm_config(cfg.sasrec)
    assert trm.backbone == sasrec and sasrec.train.lr == 0.01  # overrides of the backbone reach the TRM's key
    assert sasrec.backbone is None and trm.model.fuse_query
