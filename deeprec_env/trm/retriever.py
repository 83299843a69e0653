"""The preference-aware recommender (TRM) as a tool: user histories + free-text preference queries -> top-k items.

Both backends share one interface (`Retriever`):

    retrieve(histories, queries, k, exclude_history=True) -> (ids (batch, k) int64, scores (batch, k) float32)

* `histories[row]` is the user's FULL interaction history (item ids 1..n_items, oldest first, may be empty). The
  model only sees the newest `max_len` items, but with `exclude_history` every item of the full history is
  removed from that row's ranking.
* `queries[row]` is stripped; an empty or whitespace-only query is the empty query (the all-zero query vector,
  i.e. plain sequential recommendation). A model without query fusion ignores queries.
* Rows are ranked best first, ties broken by the lower item id (`metrics.top_k`); padding (id 0) is never
  returned.
* k is clamped, never an error: when some row has fewer than `k` eligible items (catalogue minus excluded
  history), every row of that call returns `min(k, fewest eligible items over the batch)` columns, so the
  result stays rectangular. Only a negative k raises.
* Rows are independent: each distinct non-empty query is encoded with its own encoder call and each row gets its
  own model forward (a batched forward rounds with the batch's shape and can swap near-tied items), so a row's ids
  and scores never depend on the other rows of the call (only its width can, through the clamped k above):
  `n_envs=1` and `n_envs=64` give the same tool results. A call costs one encoder call per distinct non-empty query
  and one forward per row. Everything is deterministic: the same call gives the same result on both backends.
  (`scores`, the full-catalogue scorer of offline evaluation, runs one batched forward.)

`InProcessRetriever` runs the model in the calling process. `RayRetriever` serves the same model from one Ray
actor that many environments / rollout workers share: the driver `launch`es it (optionally under a name) and
other callers either receive the `RayRetriever` object itself (it pickles into a non-owning handle) or
`connect(name)`. Ray is imported lazily, only by `RayRetriever`; this module never imports it at import time.
"""

from __future__ import annotations

import functools
import operator
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from deeprec_env.data.dataset import stack_histories
from deeprec_env.metrics import top_k
from deeprec_env.trm.model import ModelConfig, SequentialRecommender


