"""The preference-aware TRM end to end on a small synthetic dataset with the real sentence encoder."""

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fakes import synthetic_dataset

from deeprec_env.config import StackConfig
from deeprec_env.data.synthetic import synthetic_category_names
from deeprec_env.evaluation import evaluate_scorer
from deeprec_env.stack import Stack
from deeprec_env.text import TextEncoder
from deeprec_env.trm.model import ModelConfig, SequentialRecommender
from deeprec_env.trm.queries import category_query, query_phrasings
from deeprec_env.trm.retriever import InProcessRetriever
from deeprec_env.trm.train import (
    TrainConfig,
    TRMConfig,
    checkpoint_dir,
    initialise_from_backbone,
    learning_rate,
    load_or_train,
    next_item_loss,
    query_bank_embeddings,
    validation_ndcg,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    artifacts = tmp_path_factory.mktemp("artifacts")
    dataset = synthetic_dataset(artifacts, n_users=300, n_items=120, n_categories=4, min_len=8, max_len=20, seed=3)
    encoder = TextEncoder()
    backbone = TRMConfig(
        name="sasrec",
        model=ModelConfig(max_len=10, hidden=32, n_layers=1, dropout=0.1),
        train=TrainConfig(batch_size=64, max_steps=300, eval_every=100, patience=3),
    )
    config = TRMConfig(
        name="trm",
        model=ModelConfig(max_len=10, hidden=32, n_layers=1, dropout=0.1, fuse_item_text=True, fuse_query=True),
        train=TrainConfig(
            batch_size=64, max_steps=500, eval_every=100, patience=3, query_variants=2, lr=1e-3, sequence_loss=1.0
        ),
        backbone=backbone,
    )
    model, log = load_or_train(dataset, config, artifacts / "root", encoder, progress=False)
    return dataset, encoder, model, config, artifacts / "root", log


def test_category_query_steers_retrieval(trained):
    dataset, encoder, model, *_ = trained
    retriever = InProcessRetriever(model, encoder)
    names = synthetic_category_names(4)
    users = dataset.eval_users("test")[:100]
    histories = [dataset.history_and_target(int(u), "test")[0] for u in users]
    empty, _ = retriever.retrieve(histories, [""] * len(users), 20)
    for name in names:
        ids, _ = retriever.retrieve(histories, [category_query(name, "titles")] * len(users), 20)
        with_query = np.mean([[name in dataset.items[i].categories for i in row] for row in ids])
        without = np.mean([[name in dataset.items[i].categories for i in row] for row in empty])
        assert with_query > max(0.5, without + 0.2), (name, with_query, without)


def test_oracle_query_beats_empty_and_mismatched(trained):
    dataset, encoder, model, *_ = trained
    retriever = InProcessRetriever(model, encoder)
    users = dataset.eval_users("valid")
    targets = {int(u): dataset.history_and_target(int(u), "valid")[1] for u in users}
    oracle = {u: query_phrasings(dataset, t, 1, seed=0)[0] for u, t in targets.items()}
    shifted = dict(zip(oracle, np.roll(list(oracle.values()), 1), strict=True))

    def ndcg(queries) -> float:
        result = evaluate_scorer(retriever.scores, dataset, users, "valid", queries)
        return float(result.per_user()["ndcg@10"].mean())

    empty, with_oracle, mismatched = ndcg(lambda u: ""), ndcg(oracle.get), ndcg(shifted.get)
    assert with_oracle > empty > mismatched, (with_oracle, empty, mismatched)


def test_trained_trm_is_cached_with_its_encoder(trained, caplog):
    dataset, encoder, model, config, root, log = trained
    with caplog.at_level("INFO"):
        again, again_log = load_or_train(dataset, config, root, encoder, progress=False)
    assert "reusing cached trm model" in caplog.text
    assert again_log == log
    assert all(
        np.array_equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )
    with pytest.raises(ValueError, match="pass a text encoder"):
        load_or_train(dataset, config, root, None)


def test_backbone_initialises_shared_layers_and_zero_fusion(trained):
    dataset, encoder, model, config, root, _ = trained
    assert checkpoint_dir(config.backbone, root).exists()  # trained (and cached) before the TRM
    backbone, _ = load_or_train(dataset, config.backbone, root, encoder, progress=False)
    fresh = type(model)(dataset.n_items, config.model, model.item_text)
    initialise_from_backbone(fresh, backbone)
    assert torch.equal(fresh.item_vectors(), backbone.item_vectors())  # text fusion starts at zero
    query = torch.randn(3, fresh.text_dim)
    assert torch.count_nonzero(fresh.query_projection(query)) == 0  # so does the query
    for name, weight in backbone.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], weight), name
    wider = TRMConfig(model=ModelConfig(max_len=10, hidden=16, n_layers=1, fuse_item_text=True, fuse_query=True))
    with pytest.raises(ValueError, match="same model.max_len, model.hidden"):
        initialise_from_backbone(type(model)(dataset.n_items, wider.model, model.item_text), backbone)


