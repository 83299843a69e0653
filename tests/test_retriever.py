"""The TRM as a tool: InProcessRetriever and the Ray-served RayRetriever."""

import subprocess
import sys

import fakes
import numpy as np
import pytest
import torch
from fakes import HashEncoder

from deeprec_env.data.dataset import stack_histories
from deeprec_env.metrics import top_k
from deeprec_env.trm.model import ModelConfig, SequentialRecommender
from deeprec_env.trm.retriever import InProcessRetriever, RayRetriever, build_retriever

N_ITEMS = 30
TEXT_DIM = 8
CONFIG = ModelConfig(max_len=5, hidden=16, n_layers=1, n_heads=2, fuse_item_text=True, fuse_query=True)


def make_model() -> SequentialRecommender:
    torch.manual_seed(0)
    item_text = torch.randn(N_ITEMS + 1, TEXT_DIM)
    item_text[0] = 0
    return SequentialRecommender(N_ITEMS, CONFIG, item_text).eval()


@pytest.fixture
def model():
    return make_model()


@pytest.fixture
def encoder():
    return HashEncoder(TEXT_DIM)


@pytest.fixture
def retriever(model, encoder):
    return InProcessRetriever(model, encoder)


def model_top_k(model, encoder, histories, queries, k, exclude=True):
    """Reference: the model's own forward (no cache) on the cut histories, then metrics.top_k."""
    with torch.inference_mode():
        text = torch.from_numpy(encoder.encode([q.strip() for q in queries]))
        scores = model(torch.from_numpy(stack_histories(histories, CONFIG.max_len)), text).numpy()
    ids = top_k(scores, k, [np.asarray(h, dtype=np.int64) for h in histories] if exclude else None)
    return ids, np.take_along_axis(scores, ids, axis=1)


def mixed_batch(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    phrases = ["", "  ", "dark sci-fi thriller", "cozy romantic comedy", "something like the last one", "jazz"]
    histories = [rng.choice(np.arange(1, N_ITEMS + 1), size=rng.integers(0, 12), replace=False) for _ in range(n)]
    queries = [phrases[i % len(phrases)] for i in range(n)]
    return [h.tolist() for h in histories], queries


# --- in-process -----------------------------------------------------------------------------------------------


def test_shapes_and_dtypes(retriever):
    ids, scores = retriever.retrieve([[1, 2, 3], [4]], ["sci-fi", ""], k=7)
    assert ids.shape == scores.shape == (2, 7)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    assert ((ids >= 1) & (ids <= N_ITEMS)).all()
    assert np.isfinite(scores).all()
    assert (np.diff(scores, axis=1) <= 0).all()  # best first
    assert all(len(set(row)) == 7 for row in ids.tolist())
    assert retriever.n_items == N_ITEMS


def test_matches_model_scores_and_metrics_top_k(model, encoder, retriever):
    histories, queries = mixed_batch(12)
    histories[0] = list(range(1, 13))  # longer than max_len: the model sees 8..12, all 12 are excluded
    ids, scores = retriever.retrieve(histories, queries, k=10)
    ref_ids, ref_scores = model_top_k(model, encoder, histories, queries, k=10)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-6, atol=1e-6)
    assert not set(ids[0].tolist()) & set(range(1, 13))


def test_history_excluded_only_when_asked(retriever):
    history = [3, 7, 7, 11, 20, 0]  # duplicates and padding are harmless
    ids, _ = retriever.retrieve([history], ["thriller"], k=N_ITEMS - 4)
    assert sorted(ids[0].tolist()) == sorted(set(range(1, N_ITEMS + 1)) - {3, 7, 11, 20})
    ids, _ = retriever.retrieve([history], ["thriller"], k=N_ITEMS, exclude_history=False)
    assert sorted(ids[0].tolist()) == list(range(1, N_ITEMS + 1))  # history items can be recommended again


