"""The published SASRec recipe (`experiments.reference`): a causal network, a scorer in the project's protocol, and
training that learns and keeps its best validation epoch."""

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
