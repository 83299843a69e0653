"""Baselines. ID-level scorers (popularity) rank the catalogue directly; text agents act through the
environment's text interface exactly as an LLM would: they write protocol segments and read observations.

Text agents (`TextAgent`): `reset(observation, info)` at the prompt, then `act(observation, info) -> segment`
once per turn. They read the user's history from the prompt (the numbered item cards), never from the dataset's
splits; only `oracle` is told the target (it is an upper bound). With the RecGPT options on (`info["interests"]`,
`info["explanations"]`), the teachers state the user's interests before their first call (the aspect shares of the
shown history and of its last items) and give every answer line a reason (what the item shares with the history).
"""

from __future__ import annotations

import importlib
import re
from collections import Counter
from collections.abc import Sequence
from itertools import zip_longest

import numpy as np

from deeprec_env.data.dataset import RecDataset
from deeprec_env.evaluation import Scorer
from deeprec_env.protocol import (
    REQUEST_HANDLE,
    THINK_CLOSE,
    Codec,
    TitleMatcher,
    get_codec,
    item_handles,
    render_interests,
    with_reason,
)
from deeprec_env.protocol.interests import normalize_tag
from deeprec_env.trm.queries import item_aspects, query_phrasings
from rewards.components import aspect_shares


def popularity_scorer(dataset: RecDataset) -> Scorer:
    """Scores every item by its training-interaction count, the same for every user."""
    popularity = dataset.item_popularity().astype(np.float64)
    popularity[0] = -np.inf

    def score(histories, queries=None) -> np.ndarray:
        return np.broadcast_to(popularity, (len(histories), len(popularity))).copy()

    return score


_NUMBERED = re.compile(r"^\s*\d+\.\s+(.+?)\s*$")


def numbered_cards(text: str) -> list[str]:
    """The cards of a numbered list ("1. card") in order."""
    return [m.group(1) for line in text.splitlines() if (m := _NUMBERED.match(line))]


class TextAgent:
    """Base class: remembers the codec and the episode's retrieved items (in retrieval order)."""

    name = "agent"

    def __init__(self, dataset: RecDataset, protocol: str | Codec = "tags", rec_k: int = 10, seed: int = 0):
        self.dataset = dataset
        self.codec = get_codec(protocol)
        self.rec_k = rec_k
        self.matcher = TitleMatcher(dataset)
        self.rng = np.random.default_rng(seed)
        self.retrieved: list[list[int]] = []

    def reset(self, observation: str, info: dict) -> None:
        self.retrieved = []
        self.user = info.get("user")
        self.history = self._history_from_prompt(observation, info)

    def _history_from_prompt(self, observation: str, info: dict) -> list[int]:
        """Item ids of the history cards shown in the prompt, oldest first."""
        if info.get("messages"):
            text = info["messages"][-1]["content"]
        else:
            text = observation.rsplit("User:", 1)[-1].split("Assistant:", 1)[0]
        ids = [self.matcher.match(card) for card in numbered_cards(text)]
        return [i for i in ids if i is not None]

    def title(self, item: int) -> str:
        """The answer line naming an item: its title with the year."""
        return self.dataset.item_name(item)

    def answer_lines(self, lines: Sequence[str], reasoning: str) -> str:
        """The final segment: reasoning, `</think>` (tags codec), then an answer block with exactly these lines."""
        close = f"\n{THINK_CLOSE}" if self.codec.name == "tags" else ""
        return f"{reasoning}{close}\n{self.codec.render_answer(list(lines))}"

    @staticmethod
    def act_many(agents: Sequence[TextAgent], observations: Sequence[str], infos: Sequence[dict]) -> list[str]:
        """The turns of several agents of one kind (an LLM policy batches them; scripted agents just loop)."""
        return [agent.act(o, i) for agent, o, i in zip(agents, observations, infos, strict=True)]

    def answer(self, items: Sequence[int], reasoning: str, info: dict | None = None) -> str:
        """The final segment naming the first rec_k items: by their handles where the env gives items handles
        (`info["item_refs"]`, the retrieved items of `info["tool_calls"]`), by title otherwise; each with a reason
        when the env asks for them (`info["explanations"]`)."""
        info = info or {}
        handles = {}
        if info.get("item_refs") == "handles":
            handles = item_handles(i for call in info["tool_calls"] for i in call["item_ids"])
        lines = [handles.get(i) or self.title(i) for i in items[: self.rec_k]]
        if info.get("explanations"):
            lines = [with_reason(line, why) for line, why in zip(lines, self.reasons(items[: self.rec_k]), strict=True)]
        return self.answer_lines(lines, reasoning)

    def aspects(self, item: int) -> list[str]:
        """The item's aspects as interest tags (`protocol.interests.normalize_tag`), its categories first."""
        tags = [normalize_tag(a) for a in item_aspects(self.dataset, item)]
        categories = {normalize_tag(c) for c in self.dataset.items[item].categories}
        return sorted(tags, key=lambda tag: tag not in categories)

    def interests(self, info: dict, max_tags: int = 5, recent_items: int = 5) -> str:
        """The interest block (`protocol.interests`) when the env asks for it (`info["interests"]`), else "": the
        shares of the `max_tags` most frequent aspects of the shown history and of its last `recent_items` items."""
        if not info.get("interests") or not self.history:
            return ""
        table = {item: self.aspects(item) for item in self.history}
        long_term = aspect_shares(self.history, table, max_tags)
        recent = aspect_shares(self.history[-recent_items:], table, max_tags)
        return render_interests(list(long_term.items()), list(recent.items())) + "\n"

    def reasons(self, items: Sequence[int]) -> list[str]:
        """Why each item suits this user, one sentence each: what the item is (its categories, else its aspects, up
        to three, and its year) and a history title it shares an aspect with, the least named one so far first, then
        the one sharing most, then the most recent ("new for you" where none shares any)."""
        uses: Counter[int] = Counter()
        history = [(at, past, set(self.aspects(past))) for at, past in enumerate(self.history)]
        out = []
        for item in items:
            own = self.aspects(item)
            meta = self.dataset.items[item]
            kinds = [normalize_tag(c) for c in meta.categories][:3] or own[:3] or ["something"]
            what = " and ".join([", ".join(kinds[:-1]), kinds[-1]] if len(kinds) > 1 else kinds)
            what += f" from {meta.year}" if meta.year else ""
            shared = {past: len(aspects.intersection(own)) for _, past, aspects in history if past != item}
            sharing = [(uses[past], -shared[past], -at, past) for at, past, _ in history if shared.get(past)]
            if not sharing:
                out.append(f"{what}, new for you")
                continue
            anchor = min(sharing)[-1]
            uses[anchor] += 1
            out.append(f"{what}, like {self.dataset.items[anchor].title}")
        return out

    def act(self, observation: str, info: dict) -> str:
        raise NotImplementedError


