"""The published SASRec recipe (`experiments.reference`): a causal network, a scorer in the project's protocol, and
training that learns and keeps its best validation epoch."""

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from fakes import synthetic_dataset

from experiments.config import ReferenceConfig
from experiments.reference import ReferenceSASRec, train_reference, training_batches, validation_metrics

SMALL = ReferenceConfig(hidden=16, max_len=20, batch_size=64, epochs=12, eval_every=4)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    artifacts = tmp_path_factory.mktemp("artifacts")
    return synthetic_dataset(artifacts, n_users=300, n_items=80, n_categories=4, min_len=8, max_len=25, seed=3)


def test_a_position_never_sees_later_items():
    torch.manual_seed(0)
    model = ReferenceSASRec(30, SMALL).eval()
    sequence = torch.tensor([[0, 0, 3, 7, 1, 9, 4]])
    changed = sequence.clone()
    changed[0, -1] = 12
    with torch.no_grad():
        a, b = model.hidden_states(sequence), model.hidden_states(changed)
    assert torch.equal(a[0, :-1], b[0, :-1]) and not torch.equal(a[0, -1], b[0, -1])


def test_scores_rank_items_and_never_padding():
    model = ReferenceSASRec(30, SMALL)
    scores = model.scores([np.array([1, 2, 3]), np.array([], dtype=np.int64)])
    assert scores.shape == (2, 31) and np.all(scores[:, 0] == -np.inf) and np.isfinite(scores[:, 1:]).all()


def test_negatives_are_items_the_user_never_saw(dataset):
    rng = np.random.default_rng(0)
    for inputs, positives, negatives in training_batches(dataset, SMALL, rng):
        assert torch.equal(positives > 0, negatives > 0) and torch.equal(inputs > 0, positives > 0)
        real = inputs[:, :-1] > 0  # each position's target is the item the next position reads
        assert torch.equal(inputs[:, 1:][real], positives[:, :-1][real])
        for row in range(len(positives)):
            seen = set(inputs[row].tolist()) | set(positives[row].tolist())
            assert not seen & set(negatives[row][negatives[row] > 0].tolist())


def test_training_learns_and_keeps_the_best_validation_epoch(dataset):
    users = dataset.eval_users("valid")
    torch.manual_seed(0)
    untrained = validation_metrics(ReferenceSASRec(dataset.n_items, SMALL).scores, dataset, users)["ndcg@10"].mean()
    model, log = train_reference(dataset, SMALL, seed=0)
    assert [h["epoch"] for h in log["history"]] == [4, 8, 12]
    best = max(log["history"], key=lambda h: h["ndcg@10"])
    assert log["best"]["epoch"] == best["epoch"]
    kept = validation_metrics(model.scores, dataset, users)["ndcg@10"].mean()
    assert kept == pytest.approx(best["ndcg@10"]) and kept > untrained + 0.02


def test_patience_stops_after_validations_without_improvement(dataset):
    config = ReferenceConfig(hidden=16, max_len=20, batch_size=64, epochs=400, eval_every=1, patience=2, lr=0.05)
    _, log = train_reference(dataset, config, seed=0)
    epochs = [h["epoch"] for h in log["history"]]
    assert epochs[-1] == log["best"]["epoch"] + 2 < 400
    assert all(h["ndcg@10"] <= log["best"]["ndcg@10"] for h in log["history"])


def test_the_recipe_takes_its_published_settings_per_dataset():
    from deeprec_env.config import compose

    movies, games = (compose("config", [f"dataset={name}"]).reference for name in ("ml-100k", "games"))
    assert (movies.max_len, movies.dropout) == (200, 0.2) and (games.max_len, games.dropout) == (50, 0.5)


def test_the_trained_reference_is_cached_and_reused(tmp_path, caplog):
    from deeprec_env.config import compose
    from deeprec_env.stack import build_stack
    from experiments.reference import load_or_train_reference

    overrides = ["dataset=synthetic", f"artifacts={tmp_path}", "dataset.synthetic.n_users=60", "reference.epochs=2"]
    stack = build_stack(compose("config", overrides), with_reward=False)
    config = ReferenceConfig(hidden=8, max_len=10, epochs=2, eval_every=1)
    model, log = load_or_train_reference(stack, config, seed=0)
    with caplog.at_level("INFO"):
        again, again_log = load_or_train_reference(stack, config, seed=0)
    assert "reusing cached reference SASRec" in caplog.text and again_log == log
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))
    other, _ = load_or_train_reference(stack, config, seed=1)
    assert not torch.equal(other.items.weight, model.items.weight)


