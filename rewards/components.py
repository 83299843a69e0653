"""Reward components: small callables that read a finished `Episode` and return one UNWEIGHTED float.

Convention. Every component has a `name`, a `level` ("process" or "outcome"), a `weight` and its own parameters.
The parameters are the paper's constants (server/config/Reward.yaml of the DeepRec code: `format_error`,
`recall_num_base`, `recall_num_max`, `diversity_base`, `outcome_correct`, `outcome_linear`, `sim_reward_base`); they
fix the component's own value and range. `weight` (default 1.0) is a separate multiplier that `HierarchicalReward`
applies; weight 0 switches a component off, and it is then not computed at all. So the paper's rewards are every
weight 1.0 with the default parameters, and an ablation changes weights only.

| component         | level   | unweighted value (defaults)                                      | range (rec_k = 10) |
|-------------------|---------|------------------------------------------------------------------|--------------------|
| format            | process | 0 if `episode.format_ok` else -1                                 | {-1, 0}            |
| invocation        | process | 0.5 * (min(calls, 3) - 1), floor 0                               | [0, 1]             |
| diversity         | process | 0.2 * (1 - mean pairwise cosine of the preferences), if >= 2     | [0, 0.4]           |
| hit_rank          | outcome | 1 + 0.2 * (rec_k - i), target on answer line i (0-based), else 0 | 0 or [1.2, 3]      |
| point             | outcome | 10 * sum_i w_i sim_i / sum_i w_i, w_i = (1 - i/rec_k)^2          | [0, 10]            |
| ndcg              | outcome | 1 / log2(p + 2), target at p in `ranked_ids`, else 0 (extra)     | [0, 1]             |
| invalid_penalty   | process | -n_invalid / rec_k (extra)                                       | <= 0               |
| duplicate_penalty | process | -n_duplicate / rec_k (extra)                                     | <= 0               |
| history_penalty   | outcome | -(share of valid answer items in the history) (extra)            | [-1, 0]            |

`calls` and the preferences are the executed tool calls whose preference is non-empty after `strip()`.

Guard rails against reward hacking (docs/rewards.md; the probe each one answers in brackets):
- invocation counts only non-empty preferences and is capped at `cap` calls [calling the tool endlessly; empty calls].
- diversity ignores empty preferences, whose all-zero embedding would look maximally diverse [empty calls].
- point scores invalid lines (None, id <= 0) and repeated items 0, even if the env did not mark a repeat, so a
  repeated title cannot multiply similarity [repeating one item; junk answers]. Its weights are normalised over all
  `rec_k` slots rather than over the lines given, so a short answer cannot turn one good item into a high mean
  [short/junk answers; identical to the paper whenever the format is valid, since that needs exactly rec_k lines].
  Negative similarities are clipped to 0 (`clip_negative`), so an invalid or repeated line (0) never beats a real
  item; without the clip, replacing a dissimilar item by junk would raise the reward [junk answers]. History items
  other than the target score 0 (`exclude_history`): they are close to the target by construction but are not
  recommendations [listing history items]. `clip_negative=False, exclude_history=False` is the paper's formula.
- hit_rank and ndcg only look at the first rec_k lines [pasting every retrieved item].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from deeprec_env.episode import Episode

Level = Literal["process", "outcome"]
LEVELS: tuple[str, ...] = ("process", "outcome")


@dataclass(frozen=True, eq=False)
class RewardContext:
    """What model-based components need, built once per run and passed to every call.

    encoder: object with `.encode(list[str]) -> np.ndarray` of L2-normalised rows ("" -> zeros), e.g.
        `deeprec_env.text.TextEncoder`; needed by `diversity` only.
    item_text: (n_items + 1, d) L2-normalised item text embeddings, row 0 zeros; needed by `point`.
    item_vectors: (n_items + 1, h) L2-normalised TRM item embeddings, row 0 zeros; needed by `point`.
    """

    encoder: Any = None
    item_text: np.ndarray | None = None
    item_vectors: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("item_text", "item_vectors"):
            table = getattr(self, name)
            if table is not None and np.ndim(table) != 2:
                raise ValueError(f"RewardContext.{name} must be a 2-d (n_items + 1, dim) array, got {np.shape(table)}")
        if (
            self.item_text is not None
            and self.item_vectors is not None
            and len(self.item_text) != len(self.item_vectors)
        ):
            raise ValueError(
                f"RewardContext.item_text has {len(self.item_text)} rows but item_vectors has "
                f"{len(self.item_vectors)}; both must be (n_items + 1, dim) tables of the same dataset"
            )


@runtime_checkable
class RewardComponent(Protocol):
    """Anything `HierarchicalReward` can combine. An optional `prepare(episodes, context)` runs before a batch."""

    name: str
    level: Level
    weight: float

    def __call__(self, episode: Episode, context: RewardContext) -> float: ...


class Component:
    """Base class of the built-in components: `weight` plus the subclass's parameters (shown by `repr`)."""

    name: str = ""
    level: Level = "process"

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = float(weight)

    def __call__(self, episode: Episode, context: RewardContext) -> float:
        raise NotImplementedError

    def prepare(self, episodes: Sequence[Episode], context: RewardContext) -> None:
        """Batch hook, called by `HierarchicalReward.batch` before scoring: precompute shared work. No-op here."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


def _preferences(episode: Episode) -> list[str]:
    """Preferences of the executed tool calls, stripped, empty ones dropped."""
    return [p for p in (call.preference.strip() for call in episode.tool_calls) if p]


class FormatReward(Component):
    """0 when every format check passed (`episode.format_ok`), else `error` (paper: format_error = -1)."""

    name = "format"
    level = "process"

    def __init__(self, weight: float = 1.0, error: float = -1.0) -> None:
        super().__init__(weight)
        self.error = float(error)

    def __call__(self, episode: Episode, context: RewardContext) -> float:
        return 0.0 if episode.format_ok else self.error


class InvocationReward(Component):
    """`base * (min(calls, cap) - 1)`, floor 0 (paper: recall_num_base 0.5, recall_num_max 3): 1 call 0, 2 calls
    0.5, 3 or more 1.0. Only calls with a non-empty preference count [guards: endless calls, empty calls]."""

    name = "invocation"
    level = "process"

    def __init__(self, weight: float = 1.0, base: float = 0.5, cap: int = 3) -> None:
        super().__init__(weight)
        if int(cap) != cap or cap < 1:
            raise ValueError(f"invocation.cap must be an integer >= 1, got {cap}")
        self.base = float(base)
        self.cap = int(cap)

    def __call__(self, episode: Episode, context: RewardContext) -> float:
        calls = len(_preferences(episode))
        return self.base * max(min(calls, self.cap) - 1, 0)


class DiversityReward(Component):
    """`scale * (1 - mean pairwise cosine)` of the non-empty preference texts' embeddings when there are >= 2, else 0
    (paper: diversity_base 0.2; mean over the upper triangle, repeats included, so repeating a query lowers it).

    Relevance gate (not in the paper; `relevance_threshold` 0 turns it off): only preferences whose embedding has
    cosine >= the threshold with at least one of the user's last `relevance_items` history item texts count, so
    nonsense queries, which are maximally "diverse", earn nothing (probe: diverse gibberish). Needs
    `RewardContext.item_text`.

    Encodings are cached per string (the same preferences recur across a group of rollouts); the cache is dropped
    when the context's encoder changes and trimmed oldest-first past `cache_size` strings."""

    name = "diversity"
    level = "process"

    def __init__(
        self,
        weight: float = 1.0,
        scale: float = 0.2,
        relevance_threshold: float = 0.0,
        relevance_items: int = 20,
        cache_size: int = 100_000,
    ) -> None:
        super().__init__(weight)
        self.scale = float(scale)
        self.relevance_threshold = float(relevance_threshold)
        self.relevance_items = int(relevance_items)
        self._cache_size = int(cache_size)
        self._cache: dict[str, np.ndarray] = {}
        self._encoder: Any = None

    def _encode(self, texts: Sequence[str], context: RewardContext) -> None:
        if context.encoder is None:
            raise ValueError(
                "the diversity reward needs RewardContext.encoder (e.g. deeprec_env.text.TextEncoder); "
                "pass one or set reward.diversity.weight=0"
            )
        if context.encoder is not self._encoder:
            self._cache.clear()
            self._encoder = context.encoder
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if not missing:
            return
        vectors = np.asarray(context.encoder.encode(missing), dtype=np.float64).reshape(len(missing), -1)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = np.where(norms > 0, vectors / np.maximum(norms, 1e-12), 0.0)
        for text, vector in zip(missing, vectors, strict=True):
            self._cache[text] = vector
        while len(self._cache) > self._cache_size:
            self._cache.pop(next(iter(self._cache)))

    def prepare(self, episodes: Sequence[Episode], context: RewardContext) -> None:
        texts = [p for e in episodes if len(prefs := _preferences(e)) >= 2 for p in prefs]
        if texts:
            self._encode(texts, context)

    def __call__(self, episode: Episode, context: RewardContext) -> float:
        prefs = _preferences(episode)
        if len(prefs) < 2:
            return 0.0
        if context.encoder is not self._encoder or any(p not in self._cache for p in prefs):
            self._encode(prefs, context)
        vectors = np.stack([self._cache[p] for p in prefs])
        if self.relevance_threshold > 0:
            if context.item_text is None:
                raise ValueError(
                    "the diversity relevance gate needs RewardContext.item_text; or set "
                    "reward.diversity.relevance_threshold=0"
                )
            history = np.asarray(episode.history, dtype=np.int64)[-self.relevance_items :]
            if len(history) == 0:
                return 0.0
            relevance = (vectors @ np.asarray(context.item_text, np.float64)[history].T).max(axis=1)
            vectors = vectors[relevance >= self.relevance_threshold]
            if len(vectors) < 2:
                return 0.0
        upper = np.triu_indices(len(vectors), k=1)
        mean_cosine = float(np.clip((vectors @ vectors.T)[upper].mean(), -1.0, 1.0))
        return self.scale * (1.0 - mean_cosine)


