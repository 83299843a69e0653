"""Tag actions: the DeepRec episode as a discrete-action, fixed-size-observation environment for standard RL libraries.

After RecGPT's item-tag prediction: a policy picks the next TRM query from a per-dataset tag vocabulary, or ends the
episode with an answer assembled by a rule over what the tool returned. Every action is rendered into the ordinary
text protocol by a text agent and stepped through `DeepRecEnv`, so rewards, limits, logs and evaluation are exactly
the text agents'.

* `TagVocabulary`: the catalogue's most common item aspects (`trm.queries.item_aspects`: genres or categories, eras,
  decades; on catalogues without categories, platforms, product kinds and title keywords).
* Actions (`action_names` gives their order): the empty query, one query per tag (the tag itself is the
  preference), with `env.requests` one query holding the user's request verbatim, then one answer per rule over the
  episode's tool results: every rule of `ANSWER_RULES` by default, or a configured subset (one rule: the answer is
  fixed and the policy chooses only its queries).
* `TagActionAgent`: a `TextAgent` that reads its features from what any agent sees (the prompt's history cards,
  the request, the tool results so far) and renders an action index into a protocol segment. Given a `choose`
  function (observation -> action; `agents.training.ppo.load_tag_agent` makes one of a trained policy) it plays
  episodes on its own, so a trained tag policy is evaluated and used as a warm-start teacher like every other text
  agent.
* `TagActionEnv`: the Gymnasium wrapper. Observation: `{"observations": Box, "action_mask": Box}` (the layout of
  RLlib's action-masking modules); `TagActionAgent.observe` documents the features. Action: `Discrete`. Masked:
  tags already asked, queries once `max_tool_calls` calls ran, the request query without a request, answers before
  the first call. A masked action is still a valid action: it is rendered and stepped like any other (an answer
  before any call fails the format check; a query past the limit truncates the episode).
"""

from __future__ import annotations

import functools
import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.utils import RecordConstructorArgs

from agents.baselines import TextAgent
from deeprec_env.data.dataset import RecDataset
from deeprec_env.env import DeepRecEnv
from deeprec_env.trm.queries import aspect_table

ANSWER_RULES = ("history", "anchored", "fused", "last")  # how an answer ranks tool results (`TagActionAgent.ranked`)
RECENT_ITEMS = 3  # history items whose tags count as "recent"
FUSION_K = 10.0  # reciprocal-rank fusion constant of the "fused" and "anchored" rules
ANCHOR_WEIGHT = 6.0  # "anchored": an anchor call's list (empty query, request) counts this many times as a tag call's
HISTORY_SCALE = 100.0  # history length feature: shown items / this
MAX_TAGS = 48  # tag vocabulary: at most this many of the most common item aspects
MIN_ITEMS = 10  # a tag must describe at least this many items


@dataclass(frozen=True)
class TagVocabulary:
    """The tags a policy may query, most common first, and every item's tags as a 0/1 matrix (row = item id)."""

    tags: tuple[str, ...]
    item_tags: np.ndarray  # (n_items + 1, len(tags)) float32; row 0 (padding) is zero

    @classmethod
    def build(cls, dataset: RecDataset, max_tags: int = MAX_TAGS, min_items: int = MIN_ITEMS) -> TagVocabulary:
        """The `max_tags` aspects most items carry, among those at least `min_items` items carry."""
        ref, built = _VOCABULARIES.get(id(dataset), (None, {}))
        if ref is None or ref() is not dataset:
            built = {}
            _VOCABULARIES[id(dataset)] = (weakref.ref(dataset), built)
        if (max_tags, min_items) not in built:
            built[max_tags, min_items] = _vocabulary(dataset, max_tags, min_items)
        return built[max_tags, min_items]

    def __len__(self) -> int:
        return len(self.tags)

    @functools.cached_property
    def _pattern(self) -> re.Pattern[str] | None:
        if not self.tags:
            return None
        alternatives = "|".join(re.escape(t) for t in sorted(self.tags, key=len, reverse=True))
        return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tags)}

    def in_text(self, text: str) -> np.ndarray:
        """0/1 per tag: whether the text states it (case-insensitive, whole words)."""
        found = np.zeros(len(self.tags), np.float32)
        if self._pattern is not None:
            for match in self._pattern.finditer(text.casefold()):
                found[self._index[match.group(0)]] = 1.0
        return found

    def shares(self, items: Sequence[int]) -> np.ndarray:
        """Per tag, the share of `items` that carry it (zeros for no items)."""
        if not len(items):
            return np.zeros(len(self.tags), np.float32)
        return self.item_tags[np.asarray(items, dtype=np.int64)].mean(axis=0)


_VOCABULARIES: dict[int, tuple[weakref.ref, dict]] = {}  # id(dataset) -> (the dataset, {(max_tags, min_items): vocab})