def test_a_run_resumed_from_its_saved_state_ends_as_the_uninterrupted_run(dataset):
    states = []  # copies: a saved state holds the live tensors, as torch.save reads them at once
    model, log = train_reference(dataset, SMALL, seed=0, save_state=lambda state: states.append(copy.deepcopy(state)))
    assert [s["epoch"] for s in states] == [4, 8, 12]
    resumed, resumed_log = train_reference(dataset, SMALL, seed=0, resume=states[0])
    assert resumed_log["history"] == log["history"] and resumed_log["best"] == log["best"]
    weights = zip(model.state_dict().values(), resumed.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in weights)


def test_a_stop_signal_ends_the_epoch_saves_the_state_and_the_run_resumes_unchanged(dataset, monkeypatch):
    import os
    import signal

    from experiments import reference

    handler = signal.getsignal(signal.SIGTERM)
    if handler is signal.SIG_IGN:
        pytest.skip("this process ignores SIGTERM")
    epochs_started = []

    def batches_with_a_signal_in_epoch_2(*args):
        epochs_started.append(True)
        for number, batch in enumerate(training_batches(*args)):
            if len(epochs_started) == 2 and number == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch

    uninterrupted, log = train_reference(dataset, SMALL, seed=0)
    states = []
    monkeypatch.setattr(reference, "training_batches", batches_with_a_signal_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_reference(dataset, SMALL, seed=0, save_state=lambda state: states.append(copy.deepcopy(state)))
    assert [s["epoch"] for s in states] == [2]  # the signal's epoch, before its first validation (epoch 4)
    assert signal.getsignal(signal.SIGTERM) is handler  # restored
    monkeypatch.setattr(reference, "training_batches", training_batches)
    resumed, resumed_log = train_reference(dataset, SMALL, seed=0, resume=states[0])
    assert resumed_log["history"] == log["history"] and resumed_log["best"] == log["best"]
    weights = zip(uninterrupted.state_dict().values(), resumed.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in weights)


def interrupt_reference_after_epoch_2(stack, config, monkeypatch) -> None:
    """Train the cached reference until its state is saved at epoch 2, then stop it as a signal would."""
    from experiments import reference

    def stop_after_second_epoch(dataset, config, seed, resume, save_state):
        def save_then_stop(state):
            save_state(state)
            if state["epoch"] == 2:
                raise KeyboardInterrupt

        return train_reference(dataset, config, seed, resume, save_then_stop)

    with monkeypatch.context() as patched:
        patched.setattr(reference, "train_reference", stop_after_second_epoch)
        with pytest.raises(KeyboardInterrupt):
            reference.load_or_train_reference(stack, config, seed=0)


@pytest.mark.parametrize("patience", [None, 1])
def test_an_interrupted_reference_resumes_from_its_partial_state(tmp_path, caplog, monkeypatch, patience):
    from deeprec_env.config import compose
    from deeprec_env.stack import build_stack
    from experiments import reference

    stack = build_stack(compose("config", ["dataset=synthetic", f"artifacts={tmp_path}"]), with_reward=False)
    config = ReferenceConfig(hidden=8, max_len=10, epochs=6, eval_every=1)
    interrupt_reference_after_epoch_2(stack, config, monkeypatch)
    resumed_config = replace(config, patience=patience)  # a rerun may add patience: the state it resumes is the same
    uninterrupted, uninterrupted_log = reference.train_reference(stack.dataset, resumed_config, seed=0)
    with caplog.at_level("INFO"):
        model, log = reference.load_or_train_reference(stack, resumed_config, seed=0)
    assert "resuming reference SASRec training from epoch 2" in caplog.text
    assert log["history"] == uninterrupted_log["history"] and log["best"] == uninterrupted_log["best"]
    assert torch.equal(model.items.weight, uninterrupted.items.weight)
    assert not list(tmp_path.rglob("state.pt"))