def test_sampled_softmax_counts_the_target_and_its_drawn_negatives_only():
    torch.manual_seed(0)
    model = SequentialRecommender(12, ModelConfig(max_len=4, hidden=8, n_layers=1))
    states, targets = torch.randn(5, 8), torch.tensor([1, 4, 4, 9, 12])
    items = model.item_vectors()
    full = next_item_loss(model, states, items, targets, 0, torch.Generator().manual_seed(0))
    assert full.item() == pytest.approx(F.cross_entropy(model.logits(states, items), targets).item())
    sampled = next_item_loss(model, states, items, targets, 3, torch.Generator().manual_seed(1))
    drawn = torch.randint(1, 13, (3,), generator=torch.Generator().manual_seed(1))
    all_scores = model.logits(states, items)
    expected = [
        torch.logsumexp(all_scores[row, [t.item(), *[d for d in drawn.tolist() if d != t.item()]]], 0)
        - all_scores[row, t]
        for row, t in enumerate(targets)
    ]
    assert sampled.item() == pytest.approx(torch.stack(expected).mean().item(), abs=1e-5)
    sampled.backward()
    assert model.item_embedding.weight.grad[drawn].abs().sum() > 0


def test_learning_rate_warms_up_then_follows_its_schedule():
    cosine = TrainConfig(lr=1.0, warmup_steps=4, schedule="cosine", max_steps=104)
    assert [learning_rate(cosine, s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert learning_rate(cosine, 54) == pytest.approx(0.5) and learning_rate(cosine, 104) == pytest.approx(0.0)
    assert learning_rate(TrainConfig(lr=0.1), 10_000) == 0.1
    with pytest.raises(ValueError, match="constant, cosine"):
        learning_rate(TrainConfig(schedule="linear"), 0)


def test_selection_weighs_the_oracle_query_when_asked(trained):
    dataset, encoder, _, config, root, _ = trained
    weighted = copy.deepcopy(config)
    weighted.train.max_steps, weighted.train.eval_every, weighted.train.select_oracle_weight = 200, 50, 0.5
    model, log = load_or_train(dataset, weighted, root, encoder, progress=False)
    for evaluation in log["evaluations"]:
        expected = evaluation["valid_ndcg@10"] + 0.5 * evaluation["valid_oracle_ndcg@10"]
        assert evaluation["score"] == pytest.approx(expected)
    best = max(log["evaluations"], key=lambda e: e["score"])
    assert (log["best_step"], log["best_valid_ndcg10"]) == (best["step"], best["valid_ndcg@10"])
    bank = torch.from_numpy(query_bank_embeddings(dataset, encoder, 2, 0, root))[:, 0]
    assert validation_ndcg(model, dataset, dataset.eval_users("valid"), bank) == pytest.approx(
        best["valid_oracle_ndcg@10"]
    )
    assert best["valid_oracle_ndcg@10"] > best["valid_ndcg@10"]  # the kept checkpoint follows queries
    with pytest.raises(ValueError, match="select_oracle_weight needs a preference-aware model"):
        sasrec = copy.deepcopy(config.backbone)
        sasrec.train.select_oracle_weight = 1.0
        load_or_train(dataset, sasrec, root, encoder, progress=False)


def test_a_holdout_model_is_its_own_cache_entry_and_needs_a_matching_backbone(trained):
    dataset, encoder, _, config, root, _ = trained
    held = copy.deepcopy(config)
    held.train.holdout = held.backbone.train.holdout = 2
    key = json.loads((checkpoint_dir(config, root, encoder, dataset.catalogue) / "config.json").read_text())
    assert "holdout" not in key["train"] and "holdout" not in key["backbone"]["train"]  # 0 keeps existing keys
    assert checkpoint_dir(held, root, encoder, dataset.catalogue) != checkpoint_dir(
        config, root, encoder, dataset.catalogue
    )
    assert checkpoint_dir(held.backbone, root) != checkpoint_dir(config.backbone, root)
    mismatched = copy.deepcopy(held)
    mismatched.backbone.train.holdout = 0
    with pytest.raises(ValueError, match="backbone's train.holdout"):
        load_or_train(dataset, mismatched, root, encoder, progress=False)


def test_the_agent_training_stack_holds_out_every_model_it_trains(trained):
    dataset, encoder, _, config, root, _ = trained
    stack = Stack(StackConfig(sasrec=config.backbone, trm=config), dataset, root, encoder=encoder)
    assert stack.for_agent_training(0) is stack
    held = stack.for_agent_training(3)
    assert (held.config.sasrec.train.holdout, held.config.trm.train.holdout) == (3, 3)
    assert held.config.trm.backbone.train.holdout == 3 and config.train.holdout == 0  # the original is untouched
    assert held.encoder is encoder and held.dataset is dataset


def test_a_frozen_backbone_trains_only_the_fusion_layers(trained):
    dataset, encoder, _, config, root, _ = trained
    frozen = copy.deepcopy(config)
    frozen.train.max_steps, frozen.train.eval_every, frozen.train.freeze_backbone = 60, 30, True
    model, _ = load_or_train(dataset, frozen, root, encoder, progress=False)
    backbone, _ = load_or_train(dataset, config.backbone, root, encoder, progress=False)
    for name, weight in backbone.state_dict().items():
        assert torch.equal(model.state_dict()[name], weight), name
    assert (
        torch.count_nonzero(model.query_projection[-1].weight) > 0
        and torch.count_nonzero(model.text_projection.weight) > 0
    )
    with pytest.raises(ValueError, match="freeze_backbone needs a backbone"):
        load_or_train(dataset, dataclasses.replace(frozen, backbone=None), root, encoder, progress=False)