class TextEncoder(Protocol):
    """What the retriever needs from a text encoder (see `deeprec_env.text`)."""

    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalised rows; the empty string gives an all-zero row. A text's row must
        depend on the text alone (deeprec_env.text.TextEncoder caches only vectors it encoded on their own)."""
        ...


class Retriever(Protocol):
    """The TRM tool interface shared by `InProcessRetriever` and `RayRetriever`."""

    @property
    def n_items(self) -> int: ...

    def retrieve(
        self,
        histories: Sequence[Sequence[int]],
        queries: Sequence[str],
        k: int,
        exclude_history: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]: ...


# --- shared input handling ------------------------------------------------------------------------------------


def _as_histories(histories: Sequence[Sequence[int]], n_items: int) -> list[np.ndarray]:
    """Each history as an int64 array of ids in 0..n_items (0 is padding and is ignored)."""
    out = []
    for row, history in enumerate(histories):
        ids = np.asarray(history, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() > n_items):
            raise ValueError(f"history {row} holds item ids outside 1..{n_items}")
        out.append(ids)
    return out


def _clean_queries(queries: Sequence[str], batch: int) -> list[str]:
    if isinstance(queries, str):
        raise TypeError("queries must be a sequence of strings, one per history, not a single string")
    if len(queries) != batch:
        raise ValueError(f"got {batch} histories but {len(queries)} queries")
    return ["" if q is None else str(q).strip() for q in queries]


def _clamped_k(k: int, exclude: list[np.ndarray] | None, n_items: int) -> int:
    """`k` clamped to the fewest eligible items over the batch (catalogue minus that row's excluded history)."""
    k = operator.index(k)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if exclude:
        excluded = max(len(np.unique(ids[ids > 0])) for ids in exclude)
        return min(k, n_items - excluded)
    return min(k, n_items)


# --- in-process backend ---------------------------------------------------------------------------------------


class InProcessRetriever:
    """The TRM tool running in this process.

    `model` is put in eval mode and must not be trained further while the retriever uses it: with
    `cache_item_vectors` (default) the catalogue's item vectors are computed once, not twice per forward (the
    text projection of every item dominates the cost of a small batch); call `refresh()` after changing weights.
    `encoder` may be None when only empty queries will be asked. Thread-safe: concurrent calls are serialised.
    """

    def __init__(
        self, model: SequentialRecommender, encoder: TextEncoder | None = None, cache_item_vectors: bool = True
    ):
        self.model = model.eval()
        self.encoder = encoder
        self.cache_item_vectors = cache_item_vectors
        self.device = next(model.parameters()).device
        self._lock = threading.Lock()
        self._item_vectors: torch.Tensor | None = None
        if model.config.fuse_query and encoder is not None and encoder.dim != model.text_dim:
            raise ValueError(f"encoder dim {encoder.dim} != model text dim {model.text_dim}")
        self.refresh()

    @property
    def n_items(self) -> int:
        return self.model.n_items

    @property
    def max_len(self) -> int:
        return self.model.config.max_len

    def refresh(self) -> None:
        """Recompute the cached item vectors (after the model's weights changed)."""
        self._item_vectors = None
        if self.cache_item_vectors:
            with torch.inference_mode():
                self._item_vectors = self.model.item_vectors()

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray | None:
        """(batch, text_dim) float32 query vectors, all-zero rows for empty queries; None for a model without
        query fusion. One encoder call per distinct non-empty (stripped) query, so a query's vector never depends on
        the others; none if all are empty."""
        texts = _clean_queries(queries, len(queries))
        if not self.model.config.fuse_query:
            return None
        out = np.zeros((len(texts), self.model.text_dim), dtype=np.float32)
        unique = sorted({t for t in texts if t})
        if unique and self.encoder is None:
            raise ValueError("this retriever has no text encoder: only empty queries are possible; pass encoder=")
        vector_of = {}
        for text in unique:
            encoded = np.asarray(self.encoder.encode([text]), dtype=np.float32)
            if encoded.shape != (1, out.shape[1]):
                raise ValueError(f"encoder returned shape {encoded.shape} for one text, expected {(1, out.shape[1])}")
            vector_of[text] = encoded[0]
        for row, text in enumerate(texts):
            if text:
                out[row] = vector_of[text]
        return out

    def score_matrix(self, histories: Sequence[Sequence[int]], query_text: np.ndarray | None) -> np.ndarray:
        """The model's scores (batch, n_items + 1) float32 for (already encoded) query vectors; column 0 is -inf.
        Histories are cut to the newest `max_len` items. One forward."""
        batch = torch.from_numpy(stack_histories(histories, self.max_len)).to(self.device)
        query = None if query_text is None else torch.from_numpy(np.asarray(query_text, np.float32)).to(self.device)
        with self._lock, torch.inference_mode():
            scores = self.model(batch, query, self._item_vectors)
        return scores.float().cpu().numpy()

    def scores(self, histories: Sequence[Sequence[int]], queries: Sequence[str] | None = None) -> np.ndarray:
        """Full-catalogue scores (batch, n_items + 1) for text queries (None = all empty): the `Scorer` that
        offline evaluation ranks with."""
        query_text = None if queries is None else self.encode_queries(queries)
        return self.score_matrix(_as_histories(histories, self.n_items), query_text)

    def retrieve(
        self,
        histories: Sequence[Sequence[int]],
        queries: Sequence[str],
        k: int,
        exclude_history: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item ids (batch, k) int64 and their scores (batch, k) float32, best first; see the module doc."""
        hist = _as_histories(histories, self.n_items)
        texts = _clean_queries(queries, len(hist))
        exclude = hist if exclude_history else None
        k = _clamped_k(k, exclude, self.n_items)
        ids = np.zeros((len(hist), k), dtype=np.int64)
        scores = np.zeros((len(hist), k), dtype=np.float32)
        if not hist or k == 0:
            return ids, scores
        query_text = self.encode_queries(texts)
        for row in range(len(hist)):  # one forward per row: see the module docstring
            rows = slice(row, row + 1)
            full = self.score_matrix(hist[rows], None if query_text is None else query_text[rows])
            top = top_k(full, k, None if exclude is None else exclude[rows])
            ids[rows] = top
            scores[rows] = np.take_along_axis(full, top, axis=1)
        return ids, scores


# --- Ray backend ----------------------------------------------------------------------------------------------


def _ray():
    """The `ray` module, imported here (never at module import time); Ray must already be initialised."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError(
            "Ray is not initialised: call ray.init(...) (or connect to a cluster) before using RayRetriever"
        )
    return ray


def _return(value: Any) -> Any:
    return value


class _RetrieverActor:
    """Body of the Ray actor: rebuilds the model and encoder in the actor process, wraps an InProcessRetriever."""

    def __init__(
        self,
        model_state_dict: dict[str, torch.Tensor],
        model_config: ModelConfig | dict,
        n_items: int,
        item_text: np.ndarray | None,
        encoder_factory: Callable[[], TextEncoder] | None,
        torch_threads: int | None,
    ):
        from deeprec_env.runtime import configure_threads

        configure_threads(torch_threads)
        config = model_config if isinstance(model_config, ModelConfig) else ModelConfig(**model_config)
        # Copy: arrays from Ray's object store are read-only and the model keeps item_text as a buffer.
        text = None if item_text is None else torch.from_numpy(np.array(item_text, dtype=np.float32))
        model = SequentialRecommender(n_items, config, text)
        model.load_state_dict(model_state_dict)
        encoder = None if encoder_factory is None else encoder_factory()
        self.retriever = InProcessRetriever(model, encoder)

    def retrieve(self, histories, queries, k, exclude_history=True):
        return self.retriever.retrieve(histories, queries, k, exclude_history)

    def encode(self, texts):
        return self.retriever.encoder.encode(texts)

    def info(self) -> dict:
        encoder = self.retriever.encoder
        return {
            "n_items": self.retriever.n_items,
            "pid": os.getpid(),
            "torch_threads": torch.get_num_threads(),
            "encoder_dim": None if encoder is None else encoder.dim,
        }


class RayRetriever:
    """The TRM tool served by one Ray actor shared by many callers; `retrieve` blocks on the actor's answer.

    Build it with `launch` (or `from_in_process`) in the driver; the launching object owns the actor and
    `close()` kills it. Share it by passing the object to Ray tasks/actors (it pickles into a non-owning handle)
    or by `launch(..., name=...)` + `RayRetriever.connect(name)`. Non-owning handles' `close()` only drops the
    handle; `kill()` kills the actor from anywhere. The actor is not detached: it dies with the process that
    launched it (and when every handle to it is gone), so keep the launching object alive. Named actors are
    visible within one Ray namespace (by default that of the driver's job); pass `namespace` to share across
    jobs. Ray is never initialised here: call `ray.init(...)` first, otherwise launch/connect raise
    RuntimeError. The actor serves one request at a time, each a whole batch.
    """

    def __init__(self, actor: Any, name: str | None = None, namespace: str | None = None, owner: bool = False):
        self._actor = actor
        self.name = name
        self.namespace = namespace
        self._owner = owner
        self._info: dict | None = None

    @classmethod
    def launch(
        cls,
        model_state_dict: dict[str, torch.Tensor],
        model_config: ModelConfig | dict,
        n_items: int,
        item_text: np.ndarray | None,
        encoder_factory: Callable[[], TextEncoder] | None,
        name: str | None = None,
        num_cpus: float = 1,
        namespace: str | None = None,
        torch_threads: int | None = None,
    ) -> RayRetriever:
        """Start the actor (named if `name`), wait until the model is built, and return an owning handle.
        `encoder_factory` is pickled and called inside the actor (None only for a model without query fusion);
        `torch_threads` sets torch's threads there (`deeprec_env.runtime.configure_threads`: None is automatic)."""
        ray = _ray()
        options: dict[str, Any] = {"num_cpus": num_cpus}
        if name is not None:
            options["name"] = name
            if namespace is not None:
                options["namespace"] = namespace
        state = {key: value.detach().cpu() for key, value in model_state_dict.items()}
        if item_text is not None:
            item_text = np.asarray(item_text, dtype=np.float32)
        actor = (
            ray.remote(_RetrieverActor)
            .options(**options)
            .remote(state, model_config, n_items, item_text, encoder_factory, torch_threads)
        )
        retriever = cls(actor, name, namespace, owner=True)
        try:
            retriever.info()  # surfaces construction errors here rather than at the first retrieve
        except Exception:
            ray.kill(actor)
            raise
        return retriever

    @classmethod
    def from_in_process(
        cls,
        retriever: InProcessRetriever,
        encoder_factory: Callable[[], TextEncoder] | None = None,
        **launch_kwargs: Any,
    ) -> RayRetriever:
        """Serve `retriever`'s model from an actor. Without `encoder_factory` the encoder object itself is
        pickled into the actor (fine for light encoders; pass a factory to load a heavy one there instead)."""
        model = retriever.model
        if encoder_factory is None and retriever.encoder is not None:
            encoder_factory = functools.partial(_return, retriever.encoder)
        item_text = model.item_text.detach().cpu().numpy() if model.text_dim is not None else None
        return cls.launch(model.state_dict(), model.config, model.n_items, item_text, encoder_factory, **launch_kwargs)

    @classmethod
    def connect(cls, name: str, namespace: str | None = None) -> RayRetriever:
        """A non-owning handle to the named actor started by `launch(..., name=name)`."""
        ray = _ray()
        return cls(ray.get_actor(name, namespace=namespace), name, namespace, owner=False)

    def __reduce__(self):  # a pickled copy (e.g. sent to a rollout worker) never owns the actor
        return (RayRetriever, (self._actor, self.name, self.namespace, False))

    def _handle(self) -> Any:
        if self._actor is None:
            raise RuntimeError("this RayRetriever is closed")
        return self._actor

    def info(self) -> dict:
        """{"n_items", "pid", "torch_threads"} of the actor."""
        if self._info is None:
            self._info = _ray().get(self._handle().info.remote())
        return self._info

    @property
    def n_items(self) -> int:
        return self.info()["n_items"]

    def served_encoder(self) -> ServedEncoder:
        """The actor's sentence encoder as a client with `TextEncoder`'s `encode` and `dim` (the encoder is served
        once, with the model, to every process holding a handle)."""
        dim = self.info()["encoder_dim"]
        if dim is None:
            raise ValueError("this RayRetriever serves no sentence encoder: launch it with an encoder_factory")
        return ServedEncoder(self._handle(), dim)

    def retrieve(
        self,
        histories: Sequence[Sequence[int]],
        queries: Sequence[str],
        k: int,
        exclude_history: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Same contract as `InProcessRetriever.retrieve`, computed in the actor."""
        hist = [np.asarray(h, dtype=np.int64).reshape(-1) for h in histories]  # compact, zero-copy transfer
        return _ray().get(self._handle().retrieve.remote(hist, list(queries), k, exclude_history))

    def close(self) -> None:
        """Kill the actor if this handle launched it, otherwise just drop the handle. Idempotent."""
        if self._actor is not None and self._owner:
            self.kill()
        self._actor = None

    def kill(self) -> None:
        """Kill the actor, whoever launched it; every handle to it stops working."""
        if self._actor is not None:
            import ray

            if ray.is_initialized():
                ray.kill(self._actor)
        self._actor = None

    def __enter__(self) -> RayRetriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ServedEncoder:
    """A sentence encoder served by a `RayRetriever`'s actor: `encode(texts)` as `TextEncoder.encode` computes it
    there (with its cache), `dim`. Picklable; it never owns the actor."""

    def __init__(self, actor: Any, dim: int):
        self._actor, self.dim = actor, dim

    def encode(self, texts: Sequence[str], **_: Any) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of strings, not a single string")
        return _ray().get(self._actor.encode.remote([str(t) for t in texts]))


def build_retriever(
    backend: str,
    model: SequentialRecommender,
    encoder: TextEncoder | None = None,
    **ray_kwargs: Any,
) -> Retriever:
    """The TRM tool for a backend: `local` is an InProcessRetriever; `ray` a RayRetriever serving the same model
    (`ray_kwargs` go to `RayRetriever.launch`: encoder_factory, name, num_cpus, namespace, torch_threads)."""
    local = InProcessRetriever(model, encoder)
    if backend == "local":
        if ray_kwargs:
            raise TypeError(f"unexpected arguments for the local backend: {sorted(ray_kwargs)}")
        return local
    if backend == "ray":
        return RayRetriever.from_in_process(local, **ray_kwargs)
    raise ValueError(f"unknown retriever backend {backend!r}; expected 'local' or 'ray'")
