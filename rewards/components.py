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
| grounding         | process | -(1/rec_k) sum_i (1 - g_i), g_i = 1 - best retrieval rank / list | [-1, 0]            |
| hit_rank          | outcome | 1 + 0.2 * (rec_k - i), target on answer line i (0-based), else 0 | 0 or [1.2, 3]      |
| point             | outcome | 10 * sum_i w_i sim_i / sum_i w_i, w_i = (1 - i/rec_k)^2          | [0, 10]            |
| ndcg              | outcome | 1 / log2(p + 2), target at p in `ranked_ids`, else 0 (extra)     | [0, 1]             |
| invalid_penalty   | process | -n_invalid / rec_k (extra)                                       | <= 0               |
| duplicate_penalty | process | -n_duplicate / rec_k (extra)                                     | <= 0               |
| history_penalty   | outcome | -(share of valid answer items in the history) (extra)            | [-1, 0]            |
| interest          | process | 1 - mean total-variation distance of stated to true interests    | [0, 1]             |
| explanation       | outcome | (1/rec_k) sum over lines of the judge's overall score of reasons | [0, 1]             |

`interest` and `explanation` are the RecGPT terms (off by default; the `recgpt` preset turns them on).

`calls` and the preferences are the executed tool calls that count under the component's `calls` rule: "all" (the
paper), "non_empty" (a letter or digit in the preference) or "informative" (`CallCounter`: the call names
no catalogue item and states an aspect of the user's history that no earlier counted call stated).

Guard rails against reward hacking (docs/rewards.md; the probe each one answers in brackets):
- invocation and diversity count informative calls only [calling the tool endlessly; empty or invisible queries;
  identical queries; nonsense, single title words, fixed words for every user, copied history titles], and
  invocation is capped at `cap` calls.
- grounding pays for answering what the tool found, by the tool's own ranking [popular titles for everyone; history
  items; re-ranking the found pool by similarity].
- point scores invalid lines (None, id <= 0) and repeated items 0, even if the env did not mark a repeat, so a
  repeated title cannot multiply similarity [repeating one item; junk answers]. Its weights are normalised over all
  `rec_k` slots rather than over the lines given, so a short answer cannot turn one good item into a high mean
  [short/junk answers; identical to the paper whenever the format is valid, since that needs exactly rec_k lines].
  Negative similarities are clipped to 0 (`clip_negative`), so an invalid or repeated line (0) never beats a real
  item; without the clip, replacing a dissimilar item by junk would raise the reward [junk answers]. History items
  other than the target score 0 (`exclude_history`): they are close to the target by construction but are not
  recommendations [listing history items]. `clip_negative=False, exclude_history=False` is the paper's formula.
- hit_rank and ndcg only look at the first rec_k lines [pasting every retrieved item].
- interest counts only the first `max_tags` tags of each part and compares them with the user's top `max_tags`, so
  listing every tag spreads weight over tags the user does not favour [every tag], and a title is no tag [copied
  history titles].
- explanation divides by rec_k, so a missing or invalid line's reason earns nothing; the judge scores faithfulness,
  personalisation and specificity (`rewards.judge`) [explanation stuffing, copied cards, generic praise].
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from deeprec_env.episode import Episode
from deeprec_env.protocol.interests import normalize_tag

Level = Literal["process", "outcome"]
LEVELS: tuple[str, ...] = ("process", "outcome")


@dataclass(frozen=True, eq=False)
class RewardContext:
    """What model-based components need, built once per run and passed to every call.

    encoder: object with `.encode(list[str]) -> np.ndarray` of L2-normalised rows ("" -> zeros), e.g.
        `deeprec_env.text.TextEncoder`; needed by `diversity` and by informative-call counting.
    item_text: (n_items + 1, d) L2-normalised item text embeddings, row 0 zeros; needed by `point`.
    item_vectors: (n_items + 1, h) L2-normalised TRM item embeddings, row 0 zeros; needed by `point`.
    item_aspects: per item id (row 0 empty), the item's aspects in lower case (`deeprec_env.trm.queries.item_aspects`:
        genres or categories, era, decade; title keywords, platforms, kinds where a catalogue has no categories);
        needed by informative-call counting.
    names_item: text -> whether it names a catalogue item (e.g. `TitleMatcher.match(text) is not None`); needed by
        informative-call counting.
    latent_interests: per user id, the user's true interests {tag: weight} where a dataset knows them (synthetic);
        `interest` then scores the long-term part against them instead of the history's shares.
    judge: a `rewards.judge.Judge` (case -> per-line scores); needed by `explanation`.
    """

    encoder: Any = None
    item_text: np.ndarray | None = None
    item_vectors: np.ndarray | None = None
    item_aspects: Sequence[Sequence[str]] | None = None
    names_item: Callable[[str], bool] | None = None
    latent_interests: Sequence[Mapping[str, float]] | None = None
    judge: Any = None

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