def _vocabulary(dataset: RecDataset, max_tags: int, min_items: int) -> TagVocabulary:
    table = aspect_table(dataset)
    counts: dict[str, int] = {}
    for aspects in table:
        for aspect in set(aspects):
            counts[aspect] = counts.get(aspect, 0) + 1
    tags = tuple(sorted((a for a, n in counts.items() if n >= min_items), key=lambda a: (-counts[a], a))[:max_tags])
    column = {t: j for j, t in enumerate(tags)}
    item_tags = np.zeros((len(table), len(tags)), np.float32)
    for item, aspects in enumerate(table):
        for aspect in aspects:
            if aspect in column:
                item_tags[item, column[aspect]] = 1.0
    return TagVocabulary(tags, item_tags)


def action_names(vocabulary: TagVocabulary, requests: bool, answer_rules: Sequence[str] = ANSWER_RULES) -> list[str]:
    """Every action's name, in action-index order: "query:" (empty), "query:<tag>", "query:<request>",
    "answer:<rule>"."""
    unknown = [r for r in answer_rules if r not in ANSWER_RULES]
    if unknown or not answer_rules:
        raise ValueError(f"answer rules {list(answer_rules)}: give one or more of {', '.join(ANSWER_RULES)}")
    return (
        ["query:"]
        + [f"query:{t}" for t in vocabulary.tags]
        + (["query:<request>"] if requests else [])
        + [f"answer:{r}" for r in answer_rules]
    )


class TagActionAgent(TextAgent):
    """Features and rendering of tag actions (see the module docstring); `choose(observation) -> action` makes it an
    agent that acts on its own.

    requests: whether the env shows requests (the action space has the request query); max_tool_calls: the env's
    limit (queries are masked once that many calls ran); answer_rules: the rules the answer actions use."""

    name = "tag-policy"

    def __init__(
        self,
        dataset: RecDataset,
        vocabulary: TagVocabulary,
        requests: bool,
        max_tool_calls: int,
        choose: Callable[[dict[str, np.ndarray]], int] | None = None,
        answer_rules: Sequence[str] = ANSWER_RULES,
        **kwargs: Any,
    ):
        super().__init__(dataset, **kwargs)
        self.vocabulary = vocabulary
        self.requests = requests
        self.max_tool_calls = max_tool_calls
        self.choose = choose
        self.actions = action_names(vocabulary, requests, answer_rules)
        self.answer_rules = tuple(answer_rules)
        self.n_queries = len(self.actions) - len(self.answer_rules)
        self.request_action = len(vocabulary) + 1 if requests else None
        self.asked: set[int] = set()
        self.request = ""

    @property
    def n_features(self) -> int:
        return 3 * len(self.vocabulary) + self.n_queries + 6

    def reset(self, observation: str, info: dict) -> None:
        super().reset(observation, info)
        self.request = info.get("request", "") if self.requests else ""
        self.asked = set()
        vocabulary = self.vocabulary
        self.long_term = vocabulary.shares(self.history)
        self.recent = vocabulary.shares(self.history[-RECENT_ITEMS:])
        self.request_tags = vocabulary.in_text(self.request)

    def observe(self, info: dict) -> dict[str, np.ndarray]:
        """The observation: `observations` = [tag shares over the shown history (V), over its last `RECENT_ITEMS`
        items (V), the request's tags (V), the queries asked so far (one per query action), calls so far /
        max_tool_calls, whether the request states a tag, the mean history share of the request's tags, the overlap of
        the last call's top rec_k with the first call's, with all earlier calls', history length / 100];
        `action_mask` = 1 for the actions allowed now."""
        calls, long_term, request = info.get("tool_calls", []), self.long_term, self.request_tags
        asked = np.zeros(self.n_queries, np.float32)
        asked[list(self.asked)] = 1.0
        last = set(calls[-1]["item_ids"][: self.rec_k]) if calls else set()
        first = set(calls[0]["item_ids"][: self.rec_k]) if calls else set()
        earlier = {i for call in calls[:-1] for i in call["item_ids"][: self.rec_k]}
        scalars = [
            len(calls) / self.max_tool_calls,
            float(request.any()),
            float(request @ long_term) / max(float(request.sum()), 1.0),
            len(last & first) / self.rec_k if len(calls) > 1 else 0.0,
            len(last & earlier) / self.rec_k,
            min(len(self.history) / HISTORY_SCALE, 1.0),
        ]
        features = np.concatenate([long_term, self.recent, request, asked, np.asarray(scalars, np.float32)])
        mask = np.zeros(len(self.actions), np.float32)
        if len(calls) < self.max_tool_calls:
            mask[: self.n_queries] = 1.0 - asked
            if self.request_action is not None and not self.request:
                mask[self.request_action] = 0.0
        if calls:
            mask[self.n_queries :] = 1.0
        return {"observations": features.astype(np.float32), "action_mask": mask}

    def segment(self, action: int, info: dict) -> str:
        """The protocol segment of action index `action`."""
        action = int(action)
        if not 0 <= action < len(self.actions):
            raise ValueError(f"tag action {action} is outside 0..{len(self.actions) - 1}")
        if action < self.n_queries:
            self.asked.add(action)
            if action == 0:
                return f"First, what does the recommender predict from the history alone?\n{self._call('')}"
            if action == self.request_action:
                return f"The user asks: {self.request} I search for exactly that.\n{self._call(self.request)}"
            tag = self.vocabulary.tags[action - 1]
            return f"The history suggests {tag}.\n{self._call(tag)}"
        rule = self.answer_rules[action - self.n_queries]
        calls = info.get("tool_calls", [])
        return self.answer(self.ranked(rule, calls), f"I answer with the {rule} rule over {len(calls)} searches.", info)

    def _call(self, preference: str) -> str:
        return self.codec.render_tool_call(preference)

    def ranked(self, rule: str, calls: Sequence[dict]) -> list[int]:
        """The answer's items outside the shown history: "history": the list of the call with the empty query (what
        the TRM predicts from the history alone; the first call's without one), in its order; "anchored":
        reciprocal-rank fusion over every call with the lists of the anchors, the empty query and the user's request,
        weighted `ANCHOR_WEIGHT` times (what the sequence and the user's own words say leads; items the tag calls
        agree on move up within it); "fused": the same fusion with equal weights; "last": the last call's list.
        Fewer than rec_k are filled with the other calls' items in call and rank order."""
        history = set(self.history)
        lists = [[i for i in call["item_ids"] if i not in history] for call in calls]
        if not lists:
            return []
        empty = [not call["preference"].strip() for call in calls]
        request = self.request.strip()
        anchors = [e or bool(request) and c["preference"].strip() == request for e, c in zip(empty, calls, strict=True)]
        if rule in ("fused", "anchored"):
            scores: dict[int, float] = {}
            for items, anchor in zip(lists, anchors, strict=True):
                weight = ANCHOR_WEIGHT if anchor and rule == "anchored" else 1.0
                for rank, item in enumerate(items):
                    scores[item] = scores.get(item, 0.0) + weight / (FUSION_K + rank)
            chosen = sorted(scores, key=lambda i: (-scores[i], i))
        elif rule == "history":
            chosen = list(next((items for items, anchor in zip(lists, empty, strict=True) if anchor), lists[0]))
        else:
            chosen = list(lists[-1])
        rest = (i for items in lists for i in items)
        return list(dict.fromkeys([*chosen, *rest]))

    def act(self, observation: str, info: dict) -> str:
        if self.choose is None:
            raise ValueError("this TagActionAgent has no policy: give it choose= (agents.training.ppo.load_tag_agent)")
        return self.segment(self.choose(self.observe(info)), info)