class RandomAgent(TextAgent):
    """Well-formed but uninformed: one tool call with a random query, then random catalogue titles."""

    name = "random"

    def act(self, observation: str, info: dict) -> str:
        if not info.get("n_tool_calls"):
            item = int(self.rng.integers(1, self.dataset.n_items + 1))
            return f"Let me look around.\n{self.codec.render_tool_call(query_phrasings(self.dataset, item, 1)[0])}"
        items = self.rng.choice(np.arange(1, self.dataset.n_items + 1), self.rec_k, replace=False)
        return self.answer([int(i) for i in items], "I will pick some titles.", info)


class TRMAgent(TextAgent):
    """One tool call with the empty query, then the TRM's top rec_k in order: the text path of `trm`."""

    name = "trm-agent"

    def act(self, observation: str, info: dict) -> str:
        if not info.get("n_tool_calls"):
            opening = f"{self.interests(info)}I will ask the recommender without a preference."
            return f"{opening}\n{self.codec.render_tool_call('')}"
        return self.answer(info["tool_calls"][-1]["item_ids"], "The recommender's list is my answer.", info)


class ScriptedAgent(TextAgent):
    """The multi-aspect teacher (warm-start data): queries several aspects of the history, pools the results.

    Calls, in order: the empty query (what the recommender predicts from the sequence alone), then the user's
    long-term aspects (most frequent over the whole shown history), the recent aspects (the last few items) and
    a less-seen aspect (present in the history but not dominant). Pooled items are ranked by weighted
    reciprocal-rank fusion over the calls: the sequence-only list carries most weight, and items that several
    aspects agree on rise.
    """

    name = "scripted"
    recent_items = 3
    fusion_k = 10.0
    call_weights = (3.0, 0.5, 0.6, 0.3)

    def plan(self) -> list[tuple[str, str]]:
        """(reasoning, preference) per tool call."""
        aspects = [item_aspects(self.dataset, i) for i in self.history]
        long_term = Counter(a for per_item in aspects for a in per_item)
        recent = Counter(a for per_item in aspects[-self.recent_items :] for a in per_item)
        top = [a for a, _ in long_term.most_common(2)]
        fresh = [a for a, _ in recent.most_common() if a not in top][:2] or [a for a, _ in recent.most_common(2)]
        rare = [a for a, _ in long_term.most_common()[2:5] if a not in fresh][:1]
        plan = [("First, what does the recommender predict from the history alone?", "")]
        if top:
            plan.append((f"Over the whole history the user keeps coming back to {' and '.join(top)}.", "; ".join(top)))
        if fresh:
            plan.append((f"Lately the user has moved towards {' and '.join(fresh)}.", "; ".join(fresh + top[:1])))
        if rare:
            plan.append((f"Less often, the user also chose {rare[0]}; worth a look.", "; ".join(rare + fresh[:1])))
        return plan

    def act(self, observation: str, info: dict) -> str:
        calls = info.get("n_tool_calls", 0)
        if calls == 0:
            self.queries = self.plan()
        if calls < len(self.queries):
            reasoning, preference = self.queries[calls]
            reasoning = f"{self.interests(info)}{reasoning}" if calls == 0 else reasoning
            return f"{reasoning}\n{self.codec.render_tool_call(preference)}"
        ranked = self.fused(info)
        return self.answer(ranked, self.ranking_reasoning(len(ranked), calls), info)

    def ranking_reasoning(self, pooled: int, calls: int) -> str:
        """The reasoning written before the answer."""
        return f"I pooled {pooled} items from {calls} searches and ranked those the searches agree on first."

    def fused(self, info: dict) -> list[int]:
        """The retrieved items outside the history, ranked by weighted reciprocal-rank fusion over the calls; when
        that leaves fewer than rec_k (a history card can name another item of the same title), the other calls'
        items follow in call and rank order."""
        scores: dict[int, float] = {}
        history = set(self.history)
        for weight, call in zip(self.call_weights, info["tool_calls"], strict=False):
            for rank, item in enumerate(call["item_ids"]):
                if item not in history:
                    scores[item] = scores.get(item, 0.0) + weight / (self.fusion_k + rank)
        ranked = sorted(scores, key=lambda i: (-scores[i], i))
        if len(ranked) < self.rec_k:
            rest = (i for call in info["tool_calls"] for i in call["item_ids"] if i not in scores and i not in history)
            ranked += list(dict.fromkeys(rest))
        return ranked