def test_empty_query_is_zero_query(model, retriever):
    histories = [[5, 6, 7], [1, 2]]
    with torch.inference_mode():
        scores = model(torch.from_numpy(stack_histories(histories, CONFIG.max_len)), torch.zeros(2, TEXT_DIM))
    expected = top_k(scores.numpy(), 5, [np.array(h) for h in histories])
    for blank in ("", "   \n\t"):
        ids, _ = retriever.retrieve(histories, [blank, blank], k=5)
        np.testing.assert_array_equal(ids, expected)
    # A real query changes the ranking; surrounding whitespace does not.
    with_query, _ = retriever.retrieve(histories, ["dark sci-fi thriller"] * 2, k=5)
    padded, _ = retriever.retrieve(histories, ["  dark sci-fi thriller \n"] * 2, k=5)
    np.testing.assert_array_equal(with_query, padded)
    assert not np.array_equal(with_query, expected)


def test_batch_equals_one_by_one_exactly(model, encoder, retriever):
    """A row's ids and scores do not depend on the other rows, to the last bit (batch-invariant by construction)."""
    histories, queries = mixed_batch(16, seed=1)
    ids, scores = retriever.retrieve(histories, queries, k=8)
    for row, (history, query) in enumerate(zip(histories, queries, strict=True)):
        one_ids, one_scores = retriever.retrieve([history], [query], k=8)
        np.testing.assert_array_equal(one_ids[0], ids[row])
        np.testing.assert_array_equal(one_scores[0], scores[row])
    half_ids, half_scores = retriever.retrieve(histories[::2], queries[::2], k=8)
    np.testing.assert_array_equal(half_ids, ids[::2])
    np.testing.assert_array_equal(half_scores, scores[::2])
    uncached = InProcessRetriever(model, encoder, cache_item_vectors=False)
    u_ids, u_scores = uncached.retrieve(histories, queries, k=8)
    np.testing.assert_array_equal(u_ids, ids)
    np.testing.assert_allclose(u_scores, scores, rtol=1e-6, atol=1e-6)


def test_one_encoder_call_per_distinct_query(encoder, retriever):
    retriever.retrieve([[1], [2], [3], [4]], ["jazz", " jazz ", "", "rock"], k=3)
    assert encoder.calls == [["jazz"], ["rock"]]  # each distinct non-empty query on its own
    retriever.retrieve([[1], [2]], ["", " "], k=3)
    assert len(encoder.calls) == 2  # all-empty batch: no encoder call at all


def test_k_is_clamped_not_raised(retriever):
    ids, scores = retriever.retrieve([[1, 2]], [""], k=100)
    assert ids.shape == scores.shape == (1, N_ITEMS - 2)
    ids, _ = retriever.retrieve([[1, 2]], [""], k=100, exclude_history=False)
    assert ids.shape == (1, N_ITEMS)
    # In a batch the row with the fewest eligible items decides the width; every row stays valid.
    long_history = list(range(1, N_ITEMS - 2))  # leaves items 28, 29, 30
    ids, _ = retriever.retrieve([[1], long_history], ["jazz", "jazz"], k=10)
    assert ids.shape == (2, 3)
    assert sorted(ids[1].tolist()) == [N_ITEMS - 2, N_ITEMS - 1, N_ITEMS]
    assert 1 not in ids[0]
    ids, scores = retriever.retrieve([list(range(1, N_ITEMS + 1))], ["jazz"], k=5)  # nothing left
    assert ids.shape == scores.shape == (1, 0)
    assert retriever.retrieve([[1]], [""], k=0)[0].shape == (1, 0)
    assert retriever.retrieve([], [], k=5)[0].shape == (0, 5)
    with pytest.raises(ValueError):
        retriever.retrieve([[1]], [""], k=-1)


def test_empty_history(model, encoder, retriever):
    ids, scores = retriever.retrieve([[], [4, 5]], ["cozy romantic comedy", ""], k=6)
    assert ids.shape == (2, 6) and np.isfinite(scores).all()
    ref_ids, ref_scores = model_top_k(model, encoder, [[], [4, 5]], ["cozy romantic comedy", ""], k=6)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-6, atol=1e-6)