class HitRankReward(Component):
    """`correct + linear * (rec_k - i)` when the target is on answer line i (0-based, invalid lines count, only the
    first rec_k lines), else 0 (paper: outcome_correct 1, outcome_linear 0.2, i.e. r_Hit + r_Rank): 3.0 at rank 1,
    1.2 at rank 10. Repeats of the target are None in `answer_ids`, so they cannot hit twice."""

    name = "hit_rank"
    level = "outcome"

    def __init__(self, weight: float = 1.0, correct: float = 1.0, linear: float = 0.2) -> None:
        super().__init__(weight)
        self.correct = float(correct)
        self.linear = float(linear)

    def __call__(self, episode: Episode, context: RewardContext) -> float:
        position = episode.target_position
        if position is None or position >= episode.rec_k:
            return 0.0
        return self.correct + self.linear * (episode.rec_k - position)


class PointReward(Component):
    """`scale * sum_i w_i sim_i / sum_i w_i` over the answer slots i = 0..rec_k-1 (paper: sim_reward_base 10),
    `w_i = (1 - i/rec_k)^2`, `sim_i = (item_text[a_i] . item_text[target] + item_vectors[a_i] . item_vectors[target])
    / 2` for the item a_i on line i. Lines that are missing, invalid (None, id <= 0) or repeat an earlier line's item
    have sim 0; with `clip_negative` sims are clipped to [0, 1] (else [-1, 1]); with `exclude_history` the user's
    history items other than the target have sim 0. See the module docstring for the probe each guard answers.

    The paper normalises over the n answer lines given; here n = rec_k always. The two agree whenever the format is
    valid (exactly rec_k lines), the only case in which the gated paper reward computes point at all."""

    name = "point"
    level = "outcome"

    def __init__(
        self, weight: float = 1.0, scale: float = 10.0, clip_negative: bool = True, exclude_history: bool = True
    ) -> None:
        super().__init__(weight)
        self.scale = float(scale)
        self.clip_negative = bool(clip_negative)
        self.exclude_history = bool(exclude_history)

    def __call__(self, episode: Episode, context: RewardContext) -> float:
        text, vectors = context.item_text, context.item_vectors
        if text is None or vectors is None:
            raise ValueError(
                "the point reward needs RewardContext.item_text and RewardContext.item_vectors (item text embeddings "
                "and TRM item embeddings); pass them or set reward.point.weight=0"
            )
        n = episode.rec_k
        target = episode.target
        skip = set(np.asarray(episode.history).tolist()) - {target} if self.exclude_history else set()
        positions: list[int] = []
        items: list[int] = []
        for position, item in enumerate(episode.answer_ids[:n]):
            if item is None or item <= 0 or item in skip:
                continue
            skip.add(item)  # a later repeat of this item scores 0
            positions.append(position)
            items.append(item)
        if not items:
            return 0.0
        ids = np.asarray(items)
        text_sim = text[ids].astype(np.float64) @ text[target].astype(np.float64)
        item_sim = vectors[ids].astype(np.float64) @ vectors[target].astype(np.float64)
        sims = np.clip(0.5 * (text_sim + item_sim), 0.0 if self.clip_negative else -1.0, 1.0)
        weights = (1.0 - np.asarray(positions, dtype=np.float64) / n) ** 2
        total_weight = float(np.sum((1.0 - np.arange(n) / n) ** 2))
        return self.scale * float(weights @ sims) / total_weight