class TagActionEnv(gymnasium.Wrapper, RecordConstructorArgs):
    """A `DeepRecEnv` with tag actions (see the module docstring). Rewards, termination, truncation and info are the
    wrapped env's; the info of every step adds `action_name`."""

    def __init__(
        self,
        env: gymnasium.Env,
        max_tags: int = MAX_TAGS,
        min_items: int = MIN_ITEMS,
        answer_rules: Sequence[str] = ANSWER_RULES,
    ):
        RecordConstructorArgs.__init__(self, max_tags=max_tags, min_items=min_items, answer_rules=answer_rules)
        gymnasium.Wrapper.__init__(self, env)
        inner: DeepRecEnv = env.unwrapped
        config = inner.config
        self.vocabulary = TagVocabulary.build(inner.dataset, max_tags, min_items)
        self.agent = TagActionAgent(
            inner.dataset,
            self.vocabulary,
            config.requests,
            config.max_tool_calls,
            answer_rules=answer_rules,
            protocol=inner.codec,
            rec_k=config.rec_k,
        )
        n_actions = len(self.agent.actions)
        self.action_space = spaces.Discrete(n_actions)
        self.observation_space = spaces.Dict(
            {
                "observations": spaces.Box(0.0, 1.0, (self.agent.n_features,), np.float32),
                "action_mask": spaces.Box(0.0, 1.0, (n_actions,), np.float32),
            }
        )
        self._info: dict = {}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        text, info = self.env.reset(seed=seed, options=options)
        self.agent.reset(text, info)
        self._info = info
        return self.agent.observe(info), info

    def step(self, action: Any):
        segment = self.agent.segment(int(action), self._info)
        _, reward, terminated, truncated, info = self.env.step(segment)
        self._info = info
        info = {**info, "action_name": self.agent.actions[int(action)]}
        return self.agent.observe(info), reward, terminated, truncated, info