CALL_RULES = ("all", "non_empty", "informative")
_PHRASE_SPLIT = re.compile(r"[;,\n]")


class TextVectors:
    """Sentence embeddings of short texts, cached per string (the same preferences and aspects recur across a group
    of rollouts): dropped when the context's encoder changes and trimmed oldest-first past `size` strings."""

    def __init__(self, size: int = 100_000) -> None:
        self.size = int(size)
        self._cache: dict[str, np.ndarray] = {}
        self._encoder: Any = None

    def __call__(self, texts: Sequence[str], context: RewardContext) -> np.ndarray:
        """(len(texts), d) L2-normalised float64 rows ("" -> zeros)."""
        if context.encoder is None:
            raise ValueError(
                "this reward needs RewardContext.encoder (e.g. deeprec_env.text.TextEncoder); pass one, or set the "
                "weights of diversity and of informative-call counting to 0"
            )
        if context.encoder is not self._encoder:
            self._cache.clear()
            self._encoder = context.encoder
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            vectors = np.asarray(context.encoder.encode(missing), dtype=np.float64).reshape(len(missing), -1)
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = np.where(norms > 0, vectors / np.maximum(norms, 1e-12), 0.0)
            self._cache.update(zip(missing, vectors, strict=True))
            while len(self._cache) > self.size:
                self._cache.pop(next(iter(self._cache)))
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 0))


class CallCounter:
    """Which executed tool calls count, under a rule of `CALL_RULES` (shared by `invocation` and `diversity`).

    "informative": a call counts when its preference (cleaned by the environment) names no catalogue item (neither
    the whole text nor any of its ';' / ',' separated phrases: `RewardContext.names_item`) and states at least one
    aspect of the user's whole history (`RewardContext.item_aspects` of the history items) that no earlier counted
    call stated. A phrase states an aspect when the aspect appears in it as whole words, or when their embeddings
    are within cosine `aspect_similarity` (synonyms: "science fiction" for "sci-fi"). So a query must say something
    about this user that the earlier ones did not: empty, invisible, nonsense, generic and repeated queries, single
    title words and copied titles do not count.
    """

    def __init__(self, aspect_similarity: float = 0.7) -> None:
        if not 0 < aspect_similarity <= 1:
            raise ValueError(f"aspect_similarity must be in (0, 1], got {aspect_similarity}")
        self.aspect_similarity = float(aspect_similarity)
        self.vectors = TextVectors()
        self._patterns: dict[str, re.Pattern[str]] = {}  # whole-word matcher per aspect, compiled once
        self._last: tuple[Any, tuple[str, ...]] | None = None

    def preferences(self, episode: Episode, context: RewardContext, rule: str) -> list[str]:
        """The counted calls' preferences, in call order."""
        executed = [call.preference for call in episode.tool_calls]
        if rule == "all":
            return executed
        stated = [p for p in executed if any(ch.isalnum() for ch in p)]
        if rule == "non_empty":
            return stated
        key = (episode.user, episode.split, len(episode.history), tuple(executed))
        if self._last is None or self._last[0] != key:
            self._last = (key, tuple(self._informative(episode, stated, context)))
        return list(self._last[1])

    def _informative(self, episode: Episode, stated: list[str], context: RewardContext) -> list[str]:
        if context.item_aspects is None or context.names_item is None:
            raise ValueError(
                "counting informative calls needs RewardContext.item_aspects and RewardContext.names_item (the stack "
                "binds them); or set reward.invocation.calls and reward.diversity.calls to 'non_empty'"
            )
        history = np.asarray(episode.history, dtype=np.int64).reshape(-1)
        aspects = sorted({a for item in history.tolist() for a in context.item_aspects[item] if a})
        if not aspects or not stated:
            return []
        patterns = [self._pattern(a) for a in aspects]
        aspect_vectors = self.vectors(aspects, context)
        counted, covered = [], set()
        for preference in stated:
            phrases = [p.strip() for p in _PHRASE_SPLIT.split(preference.casefold()) if p.strip()]
            if context.names_item(preference) or any(context.names_item(p) for p in phrases):
                continue
            text = preference.casefold()
            found = {a for a, pattern in zip(aspects, patterns, strict=True) if pattern.search(text)}
            if phrases:
                close = self.vectors(phrases, context) @ aspect_vectors.T >= self.aspect_similarity
                found |= {aspects[j] for j in np.flatnonzero(close.any(axis=0))}
            if found - covered:
                covered |= found
                counted.append(preference)
        return counted

    def _pattern(self, aspect: str) -> re.Pattern[str]:
        if aspect not in self._patterns:
            self._patterns[aspect] = re.compile(rf"(?<!\w){re.escape(aspect)}(?!\w)")
        return self._patterns[aspect]