class ScriptedCopyAgent(ScriptedAgent):
    """The scripted agent's calls, answered with the sequence-only (first) call's list in its order: an answer a
    small policy can copy line by line from one tool result, where the fusion's order cannot be read off the
    transcript (the fused list scores no better than the first call's on ml-100k and Games; docs/notes/history.md)."""

    name = "scripted-copy"
    call_weights = (1.0,)

    def ranking_reasoning(self, pooled: int, calls: int) -> str:
        return f"Of my {calls} searches, the first, from the history alone, ranks best; I keep its order."


class ScriptedRequestAgent(ScriptedAgent):
    """Uses the user's request (`env.requests`) the obvious way: asks the tool with the request verbatim first,
    makes the scripted calls after it, and answers the request call's list in its order. Without a request it is
    `scripted-copy`."""

    name = "scripted-request"
    call_weights = (1.0,)

    def reset(self, observation: str, info: dict) -> None:
        super().reset(observation, info)
        self.request = info.get("request", "")
        handles = info.get("item_refs") == "handles"
        self.request_query = REQUEST_HANDLE if handles and self.request else self.request  # the env expands it

    def plan(self) -> list[tuple[str, str]]:
        plan = super().plan()
        if not self.request:
            return plan
        return [("The user made a request; I search for exactly that.", self.request_query), *plan[: len(plan) - 1]]

    def ranking_reasoning(self, pooled: int, calls: int) -> str:
        first = "the user's request" if self.request else "the history alone"
        return f"Of my {calls} searches, the first, from {first}, ranks best; I keep its order."


class ScriptedHedgeAgent(ScriptedRequestAgent):
    """Two searches, the user's request (the first of `scripted-request`'s plan) and the history alone (the empty
    query), answered with a hedge between them: the items both searches returned first, in the first search's order,
    then the two lists alternately. A request may be empty or point at another item, so neither list alone is safe;
    with item handles the answer is legible from the transcript, since an item the second search returns again keeps
    its handle from the first (`docs/training.md`). Without a request the searches are `scripted`'s first two."""

    name = "scripted-hedge"
    searches = 2

    def plan(self) -> list[tuple[str, str]]:
        return super().plan()[: self.searches]

    def fused(self, info: dict) -> list[int]:
        history = set(self.history)
        lists = [[i for i in call["item_ids"] if i not in history] for call in info["tool_calls"][: self.searches]]
        agreed = [i for i in lists[0] if all(i in other for other in lists[1:])]
        alternating = (i for rank in zip_longest(*lists) for i in rank if i is not None)
        return list(dict.fromkeys([*agreed, *alternating]))

    def ranking_reasoning(self, pooled: int, calls: int) -> str:
        return "Items both searches found come first, then I alternate between the two lists."