class NDCGReward(Component):
    """`1 / log2(p + 2)` with p the target's 0-based position in `ranked_ids` (valid, de-duplicated answer items,
    first rec_k), else 0. Extra, off by default."""

    name = "ndcg"
    level = "outcome"

    def __call__(self, episode: Episode, context: RewardContext) -> float:
        ranked = episode.ranked_ids[: episode.rec_k]
        if episode.target not in ranked:
            return 0.0
        return 1.0 / math.log2(ranked.index(episode.target) + 2)


class InvalidPenalty(Component):
    """`-n_invalid / rec_k`: unmatched answer lines. Extra, off by default [junk answers]."""

    name = "invalid_penalty"
    level = "process"

    def __call__(self, episode: Episode, context: RewardContext) -> float:
        return -episode.n_invalid / max(episode.rec_k, 1)


class DuplicatePenalty(Component):
    """`-n_duplicate / rec_k`: answer lines repeating an earlier item. Extra, off by default [repeating one item]."""

    name = "duplicate_penalty"
    level = "process"

    def __call__(self, episode: Episode, context: RewardContext) -> float:
        return -episode.n_duplicate / max(episode.rec_k, 1)


class HistoryPenalty(Component):
    """`-(share of the valid answer items, first rec_k of ranked_ids, that are history items)`; the target never
    counts, even if it is also in the history. 0 when the answer has no valid item. Extra, off by default
    [listing history items]."""

    name = "history_penalty"
    level = "outcome"

    def __call__(self, episode: Episode, context: RewardContext) -> float:
        ranked = episode.ranked_ids[: episode.rec_k]
        if not ranked:
            return 0.0
        history = set(np.asarray(episode.history).tolist()) - {episode.target}
        return -sum(item in history for item in ranked) / len(ranked)