def _check_rule(rule: str) -> str:
    if rule not in CALL_RULES:
        raise ValueError(f"unknown calls rule {rule!r}; use one of {CALL_RULES}")
    return rule


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
    0.5, 3 or more 1.0. `calls` counts the executed calls under `rule` (`CallCounter`; the paper's: "all")."""

    name = "invocation"
    level = "process"

    def __init__(
        self, weight: float = 1.0, base: float = 0.5, cap: int = 3, rule: str = "informative", counter=None
    ) -> None:
        super().__init__(weight)
        if int(cap) != cap or cap < 1:
            raise ValueError(f"invocation.cap must be an integer >= 1, got {cap}")
        self.base = float(base)
        self.cap = int(cap)
        self.rule = _check_rule(rule)
        self._counter = counter if counter is not None else CallCounter()

    def __call__(self, episode: Episode, context: RewardContext) -> float:
        calls = len(self._counter.preferences(episode, context, self.rule))
        return self.base * max(min(calls, self.cap) - 1, 0)


class DiversityReward(Component):
    """`scale * (1 - mean pairwise cosine)` of the counted calls' preference embeddings when there are >= 2, else 0
    (paper: diversity_base 0.2, every call; mean over the upper triangle, so repeating a query lowers it). Calls
    count under `rule` (`CallCounter`); with "informative", nonsense and off-user queries, which are maximally
    "diverse", earn nothing."""

    name = "diversity"
    level = "process"

    def __init__(self, weight: float = 1.0, scale: float = 0.2, rule: str = "informative", counter=None) -> None:
        super().__init__(weight)
        self.scale = float(scale)
        self.rule = _check_rule(rule)
        self._counter = counter if counter is not None else CallCounter()

    def prepare(self, episodes: Sequence[Episode], context: RewardContext) -> None:
        texts = [call.preference for e in episodes for call in e.tool_calls]
        if texts:
            self._counter.vectors(texts, context)

    def __call__(self, episode: Episode, context: RewardContext) -> float:
        prefs = self._counter.preferences(episode, context, self.rule)
        if len(prefs) < 2:
            return 0.0
        vectors = self._counter.vectors(prefs, context)
        upper = np.triu_indices(len(vectors), k=1)
        mean_cosine = float(np.clip((vectors @ vectors.T)[upper].mean(), -1.0, 1.0))
        return self.scale * (1.0 - mean_cosine)


class GroundingReward(Component):
    """`-(1/rec_k) * sum_i (1 - g_i)` over the answer slots i = 0..rec_k-1, with `g_i = 1 - r / n` for the item on
    line i when a tool call of the episode returned it at 0-based rank r of its n results (the best such rank), and
    g_i = 0 for a missing, invalid or repeated line or an item no call returned. 0 would be an answer of rank-1
    items only; the value measures how closely the answer follows what the tool found and how it ranked it [popular
    titles for everyone; history items; re-ranking the found pool by similarity]. Extra, off by default."""

    name = "grounding"
    level = "process"

    def __call__(self, episode: Episode, context: RewardContext) -> float:
        evidence: dict[int, float] = {}
        for call in episode.tool_calls:
            n = len(call.item_ids)
            for rank, item in enumerate(call.item_ids):
                evidence[item] = max(evidence.get(item, 0.0), 1.0 - rank / n)
        seen: set[int] = set()
        total = 0.0
        for item in episode.answer_ids[: episode.rec_k]:
            if item is None or item <= 0 or item in seen:
                continue
            seen.add(item)
            total += evidence.get(item, 0.0)
        return total / max(episode.rec_k, 1) - 1.0


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


def aspect_shares(items: Sequence[int], item_aspects: Sequence[Sequence[str]], top: int) -> dict[str, float]:
    """The `top` most frequent aspects over `items` (ties by name), with their counts renormalised to sum to 1."""
    counts: dict[str, int] = {}
    for item in items:
        for aspect in dict.fromkeys(normalize_tag(a) for a in item_aspects[int(item)]):
            counts[aspect] = counts.get(aspect, 0) + 1
    kept = sorted(counts, key=lambda a: (-counts[a], a))[:top]
    total = sum(counts[a] for a in kept)
    return {a: counts[a] / total for a in kept}


def stated_shares(entries: Sequence[tuple[str, float]], top: int) -> dict[str, float]:
    """The first `top` stated tags (a repeated tag adds up), weights renormalised; {} when they weigh nothing."""
    weights: dict[str, float] = {}
    for tag, weight in entries[:top]:
        weights[tag] = weights.get(tag, 0.0) + max(float(weight), 0.0)
    total = sum(weights.values())
    return {t: w / total for t, w in weights.items()} if total > 0 and math.isfinite(total) else {}


def total_variation(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """Half the L1 distance between two distributions over tags (tags missing from one weigh 0 there)."""
    return 0.5 * sum(abs(p.get(t, 0.0) - q.get(t, 0.0)) for t in set(p) | set(q))


class InterestReward(Component):
    """How well the agent's interest block (`Episode.interests`) matches the user: per part (long term: the whole
    history; recent: the last `recent_items` history items), 1 - total variation between the stated weights of the
    first `max_tags` tags and the shares of the user's `max_tags` most frequent aspects; the mean over the two parts.
    Where the context knows the users' latent interests (synthetic), the long-term part is scored against them
    instead, over their vocabulary (the categories: an era tag is neither right nor wrong there). 0 without a block;
    a part that states nothing scores 0."""

    name = "interest"
    level = "process"

    def __init__(self, weight: float = 1.0, max_tags: int = 5, recent_items: int = 5) -> None:
        super().__init__(weight)
        self.max_tags = int(max_tags)
        self.recent_items = int(recent_items)

    def truth(self, episode: Episode, context: RewardContext) -> dict[str, tuple[dict[str, float], set[str] | None]]:
        """Per part, the true shares and the vocabulary stated tags are read over (None: every tag)."""
        if context.item_aspects is None:
            raise ValueError("the interest reward needs RewardContext.item_aspects")
        history = np.asarray(episode.history)
        parts = {
            "long_term": (aspect_shares(history, context.item_aspects, self.max_tags), None),
            "recent": (aspect_shares(history[-self.recent_items :], context.item_aspects, self.max_tags), None),
        }
        if context.latent_interests is not None:
            latent = context.latent_interests[episode.user]
            top = stated_shares(sorted(latent.items(), key=lambda kv: (-kv[1], kv[0])), self.max_tags)
            parts["long_term"] = (top, set(latent))
        return parts

    def __call__(self, episode: Episode, context: RewardContext) -> float:
        if episode.interests is None:
            return 0.0
        scores = []
        for part, (truth, vocabulary) in self.truth(episode, context).items():
            entries = episode.interests.part(part)
            if vocabulary is not None:
                entries = tuple((tag, weight) for tag, weight in entries if tag in vocabulary)
            stated = stated_shares(entries, self.max_tags)
            scores.append(1.0 - total_variation(stated, truth) if stated and truth else 0.0)
        return float(np.mean(scores))


class ExplanationReward(Component):
    """The judged quality of the answer's reasons (`Episode.answer_reasons`): the judge's overall score
    (`rewards.judge.overall`) summed over the first rec_k lines that name a valid, new item and give a reason, divided
    by rec_k. 0 without reasons."""

    name = "explanation"
    level = "outcome"

    def __call__(self, episode: Episode, context: RewardContext) -> float:
        from rewards.judge import JudgeCase, overall

        if context.judge is None:
            raise ValueError("the explanation reward needs a judge (RewardContext.judge; see rewards.judge)")
        lines = [
            (item, reason)
            for item, reason in zip(episode.answer_ids[: episode.rec_k], episode.answer_reasons, strict=False)
            if item is not None and item > 0 and reason
        ]
        if not lines:
            return 0.0
        case = JudgeCase(
            items=tuple(int(i) for i, _ in lines),
            reasons=tuple(r for _, r in lines),
            history=tuple(int(i) for i in np.asarray(episode.history)),
            profile=episode.profile,
            request=episode.request,
        )
        return float(overall(context.judge(case)).sum()) / max(episode.rec_k, 1)