class ScriptedHedgeFirstAgent(ScriptedHedgeAgent):
    """`scripted-hedge`'s searches, answered with the first search's list (the request's) in its order."""

    name = "scripted-hedge-first"

    fused = ScriptedAgent.fused  # weights (1.0,): the first call's list, filled from the other

    def ranking_reasoning(self, pooled: int, calls: int) -> str:
        return "The first search ranks best; I keep its order."


class ScriptedHalvesAgent(ScriptedHedgeAgent):
    """`scripted-hedge`'s searches, answered with the first search's top half, then the top half of the items the
    second search added: with handles and `new_results` always `#1`-`#5`, then `#11`-`#15`, a hedge a small policy
    writes without comparing the lists."""

    name = "scripted-halves"

    def fused(self, info: dict) -> list[int]:
        first, second = (list(call["item_ids"]) for call in info["tool_calls"][:2])
        added = [i for i in second if i not in first]
        half = self.rec_k // 2
        ranked = first[:half] + added[: self.rec_k - half] + first[half:] + added[self.rec_k - half :]
        history = set(self.history)
        return list(dict.fromkeys(i for i in ranked if i not in history))

    def ranking_reasoning(self, pooled: int, calls: int) -> str:
        return "I take the best half of each search."


class TargetOf:
    """(user, split) -> the target item id of that user's episode on that split: what `OracleAgent` is told."""

    def __init__(self, dataset: RecDataset):
        self.dataset = dataset

    def __call__(self, user: int, split: str) -> int:
        return self.dataset.history_and_target(user, split)[1]


class OracleAgent(TextAgent):
    """Knows the target (an upper bound): asks with a query built from the target's metadata, answers the top
    results with the target first if it was retrieved."""

    name = "oracle"

    def __init__(self, dataset: RecDataset, target_of, **kwargs):
        super().__init__(dataset, **kwargs)
        self.target_of = target_of  # (user, split) -> target item id

    def act(self, observation: str, info: dict) -> str:
        target = self.target_of(info["user"], info["split"])
        if not info.get("n_tool_calls"):
            query = query_phrasings(self.dataset, target, 1)[0]
            return f"The user wants {query}.\n{self.codec.render_tool_call(query)}"
        items = list(info["tool_calls"][-1]["item_ids"])
        if target in items:
            items.remove(target)
            items.insert(0, target)
        return self.answer(items, "The best match goes first.", info)


TEXT_AGENTS = {
    cls.name: cls
    for cls in (
        RandomAgent,
        TRMAgent,
        ScriptedAgent,
        ScriptedCopyAgent,
        ScriptedRequestAgent,
        ScriptedHedgeAgent,
        ScriptedHedgeFirstAgent,
        ScriptedHalvesAgent,
        OracleAgent,
    )
}


def text_agent_class(name: str) -> type[TextAgent]:
    """A text agent by name (`TEXT_AGENTS`) or import path ("my_pkg.agents.MyAgent" or "my_pkg.agents:MyAgent"): a
    class constructed as `cls(dataset, protocol=codec, rec_k=k, seed=s)` with `reset(observation, info)` and
    `act(observation, info) -> segment`, such as a `TextAgent` subclass."""
    if name in TEXT_AGENTS:
        return TEXT_AGENTS[name]
    module, _, attribute = name.replace(":", ".").rpartition(".")
    if not module:
        raise ValueError(f"unknown agent {name!r}; give a known name or a class path such as my_pkg.agents.MyAgent")
    try:
        cls = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"agent {name!r} cannot be imported ({err}); check the module path and class name") from None
    if not (isinstance(cls, type) and callable(getattr(cls, "act", None)) and callable(getattr(cls, "reset", None))):
        raise ValueError(f"agent {name!r} is not a class with reset(observation, info) and act(observation, info)")
    return cls


class AgentFactory:
    """`make_agent(dataset, codec, rec_k)` for a text agent class, constructed as `cls(dataset, protocol=codec,
    rec_k=rec_k, **kwargs)`; picklable, so rollout workers can build the agents themselves (`agents.workers`)."""

    def __init__(self, cls: type, **kwargs):
        self.cls, self.kwargs = cls, kwargs

    def __call__(self, dataset: RecDataset, codec: str, rec_k: int):
        return self.cls(dataset, protocol=codec, rec_k=rec_k, **self.kwargs)
