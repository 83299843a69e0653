"""Dataset container, artifact cache, training windows and the sequential recommender."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import synthetic_dataset
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.baselines import popularity_scorer
from deeprec_env.cache import cached, is_complete
from deeprec_env.data.dataset import ItemMeta, RawInteractions, RecDataset, build_dataset, k_core, stack_histories
from deeprec_env.evaluation import evaluate_scorer
from deeprec_env.trm.model import ModelConfig, SequentialRecommender
from deeprec_env.trm.retriever import InProcessRetriever
from deeprec_env.trm.train import (
    TrainConfig,
    TRMConfig,
    checkpoint_dir,
    load_or_train,
    partial_state_path,
    training_windows,
)

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


def test_train_cut_points_move_the_target_back_and_a_holdout_leaves_their_targets_out(synthetic):
    user = next(u for u in range(synthetic.n_users) if len(synthetic.sequences[u]) >= 8)
    seq = synthetic.sequences[user]
    assert synthetic.n_cuts(user, 4) == 4 and synthetic.n_cuts(user, 100) == len(seq) - 3
    for cut in range(4):
        history, target = synthetic.history_and_target(user, "train", cut)
        assert target == seq[-3 - cut] and history.tolist() == seq[: len(seq) - 3 - cut].tolist()
    with pytest.raises(ValueError, match="train split only"):
        synthetic.history_and_target(user, "valid", 1)
    with pytest.raises(ValueError, match="too few"):
        synthetic.history_and_target(user, "train", len(seq) - 2)
    kept = [s for s in synthetic.sequences if len(s) > 5]
    assert [s.tolist() for s in synthetic.training_sequences(3)] == [s[:-5].tolist() for s in kept]
    windows = training_windows(synthetic, max_len=5, holdout=3)  # no transition into a held-out cut target
    pairs = {(int(w[i]), int(w[i + 1])) for w in windows for i in range(5) if w[i] > 0}
    assert pairs == {(int(s[i]), int(s[i + 1])) for s in kept for i in range(len(s) - 6)}


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
        "agent=[pop,reference,sasrec]",
        f"artifacts={tmp_path / 'artifacts'}",
        f"hydra.run.dir={run}",
        "sasrec.train.max_steps=20",
        "reference.epochs=2",
        "reference.eval_every=1",
        "reference.max_len=10",
        "dataset.synthetic.n_users=80",
        "dataset.synthetic.n_items=60",
        "eval.bootstrap=200",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| pop |" in done.stdout and "| sasrec |" in done.stdout and "| reference |" in done.stdout
    records = json.loads((run / "results.json").read_text())
    assert [r["agent"] for r in records] == ["pop", "reference", "sasrec"] and (run / "results.md").exists()
    for record in records:
        assert record["dataset"] == "synthetic" and record["split"] == "test" and record["n_users"] == 80
        m = record["metrics"]["ndcg@10"]
        assert m["low"] <= m["mean"] <= m["high"]
        assert {"recall@1", "recall@20", "ndcg@20", "mrr@10"} <= set(record["metrics"])
        assert record["beyond"]["hit_categories"] >= 1 and 0 < record["beyond"]["hit_category_entropy"] <= 1
        groups = record["popularity_groups"]
        assert [g["group"] for g in groups] == list(range(5))  # eval.popularity_groups
        assert [g["items"] for g in groups] == [12] * 5 and sum(g["users"] for g in groups) == 80
        assert sum(g["exposure_share"] for g in groups) == pytest.approx(1.0)
        edges = [g["training_interactions"] for g in groups]
        assert all(a["min"] <= a["max"] <= b["min"] for a, b in zip(edges, edges[1:], strict=False))
        for name in ("recall@10", "ndcg@10"):  # the groups split the users: their metrics average to the overall
            overall = sum(g["users"] * g[name]["mean"] for g in groups if g["users"]) / 80
            assert overall == pytest.approx(record["metrics"][name]["mean"])
    assert (run / "popularity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| sasrec | 4 | " in (run / "results.md").read_text()  # the per-group table: agent, group
    comparisons = json.loads((run / "comparisons.json").read_text())
    assert set(comparisons["sasrec-vs-pop"]["ndcg@10"]) == {"mean", "low", "high", "excludes_zero"}
    for diffs in comparisons.values():
        by_group = diffs.pop("popularity_groups")
        assert [d["group"] for d in by_group] == list(range(5)) and sum(d["users"] for d in by_group) == 80
        for diff in [*diffs.values(), *(d for d in by_group if d["users"])]:
            assert diff["low"] <= diff["mean"] <= diff["high"]
    report = subprocess.run(
        [sys.executable, "-m", "experiments.report", str(run), "--out", str(tmp_path / "report")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.returncode == 0, report.stderr[-2000:]
    written = (tmp_path / "report" / "report.md").read_text()
    difference = comparisons["sasrec-vs-reference"]["ndcg@10"]
    assert f"| sasrec-vs-reference | {difference['mean']:.4f} [{difference['low']:.4f}," in written
    assert "| synthetic | test | sasrec | 4 | " in written  # the per-group table
    gathered = json.loads((tmp_path / "report" / "comparisons.json").read_text())[f"synthetic test ({run.name})"]
    assert {pair: {k: v for k, v in diffs.items() if k != "popularity_groups"} for pair, diffs in gathered.items()} == (
        comparisons
    )


def test_report_plots_each_dataset_and_split_in_its_own_panel():
    from experiments.report import panels

    def record(dataset, split, agent, users):
        return {"dataset": dataset, "split": split, "agent": agent, "n_users": users}

    records = [
        record("games", "valid", "sasrec", 50),
        record("games", "test", "pop", 50),
        record("games", "test", "agent", 5),
        record("games", "valid", "trm", 50),
        record("ml-100k", "test", "pop", 9),
    ]
    grouped = panels(records)
    assert [title for title, _ in grouped] == [
        "games (valid, 50 users)",
        "games (test, 5-50 users)",
        "ml-100k (test, 9 users)",
    ]
    assert [[r["agent"] for r in rows] for _, rows in grouped] == [["sasrec", "trm"], ["pop", "agent"], ["pop"]]


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


def _small_training() -> TRMConfig:
    """A few dozen steps over several epochs (about ten batches each), validating every five steps."""
    train = TrainConfig(batch_size=32, max_steps=40, eval_every=5, patience=100, valid_users=None)
    return TRMConfig(model=ModelConfig(max_len=10, hidden=16, n_layers=1), train=train)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


# SIGTERM mid-epoch between validations; Ctrl-C at the last step, when training is already over
@pytest.mark.parametrize(
    ("stop_at", "signum"), [(17, signal.SIGTERM), (40, signal.SIGINT)], ids=["sigterm-mid-epoch", "ctrl-c-at-the-end"]
)
def test_stopped_training_caches_nothing_and_resumes_to_the_uninterrupted_weights(
    synthetic, tmp_path, monkeypatch, caplog, stop_at, signum
):
    config = _small_training()
    reference, reference_log = load_or_train(synthetic, config, tmp_path / "reference", progress=False)
    real_step, steps = torch.optim.AdamW.step, [0]
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    if handlers[signum] is signal.SIG_IGN:
        pytest.skip("this process ignores the signal (a background job ignores SIGINT), and training keeps doing so")

    def step(self, *args, **kwargs):
        steps[0] += 1
        if steps[0] == stop_at:
            os.kill(os.getpid(), signum)  # in the middle of an optimizer step
        return real_step(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(torch.optim.AdamW, "step", step)
        with pytest.raises(KeyboardInterrupt):
            load_or_train(synthetic, config, tmp_path / "root", progress=False)
    assert steps[0] == stop_at  # the step under way completed, no further one began
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # handlers restored
    directory = checkpoint_dir(config, tmp_path / "root")
    state = partial_state_path(directory)
    assert [p.name for p in (tmp_path / "root").iterdir()] == [state.parent.name]  # no entry, no temp dir

    with caplog.at_level("INFO"):
        model, log = load_or_train(synthetic, config, tmp_path / "root", progress=False)
    assert f"resuming sasrec training from step {stop_at} (interrupted earlier)" in caplog.text
    assert log["resumed_from_steps"] == [stop_at] and log["stop_reason"] == reference_log["stop_reason"]
    assert log["steps"] == reference_log["steps"] == 40
    assert log["evaluations"] == reference_log["evaluations"]
    assert _same_weights(model, reference)
    assert is_complete(directory) and not state.parent.exists()
    assert json.loads((directory / "train_log.json").read_text())["resumed_from_steps"] == [stop_at]


def test_partial_state_of_another_config_is_discarded(synthetic, tmp_path, caplog):
    config = _small_training()
    state = partial_state_path(checkpoint_dir(config, tmp_path))
    state.parent.mkdir(parents=True)
    torch.save({"key": "another config", "loop": {"step": 3}}, state)
    with caplog.at_level("INFO"):
        _, log = load_or_train(synthetic, config, tmp_path, progress=False)
    assert "discarding the partial sasrec training state" in caplog.text and "resuming" not in caplog.text
    assert log["resumed_from_steps"] == [] and log["steps"] == 40 and not state.parent.exists()


def test_sigterm_stops_prepare_and_the_rerun_resumes(tmp_path, caplog):
    """`kill PID` while SASRec trains stops the whole command with one line (no TRM is trained on a half-trained
    SASRec); running it again (in-process here, SASRec only) resumes the SASRec training and finishes it."""
    from deeprec_env.config import compose
    from experiments.prepare import prepare

    artifacts = tmp_path / "artifacts"
    overrides = [
        "dataset=synthetic",
        "dataset.synthetic.n_users=80",
        "dataset.synthetic.n_items=60",
        "sasrec.train.max_steps=400",
        "sasrec.train.eval_every=20",
        "sasrec.train.patience=2",  # stops at step 60 on this data: a short rerun
        "trm.train.max_steps=20",
        "trm.train.eval_every=10",
        f"artifacts={artifacts}",
    ]
    cmd = [sys.executable, "-m", "experiments.prepare", *overrides, f"hydra.run.dir={tmp_path / 'run'}"]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with (tmp_path / "first.log").open("w") as output:
        first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while not list(artifacts.rglob("trm-sasrec-*.partial/state.pt")):
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
            assert time.time() < deadline, "SASRec training never saved a resumable state"
            time.sleep(0.05)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 130
    log = (tmp_path / "first.log").read_text()
    assert "training sasrec stopped by a signal" in log and "stopped; run the same command again to resume" in log
    assert "Traceback" not in log
    entries = [p.name for p in artifacts.rglob("*trm-*")]  # models, their temp dirs and partial states
    assert entries and all(name.startswith("trm-sasrec-") and name.endswith(".partial") for name in entries), entries

    import experiments.config  # noqa: F401  (registers the experiments schema)

    with caplog.at_level(logging.INFO):
        prepare(compose("config", [*overrides, "prepare.models=[sasrec]"]))  # the TRM's own training: other tests
    assert "resuming sasrec training from step" in caplog.text
    assert not list(artifacts.rglob("*.partial"))
    (sasrec,) = artifacts.rglob("trm-sasrec-*")
    train_log = json.loads((sasrec / "train_log.json").read_text())
    assert train_log["resumed_from_steps"] and train_log["stop_reason"] in ("max_steps", "patience")
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train sasrec: ")]
    assert progress and not any("\r" in line for line in progress)  # logged lines, not a redrawn bar


def test_trm_config_starts_from_the_sasrec_node():
    from deeprec_env.config import compose
    from deeprec_env.stack import stack_config

    config = stack_config(compose("env_config", ["sasrec.train.lr=0.01"]))
    trm, sasrec = config.trm, config.sasrec
    assert trm.backbone == sasrec and sasrec.train.lr == 0.01  # overrides of the backbone reach the TRM's key
    assert sasrec.backbone is None and trm.model.fuse_query and not sasrec.model.fuse_query