def test_bad_inputs(retriever):
    with pytest.raises(ValueError, match="queries"):
        retriever.retrieve([[1], [2]], ["only one"], k=3)
    with pytest.raises(ValueError, match="outside"):
        retriever.retrieve([[N_ITEMS + 1]], [""], k=3)
    with pytest.raises(TypeError):
        retriever.retrieve([[1]], "not a list", k=3)
    with pytest.raises(ValueError, match="encoder dim"):
        InProcessRetriever(make_model(), type("E", (), {"dim": 3, "encode": None})())


def test_import_does_not_import_ray():
    code = "import sys, deeprec_env.trm.retriever; assert 'ray' not in sys.modules, 'ray imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_ray_backend_needs_initialised_ray():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("Ray already initialised in this process")
    with pytest.raises(RuntimeError, match="ray.init"):
        RayRetriever.connect("anything")


# --- Ray ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    # Ray workers cannot import the test modules: ship them (HashEncoder, the actor's encoder factory) by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.cloudpickle.register_pickle_by_value(fakes)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        ray.cloudpickle.unregister_pickle_by_value(fakes)


def test_ray_matches_in_process_and_is_shared(ray_session):
    ray = ray_session
    model, encoder = make_model(), HashEncoder(TEXT_DIM)
    local = InProcessRetriever(model, encoder)
    histories, queries = mixed_batch(16, seed=2)
    expected_ids, expected_scores = local.retrieve(histories, queries, k=10)

    served = RayRetriever.launch(
        model.state_dict(), CONFIG, N_ITEMS, model.item_text.numpy(), HashEncoder, name="trm-test", num_cpus=1
    )
    try:
        assert served.n_items == N_ITEMS
        ids, scores = served.retrieve(histories, queries, k=10)
        assert ids.dtype == np.int64 and scores.dtype == np.float32
        np.testing.assert_array_equal(ids, expected_ids)
        np.testing.assert_allclose(scores, expected_scores, rtol=1e-6, atol=1e-6)

        # A second caller attaches by name; closing its handle leaves the actor running.
        other = RayRetriever.connect("trm-test")
        o_ids, o_scores = other.retrieve(histories, queries, k=10)
        np.testing.assert_array_equal(o_ids, expected_ids)
        np.testing.assert_allclose(o_scores, expected_scores, rtol=1e-6, atol=1e-6)
        other.close()
        assert served.retrieve([[]], [""], k=1)[0].shape == (1, 1)

        # A rollout worker (a Ray task) receives the handle itself; its copy never owns the actor.
        @ray.remote(num_cpus=1)
        def worker(handle, hs, qs):
            out = handle.retrieve(hs, qs, k=10)
            handle.close()
            return out

        w_ids, w_scores = ray.get(worker.remote(served, histories, queries))
        np.testing.assert_array_equal(w_ids, expected_ids)
        np.testing.assert_allclose(w_scores, expected_scores, rtol=1e-6, atol=1e-6)
        assert served.retrieve([[1]], ["jazz"], k=2)[0].shape == (1, 2)  # still alive
    finally:
        served.close()
    with pytest.raises(ValueError):
        ray.get_actor("trm-test")  # the owner's close() killed it
    with pytest.raises(RuntimeError, match="closed"):
        served.retrieve([[1]], [""], k=1)


def test_build_retriever_backends(ray_session):
    model, encoder = make_model(), HashEncoder(TEXT_DIM)
    histories, queries = mixed_batch(6, seed=3)
    local = build_retriever("local", model, encoder)
    remote = build_retriever("ray", model, encoder, num_cpus=0.5)
    try:
        l_ids, l_scores = local.retrieve(histories, queries, k=4)
        r_ids, r_scores = remote.retrieve(histories, queries, k=4)
        np.testing.assert_array_equal(r_ids, l_ids)
        np.testing.assert_allclose(r_scores, l_scores, rtol=1e-6, atol=1e-6)
    finally:
        remote.close()
    with pytest.raises(ValueError, match="backend"):
        build_retriever("grpc", model, encoder)
